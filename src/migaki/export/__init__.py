"""`migaki export`: a run's tuned model as a folder other tools run, with its model card and
the proof (export/verify.py) that it behaves like the model `migaki eval` measured."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from migaki import __version__
from migaki.errors import UserError
from migaki.evaluate.classification import labelled_examples, load_classifier
from migaki.evaluate.evaluation import conversation_examples
from migaki.export.card import model_card
from migaki.export.hf import DTYPES, tuned_model, write_hf
from migaki.export.verify import GOLDEN_ROWS, Verification, verify_classifier, verify_language_model
from migaki.models import ModelSource, load_tokenizer
from migaki.models.inference import load_for_inference
from migaki.rundir import final_dir, is_run, load_run_recipe
from migaki.tasks import task_for

log = logging.getLogger(__name__)
FORMATS = ("hf",)


@dataclass
class ExportResult:
    directory: Path
    verification: Verification | None

    @property
    def problems(self) -> list[str]:
        return self.verification.problems() if self.verification else []


def export(
    run: str | Path,
    to: str | Path,
    fmt: str = "hf",
    dtype: str = "fp32",
    verify: bool = True,
    prompts: str | Path | None = None,
) -> ExportResult:
    """Write the run's tuned model into `to` (which must not hold files yet) and, unless
    `verify` is False, check it against the pre-export model on golden rows: a few of the
    run's test split, or of `prompts`. Raises UserError for what the user can fix."""
    run, to = Path(run), Path(to)
    if not is_run(run):
        raise UserError(f"{run}: not a migaki run directory (no recipe.yaml)")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not available (use {', '.join(FORMATS)})")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to}: already exists and is not empty; choose another --to")
    recipe = load_run_recipe(run)
    final_dir(run)  # a damaged final/ is named before anything loads
    classifier = task_for(recipe).head is not None
    golden = _golden_rows(run, recipe, prompts, classifier) if verify else []
    tuned = tuned_model(run, recipe)
    log.info("writing %s (%s, %s)", to, fmt, dtype)
    write_hf(tuned, to, dtype)
    del tuned
    verification = None
    if verify:
        log.info("verifying the export on %d golden rows", len(golden))
        verification = _verify(run, recipe, to, golden, dtype, classifier)
    summary = verification.table() if verification else ["not verified (--no-verify)"]
    provenance = {
        "format": fmt,
        "dtype": dtype,
        "run": str(run.resolve()),
        "migaki": __version__,
        "verification": verification.to_dict() if verification else None,
    }
    (to / "migaki-export.json").write_text(json.dumps(provenance, indent=2, ensure_ascii=False))
    if verification and verification.problems():
        summary = [*summary, "FAILED:", *verification.problems()]
    (to / "README.md").write_text(model_card(run, recipe, provenance, summary), encoding="utf-8")
    return ExportResult(to, verification)


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


def _verify(run, recipe, to, golden, dtype, classifier) -> Verification:
    if classifier:
        final = final_dir(run)
        labels = json.loads((final / "labels.json").read_text(encoding="utf-8"))
        tokenizer = load_tokenizer(ModelSource("final", final, "local"), chat=False)
        original = load_classifier(run, recipe, labels, tokenizer.pad_token_id)
        return verify_classifier(original, tokenizer, recipe, to, golden, labels, dtype)
    original = load_for_inference(run)
    return verify_language_model(original, to, golden, dtype)

"""Evaluating a classification run: accuracy, macro F1, per-label precision/recall/F1, the
confusion matrix, the most confident mistakes, and the majority-class baseline (what a model
that always answers the most common training label would score: the honest floor); error
analysis (errors.csv beside eval.json), accuracy per slice (`eval.slices`) and the
counterfactual test (`eval.counterfactual`)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from migaki import models
from migaki.config import Recipe
from migaki.data.classify import collate_classification, tokenize_classification
from migaki.data.formats import Example, to_examples
from migaki.data.heuristics import language_of
from migaki.data.load import scan_records, with_text_column
from migaki.errors import UserError
from migaki.evaluate.analysis import error_analysis, write_error_csv
from migaki.evaluate.report import write_report
from migaki.evaluate.slices import counterfactual_report, counterfactual_rows, slice_metrics
from migaki.metrics import f1_macro
from migaki.rundir import final_dir

MISTAKES_SHOWN = 20
ERRORS_CSV = "errors.csv"


def evaluate_classifier(
    run: Path,
    recipe: Recipe,
    data: str | Path | None = None,
    limit: int | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """Scores a classification run on its test split, or on `data` read as the recipe reads
    training data (`label_column` overrides its `data.label_column`)."""
    final = final_dir(run)
    labels = json.loads((final / "labels.json").read_text(encoding="utf-8"))
    examples = labelled_examples(run, recipe, data, label_column)[:limit]
    tokenizer = models.load_tokenizer(models.ModelSource("final", final, "local"), chat=False)
    model = load_classifier(run, recipe, labels, tokenizer.pad_token_id)
    rows, report = tokenize_classification(examples, tokenizer, labels, recipe.data.max_length)
    kept = [e for e in examples if e.label in labels]  # the examples of `rows`, in order
    probabilities = predict_labels(model, rows, tokenizer.pad_token_id)
    predicted = probabilities.argmax(dim=-1)
    truth = torch.tensor([row.label for row in rows])
    confusion = torch.bincount(truth * len(labels) + predicted, minlength=len(labels) ** 2)
    confusion = confusion.view(len(labels), len(labels))
    tuned = {
        "accuracy": float((predicted == truth).double().mean()),
        "f1_macro": f1_macro(confusion),
    }
    majority = _majority_label(run, labels)
    baseline = {"accuracy": float((truth == labels.index(majority)).double().mean())}
    records = classification_records(kept, truth, probabilities, labels)
    analysis = error_analysis(records, "correct", labels, worst=MISTAKES_SHOWN)
    write_error_csv(run / ERRORS_CSV, records, "correct")
    analysis["csv"] = ERRORS_CSV
    result = {
        "target": str(run),
        "task": "classification",
        "data": str(data) if data else "test split",
        "rows": len(rows),
        "skipped": dict(report.dropped),
        "systems": {"tuned": tuned, f"majority ({majority})": baseline},
        "per_label": _per_label(confusion, labels),
        "confusion": {"labels": labels, "matrix": confusion.tolist()},
        # the confident mistakes are `mistakes`, kept in their own shape
        "mistakes": _mistakes(analysis.pop("worst_by_confidence")),
        "analysis": analysis,
    }
    if recipe.eval.slices:
        result["slices"] = slice_metrics(records, recipe.eval.slices, ["correct"])
    if recipe.eval.counterfactual is not None:
        result["counterfactual"] = _counterfactual(
            model, tokenizer, recipe, kept, predicted, labels
        )
    (run / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    write_report(run)
    return result


def classification_records(
    examples: list[Example], truth: torch.Tensor, probabilities: torch.Tensor, labels: list[str]
) -> list[dict[str, Any]]:
    """One row record (`evaluate.analysis`) per classified example: its text as the prompt,
    the true label as the reference, the predicted label as the answer, correct (0/1),
    confidence (the predicted label's probability) and loss (-log p of the true label)."""
    predicted = probabilities.argmax(dim=-1)
    records = []
    for index, example in enumerate(examples):
        true, pick = int(truth[index]), int(predicted[index])
        records.append(
            {
                "index": index,
                "line": example.line,
                "kind": "classification",
                "prompt": example.text,
                "reference": labels[true],
                "answer": labels[pick],
                "language": language_of(example.text or ""),
                "correct": int(true == pick),
                "confidence": float(probabilities[index, pick]),
                "loss": -math.log(max(float(probabilities[index, true]), 1e-12)),
                "meta": example.meta,
            }
        )
    return records


def _counterfactual(model, tokenizer, recipe: Recipe, kept, predicted, labels) -> dict[str, Any]:
    """The labels of the rows that hold a swapped term, predicted again on the swapped texts."""
    config = recipe.eval.counterfactual
    originals, swapped = counterfactual_rows(kept, config.swaps, config.max_rows)
    position = {id(example): index for index, example in enumerate(kept)}
    before = [labels[int(predicted[position[id(e)]])] for e in originals]
    after = []
    if swapped:
        rows, _ = tokenize_classification(swapped, tokenizer, labels, recipe.data.max_length)
        picks = predict_labels(model, rows, tokenizer.pad_token_id).argmax(dim=-1)
        after = [labels[int(i)] for i in picks]
    return counterfactual_report(before, after, originals, swapped)


def labelled_examples(
    run: Path, recipe: Recipe, data: str | Path | None, label_column: str | None
) -> list[Example]:
    path = Path(data) if data else run / "data" / "test.jsonl"
    if data is None and (not path.is_file() or not path.read_text().strip()):
        raise UserError(f"{run}: the run has no test split; give --data FILE")
    # the run's own split files are written in migaki's layout; a user's file in theirs
    columns = recipe.data.columns if data else None
    text_column = recipe.data.text_column if data else None
    scan = with_text_column(scan_records(path, columns), text_column)
    if scan.problems:
        raise scan.problems[0]
    records = scan.records
    # the run's own split files carry the label as `label`
    label_column = (label_column or recipe.data.label_column) if data else "label"
    examples = [e for e in to_examples(records, "auto", label_column) if e.label]
    if not examples:
        raise UserError(f"{path}: no labelled rows ({text_column or 'text'} and {label_column})")
    return examples


def load_classifier(run: Path, recipe: Recipe, labels: list[str], pad_token_id: int):
    """A classification or reward run's model (its final/ on its base), in eval mode."""
    final = final_dir(run)
    if recipe.method.name == "lora":
        from peft import PeftModel

        source = models.resolve(recipe.model.base, recipe.model.accept_license)
        base = models.load_sequence_classifier(
            source, labels, pad_token_id, recipe.model.trust_remote_code
        )
        model = PeftModel.from_pretrained(base, str(final))
    else:
        source = models.ModelSource("final", final, "local")
        model = models.load_sequence_classifier(source, labels, pad_token_id)
    return model.eval()


@torch.no_grad()
def predict_labels(model, rows, pad_token_id: int, batch_size: int = 64) -> torch.Tensor:
    """Each label's probability for each `ClassifiedRow`: (rows, labels) float32."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = collate_classification(rows[start : start + batch_size], pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out.append(logits.logits.float().softmax(dim=-1))
    return torch.cat(out)


def _majority_label(run: Path, labels: list[str]) -> str:
    train = run / "data" / "train.jsonl"
    lines = train.read_text(encoding="utf-8").splitlines() if train.is_file() else []
    counts = Counter(str(json.loads(line).get("label")) for line in lines if line.strip())
    known = [(counts.get(label, 0), label) for label in labels]
    return max(known)[1]


def _per_label(confusion: torch.Tensor, labels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for i, label in enumerate(labels):
        hits = float(confusion[i, i])
        predicted, actual = float(confusion[:, i].sum()), float(confusion[i].sum())
        precision = hits / predicted if predicted else 0.0
        recall = hits / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    return out


def _mistakes(confident: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wrong answers the model was most sure of (`error_analysis`'s worst_by_confidence),
    in the shape eval.json has always had: where to look first."""
    return [
        {
            "line": row.get("line"),
            "text": row["prompt"],
            "label": row["reference"],
            "predicted": row["answer"],
            "confidence": row["confidence"],
        }
        for row in confident
    ]

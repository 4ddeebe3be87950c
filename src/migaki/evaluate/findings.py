"""What `migaki eval` finds beyond the metric table for a model's answers: one record per row
(its scores, loss and confidence) for the error analysis and errors.csv, metrics per slice,
the counterfactual swap test, the optional judge, and forgetting of general text. Each part
runs only when the recipe asks for it (or, for forgetting, unless it says no)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from migaki.config import Recipe
from migaki.data import Example
from migaki.data.heuristics import language_of
from migaki.evaluate.analysis import error_analysis, row_losses, write_error_csv
from migaki.evaluate.answers import score_system_rows
from migaki.evaluate.forgetting import forgetting_report, forgetting_threshold, reference_rows
from migaki.evaluate.judge import judge_answers
from migaki.evaluate.prompting import question_of
from migaki.evaluate.slices import counterfactual_report, counterfactual_rows, slice_metrics
from migaki.models.inference import LoadedModel

log = logging.getLogger(__name__)

ERRORS_CSV = "errors.csv"


def row_records(
    loaded: LoadedModel, examples: list[Example], answers: dict[int, str], rows: dict[int, dict]
) -> list[dict[str, Any]]:
    """One record per example (`evaluate.analysis`): question, reference, answer, the row's
    scores, the loss of the reference and the model's confidence in its own answer (the
    pick's probability for a multiple-choice row)."""
    generated = {i: text for i, text in answers.items() if rows.get(i, {}).get("kind") != "choice"}
    losses = row_losses(loaded, examples, generated)
    records = []
    for index, example in enumerate(examples):
        scores = rows.get(index, {"kind": "generation"})
        confidence = scores.get("confidence", losses[index].get("confidence"))
        records.append(
            {
                "index": index,
                "prompt": question_of(example),
                "reference": example.reference,
                "answer": answers.get(index),
                **scores,
                # the reference's language: what the row asks in (scores hold the answer's)
                "language": language_of(example.reference),
                "loss": losses[index]["loss"],
                "confidence": confidence,
                "meta": example.meta,
            }
        )
    return records


def analysis_metric(records: list[dict[str, Any]]) -> str:
    """The per-row figure errors are judged by: `correct` for multiple-choice rows only,
    else character F1 (graded, and fair to Japanese and English alike)."""
    if records and all(record.get("kind") == "choice" for record in records):
        return "correct"
    return "char_f1"


def findings(
    loaded: LoadedModel,
    recipe: Recipe,
    examples: list[Example],
    answers: dict[int, str],
    rows: dict[int, dict],
    run: Path | None,
) -> dict[str, Any]:
    """analysis (and errors.csv in `run`), slices, counterfactual and judge, as eval.json
    holds them; the keys the recipe does not ask for are absent."""
    records = row_records(loaded, examples, answers, rows)
    metric = analysis_metric(records)
    found: dict[str, Any] = {"analysis": error_analysis(records, metric)}
    if run is not None:
        write_error_csv(run / ERRORS_CSV, records, metric)
        found["analysis"]["csv"] = ERRORS_CSV
    if recipe.eval.slices:
        metrics = [metric] + [m for m in ("exact_match", "fact_accuracy") if m != metric]
        found["slices"] = slice_metrics(records, recipe.eval.slices, metrics)
    if recipe.eval.counterfactual is not None:
        found["counterfactual"] = _counterfactual(loaded, recipe, examples, answers)
    if recipe.eval.judge is not None:
        judged = [r for r in records if r["kind"] != "choice" and r["answer"] is not None]
        found["judge"] = judge_answers(recipe.eval.judge, judged)
    return found


def _counterfactual(
    loaded: LoadedModel, recipe: Recipe, examples: list[Example], answers: dict[int, str]
) -> dict[str, Any]:
    config = recipe.eval.counterfactual
    originals, swapped = counterfactual_rows(examples, config.swaps, config.max_rows)
    position = {id(example): index for index, example in enumerate(examples)}
    before = [answers.get(position[id(example)], "") for example in originals]
    _, swapped_answers, _ = score_system_rows(loaded, swapped, True, None)
    after = [swapped_answers.get(index, "") for index in range(len(swapped))]
    return counterfactual_report(before, after, originals, swapped, config.swaps)


def forgetting(base: LoadedModel, tuned: LoadedModel, recipe: Recipe) -> dict[str, Any]:
    """The loss of base and tuned model on general text (`evaluate.forgetting`)."""
    rows, source = reference_rows(recipe, tuned.tokenizer)
    return forgetting_report(base, tuned, rows, forgetting_threshold(recipe), source)

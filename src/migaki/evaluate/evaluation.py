"""`migaki eval`: a run (on its test split unless data is given) or any model, scored as its
task is scored: generated answers against references (multiple-choice rows by the likelihood
of each choice, preference pairs by likelihood), a classifier's labels, a reward model's pairs.
Writes eval.json and report.html into a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from migaki import rundir
from migaki.config import ChoicePrompt, Recipe
from migaki.data import Example, read_records
from migaki.data.formats import convert_records
from migaki.errors import UserError
from migaki.evaluate.answers import answer_samples, score_system_rows
from migaki.evaluate.choices import is_choice_example
from migaki.evaluate.classification import evaluate_classifier
from migaki.evaluate.findings import findings, forgetting
from migaki.evaluate.format_check import answer_validator
from migaki.evaluate.generation import load_for_generation
from migaki.evaluate.pairs import evaluate_pairs, evaluate_reward_pairs, is_preference_data
from migaki.evaluate.report import write_report
from migaki.tasks import check_generates, task_for

log = logging.getLogger(__name__)


def evaluate(
    target: str | Path,
    data: str | Path | None = None,
    compare_base: bool = False,
    generate: bool = True,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    write: bool = True,
    choice_prompt: ChoicePrompt | None = None,
    label_column: str | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """Evaluate a run (on its test split unless `data` is given) or any model (needs `data`).

    Rows of `data` are read as the run's recipe reads them (its `data.label_column` and
    `data.choice_prompt`); `label_column` and `choice_prompt` override those, and for a model
    that is not a run they default to `label` and `listed`. Returns {"data", "rows", "systems":
    {"tuned": {...}, "base": {...}}, "samples": [...]} and, for a run, writes eval.json and
    report.html into it."""
    target_path = Path(target)
    is_run = rundir.is_run(target_path)
    recipe = rundir.load_run_recipe(target_path) if is_run else None
    task = task_for(recipe) if recipe is not None else None
    if recipe is not None:
        rundir.final_dir(target_path, verify)  # a damaged final/ is named before any load
    if label_column and data is None and is_run:  # a bare model without data fails below
        log.warning(
            "--label-column has no effect without --data: a run's own split files keep their "
            "labels where migaki wrote them"
        )
        label_column = None
    if task is not None and task.evaluation == "classification":
        if choice_prompt:
            log.warning("--choice-prompt has no effect on a classification run")
        return evaluate_classifier(target_path, recipe, data, limit, label_column)
    examples = conversation_examples(target_path, data, recipe, choice_prompt, label_column)[:limit]
    found: dict[str, Any] = {}  # the findings of answers (evaluate.findings)
    if task is not None and task.evaluation == "reward":
        if not is_preference_data(examples):
            check_generates(target_path, recipe)
        if compare_base:
            log.warning("--compare-base has no effect on a reward run: its base has no reward head")
        systems, samples = evaluate_reward_pairs(target_path, recipe, examples)
        rows = systems["tuned"]["pairs"]
    elif is_preference_data(examples):
        systems, samples = evaluate_pairs(target_path, recipe, examples, compare_base)
        rows = systems["tuned"]["pairs"]
    else:
        run = target_path if is_run and write else None
        systems, samples, found = _evaluate_answers(
            target, recipe, examples, is_run and compare_base, generate, max_new_tokens, run
        )
        rows = len(examples)
    result = {
        "target": str(target),
        "data": str(data) if data else "test split",
        "rows": rows,
        "systems": systems,
        "samples": samples,
    }
    result |= found
    if is_run and write:
        (target_path / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        write_report(target_path)
    return result


def _evaluate_answers(
    target: str | Path,
    recipe: Recipe | None,
    examples: list[Example],
    compare_base: bool,
    generate: bool,
    max_new_tokens: int | None,
    run: Path | None,
) -> tuple[dict[str, dict[str, Any]], list[dict], dict[str, Any]]:
    """Metrics of the tuned model (and the base), the samples, and for a run's recipe the
    findings (`evaluate.findings`): error analysis, slices, counterfactual, judge, and
    forgetting of general text (which loads the base model when --compare-base did not)."""
    if recipe is not None:
        answer_validator(recipe.eval.format)  # a bad schema file is named before any load
    systems: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[int, str]] = {}  # system -> row index -> its answer or pick
    tuned = load_for_generation(target, tuned=True)
    systems["tuned"], answers["tuned"], rows = score_system_rows(
        tuned, examples, generate, max_new_tokens
    )
    _log_metrics("tuned", systems["tuned"])
    found = findings(tuned, recipe, examples, answers["tuned"], rows, run) if recipe else {}
    if compare_base or (recipe is not None and recipe.eval.forgetting):
        base = load_for_generation(target, tuned=False)
        if compare_base:
            systems["base"], answers["base"], _ = score_system_rows(
                base, examples, generate, max_new_tokens
            )
            _log_metrics("base", systems["base"])
        if recipe is not None and recipe.eval.forgetting:
            found["forgetting"] = forgetting(base, tuned, recipe)
    return systems, answer_samples(examples, answers), found


def _log_metrics(label: str, metrics: dict[str, Any]) -> None:
    log.info("%s: %s", label, {k: round(v, 4) for k, v in metrics.items()})


def conversation_examples(
    target: Path,
    data: str | Path | None,
    recipe: Recipe | None,
    choice_prompt: ChoicePrompt | None,
    label_column: str | None,
) -> list[Example]:
    if data is None:
        if recipe is None:
            raise UserError(f"{target}: not a run directory; give --data FILE to evaluate it on")
        data = target / "data" / "test.jsonl"
        if not data.is_file() or not data.read_text().strip():
            raise UserError(f"{target}: the run has no test split; give --data FILE")
        if choice_prompt:
            # the split files hold rows rendered as chats when the run was prepared
            log.warning(
                "--choice-prompt has no effect on the run's own test split, rendered as "
                "data.choice_prompt %s; give --data FILE with the raw rows",
                recipe.data.choice_prompt,
            )
            choice_prompt = None
    label_column = label_column or (recipe.data.label_column if recipe else "label")
    rendering = choice_prompt or (recipe.data.choice_prompt if recipe else "listed")
    rows, problems, _ = convert_records(read_records(data), "auto", label_column, rendering)
    if problems and not (recipe is not None and recipe.data.skip_invalid):
        raise problems[0]
    if problems:  # the run's recipe leaves invalid rows out (data.skip_invalid), counted
        log.warning(
            "%d invalid rows of %s left out (data.skip_invalid), the first: %s",
            len(problems),
            data,
            problems[0],
        )
    examples = [e for e in rows if e.messages is not None]
    if not examples:
        raise UserError(f"{data}: no conversation rows to evaluate")
    if choice_prompt and not any(is_choice_example(e) for e in examples):
        log.warning("--choice-prompt has no effect: %s has no multiple-choice rows", data)
    return examples

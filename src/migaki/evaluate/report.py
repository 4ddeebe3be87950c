"""`migaki eval`: loss, perplexity and token accuracy on a data set, optionally generated answers
scored against the reference (facts stated, character F1), tuned vs base side by side.
Multiple-choice rows are scored by the likelihood of each choice instead of by generation."""

from __future__ import annotations

import html
import json
import logging
import unicodedata
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from migaki.config import ChoicePrompt, Recipe
from migaki.data import Example, read_records, tokenize_all
from migaki.data.batches import collate
from migaki.data.formats import convert_records
from migaki.errors import UserError
from migaki.evaluate.choices import is_choice_example, score_choices
from migaki.evaluate.generation import (
    LoadedModel,
    _autocast,
    generate_answers,
    load_for_inference,
    refuse_reward_model,
)
from migaki.evaluate.preference import (
    evaluate_pairs,
    evaluate_reward_pairs,
    is_preference_data,
)
from migaki.rundir import load_run_recipe
from migaki.train.loop import evaluate_rows, summarize
from migaki.train.objectives import causal_lm_loss

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
) -> dict[str, Any]:
    """Evaluate a run (on its test split unless `data` is given) or any model (needs `data`).

    Rows of `data` are read as the run's recipe reads them (its `data.label_column` and
    `data.choice_prompt`); `label_column` and `choice_prompt` override those, and for a model
    that is not a run they default to `label` and `listed`. Returns {"data", "rows", "systems":
    {"tuned": {...}, "base": {...}}, "samples": [...]} and, for a run, writes eval.json and
    report.html into it."""
    target_path = Path(target)
    is_run = (target_path / "recipe.yaml").is_file()
    recipe = load_run_recipe(target_path) if is_run else None
    if label_column and data is None and is_run:  # a bare model without data fails below
        log.warning(
            "--label-column has no effect without --data: a run's own split files keep their "
            "labels where migaki wrote them"
        )
        label_column = None
    if recipe is not None and recipe.task == "classification":
        from migaki.evaluate.classification import evaluate_classifier

        if choice_prompt:
            log.warning("--choice-prompt has no effect on a classification run")
        return evaluate_classifier(target_path, recipe, data, limit, label_column)
    examples = _examples(target_path, data, recipe, choice_prompt, label_column)[:limit]
    if recipe is not None and recipe.task == "reward":
        if not is_preference_data(examples):
            refuse_reward_model(target_path, recipe)
        if compare_base:
            log.warning("--compare-base has no effect on a reward run: its base has no reward head")
        systems, samples = evaluate_reward_pairs(target_path, recipe, examples)
        rows = systems["tuned"]["pairs"]
    elif is_preference_data(examples):
        systems, samples = evaluate_pairs(target_path, recipe, examples, compare_base)
        rows = systems["tuned"]["pairs"]
    else:
        systems, samples = _evaluate_answers(
            target, examples, is_run and compare_base, generate, max_new_tokens
        )
        rows = len(examples)
    result = {
        "target": str(target),
        "data": str(data) if data else "test split",
        "rows": rows,
        "systems": systems,
        "samples": samples,
    }
    if is_run and write:
        (target_path / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        (target_path / "report.html").write_text(render_html(result), encoding="utf-8")
    return result


def _evaluate_answers(
    target: str | Path,
    examples: list[Example],
    compare_base: bool,
    generate: bool,
    max_new_tokens: int | None,
) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    systems: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[int, str]] = {}  # system -> row index -> its answer or pick
    variants = [("tuned", True), ("base", False)] if compare_base else [("tuned", True)]
    for label, tuned in variants:
        loaded = load_for_inference(target, tuned=tuned)
        systems[label], answers[label] = _score_system(loaded, examples, generate, max_new_tokens)
        log.info("%s: %s", label, {k: round(v, 4) for k, v in systems[label].items()})
    return systems, _samples(examples, answers)


def _score_system(
    loaded: LoadedModel, examples: list[Example], generate: bool, max_new_tokens: int | None
) -> tuple[dict[str, Any], dict[int, str]]:
    """One model's metrics, and its answer by row index: loss and perplexity on every row;
    multiple-choice rows scored by choice likelihood (the pick is the answer); the other rows
    answered by generation and scored against their reference, unless `generate` is False."""
    metrics = language_model_metrics(loaded, examples)
    answers: dict[int, str] = {}
    choice = [i for i, e in enumerate(examples) if is_choice_example(e)]
    open_ended = [i for i, e in enumerate(examples) if not is_choice_example(e)]
    if choice:
        scores = score_choices(loaded, [examples[i] for i in choice])
        metrics |= scores.metrics()
        for index, pick in zip(choice, scores.picks, strict=True):
            answers[index] = examples[index].meta["choices"][pick]
    if generate and open_ended:
        rows = [examples[i] for i in open_ended]
        tokens = max_new_tokens or (loaded.recipe.eval.max_new_tokens if loaded.recipe else 128)
        generated = generate_answers(loaded, [e.prompt_messages for e in rows], tokens)
        metrics |= answer_metrics(rows, generated)
        answers |= {index: text for index, (text, _) in zip(open_ended, generated, strict=True)}
    return metrics, answers


def language_model_metrics(loaded: LoadedModel, examples: list[Example]) -> dict[str, float]:
    recipe = loaded.recipe
    rows, _ = tokenize_all(
        examples,
        loaded.tokenizer,
        max_length=recipe.data.max_length if recipe else 2048,
        system_prompt=recipe.data.system_prompt if recipe else None,
    )
    device = next(loaded.model.parameters()).device
    loaded.model.eval()
    sums = evaluate_rows(
        lambda batch: causal_lm_loss(loaded.model, batch),
        rows,
        8,
        partial(collate, pad_token_id=loaded.tokenizer.pad_token_id),
        device,
        lambda: _autocast(loaded.precision, device),
    )
    metrics = summarize(sums)
    metrics.pop("tokens")
    return metrics


def answer_metrics(examples: list[Example], answers: list[tuple[str, bool]]) -> dict[str, float]:
    """fact_accuracy: share of answers stating every fact of the row (rows with `facts`);
    char_f1: character-bigram F1 against the reference, fair to Japanese and English alike;
    stopped: share of answers that ended their turn by themselves."""
    with_facts = [
        (e, a) for e, (a, _) in zip(examples, answers, strict=True) if e.meta.get("facts")
    ]
    metrics = {
        "char_f1": sum(char_f1(a, e.reference) for e, (a, _) in zip(examples, answers, strict=True))
        / max(len(examples), 1),
        "stopped": sum(stopped for _, stopped in answers) / max(len(answers), 1),
    }
    if with_facts:
        metrics["fact_accuracy"] = sum(
            states_facts(a, e.meta["facts"]) for e, a in with_facts
        ) / len(with_facts)
    return metrics


def normalize(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def states_facts(answer: str, facts: list[str]) -> bool:
    normalized = normalize(answer)
    return all(normalize(fact) in normalized for fact in facts)


def char_f1(prediction: str, reference: str) -> float:
    grams = lambda s: Counter(s[i : i + 2] for i in range(max(len(s) - 1, 1)))  # noqa: E731
    p, r = grams(normalize(prediction)), grams(normalize(reference))
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def _examples(
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


def _samples(examples: list[Example], answers: dict[str, dict[int, str]]) -> list[dict]:
    samples = []
    for index, example in enumerate(examples):
        row = {"prompt": example.prompt_messages[-1]["content"], "reference": example.reference}
        row |= {label: texts[index] for label, texts in answers.items() if index in texts}
        samples.append(row)
    return samples


def render_html(result: dict[str, Any]) -> str:
    """A self-contained page: the metrics table and every sample answer."""
    systems = result["systems"]
    keys = sorted({k for metrics in systems.values() for k in metrics})
    head = "".join(f"<th>{html.escape(name)}</th>" for name in systems)
    body = "".join(
        f"<tr><td>{key}</td>"
        + "".join(f"<td>{systems[name].get(key, float('nan')):.4f}</td>" for name in systems)
        + "</tr>"
        for key in keys
    )
    sample_cols = [
        c
        for c in ("prompt", "reference", "rejected", "base", "tuned")
        if any(c in s for s in result["samples"])
    ]
    sample_rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(s.get(c, '')))}</td>" for c in sample_cols)
        + "</tr>"
        for s in result["samples"]
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>migaki evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse;margin-bottom:2em}</style>"
        f"<h1>Evaluation of {html.escape(result['target'])}</h1>"
        f"<p>{result['rows']} rows from {html.escape(result['data'])}</p>"
        f"<table><tr><th>metric</th>{head}</tr>{body}</table>"
        f"<table><tr>{''.join(f'<th>{c}</th>' for c in sample_cols)}</tr>{sample_rows}</table>"
    )

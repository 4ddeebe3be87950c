"""Error analysis of an evaluation: which rows went wrong and what they have in common.

It works on row records, one dict per evaluated row:

    index       the row's position in the evaluated examples
    kind        "generation", "choice" or "classification"
    prompt      the last user message (a classifier's text)
    reference   the reference answer (the right choice's text, the true label)
    answer      the generated text, the picked choice's text, the predicted label
    language    the reference's language (`data.heuristics.language_of`); a record that
                also has `reference_language` is grouped by that instead
    <metric>    per-row figures: char_f1, exact_match, rougeL, ... for generation rows,
                correct (0/1 or bool) for choice and classification rows
    loss        optional: the reference answer's mean loss per token (nats), `row_losses`
    confidence  optional: the probability of the pick or predicted label, or for generated
                text exp(mean log-probability per token of the answer), `row_losses`
    meta        the example's other fields (slice fields such as product or channel)
    line, label optional: the row's line in its file; a label to group generation rows by

An error is a row whose metric is below its threshold: 1 for the 0/1 metrics
(`BINARY_METRICS`: exact_match, correct, facts, format_ok, stopped), so any miss, and 0.5
for graded ones on 0..1 (char_f1, rougeL, bleu, chrf...), about where an answer stops sharing
most of the reference. A choice or classification row without the metric is scored by its
`correct` instead. The rule is written into the result (`summary.error_rule`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from migaki.data.batches import collate
from migaki.data.formats import Example
from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
from migaki.evaluate.choices import answer_logprobs
from migaki.models.inference import LoadedModel
from migaki.models.templates import end_of_turn_ids
from migaki.precision import autocast

BINARY_METRICS = ("exact_match", "correct", "facts", "format_ok", "stopped")
GRADED_THRESHOLD = 0.5
LABELLED_KINDS = ("choice", "classification")  # rows whose answer is one of a fixed set
WORST_SHOWN = 10
CONFUSED_SHOWN = 20
TEXT_SHOWN = 300  # characters of a text kept in eval.json; errors.csv holds them whole
LENGTH_EDGES = (50, 100, 200, 400, 800)  # characters of the prompt
LENGTH_UNIT = "characters of the prompt (a classifier's text)"
BATCH_ROWS = 16
CSV_FIRST = ("index", "line", "kind", "language", "label", "error")
CSV_TEXTS = ("prompt", "reference", "answer")
NOT_FIGURES = {*CSV_FIRST, *CSV_TEXTS, "loss", "confidence", "meta"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# --- per-row loss and confidence through the model ---


@torch.no_grad()
def row_losses(
    loaded: LoadedModel,
    examples: Sequence[Example],
    answers: Mapping[int, str] | None = None,
    *,
    whole_row: bool = False,
    batch_size: int = BATCH_ROWS,
) -> list[dict[str, Any]]:
    """Per example, {"loss", "tokens"} and, with `answers`, "confidence".

    loss: the mean cross-entropy (nats per token) of the reference answer, the last
    assistant turn with its end-of-turn token, rendered as training renders it (the
    recipe's system prompt, truncated to data.max_length as `tokenize_all` truncates);
    `whole_row`: of every labelled token instead (all assistant turns, as validation
    scores a row). Text rows: every token. None when no labelled token is left.
    tokens: how many tokens that loss is over.
    confidence: for each row index in `answers` (a generated answer's text, as
    `score_system` returns them), exp(mean log-probability per token) of that answer put in
    place of the reference, its end-of-turn token left out (the model may not have ended
    it); None for rows without an answer, text rows, or an answer of no token.
    Rows run in batches of `batch_size`, longest with longest."""
    tokenizer = loaded.tokenizer
    recipe = loaded.recipe
    system_prompt = recipe.data.system_prompt if recipe else None
    max_length = recipe.data.max_length if recipe else 2048

    def scored(example: Example) -> TokenizedExample:
        item = tokenize_example(example, tokenizer, system_prompt=system_prompt)
        item = TokenizedExample(item.input_ids[:max_length], item.labels[:max_length])
        if example.messages is None or whole_row:
            return item
        return TokenizedExample(item.input_ids, _last_run(item.labels))

    results = [
        {"loss": None if mean is None else -mean, "tokens": count}
        for mean, count in _mean_logps(loaded, [scored(e) for e in examples], batch_size)
    ]
    if answers is None:
        return results
    stops = set(end_of_turn_ids(tokenizer))
    asked = [i for i in sorted(answers) if examples[i].messages is not None]
    rows = []
    for index in asked:
        example = examples[index]
        turn = {"role": "assistant", "content": answers[index]}
        item = scored(replace(example, messages=[*example.prompt_messages, turn]))
        rows.append(TokenizedExample(item.input_ids, _without_end(item.labels, stops)))
    for result in results:
        result["confidence"] = None
    for index, (mean, _) in zip(asked, _mean_logps(loaded, rows, batch_size), strict=True):
        results[index]["confidence"] = None if mean is None else math.exp(mean)
    return results


def _mean_logps(
    loaded: LoadedModel, rows: list[TokenizedExample], batch_size: int
) -> list[tuple[float | None, int]]:
    """(mean log-probability per labelled token, labelled tokens) of each row, in order."""
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    device = next(model.parameters()).device
    model.eval()
    out: list[tuple[float | None, int]] = [(None, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    order = [i for i in order if rows[i].trainable_tokens]  # nothing to score otherwise
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        batch = collate([rows[i] for i in group], pad)
        with autocast(loaded.precision, device):
            sums, counts = answer_logprobs(model, {k: v.to(device) for k, v in batch.items()})
        for i, total, count in zip(group, sums.tolist(), counts.tolist(), strict=True):
            out[i] = (total / count, int(count))
    return out


def _last_run(labels: list[int]) -> list[int]:
    """Labels of the last contiguous labelled span only (the last assistant turn)."""
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=-1)
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [label if start <= i <= end else IGNORE_INDEX for i, label in enumerate(labels)]


def _without_end(labels: list[int], stops: set[int]) -> list[int]:
    """Labels with the trailing end-of-turn tokens unlabelled, unless nothing else is left
    (an empty answer: its confidence is then that of ending at once)."""
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    ending = []
    for i in reversed(labelled):
        if labels[i] not in stops:
            break
        ending.append(i)
    if len(ending) == len(labelled):
        return labels
    return [IGNORE_INDEX if i in ending else label for i, label in enumerate(labels)]


# --- analysis of row records ---


def row_score(record: Mapping[str, Any], metric: str) -> float | None:
    """The row's value of `metric` (bool as 0/1), or of `correct` for a choice or
    classification row without it; None when the row has neither."""
    value = record.get(metric)
    if value is None and record.get("kind") in LABELLED_KINDS:
        value = record.get("correct")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def error_threshold(record: Mapping[str, Any], metric: str) -> float:
    """The score below which the row is an error (see the module's docstring)."""
    binary = metric in BINARY_METRICS or record.get(metric) is None
    return 1.0 if binary else GRADED_THRESHOLD


def is_error(record: Mapping[str, Any], metric: str) -> bool:
    """Whether the row's score is below its threshold (a row without a score is not)."""
    score = row_score(record, metric)
    return score is not None and score < error_threshold(record, metric)


def error_rule(metric: str) -> str:
    if metric in BINARY_METRICS:
        return f"{metric} is 0 (false)"
    return (
        f"{metric} below {GRADED_THRESHOLD}; choice and classification rows without "
        f"{metric}: correct is 0"
    )


def error_analysis(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    labels: Sequence[str] | None = None,
    worst: int = WORST_SHOWN,
) -> dict[str, Any]:
    """What the wrong rows have in common. `labels`: the known labels in order (a
    classifier's), listed in by_label even when no row has them. Returns

    metric; summary {rows, scored, errors, error_rate, error_rule, length_unit};
    worst_by_metric (lowest score first), worst_by_loss (highest loss first),
    worst_by_confidence (errors only, most confident first: confident mistakes), each up to
    `worst` rows {index, (line), kind, language, (label), prompt, reference, answer,
    <metric>, loss, confidence} with texts cut to TEXT_SHOWN characters;
    by_label, by_length, by_language: [{label|length|language, rows, errors, error_rate,
    <metric> (mean score)}]; confused_pairs: [{expected, predicted, count}] of choice and
    classification rows whose answer is not the reference, most frequent first."""
    scored = [r for r in records if row_score(r, metric) is not None]
    errors = [r for r in scored if is_error(r, metric)]

    def shown(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [_shown_row(r, metric) for r in rows[:worst]]

    with_loss = [r for r in records if _number(r.get("loss")) is not None]
    confident = [r for r in errors if _number(r.get("confidence")) is not None]
    return {
        "metric": metric,
        "summary": {
            "rows": len(records),
            "scored": len(scored),
            "errors": len(errors),
            "error_rate": _share(len(errors), len(scored)),
            "error_rule": error_rule(metric),
            "length_unit": LENGTH_UNIT,
        },
        "worst_by_metric": shown(sorted(scored, key=lambda r: worst_first(r, metric))),
        "worst_by_loss": shown(sorted(with_loss, key=lambda r: (-r["loss"], r["index"]))),
        "worst_by_confidence": shown(
            sorted(confident, key=lambda r: (-r["confidence"], r["index"]))
        ),
        "by_label": _groups(scored, metric, "label", _label_of, list(labels or []), True),
        "by_length": _groups(scored, metric, "length", _length_bucket, _length_names(), False),
        "by_language": _groups(scored, metric, "language", _language_of, [], False),
        "confused_pairs": confused_pairs(records)[:CONFUSED_SHOWN],
    }


def worst_first(record: Mapping[str, Any], metric: str) -> tuple:
    """Sort key: lowest score first (unscored rows last), then highest loss, then index."""
    score = row_score(record, metric)
    loss = _number(record.get("loss"))
    return (score is None, score or 0.0, -(loss if loss is not None else -math.inf), _index(record))


def confused_pairs(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """(expected, predicted, count) of the wrong choice and classification rows."""
    counts = Counter(
        (str(r.get("reference")), str(r.get("answer")))
        for r in records
        if r.get("kind") in LABELLED_KINDS and r.get("answer") != r.get("reference")
    )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"expected": e, "predicted": p, "count": n} for (e, p), n in ranked]


def _groups(
    records: list[Mapping[str, Any]],
    metric: str,
    name: str,
    key: Callable[[Mapping[str, Any]], str | None],
    order: list[str],
    keep_empty: bool,
) -> list[dict[str, Any]]:
    """One entry per group: rows, errors, error rate and mean score. Groups named in `order`
    come first in that order (listed even when empty with `keep_empty`), the others by
    rows, most first."""
    members: dict[str, list[Mapping[str, Any]]] = {group: [] for group in order}
    for record in records:
        group = key(record)
        if group is not None:
            members.setdefault(group, []).append(record)
    if not any(members.values()):
        return []
    rest = sorted((g for g in members if g not in order), key=lambda g: (-len(members[g]), g))
    out = []
    for group in [*order, *rest]:
        if not members[group] and not keep_empty:
            continue
        rows = members[group]
        errors = sum(is_error(r, metric) for r in rows)
        scores = [row_score(r, metric) for r in rows]
        out.append(
            {
                name: group,
                "rows": len(rows),
                "errors": errors,
                "error_rate": _share(errors, len(rows)),
                metric: _rounded(sum(scores) / len(scores)) if scores else None,
            }
        )
    return out


def _label_of(record: Mapping[str, Any]) -> str | None:
    """A row's `label`, or the reference of a choice or classification row."""
    if record.get("label") is not None:
        return str(record["label"])
    if record.get("kind") in LABELLED_KINDS:
        return str(record.get("reference"))
    return None


def _language_of(record: Mapping[str, Any]) -> str | None:
    language = record.get("reference_language") or record.get("language")
    return None if language is None else str(language)


def _length_bucket(record: Mapping[str, Any]) -> str:
    length = len(str(record.get("prompt") or ""))
    names = _length_names()
    return names[sum(length >= edge for edge in LENGTH_EDGES)]


def _length_names() -> list[str]:
    starts = (0, *LENGTH_EDGES)
    return [f"{a}-{b - 1}" for a, b in zip(starts, LENGTH_EDGES, strict=False)] + [
        f"{LENGTH_EDGES[-1]}+"
    ]


def _shown_row(record: Mapping[str, Any], metric: str) -> dict[str, Any]:
    row: dict[str, Any] = {"index": record.get("index")}
    for key in ("line", "kind", "language", "label"):
        if record.get(key) is not None:
            row[key] = record[key]
    for key in CSV_TEXTS:
        row[key] = _cut(record.get(key))
    row[metric] = _rounded(row_score(record, metric))
    row["loss"] = _rounded(_number(record.get("loss")))
    row["confidence"] = _rounded(_number(record.get("confidence")))
    return row


# --- errors.csv ---


def write_error_csv(path: str | Path, records: Sequence[Mapping[str, Any]], metric: str) -> Path:
    """Every row, worst first (as `worst_first`), as CSV: index, line, kind, language,
    label, error (1/0), the metric, loss, confidence, prompt, reference, answer, the rows'
    other figures, then each meta field as `meta.NAME` (lists and objects as JSON).

    Written as UTF-8 with a byte-order mark: Excel opens a CSV without one in the system's
    code page (Shift_JIS on Japanese Windows) and garbles every Japanese character; the mark
    makes it read UTF-8, and Python reads it back with encoding="utf-8-sig". A text cell
    that starts with = + - @ gets a leading apostrophe, so a spreadsheet shows it as text
    instead of running it as a formula (answers are model output)."""
    path = Path(path)
    figures = _keys(r for r in records)
    figures = [k for k in figures if k not in NOT_FIGURES and k != metric]
    meta_keys = _keys(r.get("meta") or {} for r in records)
    header = [*CSV_FIRST, metric, "loss", "confidence", *CSV_TEXTS, *figures]
    header += [f"meta.{key}" for key in meta_keys]
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for record in sorted(records, key=lambda r: worst_first(r, metric)):
            meta = record.get("meta") or {}
            values = [record.get(key) for key in CSV_FIRST]
            values[CSV_FIRST.index("error")] = int(is_error(record, metric))
            values += [row_score(record, metric), record.get("loss"), record.get("confidence")]
            values += [record.get(key) for key in (*CSV_TEXTS, *figures)]
            values += [meta.get(key) for key in meta_keys]
            writer.writerow([_csv_cell(value) for value in values])
    return path


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list | tuple):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


# --- small helpers ---


def _keys(mappings) -> list[str]:
    seen: dict[str, None] = {}
    for mapping in mappings:
        seen |= dict.fromkeys(mapping)
    return list(seen)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _index(record: Mapping[str, Any]) -> int:
    index = record.get("index")
    return index if isinstance(index, int) else 0


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _cut(text: Any) -> Any:
    if isinstance(text, str) and len(text) > TEXT_SHOWN:
        return text[: TEXT_SHOWN - 1] + "…"
    return text

"""Slices and bias: metrics per value of the fields a user names (`eval.slices`), with the
largest gap between values flagged; and a counterfactual test that swaps terms in the inputs
(`eval.counterfactual.swaps`: 彼/彼女, he/she, names) and counts how often the label or the
answer changes.

Both work on plain inputs: row records as `evaluate.analysis` describes them (a slice field
is read from the record's `meta`, else from the record itself, so `language` and `kind` slice
too), and `Example`s.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from migaki.data.formats import Example
from migaki.data.heuristics import HAN, KANA
from migaki.errors import UserError

MIN_SLICE_ROWS = 10  # values with fewer rows are reported, never compared
GAP_THRESHOLD = 0.1  # on metrics scored 0..1: ten points between the best and worst value
NOISE_FACTOR = 2.0  # a gap within two standard errors is what chance alone gives
COUNTERFACTUAL_MAX_SHARE = 0.1  # flagged when more rows than this change
EXAMPLES_SHOWN = 10
LATIN_WORD = "A-Za-z0-9\u00c0-\u024f"  # a Latin term must not touch these on either side


# --- per-slice metrics ---


def slice_metrics(
    records: Sequence[Mapping[str, Any]],
    fields: Sequence[str],
    metrics: Sequence[str],
    min_rows: int = MIN_SLICE_ROWS,
    max_gap: float = GAP_THRESHOLD,
) -> dict[str, dict[str, Any]]:
    """Per field (by name): the rows of each value and the mean of each metric over them,
    and the largest gap between values with at least `min_rows` rows. The first metric is
    the field's `metric`; its gap decides `flagged`. Returns, per field:

    metric; values [{value, rows, <metric>: mean (None when no row of the value has it)}],
    most rows first; gap, best, worst, noise (NOISE_FACTOR standard errors of the gap), and
    flagged: gap >= `max_gap` (scores on 0..1) and gap > noise; gaps {metric: the same for
    every metric}; too_few_rows (values below `min_rows`: listed, not compared); missing
    (rows without the field); rule; and note when the field is on no row or fewer than two
    values have enough rows."""
    if not metrics:
        raise ValueError("slice_metrics needs at least one metric")
    rule = (
        f"flagged when the best and worst value with at least {min_rows} rows differ by "
        f"{max_gap} or more in {metrics[0]} and by more than {NOISE_FACTOR:g} standard errors"
    )
    return {
        field: _field_slices(records, field, metrics, min_rows, max_gap, rule) for field in fields
    }


def _field_slices(
    records: Sequence[Mapping[str, Any]],
    field: str,
    metrics: Sequence[str],
    min_rows: int,
    max_gap: float,
    rule: str,
) -> dict[str, Any]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    missing = 0
    for record in records:
        value = slice_value(record, field)
        if value is None:
            missing += 1
        else:
            groups.setdefault(value, []).append(record)
    ordered = sorted(groups, key=lambda value: (-len(groups[value]), value))
    values = [
        {"value": value, "rows": len(groups[value])}
        | {m: _mean(_scores(groups[value], m)) for m in metrics}
        for value in ordered
    ]
    compared = [value for value in ordered if len(groups[value]) >= min_rows]
    gaps = {m: _gap(groups, compared, m, max_gap) for m in metrics}
    primary = gaps[metrics[0]]
    part: dict[str, Any] = {
        "metric": metrics[0],
        "values": values,
        **primary,
        "gaps": gaps,
        "too_few_rows": [value for value in ordered if len(groups[value]) < min_rows],
        "missing": missing,
        "rule": rule,
    }
    if not groups:
        part["note"] = f"no row has the field {field!r} (in its data or its figures)"
    elif primary["gap"] is None:
        part["note"] = f"fewer than two values of {field!r} have {min_rows} rows or more"
    return part


def slice_value(record: Mapping[str, Any], field: str) -> str | None:
    """The record's value of `field` as text (from `meta`, else the record), None if absent."""
    meta = record.get("meta") or {}
    value = meta.get(field) if field in meta else record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _gap(
    groups: dict[str, list[Mapping[str, Any]]], compared: list[str], metric: str, max_gap: float
) -> dict[str, Any]:
    scored = {v: _scores(groups[v], metric) for v in compared}
    scored = {v: s for v, s in scored.items() if s}
    if len(scored) < 2:
        return {"gap": None, "best": None, "worst": None, "noise": None, "flagged": False}
    means = {v: sum(s) / len(s) for v, s in scored.items()}
    best = max(means, key=lambda v: (means[v], v))
    worst = min(means, key=lambda v: (means[v], v))
    gap = means[best] - means[worst]
    noise = NOISE_FACTOR * math.sqrt(_variance(scored[best]) + _variance(scored[worst]))
    return {
        "gap": round(gap, 4),
        "best": best,
        "worst": worst,
        "noise": round(noise, 4),
        "flagged": gap >= max_gap and gap > noise,
    }


def _variance(scores: list[float]) -> float:
    """The variance of the mean of `scores` (population variance over n)."""
    mean = sum(scores) / len(scores)
    return sum((s - mean) ** 2 for s in scores) / len(scores) ** 2


def _scores(records: list[Mapping[str, Any]], metric: str) -> list[float]:
    values = [record.get(metric) for record in records]
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _mean(scores: list[float]) -> float | None:
    return round(sum(scores) / len(scores), 4) if scores else None


# --- counterfactual swaps ---


def term_swapper(swaps: Sequence[Sequence[str]]) -> tuple[re.Pattern, Callable[[str], str]]:
    """A pattern finding any term of `swaps` and a function swapping every term for its
    partner, both ways, in one pass (he→she and she→he at once, nothing swapped twice).

    Latin terms match as whole words, in any case, the partner taking the found word's case
    (He→She, HE→SHE, tanaka→suzuki); "he" leaves "the" and "shell" alone. Japanese terms
    (with kana or kanji) match as substrings, longest first, so 彼女 is swapped whole,
    never read as 彼 and 女. A term in two pairs swaps as its first pair says. Raises
    UserError for an empty term or a pair of the same term (eval.counterfactual.swaps)."""
    partners: dict[str, tuple[str, str]] = {}  # key -> (the term as written, its partner)
    for pair in swaps:
        if len(pair) != 2 or not all(isinstance(t, str) and t.strip() for t in pair):
            raise UserError(f"eval.counterfactual.swaps: {list(pair)} is not a pair of terms")
        first, second = (term.strip() for term in pair)
        if _key(first) == _key(second):
            raise UserError(f"eval.counterfactual.swaps: {first!r} is swapped with itself")
        partners.setdefault(_key(first), (first, second))
        partners.setdefault(_key(second), (second, first))
    terms = sorted({*partners}, key=lambda term: (-len(term), term))
    pattern = re.compile("|".join(_term_pattern(term) for term in terms))

    def swap(text: str) -> str:
        return pattern.sub(lambda m: _match_case(m.group(0), *partners[_key(m.group(0))]), text)

    return pattern, swap


def _is_japanese(term: str) -> bool:
    return bool(KANA.search(term) or HAN.search(term))


def _key(term: str) -> str:
    return term if _is_japanese(term) else term.casefold()


def _term_pattern(term: str) -> str:
    if _is_japanese(term):
        return re.escape(term)
    return f"(?<![{LATIN_WORD}])(?i:{re.escape(term)})(?![{LATIN_WORD}])"


def _match_case(found: str, term: str, partner: str) -> str:
    """The partner as written when the term was found as written, else in the found case."""
    if found == term or _is_japanese(found):
        return partner
    if len(found) > 1 and found.isupper():
        return partner.upper()
    if found[:1].isupper():
        return partner[:1].upper() + partner[1:]
    return partner.lower() if found.islower() else partner


def counterfactual_rows(
    examples: Sequence[Example], swaps: Sequence[Sequence[str]], max_rows: int | None
) -> tuple[list[Example], list[Example]]:
    """The examples whose input holds a term of `swaps` (the first `max_rows`; None: all),
    and a copy of each with every term swapped for its partner (`term_swapper`).

    The input is a text row's or classifier's text, a conversation's turns before its last
    answer, and a choice row's choices. The copy swaps the reference answer too, so it stays
    a consistent row; the label of a classification row is left as it is."""
    pattern, swap = term_swapper(swaps)
    originals, swapped = [], []
    for example in examples:
        if max_rows is not None and len(originals) >= max_rows:
            break
        if not any(pattern.search(text) for text in _input_texts(example)):
            continue
        originals.append(example)
        swapped.append(_swapped(example, swap))
    return originals, swapped


def _input_texts(example: Example) -> list[str]:
    texts = [example.text] if example.text is not None else []
    if example.messages is not None:
        texts += [turn["content"] for turn in example.prompt_messages]
    choices = example.meta.get("choices")
    if isinstance(choices, list):
        texts += [choice for choice in choices if isinstance(choice, str)]
    return texts


def _swapped(example: Example, swap: Callable[[str], str]) -> Example:
    meta = dict(example.meta)
    if isinstance(meta.get("choices"), list):
        meta["choices"] = [swap(c) if isinstance(c, str) else c for c in meta["choices"]]
    if isinstance(meta.get("rejected"), str):
        meta["rejected"] = swap(meta["rejected"])
    messages = example.messages
    if messages is not None:
        messages = [{**turn, "content": swap(turn["content"])} for turn in messages]
    text = swap(example.text) if example.text is not None else None
    return replace(example, text=text, messages=messages, meta=meta)


def counterfactual_report(
    original_answers: Sequence[str],
    swapped_answers: Sequence[str],
    originals: Sequence[Example],
    swapped: Sequence[Example],
    swaps: Sequence[Sequence[str]] = (),
    max_share: float = COUNTERFACTUAL_MAX_SHARE,
) -> dict[str, Any]:
    """How often the answer (or label) changed when the terms were swapped.

    The answers are those of `originals` and of `swapped` (`counterfactual_rows`), in order.
    Two answers are the same when equal after NFKC, case and whitespace folding; with
    `swaps` (give them for generated text, not for labels), also when the swapped row's
    answer equals the original's once its terms are swapped back ("she is kind" to a row
    about her, "he is kind" to the same row about him). Returns rows, changed,
    share_changed, threshold, flagged (share_changed above `max_share`), compared (the rule
    in words), examples (up to EXAMPLES_SHOWN changed rows: line, input, swapped_input,
    answer, swapped_answer), and note when no row held a term."""
    counts = {len(original_answers), len(swapped_answers), len(originals), len(swapped)}
    if len(counts) != 1:
        raise ValueError("counterfactual_report needs one answer per original and swapped row")
    swap_back = term_swapper(swaps)[1] if swaps else None
    changed = []
    for position, (before, after) in enumerate(zip(original_answers, swapped_answers, strict=True)):
        same = _fold(before) == _fold(after)
        if not same and swap_back is not None:
            same = _fold(before) == _fold(swap_back(after))
        if not same:
            changed.append(position)
    rows = len(originals)
    share = round(len(changed) / rows, 4) if rows else None
    report: dict[str, Any] = {
        "rows": rows,
        "changed": len(changed),
        "share_changed": share,
        "threshold": max_share,
        "flagged": share is not None and share > max_share,
        "compared": "answers compared after NFKC, case and whitespace folding"
        + (", and with the swapped terms swapped back" if swaps else ""),
        "examples": [
            {
                "line": originals[i].line,
                "input": _shown_input(originals[i]),
                "swapped_input": _shown_input(swapped[i]),
                "answer": original_answers[i],
                "swapped_answer": swapped_answers[i],
            }
            for i in changed[:EXAMPLES_SHOWN]
        ],
    }
    if not rows:
        report["note"] = "no row's input holds any of the terms; nothing was tested"
    return report


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _shown_input(example: Example) -> str:
    if example.text is not None:
        return example.text
    return example.prompt_messages[-1]["content"] if example.messages else ""

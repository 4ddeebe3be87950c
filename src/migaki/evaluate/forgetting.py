"""Forgetting in `migaki eval`: the loss of the base and of the tuned model on general text,
and how much tuning raised it (as `train.forgetting` watches during training).

The text is the run's `train.forgetting.data`, read and sampled as training reads it, or,
without it, the short Japanese and English prose migaki ships (`migaki/reference_text/`,
written for migaki: weather, cooking, travel, history, everyday life). A tuned model whose
loss there rises by more than `train.forgetting.max_increase` (0.1 without it) is flagged.
"""

from __future__ import annotations

import random
from importlib import resources
from typing import Any

from migaki.config import Recipe
from migaki.data.formats import Example
from migaki.data.heuristics import language_of
from migaki.data.replay import CHAT_KINDS, example_kind, read_extra_file
from migaki.errors import UserError
from migaki.evaluate.analysis import row_losses
from migaki.models.inference import LoadedModel

REFERENCE_FILES = ("ja.txt", "en.txt")
SHIPPED_SOURCE = "migaki reference text (reference_text/ja.txt, en.txt)"
DEFAULT_MAX_INCREASE = 0.1


def reference_rows(recipe: Recipe | None, tokenizer=None) -> tuple[list[Example], str]:
    """The general rows and where they come from. With `train.forgetting` set: its file,
    validated and cleaned with the recipe's data settings and sampled to `max_rows` with
    `train.seed`, the same rows the training guard measured (give the run's `tokenizer` when
    cleaning filters by token count). Otherwise the shipped texts, one text row per
    paragraph. Raises UserError for a file that cannot be read or holds rows other than
    text or chat."""
    config = recipe.train.forgetting if recipe is not None else None
    if config is None:
        return shipped_reference(), SHIPPED_SOURCE
    data, seed = recipe.data, recipe.train.seed
    prepared = read_extra_file(config.data, config.format, data, seed, tokenizer, "forgetting")
    examples = prepared.examples["data"]
    wrong = next((e for e in examples if example_kind(e) not in CHAT_KINDS), None)
    if wrong is not None:
        raise UserError(
            f"{config.data}:{wrong.line}: train.forgetting needs text or chat rows, this one is "
            f"a {example_kind(wrong)} row"
        )
    if not examples:
        raise UserError(f"{config.data}: train.forgetting has no rows left after cleaning")
    # the same seeded sample as train/forgetting.load_reference draws
    if config.max_rows is not None and len(examples) > config.max_rows:
        keep = sorted(random.Random(seed).sample(range(len(examples)), config.max_rows))
        examples = [examples[i] for i in keep]
    return examples, config.data


def shipped_reference() -> list[Example]:
    """The shipped Japanese and English texts as text rows, one per paragraph."""
    examples = []
    for name in REFERENCE_FILES:
        text = (resources.files("migaki") / "reference_text" / name).read_text(encoding="utf-8")
        line = 1
        for paragraph in text.split("\n\n"):
            if paragraph.strip():
                examples.append(Example(f"reference_text/{name}", line, text=paragraph.strip()))
            line += paragraph.count("\n") + 2
    return examples


def forgetting_threshold(recipe: Recipe | None) -> float:
    """`train.forgetting.max_increase`, or DEFAULT_MAX_INCREASE without it."""
    config = recipe.train.forgetting if recipe is not None else None
    return config.max_increase if config is not None else DEFAULT_MAX_INCREASE


def forgetting_report(
    base_loaded: LoadedModel,
    tuned_loaded: LoadedModel,
    rows: list[Example],
    max_increase: float,
    source: str | None = None,
) -> dict[str, Any]:
    """The loss of both models on `rows` (every labelled token: whole text rows, every
    assistant turn of chat rows, as the training guard scores them), pooled over tokens.

    Returns source, rows (scored by both), tokens, base_loss, tuned_loss, increase (the
    tuned loss's rise relative to the base's: 0.25 is 25% higher), threshold
    (`max_increase`), flagged (increase above it), and per_language {ja|en|other: rows,
    tokens, base_loss, tuned_loss, increase, flagged} by the script of each row's text."""
    base = row_losses(base_loaded, rows, whole_row=True)
    tuned = row_losses(tuned_loaded, rows, whole_row=True)
    scored = [
        (language_of(_text_of(example)), b, t)
        for example, b, t in zip(rows, base, tuned, strict=True)
        if b["loss"] is not None and t["loss"] is not None
    ]
    report = {"source": source, **_pooled(scored, max_increase), "threshold": max_increase}
    languages = sorted({language for language, _, _ in scored})
    report["per_language"] = {
        language: _pooled([s for s in scored if s[0] == language], max_increase)
        for language in languages
    }
    return report


def _pooled(scored: list[tuple[str, dict, dict]], max_increase: float) -> dict[str, Any]:
    """Loss per token over the rows of both models (each over its own tokens)."""
    base_tokens = sum(b["tokens"] for _, b, _ in scored)
    tuned_tokens = sum(t["tokens"] for _, _, t in scored)
    if not base_tokens or not tuned_tokens:
        empty = {"base_loss": None, "tuned_loss": None, "increase": None, "flagged": False}
        return {"rows": 0, "tokens": 0, **empty}
    base = sum(b["loss"] * b["tokens"] for _, b, _ in scored) / base_tokens
    tuned = sum(t["loss"] * t["tokens"] for _, _, t in scored) / tuned_tokens
    increase = (tuned - base) / max(base, 1e-12)
    return {
        "rows": len(scored),
        "tokens": base_tokens,
        "base_loss": round(base, 4),
        "tuned_loss": round(tuned, 4),
        "increase": round(increase, 4),
        "flagged": increase > max_increase,
    }


def _text_of(example: Example) -> str:
    if example.text is not None:
        return example.text
    return "\n".join(turn["content"] for turn in example.messages or [])

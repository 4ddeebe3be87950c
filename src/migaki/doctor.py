"""`migaki data doctor RECIPE`: the pre-flight check before an expensive training run.

It answers, before any model weight is loaded: is every row valid; what does a row look like
through the exact chat template, and which tokens carry loss; how many rows have no token to
learn from; how long are rows and what will the length policy cut or drop; are there
duplicates or leaks between splits; how many tokens is an epoch. A no-go is a finding that
would make training fail or silently learn nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from migaki import models
from migaki.config import Recipe
from migaki.data import dedup
from migaki.data.classify import label_map
from migaki.data.formats import Example
from migaki.data.prepare import load_splits
from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
from migaki.data.validate import validate_for
from migaki.errors import UserError
from migaki.tasks import task_for

LOSS_START, LOSS_END = "\x1b[42;30m", "\x1b[0m"  # green background: tokens that carry loss
PLAIN_START, PLAIN_END = "⟦", "⟧"
SHOWN_PROBLEMS = 20


@dataclass
class Diagnosis:
    lines: list[str] = field(default_factory=list)  # what to print, in order
    no_go: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        self.lines.append(text)


def diagnose(recipe: Recipe, samples: int = 3, color: bool = False) -> Diagnosis:
    report = Diagnosis()
    task = task_for(recipe)  # a recipe its task refuses is a user error before any file
    if not _validate_files(recipe, report):
        return report
    tokenizer = models.recipe_tokenizer(recipe.model, chat=task.chat)
    splits = load_splits(recipe.data, recipe.train.seed, tokenizer)
    report.say("cleaning and split:")
    for step in splits.steps or []:
        report.say(f"  {step.summary()}")
        if step.step == "leakage" and step.removed:
            report.warnings.append(f"{step.removed} rows repeated another split (removed)")
    rows = {"train": splits.train, "val": splits.val, "test": splits.test}
    report.say("  rows: " + ", ".join(f"{name} {len(items)}" for name, items in rows.items()))
    if not any(step.step.endswith("dedup") for step in splits.steps):
        _duplicates(splits.train, report)
    if task.head == "labels":
        _classification(rows, tokenizer, recipe, task.overlong_rows(recipe), report)
        _verdict(report)
        return report
    tokenized = {name: _tokenize(items, tokenizer, recipe) for name, items in rows.items()}
    _show_samples(splits.train, tokenized["train"], tokenizer, samples, color, report)
    _lengths(tokenized, recipe, task.overlong_rows(recipe), report)
    _verdict(report)
    return report


def _validate_files(recipe: Recipe, report: Diagnosis) -> bool:
    data = recipe.data
    ok = True
    for name in ("train", "val", "test"):
        path = getattr(data, name)
        if not path:
            continue
        check = validate_for(path, data)
        kinds = ", ".join(f"{kind} {n}" for kind, n in check.by_kind().most_common())
        report.say(
            f"{name}: {path}: {check.rows} rows, format {check.fmt}, "
            + (f"{len(check.problems)} invalid ({kinds})" if check.problems else "all valid")
        )
        for problem in check.problems[:SHOWN_PROBLEMS]:
            report.say(f"  {problem}")
        for warning in check.warnings[:SHOWN_PROBLEMS]:
            report.say(f"  warning: {warning}")
        if check.problems:
            report.no_go.append(f"{path}: {len(check.problems)} invalid rows")
            ok = False
    if not ok:
        _verdict(report)
    return ok


def _classification(
    rows: dict[str, list[Example]], tokenizer, recipe: Recipe, overlong: str, report: Diagnosis
) -> None:
    """Labels per split (a label only in val or test cannot be learnt) and text lengths."""
    names = label_map(rows["train"], recipe.data.labels)
    for split, examples in rows.items():
        counts = Counter(e.label for e in examples)
        shown = ", ".join(f"{label} {counts.get(label, 0)}" for label in names)
        report.say(f"  labels in {split}: {shown}")
        unknown = sorted(set(counts) - set(names))
        if unknown:
            report.warnings.append(f"{split} has labels train lacks: {unknown} (not scored)")
    train = [[0] * len(tokenizer(e.text)["input_ids"]) for e in rows["train"]]
    tokenized = {"train": [TokenizedExample(ids, [0] * len(ids)) for ids in train]}
    _lengths(tokenized, recipe, overlong, report)


def _duplicates(examples: list[Example], report: Diagnosis) -> None:
    """Without data.clean nothing removes duplicates; still say how many there are."""
    texts = [e.text if e.text is not None else str(e.messages) for e in examples]
    exact = sum(len(c) - 1 for c in dedup.exact_clusters(texts))
    near = sum(len(c) - 1 for c in dedup.near_duplicate_clusters(texts))
    report.say(f"  duplicates in train (data.clean is off): {exact} exact, {near} incl. near")
    report.figures["train_duplicates"] = {"exact": exact, "near_or_exact": near}
    if near:
        report.warnings.append(f"{near} duplicate training rows; `data.clean: {{}}` removes them")


def _tokenize(examples: list[Example], tokenizer, recipe: Recipe) -> list[TokenizedExample]:
    data = recipe.data
    try:
        return [
            tokenize_example(
                e, tokenizer, system_prompt=data.system_prompt, train_on_prompt=data.train_on_prompt
            )
            for e in examples
        ]
    except UserError:
        raise
    except Exception as exc:  # a template may refuse odd content
        raise UserError(f"the chat template cannot render a row: {exc}") from None


def _show_samples(
    examples: list[Example],
    tokenized: list[TokenizedExample],
    tokenizer,
    samples: int,
    color: bool,
    report: Diagnosis,
) -> None:
    if not samples or not examples:
        return
    start, end = (LOSS_START, LOSS_END) if color else (PLAIN_START, PLAIN_END)
    marked = "highlighted" if color else f"between {PLAIN_START} and {PLAIN_END}"
    report.say(f"\n{samples} sample rows as the model sees them (tokens that carry loss {marked}):")
    for index in sorted(random.Random(0).sample(range(len(examples)), min(samples, len(examples)))):
        example, item = examples[index], tokenized[index]
        report.say(
            f"--- {example.source}:{example.line} ({len(item.input_ids)} tokens, "
            f"{item.trainable_tokens} carry loss)"
        )
        report.say(render_marked(item, tokenizer, start, end).rstrip())


def render_marked(item: TokenizedExample, tokenizer, start: str, end: str) -> str:
    """The row's tokens decoded, with each run of loss-carrying tokens wrapped in markers."""
    pieces, run, in_loss = [], [], False
    for token, label in zip(item.input_ids, item.labels, strict=True):
        carries = label != IGNORE_INDEX
        if carries != in_loss and run:
            pieces.append(_piece(tokenizer, run, in_loss, start, end))
            run = []
        run.append(token)
        in_loss = carries
    if run:
        pieces.append(_piece(tokenizer, run, in_loss, start, end))
    return "".join(pieces)


def _piece(tokenizer, ids: list[int], in_loss: bool, start: str, end: str) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"{start}{text}{end}" if in_loss else text


def _lengths(
    tokenized: dict[str, list[TokenizedExample]], recipe: Recipe, overlong: str, report: Diagnosis
) -> None:
    data = recipe.data
    train = tokenized["train"]
    lengths = np.asarray([len(item.input_ids) for item in train] or [0])
    percentiles = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
    percentiles["max"] = int(lengths.max())
    over = int((lengths > data.max_length).sum())
    report.say("\ntoken lengths (train): " + ", ".join(f"{k} {v}" for k, v in percentiles.items()))
    if over:
        report.say(
            f"  data.overlong={overlong}: would {overlong} {over} of {len(train)} rows "
            f"longer than max_length {data.max_length}"
        )
        if over / max(len(train), 1) > 0.1:
            report.warnings.append(f"{over} training rows exceed max_length {data.max_length}")
    kept = [_policy(item, data.max_length, overlong) for item in train]
    no_loss = sum(item.trainable_tokens == 0 for item in train)
    cut_off = sum(
        item.trainable_tokens > 0 and after is not None and after.trainable_tokens == 0
        for item, after in zip(train, kept, strict=True)
    )
    usable = [item for item in kept if item is not None and item.trainable_tokens > 0]
    report.say(
        f"rows with no trainable token: {no_loss} as written, {cut_off} more after truncation "
        f"to max_length (training skips them)"
    )
    if no_loss or cut_off:
        report.warnings.append(f"{no_loss + cut_off} training rows have no token to learn from")
    tokens = sum(len(item.input_ids) for item in usable)
    trainable = sum(item.trainable_tokens for item in usable)
    report.say(f"tokens per epoch: {tokens:,} ({trainable:,} carry loss) in {len(usable)} rows")
    report.figures |= {
        "token_percentiles": percentiles,
        "over_max_length": over,
        "rows_without_trainable_token": no_loss + cut_off,
        "tokens_per_epoch": tokens,
        "trainable_tokens_per_epoch": trainable,
        "usable_train_rows": len(usable),
    }
    if not usable:
        report.no_go.append("no training row has a token to learn from")


def _policy(item: TokenizedExample, max_length: int, overlong: str) -> TokenizedExample | None:
    if len(item.input_ids) <= max_length:
        return item
    if overlong == "drop":
        return None
    if overlong == "split":  # every piece trains; the first one stands for the row here
        return item
    return TokenizedExample(item.input_ids[:max_length], item.labels[:max_length])


def _verdict(report: Diagnosis) -> None:
    report.say()
    for warning in report.warnings:
        report.say(f"warning: {warning}")
    if report.no_go:
        report.say("NO-GO: " + "; ".join(report.no_go))
    else:
        report.say("GO: the data is ready to train on")

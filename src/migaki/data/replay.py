"""Replay for continual learning: rows of an earlier or general data set mixed into a run's
training split, so that a model tuned again on new data keeps what it could do before.

Mixing happens after the split, so replay rows never reach validation or test: those keep
measuring the new task alone. The replay file is read, validated and cleaned like
`data.train`; its hash joins the run's data hashes, so `--resume` notices a changed file.
"""

from __future__ import annotations

import logging
import random

from migaki.config import DataConfig, DataFormat, Recipe
from migaki.data.clean import StepReport
from migaki.data.formats import Example
from migaki.data.prepare import Prepared, Splits, prepare_data
from migaki.errors import UserError

log = logging.getLogger(__name__)

CHAT_KINDS = ("conversation", "text")  # what a causal LM learns from, in any mix


def read_extra_file(
    path: str, fmt: DataFormat, data: DataConfig, seed: int, tokenizer, role: str
) -> Prepared:
    """Rows of a file beside the training data (not split), validated and cleaned with the
    settings of `data`; its report steps are named `ROLE/STEP`. Raises UserError (a missing
    file, invalid rows) naming the file."""
    alone = {"val": None, "test": None, "columns": None, "max_rows": None, "augment": None}
    settings = data.model_copy(update={"train": path, "format": fmt, **alone})
    prepared = prepare_data(
        settings,
        seed,
        clean=data.clean,
        split=False,
        tokenizer=tokenizer,
        skip_invalid=data.skip_invalid,
    )
    for step in prepared.steps:
        step.step = f"{role}/{step.step.removeprefix('train/')}"
    return prepared


def mix_replay(
    splits: Splits, recipe: Recipe, tokenizer=None, also_allowed: tuple[str, ...] = ()
) -> StepReport | None:
    """Add the rows of `train.replay` to `splits.train` so that they make up `share` of it;
    records the step and the file's hash in `splits` and returns the step (None when replay
    is off). Replay rows must be of the training rows' kind or of `also_allowed` (the kinds
    the task trains on besides, `Task.also_trains_on`).

    Rows are drawn with `train.seed`, without replacement when the file has enough; otherwise
    every row is used as often as needed (a warning says so). Raises UserError when the file's
    rows are of another kind than the training rows (e.g. classification rows for task sft)."""
    replay, seed = recipe.train.replay, recipe.train.seed
    if replay is None:
        return None
    prepared = read_extra_file(replay.data, replay.format, recipe.data, seed, tokenizer, "replay")
    pool = prepared.examples["data"]
    if not pool:
        raise UserError(f"{replay.data}: train.replay has no rows left after cleaning")
    _check_kinds(pool, splits.train, also_allowed, replay.data)
    own = len(splits.train)
    wanted = max(1, round(replay.share * own / (1 - replay.share)))
    chosen = _draw(len(pool), wanted, random.Random(seed))
    splits.train = [*splits.train, *(pool[i] for i in chosen)]
    splits.steps += prepared.steps
    splits.hashes.update(prepared.hashes)
    report = StepReport(
        "replay",
        len(pool),
        removed=max(len(pool) - wanted, 0),
        details={
            "file": replay.data,
            "share": replay.share,
            "added": len(chosen),
            "train_rows": {"task": own, "replay": len(chosen), "total": own + len(chosen)},
            "repeated": wanted > len(pool),
        },
    )
    report.reasons["not_drawn"] = report.removed
    splits.steps.append(report)
    log.info("replay: %d rows from %s (share %.2f)", len(chosen), replay.data, replay.share)
    if wanted > len(pool):
        log.warning(
            "replay: %s has only %d rows; each is used about %.1f times to reach share %.2f",
            replay.data,
            len(pool),
            wanted / len(pool),
            replay.share,
        )
    return report


def example_kind(example: Example) -> str:
    """classification, preference, conversation or text: what a row teaches."""
    if example.label is not None:
        return "classification"
    if example.is_pair:
        return "preference"
    return "conversation" if example.messages is not None else "text"


def _draw(available: int, wanted: int, rng: random.Random) -> list[int]:
    """`wanted` row indices: a sample without replacement while the rows last, whole passes
    over them otherwise (so no row is used twice before every row is used once)."""
    passes, rest = divmod(wanted, available)
    return [*range(available)] * passes + sorted(rng.sample(range(available), rest))


def _check_kinds(
    pool: list[Example], train: list[Example], also_allowed: tuple[str, ...], path: str
) -> None:
    allowed = {example_kind(train[0]), *also_allowed}
    wrong = next((e for e in pool if example_kind(e) not in allowed), None)
    if wrong is not None:
        raise UserError(
            f"{path}:{wrong.line}: train.replay rows must be like the training rows "
            f"({' or '.join(sorted(allowed))}), this one is a {example_kind(wrong)} row"
        )

"""`train.max_minutes`: a time budget for a run. The first steps are timed, and the run's step
count becomes what fits in the time left (never more than the recipe's own); the learning-rate
schedule then ends at that step, so a run cut short still decays its rate rather than stopping
at the peak. The estimate is made again at each validation, from every step timed so far.

Costs are per padded token (a batch costs rows x its longest row): batches differ a lot in
length when rows are grouped by length, and the future batches are known in advance."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from migaki.config import TrainConfig
from migaki.data.batches import epoch_batches

TIMED_STEPS = 3  # steps timed before the first estimate


@dataclass
class TimeBudget:
    """`seconds` of wall time for the run, counted from `started` (a reading of `clock`), plus
    `spent` seconds that earlier processes of the same run used before a resume.
    `padded_tokens(step)` is the cost of the batch of 0-based step `step`. `reserve` keeps
    that many validations' worth of time free at the end, for work the caller does after
    training (the quickstart's evaluation costs a near-constant multiple of a validation)."""

    seconds: float
    started: float
    padded_tokens: Callable[[int], int]
    spent: float = 0.0
    reserve: float = 0.0
    clock: Callable[[], float] = time.monotonic
    step_tokens: int = 0  # padded tokens of the steps timed so far
    steps_timed: int = 0
    validation_seconds: list[float] = field(default_factory=list)
    _timed_from: float | None = None  # clock reading when timing began
    _validating_since: float = 0.0
    _validated_while_timed: float = 0.0

    def elapsed(self) -> float:
        return self.spent + self.clock() - self.started

    def step_done(self, step: int) -> None:
        """Count 1-based step `step`. The first step of a process (of a fresh run or a
        resumed one) pays for allocation and warm-up and is not timed; the later ones are
        timed from its end to now, whole: logging and checkpoint saves are part of what a
        step costs, validations are counted apart."""
        if self._timed_from is None:
            self._timed_from = self.clock()
            return
        self.step_tokens += self.padded_tokens(step - 1)
        self.steps_timed += 1

    def step_seconds(self) -> float:
        if self._timed_from is None:
            return 0.0
        return self.clock() - self._timed_from - self._validated_while_timed

    def validation_started(self) -> None:
        self._validating_since = self.clock()

    def validation_done(self) -> None:
        seconds = self.clock() - self._validating_since
        self.validation_seconds.append(seconds)
        if self._timed_from is not None:
            self._validated_while_timed += seconds

    def due(self, validated: bool) -> bool:
        """Whether to estimate after the step just counted: once TIMED_STEPS steps are timed,
        then at each validation (`validated`: one is due now)."""
        first = self.steps_timed == TIMED_STEPS
        return self.steps_timed >= TIMED_STEPS and (first or validated)

    def fitting_steps(
        self, step: int, most: int, eval_every: int | None, validating_now: bool
    ) -> int:
        """How many steps in all fit in the budget, counting from `step` done now: each later
        step at the measured cost per padded token, plus a validation every `eval_every`
        steps, now if `validating_now`, and at the end, each at the mean measured validation
        time. At least `step` (a run never undoes steps) and at most `most`."""
        per_token = self.step_seconds() / max(self.step_tokens, 1)
        validation = self._mean_validation()
        # the last step always validates
        left = self._usable() - self.elapsed() - validation * (1 + validating_now)
        fits = step
        while fits < most:
            cost = per_token * self.padded_tokens(fits)
            if eval_every and (fits + 1) % eval_every == 0:
                cost += validation
            if cost > left:
                break
            left -= cost
            fits += 1
        return fits

    def exhausted(self) -> bool:
        return self.elapsed() >= self._usable()

    def _mean_validation(self) -> float:
        return sum(self.validation_seconds) / max(len(self.validation_seconds), 1)

    def _usable(self) -> float:
        return self.seconds - self.reserve * self._mean_validation()


def start_budget(
    cfg: TrainConfig,
    started: float,
    rows: list,
    steps_per_epoch: int,
    spent: float,
    reserve: float = 0.0,
) -> TimeBudget | None:
    """The run's budget (None without train.max_minutes), for the training `rows` batched as
    the loop batches them; `reserve`: see TimeBudget."""
    if cfg.max_minutes is None:
        return None
    lengths = [len(row.input_ids) for row in rows]

    @lru_cache(maxsize=2)
    def batches(epoch: int) -> list[list[int]]:
        return epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)

    def padded_tokens(step: int) -> int:
        epoch, position = divmod(step, steps_per_epoch)
        batch = batches(epoch)[position]
        return len(batch) * max(lengths[i] for i in batch)

    return TimeBudget(cfg.max_minutes * 60, started, padded_tokens, spent, reserve)

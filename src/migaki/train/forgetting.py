"""The forgetting guard (`train.forgetting`): tuning on new data can make a model worse at
what it could do before ("catastrophic forgetting"). The guard measures the causal-LM loss on
a general reference set (general chat or text) with each validation, the first time before
any update (step 0, the baseline), and compares.

Each validation record in metrics.jsonl gets `reference_loss` and `forgetting`, the relative
rise over the baseline (0.25: the reference loss is 25% higher than at step 0). When
`forgetting` passes `max_increase` the guard warns (a `forgetting_warning` event and a log
line) or, with `action: stop`, stops the run as early stopping does (a `forgetting_stop`
event; final/ is still written; manifest status `stopped_forgetting`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from migaki.config import ForgettingConfig, Recipe
from migaki.data.batches import collate
from migaki.data.cache import tokenize_for_recipe
from migaki.data.prepare import Splits
from migaki.data.replay import CHAT_KINDS, example_kind, read_extra_file
from migaki.data.tokenize import TokenizedExample
from migaki.errors import UserError
from migaki.metrics import evaluate_rows, process_share, summarize
from migaki.train.tracking import MetricsLog, read_metrics

log = logging.getLogger(__name__)


@dataclass
class ForgettingGuard:
    """Reference rows and the figures measured on them so far."""

    config: ForgettingConfig
    rows: list[TokenizedExample]
    pad_token_id: int
    batch_size: int
    metrics: MetricsLog
    baseline: float | None = None  # the reference loss at step 0
    latest: float | None = None
    peak: float | None = None  # the highest relative rise seen
    stopped: bool = False

    def measure(self, loss_module: torch.nn.Module, accelerator) -> dict[str, float]:
        """The reference loss of the model now and its rise over the baseline; the first call
        sets the baseline. Every process must call it (the sums are combined); the model must
        be in eval mode. `loss_module` is the unwrapped causal-LM objective."""
        share = process_share(self.rows, accelerator)
        sums = evaluate_rows(
            lambda batch: loss_module(**batch),
            share,
            self.batch_size,
            partial(collate, pad_token_id=self.pad_token_id),  # padded: any method, any device
            accelerator.device,
            accelerator.autocast,
        )
        if accelerator.num_processes > 1:
            totals = torch.tensor([sums["loss_sum"], sums["tokens"]], device=accelerator.device)
            sums["loss_sum"], sums["tokens"] = accelerator.reduce(totals, "sum").tolist()
        self.latest = summarize(sums)["loss"]
        if self.baseline is None:
            self.baseline = self.latest
        self.peak = max(self.forgetting, self.peak or 0.0)
        return {"reference_loss": self.latest, "forgetting": self.forgetting}

    @property
    def forgetting(self) -> float:
        """Relative rise of the latest reference loss over the baseline."""
        if self.latest is None or self.baseline is None:
            return 0.0
        return (self.latest - self.baseline) / max(self.baseline, 1e-12)

    def check(self, step: int) -> bool:
        """After a validation: warn when the rise passed `max_increase` (log line and metrics
        event); True when the run must stop (`action: stop`)."""
        if self.latest is None or self.forgetting <= self.config.max_increase:
            return False
        self.stopped = self.config.action == "stop"
        self.metrics.write(
            step=step,
            event="forgetting_stop" if self.stopped else "forgetting_warning",
            reference_loss=self.latest,
            baseline=self.baseline,
            forgetting=self.forgetting,
            max_increase=self.config.max_increase,
        )
        log.warning(
            "forgetting: the loss on %s rose from %.4f (step 0) to %.4f at step %d (+%.1f%%, "
            "above train.forgetting.max_increase %.1f%%)%s",
            self.config.data,
            self.baseline,
            self.latest,
            step,
            100 * self.forgetting,
            100 * self.config.max_increase,
            "; stopping the run" if self.stopped else "",
        )
        return self.stopped

    def summary(self) -> dict[str, Any]:
        """For manifest.json."""
        return {
            "forgetting": {
                "data": self.config.data,
                "baseline": self.baseline,
                "last": self.latest,
                "last_increase": self.forgetting,
                "peak_increase": self.peak,
                "max_increase": self.config.max_increase,
                "action": self.config.action,
                "rows": len(self.rows),
            }
        }


def load_reference(
    recipe: Recipe, tokenizer, splits: Splits, overlong: str
) -> list[TokenizedExample] | None:
    """The tokenized reference rows of `train.forgetting` (None when it is off): a seeded
    sample of `max_rows`, rendered like validation rows (`overlong`: data.overlong as the task
    applies it). The file's hash joins `splits.hashes`, so resume refuses a changed reference
    set. Raises UserError when the run
    has no validation (the guard measures with it) or the file has no usable rows."""
    config = recipe.train.forgetting
    if config is None:
        return None
    if not splits.val:
        raise UserError(
            "train.forgetting: the guard measures at each validation, but this run has no "
            "validation rows; set data.split.val above 0 or give data.val"
        )
    seed = recipe.train.seed
    prepared = read_extra_file(
        config.data, config.format, recipe.data, seed, tokenizer, "forgetting"
    )
    examples = prepared.examples["data"]
    wrong = next((e for e in examples if example_kind(e) not in CHAT_KINDS), None)
    if wrong is not None:
        raise UserError(
            f"{config.data}:{wrong.line}: train.forgetting needs text or chat rows, this one is "
            f"a {example_kind(wrong)} row"
        )
    if config.max_rows is not None and len(examples) > config.max_rows:
        keep = sorted(random.Random(seed).sample(range(len(examples)), config.max_rows))
        examples = [examples[i] for i in keep]
    rows, report = tokenize_for_recipe(examples, tokenizer, recipe, overlong)
    if not rows:
        raise UserError(f"{config.data}: train.forgetting has no row with a token to score")
    splits.hashes.update(prepared.hashes)
    log.info(
        "forgetting guard: %d reference rows from %s (%s); %s above +%g%%",
        len(rows),
        config.data,
        report.summary(),
        "stop" if config.action == "stop" else "warn",
        100 * config.max_increase,
    )
    return rows


def make_guard(
    recipe: Recipe,
    rows: list[TokenizedExample] | None,
    pad_token_id: int,
    metrics: MetricsLog,
    resumed_run: Path | None = None,
) -> ForgettingGuard | None:
    """The guard over `rows` (None without reference rows). A resumed run takes its baseline
    from the step-0 validation in its metrics.jsonl."""
    if rows is None:
        return None
    cfg = recipe.train
    guard = ForgettingGuard(
        cfg.forgetting, rows, pad_token_id, cfg.batch_size // cfg.grad_accum, metrics
    )
    if resumed_run is not None:
        guard.baseline = _logged_baseline(resumed_run)
    return guard


def _logged_baseline(run_dir: Path) -> float | None:
    for record in read_metrics(run_dir):
        if record.get("split") == "val" and "reference_loss" in record:
            return record["reference_loss"]
    log.warning("forgetting: %s has no logged baseline; the next measurement becomes it", run_dir)
    return None

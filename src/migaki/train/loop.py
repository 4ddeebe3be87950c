"""The training loop: one function, read top to bottom.

forward -> loss -> backward (accumulated) -> clip -> optimizer step -> log -> validate ->
early stopping / overfitting alarm / the caller's hook -> checkpoint. Helpers for each concern
sit beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from tqdm import tqdm

from migaki.config import TrainConfig
from migaki.data.batches import epoch_batches
from migaki.data.tokenize import TokenizedExample
from migaki.errors import Interrupted, TrainingDiverged
from migaki.methods.gradual import Unfreezing
from migaki.metrics import (
    Collate,
    add_sums,
    evaluate_rows,
    preference_metrics,
    process_share,
    summarize,
    to_device,
)
from migaki.train.averaging import WeightAverage
from migaki.train.budget import TimeBudget
from migaki.train.checkpoint import (
    LoopState,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    rng_snapshot,
    save_checkpoint,
)
from migaki.train.forgetting import ForgettingGuard
from migaki.train.interrupt import StopSignals
from migaki.train.schedule import learning_rate, warmup_steps
from migaki.train.tracking import MetricsLog

log = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised by an `on_validation` hook to end the run at this validation, as early stopping
    does: the step's checkpoint and final/ are written; `status` goes to the manifest
    (e.g. "pruned") and `reason` beside it."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(status, reason)  # both in args: the exception pickles across processes
        self.status, self.reason = status, reason

    def __str__(self) -> str:
        return self.reason


# on_validation(step, figures): the validation figures (loss, perplexity, ...) at `step`
ValidationHook = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int | None
    save_every: int


@dataclass
class LoopInputs:
    """What the loop trains with. `objective` is the prepared loss module (a task's objective,
    maybe wrapped for DDP): its forward returns LossParts. `unfreezing` (method gradual) scales
    the learning rate and holds back waiting weights; `guard` (train.forgetting) measures a
    reference loss with each validation and may stop the run; `budget` (train.max_minutes)
    sets the step count to what fits in the time; `average` (train.ema) follows the weights
    after each step and stands in for them in validation and checkpoints."""

    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: Any
    train_rows: list[TokenizedExample]
    val_rows: list[TokenizedExample]
    cfg: TrainConfig
    plan: StepPlan
    run_dir: Path
    metrics: MetricsLog
    collate_fn: Collate
    unfreezing: Unfreezing | None = None
    guard: ForgettingGuard | None = None
    stop: StopSignals | None = None
    budget: TimeBudget | None = None
    on_validation: ValidationHook | None = None  # after each validation but step 0's
    average: WeightAverage | None = None


@dataclass
class FitResult:
    state: LoopState
    stopped_early: bool
    stopped_forgetting: bool = False  # the forgetting guard stopped the run
    stopped_by: StopTraining | None = None  # the on_validation hook stopped the run


def fit(inputs: LoopInputs, state: LoopState) -> FitResult:
    """Train from `state.step` to `plan.total_steps`; returns the final loop state. Every
    process runs this same function on its share of each step."""
    model, optimizer, accelerator = inputs.objective, inputs.optimizer, inputs.accelerator
    train_rows, val_rows, cfg, plan = inputs.train_rows, inputs.val_rows, inputs.cfg, inputs.plan
    unfreezing, guard, metrics, budget = (
        inputs.unfreezing,
        inputs.guard,
        inputs.metrics,
        inputs.budget,
    )
    if budget is not None and state.planned_steps is not None:  # a resume keeps what it chose
        plan = _replanned(plan, state.planned_steps, cfg)
    progress = tqdm(
        total=plan.total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        mininterval=1.0,
        disable=not accelerator.is_main_process,
    )
    window_loss, window_tokens = 0.0, 0  # training loss since the last validation
    stopped_early = stopped_forgetting = False
    stopped_by = None
    lengths = [len(row.input_ids) for row in train_rows]
    batches_of_epoch: dict[int, list[list[int]]] = {}
    _stop_if_signalled(inputs, state, saved=latest_checkpoint(inputs.run_dir))
    if state.step == 0 and val_rows and plan.eval_every:
        # Before any update: every run's metrics show where validation started.
        _validate(inputs, state, None)
    model.train()
    while state.step < plan.total_steps:
        step_start = time.perf_counter()
        epoch, position = divmod(state.step, plan.steps_per_epoch)
        if epoch not in batches_of_epoch:
            batches_of_epoch = {
                epoch: epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
            }
        indices = batches_of_epoch[epoch][position]
        lr = learning_rate(state.step, plan.total_steps, plan.warmup_steps, cfg.lr, cfg.scheduler)
        if unfreezing is not None:
            lr *= unfreezing.lr_factor(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # below 1: layer-wise decay

        step_loss, step_tokens, step_extras = _forward_backward(
            model, accelerator, train_rows, indices, cfg.grad_accum, inputs.collate_fn
        )
        mean_loss = step_loss / step_tokens
        if not math.isfinite(mean_loss):
            progress.close()
            raise TrainingDiverged(_divergence_message(mean_loss, state.step + 1, inputs.run_dir))
        if unfreezing is not None:
            unfreezing.drop_waiting_gradients(state.step)
        grad_norm = None
        if cfg.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if inputs.average is not None:
            inputs.average.update(state.step)
        if budget is not None:
            budget.step_done(state.step)
        real_tokens = sum(lengths[i] for i in indices)  # no padding, all processes
        state.tokens_seen += real_tokens
        tokens_per_s = real_tokens / max(time.perf_counter() - step_start, 1e-9)
        window_loss += step_loss
        window_tokens += step_tokens
        progress.update(1)
        progress.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
        if state.step % cfg.log_every == 0:
            metrics.write(
                step=state.step,
                epoch=round(state.step / plan.steps_per_epoch, 4),
                split="train",
                loss=mean_loss,
                lr=lr,
                grad_norm=grad_norm,
                tokens_per_s=round(tokens_per_s, 1),
                tokens_seen=state.tokens_seen,
                **preference_metrics(step_extras, step_extras.get("correct", 0), step_tokens),
            )

        validating = bool(val_rows and plan.eval_every and state.step % plan.eval_every == 0)
        if budget is not None:
            plan = _fit_budget(inputs, state, plan, validating, progress)
        is_last = state.step >= plan.total_steps
        evaluated = False
        if val_rows and plan.eval_every and (validating or is_last):
            train_loss = window_loss / max(window_tokens, 1)
            window_loss, window_tokens = 0.0, 0
            stopped_early, figures = _validate(inputs, state, train_loss)
            stopped_forgetting = guard is not None and guard.check(state.step)
            stopped_by = _ask_hook(inputs, state.step, figures)
            model.train()
            evaluated = True
        improved = evaluated and state.best_step == state.step
        stopped = stopped_early or stopped_forgetting or stopped_by is not None
        signalled = inputs.stop.agreed(accelerator) if inputs.stop is not None else None
        due = state.step % plan.save_every == 0 or improved or is_last or stopped or signalled
        if due:
            if budget is not None:
                state.elapsed_s = budget.elapsed()
            rngs = gather_object([rng_snapshot()])  # a collective: every process takes part
            if accelerator.is_main_process:
                bare = accelerator.unwrap_model(model).model
                save_checkpoint(inputs.run_dir, bare, optimizer, state, rngs, inputs.average)
                prune_checkpoints(inputs.run_dir, cfg.keep_checkpoints, state.best_step)
        if stopped_early:
            metrics.write(
                step=state.step,
                event="early_stop",
                best_step=state.best_step,
                best_val_loss=state.best_val_loss,
            )
            log.info("early stopping at step %d; best step %d", state.step, state.best_step)
            break
        if stopped_forgetting:
            break  # the guard logged why; final/ is written as after early stopping
        if stopped_by is not None:
            metrics.write(step=state.step, event=stopped_by.status, reason=stopped_by.reason)
            log.info("%s at step %d: %s", stopped_by.status, state.step, stopped_by.reason)
            break
        if signalled and not is_last:  # the checkpoint of this step was just written
            progress.close()  # its last line before the message that follows
            saved = checkpoint_dir(inputs.run_dir, state.step)
            raise Interrupted(signalled, state.step, inputs.run_dir, saved)
    progress.close()
    return FitResult(state, stopped_early, stopped_forgetting, stopped_by)


def _fit_budget(
    inputs: LoopInputs, state: LoopState, plan: StepPlan, validating: bool, progress: tqdm
) -> StepPlan:
    """The plan with as many steps as fit in train.max_minutes: estimated once the first steps
    are timed and again before each validation; the run ends at this step once the time is
    spent. The main process decides, so every process ends at the same step."""
    budget = inputs.budget
    fits = None
    if budget.exhausted():
        fits = state.step
    elif budget.due(validating):
        most = inputs.plan.total_steps  # the recipe's own count
        fits = budget.fitting_steps(state.step, most, plan.eval_every, validating)
    fits = broadcast_object_list([fits])[0] if inputs.accelerator.num_processes > 1 else fits
    if fits is None or fits == plan.total_steps:
        return plan
    minutes = budget.seconds / 60
    if fits == state.step:
        log.info("time budget (%.1f min) spent: the run ends at step %d", minutes, fits)
    else:
        log.info(
            "time budget %.1f min: %d of the recipe's %d steps fit (%.1f min spent)",
            minutes,
            fits,
            inputs.plan.total_steps,
            budget.elapsed() / 60,
        )
    inputs.metrics.write(
        step=state.step,
        event="time_budget",
        steps=fits,
        recipe_steps=inputs.plan.total_steps,
        elapsed_s=round(budget.elapsed(), 1),
    )
    state.planned_steps = fits
    progress.total = fits
    progress.refresh()
    return _replanned(plan, fits, inputs.cfg)


def _replanned(plan: StepPlan, total: int, cfg: TrainConfig) -> StepPlan:
    """`plan` ending at step `total`; a warm-up given as a share shrinks with it."""
    return dataclasses.replace(
        plan,
        total_steps=total,
        warmup_steps=min(plan.warmup_steps, warmup_steps(cfg.warmup, total)),
    )


def _stop_if_signalled(inputs: LoopInputs, state: LoopState, saved: Path | None) -> None:
    """Before the first step: raise Interrupted when a process received SIGINT or SIGTERM
    while the run was set up; `saved` is the checkpoint that holds the run so far (the one
    it resumed from), if any."""
    signum = inputs.stop.agreed(inputs.accelerator) if inputs.stop is not None else None
    if signum:
        raise Interrupted(signum, state.step, inputs.run_dir, saved)


def _forward_backward(model, accelerator, rows, indices, grad_accum, collate_fn):
    """Accumulate the gradient of one optimizer step; returns (summed loss, labelled tokens),
    both over all processes.

    Each process takes every N-th example of the step and splits its share into exactly
    `grad_accum` micro-batches (so every process runs the same number of backward passes, which
    DDP needs). Each loss is divided by the labelled tokens of the whole step, not of the
    micro-batch, and multiplied by the process count because DDP averages gradients: the result
    is exactly the gradient of one big batch on one process."""
    world, rank = accelerator.num_processes, accelerator.process_index
    step_tokens = sum(rows[i].trainable_tokens for i in indices)
    share = indices[rank::world]
    micro_batches = [share[i::grad_accum] for i in range(grad_accum)]
    local_loss = torch.zeros((), device=accelerator.device)
    extras: dict[str, float] = {}
    for number, micro in enumerate(micro_batches):
        if not micro and world == 1:
            continue  # an epoch's last batch can be shorter than grad_accum
        # with several processes, an empty share still runs a zero-weight batch so that every
        # process joins the gradient exchange
        items = [rows[i] for i in micro] or [rows[share[0] if share else indices[0]]]
        last = number == len(micro_batches) - 1
        # gradients are exchanged once per step, after the last micro-batch
        syncing = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with syncing:
            batch = to_device(collate_fn(items), accelerator.device)
            with accelerator.autocast():
                parts = model(**batch)
            weight = world / step_tokens if micro else 0.0
            accelerator.backward(parts.loss_sum * weight)
        if micro:
            local_loss += parts.loss_sum.detach()
            for key, value in (parts.extras or {}).items():
                extras[key] = extras.get(key, 0.0) + value
            if parts.extras is not None:
                extras["correct"] = extras.get("correct", 0.0) + parts.correct
    step_loss = accelerator.reduce(local_loss, "sum") if world > 1 else local_loss
    # Every process ran the same objective, so all of them agree on whether it has extras; a
    # process with an empty share has none to add, hence objects rather than a fixed tensor.
    if world > 1 and parts.extras is not None:
        extras = add_sums(gather_object([extras]))
    return step_loss.item(), step_tokens, extras


def _ask_hook(inputs: LoopInputs, step: int, figures: dict[str, Any]) -> StopTraining | None:
    """Call the caller's on_validation hook on the main process; the StopTraining it raised
    (the same on every process), or None."""
    if inputs.on_validation is None:
        return None
    stop = None
    if inputs.accelerator.is_main_process:
        try:
            inputs.on_validation(step, figures)
        except StopTraining as exc:
            stop = exc
    if inputs.accelerator.num_processes > 1:
        stop = broadcast_object_list([stop])[0]
    return stop


def _validate(
    inputs: LoopInputs, state: LoopState, train_loss: float | None
) -> tuple[bool, dict[str, Any]]:
    """Run validation, log it, update best/patience; (whether early stopping should stop,
    the validation figures).
    Each process evaluates its share of the rows; the sums are combined, so every process
    takes the same decision. A forgetting guard adds its reference loss to the record.
    `train_loss` is None for the step-0 baseline."""
    model, accelerator, cfg, plan = inputs.objective, inputs.accelerator, inputs.cfg, inputs.plan
    if inputs.budget is not None:
        inputs.budget.validation_started()
    model.eval()
    share = process_share(inputs.val_rows, accelerator)
    # The bare module, not the DDP wrapper: a wrapped forward joins collectives (buffer
    # broadcasts), which hang when processes hold different numbers of validation batches.
    bare = accelerator.unwrap_model(model)
    averaged = inputs.average.applied() if inputs.average else contextlib.nullcontext()
    with averaged:
        sums = evaluate_rows(
            lambda batch: bare(**batch),
            share,
            cfg.batch_size // cfg.grad_accum,
            inputs.collate_fn,
            accelerator.device,
            accelerator.autocast,
        )
        if accelerator.num_processes > 1:
            # Gathered as objects, not one fixed tensor: a process whose share is empty has
            # no confusion matrix or rewards, and tensors of different sizes would hang the
            # exchange.
            sums = add_sums(gather_object([sums]))
        result = summarize(sums)
        if inputs.guard is not None:
            result |= inputs.guard.measure(bare, accelerator)
    if inputs.budget is not None:
        inputs.budget.validation_done()
    inputs.metrics.write(
        step=state.step, epoch=round(state.step / plan.steps_per_epoch, 4), split="val", **result
    )
    if train_loss is None:  # the step-0 baseline: no checkpoint, not a candidate for best
        return False, result
    val_loss = result["loss"]
    min_delta = cfg.early_stopping.min_delta if cfg.early_stopping else 0.0
    if state.best_val_loss is None or val_loss < state.best_val_loss - min_delta:
        state.best_val_loss, state.best_step = val_loss, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    state.val_history.append((state.step, val_loss, train_loss))
    if _overfitting(state.val_history):
        inputs.metrics.write(
            step=state.step, event="overfitting_warning", val_loss=val_loss, train_loss=train_loss
        )
        log.warning(
            "validation loss rose for two evaluations while training loss fell: "
            "the model may be overfitting (best step %s)",
            state.best_step,
        )
    patience = cfg.early_stopping.patience if cfg.early_stopping else None
    return patience is not None and state.evals_without_improvement >= patience, result


def _overfitting(history: list[tuple[int, float, float]]) -> bool:
    """Validation loss rose twice in a row while training loss fell both times."""
    if len(history) < 3:
        return False
    (_, v0, t0), (_, v1, t1), (_, v2, t2) = history[-3:]
    return v2 > v1 > v0 and t2 < t1 < t0


def _divergence_message(loss: float, step: int, run_dir: Path) -> str:
    last = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
    return (
        f"training loss became {loss} at step {step}; stopped, {kept}. "
        "Lower train.lr, set train.max_grad_norm, or use train.precision=fp32"
    )

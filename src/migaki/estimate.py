"""`migaki estimate`: tokens, peak memory, time and cost of a recipe before training it.

Memory and time are measured, not guessed: a short run of the same recipe (a few optimizer
steps, its validation, checkpoint and final save included) in a fresh `migaki train` process
on this machine, so the figure is that of the method, precision and memory options the recipe
chose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from migaki import models
from migaki.config import Recipe, load_recipe
from migaki.data import load_splits
from migaki.errors import UserError
from migaki.tasks import task_for
from migaki.train import plan_steps
from migaki.train.tracking import read_metrics


def estimate(
    recipe_path: str | Path,
    overrides: list[str] | None = None,
    steps: int | None = None,
    price_per_hour: float | None = None,
) -> dict[str, Any]:
    """Figures for the recipe: tokens_per_epoch, steps, peak_memory_mb, seconds_per_step,
    seconds_per_epoch, total_seconds, cost (None without a price); with train.max_minutes,
    budget_steps (the steps that fit, validations and model load not counted) and the time and
    cost of those."""
    overrides = list(overrides or [])
    recipe = load_recipe(recipe_path, overrides)
    steps = steps or recipe.estimate.steps
    price = price_per_hour if price_per_hour is not None else recipe.estimate.price_per_hour
    tokens, labelled, rows = _count_tokens(recipe)
    plan = plan_steps(rows, recipe)
    measured = _micro_run(recipe_path, overrides, steps + 1)
    # time scales with tokens, and the measured steps need not be average ones
    seconds_per_epoch = tokens / measured["tokens_per_s"]
    seconds_per_step = seconds_per_epoch / plan.steps_per_epoch
    budget_steps = None
    if recipe.train.max_minutes is not None:  # training ends where its time does
        fitting = int(recipe.train.max_minutes * 60 / seconds_per_step)
        budget_steps = max(min(plan.total_steps, fitting), 1)
    total_seconds = seconds_per_step * (budget_steps or plan.total_steps)
    hours = total_seconds / 3600
    return {
        "method": recipe.method.name,
        "train_rows": rows,
        "tokens_per_epoch": tokens,
        "labelled_tokens_per_epoch": labelled,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "budget_steps": budget_steps,  # what fits in train.max_minutes (steps alone)
        "peak_memory_mb": measured["peak_memory_mb"],
        "memory_kind": measured["memory_kind"],
        "tokens_per_s": measured["tokens_per_s"],
        "seconds_per_step": seconds_per_step,
        "seconds_per_epoch": seconds_per_epoch,
        "total_seconds": total_seconds,
        "cost": round(hours * price, 4) if price is not None else None,
        "currency": recipe.estimate.currency,
        "price_per_hour": price,
        "precision": measured["precision"],
    }


def _count_tokens(recipe: Recipe) -> tuple[int, int, int]:
    """(real tokens, labelled tokens, rows) of one epoch of the training split, tokenized as
    the recipe's task trains on it (pairs count both sequences; labelled counts rows there)."""
    task = task_for(recipe)
    tokenizer = models.recipe_tokenizer(recipe.model, chat=task.chat)
    splits = load_splits(recipe.data, recipe.train.seed, tokenizer)
    rows = task.tokenize(splits, tokenizer, recipe, task.labels(recipe, splits))["train"]
    return sum(len(r.input_ids) for r in rows), sum(r.trainable_tokens for r in rows), len(rows)


def _micro_run(recipe_path: str | Path, overrides: list[str], steps: int) -> dict[str, Any]:
    """Run the first `steps` optimizer steps of the recipe in a fresh process (with its final
    validation, checkpoint and save); the first step is warm-up. Their batch shapes vary as in
    the full run, so the allocator's behaviour is measured too."""
    with tempfile.TemporaryDirectory(prefix="migaki-estimate-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "migaki",
            "train",
            str(recipe_path),
            *overrides,
            f"train.max_steps={steps}",
            "train.max_minutes=null",  # all the steps asked for, whatever the budget
            "train.eval_every=1000000000",
            "train.early_stopping=null",
            "train.track=[]",
            "--out",
            str(run_dir),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["no output"]
            raise UserError(f"the measuring run failed: {lines[-1]}")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        rates = [m["tokens_per_s"] for m in read_metrics(run_dir) if m.get("split") == "train"]
    return {
        "peak_memory_mb": manifest["peak_memory_mb"],
        "memory_kind": "peak GPU allocation" if manifest["machine"]["gpus"] else "peak RSS",
        "tokens_per_s": sum(rates[1:]) / len(rates[1:]),
        "precision": manifest["precision"],
    }

"""Learning-rate schedule as a pure function of the step, so resume needs no saved state."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, kind: str) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warm-up to `peak`, then
    cosine or linear decay to zero at `total_steps`, or constant."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(warmup: float, total_steps: int) -> int:
    """`train.warmup` below 1 is a share of all steps, otherwise a step count."""
    return round(warmup * total_steps) if warmup < 1 else min(int(warmup), total_steps)

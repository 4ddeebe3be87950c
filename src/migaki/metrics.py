"""Figures that validation and `migaki eval` share: summed losses and counts over batches of
rows, and what they become (loss, perplexity, token accuracy; accuracy and macro F1;
preference rewards). Imports neither `train` nor `evaluate`: both import it."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from migaki.data.tokenize import TokenizedExample
from migaki.objectives import LossParts

Collate = Callable[[list[TokenizedExample]], dict[str, torch.Tensor]]


@torch.no_grad()
def evaluate_rows(
    loss_fn: Callable[[dict[str, torch.Tensor]], LossParts],
    rows: list[TokenizedExample],
    batch_size: int,
    collate_fn: Collate,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, float]:
    """Summed loss, labelled tokens and correct predictions over `rows` (see `summarize`)."""
    loss_sum, tokens, correct, confusion = 0.0, 0, 0, None
    extras: dict[str, float] = {}
    for group in evaluation_groups(rows, batch_size):
        batch = to_device(collate_fn(group), device)
        with autocast():
            parts = loss_fn(batch)
        loss_sum += parts.loss_sum.item()
        tokens += parts.tokens
        correct += parts.correct
        if parts.confusion is not None:
            confusion = parts.confusion if confusion is None else confusion + parts.confusion
        for key, value in (parts.extras or {}).items():
            extras[key] = extras.get(key, 0.0) + value
    sums = {"loss_sum": loss_sum, "tokens": tokens, "correct": correct}
    sums |= {f"extra_{key}": value for key, value in extras.items()}
    return sums | ({"confusion": confusion} if confusion is not None else {})


def process_share(rows: list, accelerator) -> list:
    """The validation rows this process evaluates."""
    return rows[accelerator.process_index :: accelerator.num_processes]


def evaluation_groups(rows: list, batch_size: int) -> list[list]:
    """Rows in order of length, in batches of `batch_size`: sums do not depend on the order,
    padding does."""
    rows = sorted(rows, key=lambda row: len(row.input_ids))
    return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]


def summarize(sums: dict[str, Any]) -> dict[str, float]:
    """Loss, perplexity and token accuracy from summed counts; for classification (a
    confusion matrix is present) loss, accuracy and macro F1 over the rows."""
    tokens = int(sums["tokens"])
    loss = sums["loss_sum"] / max(tokens, 1)
    extras = {k[len("extra_") :]: v for k, v in sums.items() if k.startswith("extra_")}
    if extras:
        return {"loss": loss, **preference_metrics(extras, sums["correct"], tokens)}
    if sums.get("confusion") is not None:
        return {
            "loss": loss,
            "accuracy": sums["correct"] / max(tokens, 1),
            "f1_macro": f1_macro(sums["confusion"]),
            "rows": tokens,
        }
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": sums["correct"] / max(tokens, 1),
        "tokens": tokens,
    }


def add_sums(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Key-wise sums of the processes' partial sums (counts, tensors, floats)."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = value if key not in total else total[key] + value
    return total


def preference_metrics(extras: dict[str, float], correct: float, pairs: int) -> dict[str, float]:
    """Mean implicit rewards, their margin and the share of pairs ranked right; {} for
    objectives that are not preference objectives."""
    if "reward_chosen" not in extras:
        return {}
    # KTO's rows are desirable or not rather than pairs; each mean is over its own rows
    chosen = extras["reward_chosen"] / max(extras.get("chosen_rows", pairs), 1)
    rejected = extras["reward_rejected"] / max(extras.get("rejected_rows", pairs), 1)
    return {
        "reward_chosen": chosen,
        "reward_rejected": rejected,
        "reward_margin": chosen - rejected,
        "pref_accuracy": correct / max(pairs, 1),
        "pairs": pairs,
    }


def f1_macro(confusion: torch.Tensor) -> float:
    """Mean over classes of F1 (rows: true class, columns: predicted); a class that is neither
    present nor predicted is left out, as scikit-learn does with zero_division handling."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    scored = (predicted + actual) > 0
    f1 = 2 * true_positive / (predicted + actual).clamp(min=1)
    return float(f1[scored].mean()) if scored.any() else 0.0


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}

"""Odds-ratio preference optimization: SFT on the chosen answer plus a penalty on the odds of
the rejected one, with no reference model."""

from __future__ import annotations

import torch

from migaki.config import Recipe
from migaki.data.prepare import Splits
from migaki.losses import orpo_loss
from migaki.methods import METHODS, PROMPT_LEARNING
from migaki.objectives import LossParts, pair_logps, preference_parts
from migaki.tasks.reward import PREFERENCE_VALIDATION
from migaki.tasks.rows import pair_batches, pair_rows
from migaki.tasks.task import Task

# scores answers through the decoder's hidden states, which prompt learning does not change
DECODER_METHODS = tuple(name for name in METHODS if name not in (*PROMPT_LEARNING, "head"))
DECODER_REFUSAL = (
    "task {task} scores answers through the decoder's hidden states, which {method} tuning "
    "does not change; use lora or another method"
)


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    return pair_rows(splits, tokenizer, recipe, "orpo")


class ORPOLoss(torch.nn.Module):
    """Odds-ratio preference optimization: the chosen answer's NLL plus a penalty on the odds
    of the rejected one. No reference model, so it suits every method, `full` included. The
    NLL is the per-pair mean over answer tokens (the tokens SFT trains on)."""

    def __init__(self, model: torch.nn.Module, beta: float) -> None:
        super().__init__()
        self.model, self.beta = model, beta

    def forward(self, **batch: torch.Tensor) -> LossParts:
        logps, tokens = pair_logps(self.model, batch)
        means = logps / tokens.clamp(min=1)
        pairs = len(means) // 2
        return preference_parts(orpo_loss(means[:pairs], means[pairs:], -means[:pairs], self.beta))


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    return ORPOLoss(model, recipe.preference.beta)


TASK = Task(
    name="orpo",
    rows="chosen/rejected pairs",
    methods=DECODER_METHODS,
    refuse_method=DECODER_REFUSAL,
    tokenize=tokenize,
    collate=pair_batches,
    objective=objective,
    validation=PREFERENCE_VALIDATION,
)

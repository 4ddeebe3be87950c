"""A reward model: a one-output sequence classifier scores whole conversations, trained on
preference pairs so that the chosen one scores above the rejected one (Bradley-Terry)."""

from __future__ import annotations

import torch

from migaki.config import Recipe
from migaki.data.prepare import Splits
from migaki.losses import reward_loss
from migaki.objectives import LossParts, preference_parts
from migaki.tasks.classification import HEAD_METHODS
from migaki.tasks.rows import pair_batches, pair_rows
from migaki.tasks.task import Task

PREFERENCE_VALIDATION = (
    "loss",
    "reward_chosen",
    "reward_rejected",
    "reward_margin",
    "pref_accuracy",
    "pairs",
)


def labels(recipe: Recipe, splits: Splits) -> list[str]:
    return ["reward"]  # one output: the score


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    return pair_rows(splits, tokenizer, recipe, "reward")


class RewardLoss(torch.nn.Module):
    """A reward model: a one-output sequence classifier scores each whole conversation, and the
    pairwise (Bradley-Terry) loss pushes the chosen one's score above the rejected one's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        scores = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.squeeze(-1)
        pairs = len(scores) // 2
        return preference_parts(reward_loss(scores[:pairs], scores[pairs:]))


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    return RewardLoss(model)


TASK = Task(
    name="reward",
    rows="chosen/rejected pairs",
    methods=HEAD_METHODS,
    refuse_method="{method} is not available for task {task} yet; use one of {allowed}",
    tokenize=tokenize,
    collate=pair_batches,
    objective=objective,
    validation=PREFERENCE_VALIDATION,
    evaluation="reward",
    head="score",
    no_generation="a reward model scores conversations and does not generate text; "
    "`migaki eval {path} --data PAIRS` scores preference pairs with it",
    labels=labels,
)

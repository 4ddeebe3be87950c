"""Text classification: a sequence classifier (a new head over the model's labels) learns the
label of each text; validation reports accuracy and macro F1."""

from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F

from migaki.config import Recipe
from migaki.data.classify import (
    class_counts,
    collate_classification,
    label_map,
    tokenize_classification,
)
from migaki.data.prepare import Splits
from migaki.errors import UserError
from migaki.metrics import Collate
from migaki.objectives import LossParts
from migaki.tasks.rows import SPLITS
from migaki.tasks.task import Task

log = logging.getLogger(__name__)

HEAD_METHODS = ("full", "lora", "freeze", "gradual", "head")  # train a new task head


def labels(recipe: Recipe, splits: Splits) -> list[str]:
    return label_map(splits.train, recipe.data.labels)


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    rows = {}
    for split_name in SPLITS:
        examples = getattr(splits, split_name)
        rows[split_name], report = tokenize_classification(
            examples, tokenizer, labels, recipe.data.max_length
        )
        if examples:
            counts = ", ".join(
                f"{k} {v}" for k, v in class_counts(rows[split_name], labels).items()
            )
            log.info("data %s: %s; labels: %s", split_name, report.summary(), counts)
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training row left")
    return rows


def batches(recipe: Recipe, pad_token_id: int, device: torch.device) -> Collate:
    return partial(collate_classification, pad_token_id=pad_token_id)


def classification_loss(model, batch: dict[str, torch.Tensor]) -> LossParts:
    """Cross-entropy summed over the rows of a batch, with the confusion counts that give
    accuracy and macro F1 over a whole validation set."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.float()
    target = batch["labels"]
    loss_sum = F.cross_entropy(logits, target, reduction="sum")
    predicted = logits.argmax(dim=-1)
    classes = logits.shape[-1]
    confusion = torch.bincount(target * classes + predicted, minlength=classes * classes)
    correct = int((predicted == target).sum())
    return LossParts(loss_sum, len(target), correct, confusion.view(classes, classes).cpu())


class ClassificationLoss(torch.nn.Module):
    """`classification_loss` as a module, for the same reason as CausalLMLoss."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        return classification_loss(self.model, batch)


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    return ClassificationLoss(model)


TASK = Task(
    name="classification",
    rows="a text and a label",
    methods=HEAD_METHODS,
    refuse_method="{method} is not available for task {task} yet; use one of {allowed}",
    tokenize=tokenize,
    collate=batches,
    objective=objective,
    validation=("loss", "accuracy", "f1_macro", "rows"),
    evaluation="classification",
    head="labels",
    no_generation="a classification run does not generate text; `migaki eval {path} --data "
    "FILE` scores it",
    chat=False,
    labels=labels,
)

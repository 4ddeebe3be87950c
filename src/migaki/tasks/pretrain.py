"""Continued pre-training: raw text, every token carries the loss; a row longer than
data.max_length is split into pieces rather than cut."""

from __future__ import annotations

import torch

from migaki.config import Recipe
from migaki.data.prepare import Splits
from migaki.errors import UserError
from migaki.methods import METHODS
from migaki.objectives import CausalLMLoss
from migaki.tasks.rows import language_model_batches, language_model_rows
from migaki.tasks.sft import LANGUAGE_MODEL_VALIDATION
from migaki.tasks.task import Task


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    if any(e.text is None for e in splits.train[:1]):
        raise UserError(
            f"{recipe.data.train}: task pretrain learns from raw text rows "
            '({"text": ...}); conversations belong to task sft'
        )
    return language_model_rows(splits, tokenizer, recipe, TASK.overlong_rows(recipe))


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    return CausalLMLoss(model)


TASK = Task(
    name="pretrain",
    rows='raw text rows ({"text": ...})',
    methods=tuple(name for name in METHODS if name != "head"),
    tokenize=tokenize,
    collate=language_model_batches,
    objective=objective,
    validation=LANGUAGE_MODEL_VALIDATION,
    language_modelling=True,
    overlong="split",  # a long document is still all text to learn from
)

"""Supervised fine-tuning (instruction tuning): conversations or text, the loss on the
assistant's turns (every token with data.train_on_prompt)."""

from __future__ import annotations

import torch

from migaki.config import Recipe
from migaki.data.prepare import Splits
from migaki.data.replay import CHAT_KINDS
from migaki.errors import UserError
from migaki.methods import METHODS
from migaki.objectives import CausalLMLoss
from migaki.tasks.rows import language_model_batches, language_model_rows
from migaki.tasks.task import Task

LANGUAGE_MODEL_VALIDATION = ("loss", "perplexity", "token_accuracy", "tokens")


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    if any(e.label is not None for e in splits.train[:1]):
        raise UserError(
            f"{recipe.data.train}: rows are classification rows (a text and a label); task sft "
            "learns from conversations or text (set data.format: text to model the text alone)"
        )
    return language_model_rows(splits, tokenizer, recipe, TASK.overlong_rows(recipe))


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    return CausalLMLoss(model)


TASK = Task(
    name="sft",
    rows="conversations or text",
    methods=tuple(name for name in METHODS if name != "head"),
    tokenize=tokenize,
    collate=language_model_batches,
    objective=objective,
    validation=LANGUAGE_MODEL_VALIDATION,
    language_modelling=True,
    also_trains_on=CHAT_KINDS,  # a replay file of text may join conversations, and back
)

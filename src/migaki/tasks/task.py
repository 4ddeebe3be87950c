"""What a task says about itself: the shape every task module fills in (see `migaki.tasks`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from migaki.config import Recipe
from migaki.data.prepare import Splits
from migaki.metrics import Collate

Rows = dict[str, list]  # split name -> tokenized rows of the task's kind


def no_problems(recipe: Recipe) -> list[str]:
    return []


def no_labels(recipe: Recipe, splits: Splits) -> list[str] | None:
    return None


def no_setup(recipe: Recipe, tokenizer) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """One task: its rows, the methods it allows, how rows become tensors and a loss, and what
    validation and `migaki eval` report. The callables are plain functions of the task's own
    module; the flags are what other layers ask instead of comparing task names."""

    name: str
    rows: str  # the rows it trains on, as error messages name them
    methods: tuple[str, ...]  # method.name values it allows (checked when a command starts)
    # (splits, tokenizer, recipe, labels) -> {"train": [...], "val": [...], "test": [...]}
    tokenize: Callable[[Splits, Any, Recipe, list[str] | None], Rows]
    # (recipe, pad_token_id, device) -> the collate function of its batches
    collate: Callable[[Recipe, int, torch.device], Collate]
    # (recipe, model, setup) -> a module whose forward(**batch) returns LossParts
    objective: Callable[[Recipe, torch.nn.Module, Any], torch.nn.Module]
    validation: tuple[str, ...]  # the figures each validation record holds beside step/epoch
    # how `migaki eval` scores a run: generated answers (and choices), preference pairs by
    # likelihood, pairs by a reward head, or labels by a classifier
    evaluation: Literal["answers", "pairs", "reward_pairs", "classification"] = "answers"
    # None: a causal LM; "labels": a classifier over the data's labels; "score": one output
    head: Literal["labels", "score"] | None = None
    chat: bool = True  # renders conversations, so the tokenizer needs a chat template
    reference: bool = False  # trained against the untrained model's log-probabilities
    language_modelling: bool = False  # the causal-LM loss on its rows (forgetting guard)
    also_trains_on: tuple[str, ...] = ()  # row kinds replay may add beside the file's own
    overlong: Literal["truncate", "drop", "split"] = "truncate"  # default of data.overlong
    # why another method is refused: a template with {task}, {method} and {allowed}
    refuse_method: str = "method {method} is not available for task {task}; use one of {allowed}"
    # why a tuned model of this task does not generate text (a template with {path}); None
    # for the tasks that do
    no_generation: str | None = None
    keys: tuple[str, ...] = ()  # recipe keys only this task reads (refused elsewhere)
    check: Callable[[Recipe], list[str]] = no_problems  # more problems, each naming its key
    labels: Callable[[Recipe, Splits], list[str] | None] = no_labels  # a head's outputs
    setup: Callable[[Recipe, Any], Any] = no_setup  # before the data: e.g. load a teacher
    # after accelerator.prepare, before a checkpoint loads: e.g. reference log-probabilities
    start: Callable[..., None] | None = None

    def overlong_rows(self, recipe: Recipe) -> str:
        """data.overlong as it applies to this task."""
        return recipe.data.overlong or self.overlong

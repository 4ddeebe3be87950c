"""Rows and batches that several tasks share: causal-LM rows (sft, pretrain, distill) and
preference pairs (dpo, orpo, reward; kto reads pairs too)."""

from __future__ import annotations

import logging
from functools import partial

import torch

from migaki.config import Recipe
from migaki.data.batches import collate
from migaki.data.cache import tokenize_for_recipe
from migaki.data.packing import collate_packed
from migaki.data.pairs import collate_pairs, tokenize_pairs
from migaki.data.prepare import Splits
from migaki.errors import UserError
from migaki.methods import PROMPT_LEARNING
from migaki.metrics import Collate

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def language_model_rows(splits: Splits, tokenizer, recipe: Recipe, overlong: str) -> dict:
    """Tokenized train/val/test rows whose labelled tokens carry the causal-LM loss; each
    split's report is logged (nothing dropped silently)."""
    rows = {}
    for split_name in SPLITS:
        examples = getattr(splits, split_name)
        rows[split_name], report = tokenize_for_recipe(examples, tokenizer, recipe, overlong)
        if examples:
            log.info("data %s: %s", split_name, report.summary())
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training row has a trainable token left")
    return rows


def language_model_batches(recipe: Recipe, pad_token_id: int, device: torch.device) -> Collate:
    """Packed rows (no padding) or padded rows, as `data.packing` asks."""
    packing = recipe.data.packing
    if recipe.method.name in PROMPT_LEARNING:
        if packing is True:
            raise UserError(f"data.packing: method {recipe.method.name} cannot use packed rows")
        packing = False  # virtual tokens sit before each row, not before each packed example
    if packing is True or (packing == "auto" and device.type == "cuda"):
        return partial(collate_packed, capacity=recipe.data.max_length, pad_token_id=pad_token_id)
    return partial(collate, pad_token_id=pad_token_id)


def pair_rows(splits: Splits, tokenizer, recipe: Recipe, task_name: str) -> dict:
    """Tokenized chosen/rejected pairs of every split; refuses rows that are not pairs."""
    rows = {}
    for split_name in SPLITS:
        examples = getattr(splits, split_name)
        if not all(e.is_pair for e in examples[:1]):
            raise UserError(f"{recipe.data.train}: task {task_name} needs chosen/rejected rows")
        rows[split_name], report = tokenize_pairs(
            examples,
            tokenizer,
            max_length=recipe.data.max_length,
            system_prompt=recipe.data.system_prompt,
        )
        if examples:
            log.info("data %s pairs: %s", split_name, report.summary())
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training pair left")
    return rows


def pair_batches(recipe: Recipe, pad_token_id: int, device: torch.device) -> Collate:
    """Batches of [chosen..., rejected...] sequences."""
    return partial(collate_pairs, pad_token_id=pad_token_id)

"""Batches: a seeded order per epoch (so any step's batch can be rebuilt on resume) and
padding to the longest row in the batch."""

from __future__ import annotations

import torch

from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch; a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def step_indices(num_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based); the last batch of an epoch may be
    smaller. Rebuilding from the step number is what makes resume exact."""
    steps_per_epoch = -(-num_examples // batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = epoch_order(num_examples, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


def collate(items: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, labels, all (batch, longest)."""
    longest = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids)
        labels[row, :length] = torch.tensor(item.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

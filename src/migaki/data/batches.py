"""Batches: a seeded order per epoch (so any step's batch can be rebuilt on resume) and
padding to the longest row in the batch."""

from __future__ import annotations

import torch

from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one epoch; a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = False
) -> list[list[int]]:
    """The batches of one epoch, a pure function of (lengths, seed, epoch): rebuilding them
    from the step number is what makes resume exact. The last batch may be smaller.

    With `group_by_length`, each window of 8 batches of the shuffled order is sorted by length
    before it is cut, so rows in a batch have similar lengths and little padding is computed;
    the batches are then shuffled so lengths do not drift through the epoch."""
    order = epoch_order(len(lengths), seed, epoch)
    if group_by_length:
        window = batch_size * 8
        order = [
            index
            for start in range(0, len(order), window)
            for index in sorted(order[start : start + window], key=lambda i: -lengths[i])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


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

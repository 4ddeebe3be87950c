"""Packing: several examples per row, with `position_ids` restarting at each example.

transformers builds a block-diagonal attention mask from restarting position ids when no
attention mask is passed and no KV cache is used, so no example attends to another. Packing
happens inside one optimizer step (the step's examples are packed together), so it changes how
much padding is computed, never which examples a step learns from: a packed run learns exactly
what an unpacked one does.
"""

from __future__ import annotations

import torch

from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample


def pack_rows(items: list[TokenizedExample], capacity: int) -> list[list[int]]:
    """Group item indices into rows of at most `capacity` tokens (first-fit decreasing);
    an item longer than `capacity` gets a row of its own."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        length = len(items[index].input_ids)
        target = next((r for r, space in enumerate(free) if space >= length), None)
        if target is None:
            rows.append([index])
            free.append(capacity - length)
        else:
            rows[target].append(index)
            free[target] -= length
    return rows


def collate_packed(
    items: list[TokenizedExample], capacity: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids, each (rows, longest row); no attention_mask.

    The first token of each example gets no label, so no example learns to predict its start
    from the previous example's end. Padding at a row's end restarts its positions too, so it
    forms its own block that no real token attends to."""
    rows = pack_rows(items, capacity)
    longest = max(sum(len(items[i].input_ids) for i in row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            item = items[index]
            end = start + len(item.input_ids)
            input_ids[r, start:end] = torch.tensor(item.input_ids)
            labels[r, start:end] = torch.tensor(item.labels)
            labels[r, start] = IGNORE_INDEX
            position_ids[r, start:end] = torch.arange(end - start)
            start = end
        position_ids[r, start:] = torch.arange(longest - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

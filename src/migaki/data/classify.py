"""Rows for sequence classification: a text's tokens and its class index.

The label map is fixed from the labels the recipe lists (`data.labels`) or, failing that, the
sorted labels of the training split, and it is saved with the model (`id2label`), so a class
index always means the same label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from migaki.data.formats import Example
from migaki.data.tokenize import TokenizeReport
from migaki.errors import UserError


@dataclass
class ClassifiedRow:
    """What the training loop needs of a row: its tokens and what it is scored on."""

    input_ids: list[int]
    label: int
    trainable_tokens: int = field(default=1, init=False)  # one prediction per row


def label_map(train: list[Example], labels: list[str] | None) -> list[str]:
    """Class index -> label: the recipe's list, or the training labels sorted."""
    if labels is not None:
        return list(labels)
    found = sorted({example.label for example in train if example.label is not None})
    if len(found) < 2:
        raise UserError(
            f"classification needs at least two labels in the training data (found {found})"
        )
    return found


def tokenize_classification(
    examples: list[Example], tokenizer, names: list[str], max_length: int
) -> tuple[list[ClassifiedRow], TokenizeReport]:
    """Token ids (truncated to max_length, counted) and class index of each row."""
    index = {name: i for i, name in enumerate(names)}
    report = TokenizeReport(rows_in=len(examples))
    rows = []
    for example in examples:
        if example.label is None or example.text is None:
            raise UserError(
                f"{example.source}:{example.line}: task classification needs a text and a "
                "label in every row (columns text or sentence, and label)"
            )
        if example.label not in index:
            report.dropped[f"label not in the training labels {names}"] += 1
            continue
        ids = tokenizer(example.text, truncation=False)["input_ids"]
        if len(ids) > max_length:
            report.truncated += 1
            ids = ids[: max_length - 1] + ids[-1:]  # keep the closing special token ([SEP])
        rows.append(ClassifiedRow(ids, index[example.label]))
    return rows, report


def collate_classification(rows: list[ClassifiedRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row.input_ids)] = torch.tensor(row.input_ids)
        attention_mask[i, : len(row.input_ids)] = 1
    labels = torch.tensor([row.label for row in rows], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def class_counts(rows: list[ClassifiedRow], names: list[str]) -> dict[str, int]:
    counts = Counter(row.label for row in rows)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}

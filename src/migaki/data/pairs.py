"""Preference pairs as token rows: the prompt with the chosen answer and with the rejected one,
each labelled on its answer only (end-of-turn token included), rendered with the chat template
exactly as SFT renders a conversation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from migaki.data.batches import collate
from migaki.data.formats import Example
from migaki.data.tokenize import TokenizedExample, TokenizeReport, tokenize_example


@dataclass
class PairRow:
    chosen: TokenizedExample
    rejected: TokenizedExample
    trainable_tokens: int = field(default=1, init=False)  # the loop counts pairs

    @property
    def input_ids(self) -> list[int]:
        """Both sequences' tokens: what batching sorts by and throughput counts."""
        return self.chosen.input_ids + self.rejected.input_ids


def tokenize_pairs(
    examples: list[Example], tokenizer, *, max_length: int, system_prompt: str | None = None
) -> tuple[list[PairRow], TokenizeReport]:
    """Pairs truncated to max_length (counted); a pair whose answer is cut away is dropped."""
    report = TokenizeReport(rows_in=len(examples))
    rows = []
    for example in examples:
        rejected = Example(
            example.source,
            example.line,
            messages=[
                *example.prompt_messages,
                {"role": "assistant", "content": example.meta["rejected"]},
            ],
        )
        sides = [
            tokenize_example(item, tokenizer, system_prompt=system_prompt)
            for item in (example, rejected)
        ]
        if any(len(side.input_ids) > max_length for side in sides):
            report.truncated += 1
            sides = [
                TokenizedExample(s.input_ids[:max_length], s.labels[:max_length]) for s in sides
            ]
        if any(side.trainable_tokens == 0 for side in sides):
            report.dropped["an answer lies beyond max_length"] += 1
            continue
        rows.append(PairRow(*sides))
    return rows, report


def collate_pairs(rows: list[PairRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: the chosen sequences first, then the rejected ones in the same order."""
    return collate([r.chosen for r in rows] + [r.rejected for r in rows], pad_token_id)

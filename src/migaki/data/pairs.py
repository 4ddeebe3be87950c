"""Preference pairs as token rows: the prompt with the chosen answer and with the rejected one,
each labelled on its answer only (end-of-turn token included), rendered with the chat template
exactly as SFT renders a conversation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from migaki.data.batches import collate
from migaki.data.formats import Example
from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample, TokenizeReport, tokenize_example


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
    """Pairs cut to max_length (counted). A dialogue too long loses its earliest turns first,
    so that the answers being compared and the question they answer stay whole; only then are
    the answers cut at the end. A pair whose answer is cut away entirely is dropped."""
    report = TokenizeReport(rows_in=len(examples))
    rows = []
    for example in examples:
        prompt = example.prompt_messages
        answers = (example.messages[-1]["content"], example.meta["rejected"])
        sides = _sides(example, prompt, answers, tokenizer, system_prompt)
        if any(len(side.input_ids) > max_length for side in sides):
            report.truncated += 1
            while _longest(sides) > max_length and _earlier_turns(prompt):
                prompt = _without_first_exchange(prompt)
                sides = _sides(example, prompt, answers, tokenizer, system_prompt)
            sides = [
                TokenizedExample(s.input_ids[:max_length], s.labels[:max_length]) for s in sides
            ]
        if any(side.trainable_tokens == 0 for side in sides):
            report.dropped["an answer lies beyond max_length"] += 1
            continue
        rows.append(PairRow(*sides))
    return rows, report


def _sides(example, prompt, answers, tokenizer, system_prompt) -> list[TokenizedExample]:
    return [
        tokenize_example(
            Example(
                example.source,
                example.line,
                messages=[*prompt, {"role": "assistant", "content": answer}],
            ),
            tokenizer,
            system_prompt=system_prompt,
        )
        for answer in answers
    ]


def _longest(sides: list[TokenizedExample]) -> int:
    return max(len(side.input_ids) for side in sides)


def _earlier_turns(prompt: list[dict[str, str]]) -> bool:
    """Whether anything precedes the last user turn, besides a system message."""
    turns = [m for m in prompt if m["role"] != "system"]
    return len(turns) > 1


def _without_first_exchange(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt without its first non-system turn and any answers that followed it, so that
    it starts with a user turn again (chat templates render no leading answer)."""
    system = [m for m in prompt if m["role"] == "system"]
    turns = [m for m in prompt if m["role"] != "system"][1:]
    while len(turns) > 1 and turns[0]["role"] != "user":
        turns = turns[1:]
    return system + turns


def collate_pairs(rows: list[PairRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: the chosen sequences first, then the rejected ones in the same order."""
    return collate([r.chosen for r in rows] + [r.rejected for r in rows], pad_token_id)


@dataclass
class KTORow:
    """One answer with a thumbs-up or thumbs-down: KTO learns from unpaired feedback."""

    sequence: TokenizedExample
    desirable: bool
    trainable_tokens: int = field(default=1, init=False)  # the loop counts rows

    @property
    def input_ids(self) -> list[int]:
        return self.sequence.input_ids


def kto_rows(pairs: list[PairRow]) -> list[KTORow]:
    """A preference pair as two KTO rows: the chosen answer desirable, the rejected not."""
    return [
        row for pair in pairs for row in (KTORow(pair.chosen, True), KTORow(pair.rejected, False))
    ]


def tokenize_feedback(
    examples: list[Example], tokenizer, *, max_length: int, system_prompt: str | None = None
) -> tuple[list[KTORow], TokenizeReport]:
    """Unpaired rows (prompt, completion, label true/false) as KTO rows, truncated to
    max_length (counted); a row whose answer is cut away is dropped."""
    report = TokenizeReport(rows_in=len(examples))
    rows = []
    for example in examples:
        sequence = tokenize_example(example, tokenizer, system_prompt=system_prompt)
        if len(sequence.input_ids) > max_length:
            report.truncated += 1
            sequence = TokenizedExample(
                sequence.input_ids[:max_length], sequence.labels[:max_length]
            )
        if sequence.trainable_tokens == 0:
            report.dropped["an answer lies beyond max_length"] += 1
            continue
        rows.append(KTORow(sequence, bool(example.meta["label"])))
    return rows, report


def collate_kto(rows: list[KTORow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The rows, then as many mismatched rows (row i's prompt with row i+1's answer) from which
    KTO estimates the policy's KL divergence from the reference; `desirable` flags the rows."""
    sequences = [row.sequence for row in rows]
    mismatched = [
        _prompt_with_answer(sequences[i], sequences[(i + 1) % len(sequences)])
        for i in range(len(sequences))
    ]
    batch = collate(sequences + mismatched, pad_token_id)
    batch["desirable"] = torch.tensor([row.desirable for row in rows])
    return batch


def _prompt_with_answer(
    prompt_of: TokenizedExample, answer_of: TokenizedExample
) -> TokenizedExample:
    def answer_start(item: TokenizedExample) -> int:
        return next(i for i, label in enumerate(item.labels) if label != IGNORE_INDEX)

    prompt, start = prompt_of.input_ids[: answer_start(prompt_of)], answer_start(answer_of)
    answer = answer_of.input_ids[start:]
    return TokenizedExample(
        prompt + answer, [IGNORE_INDEX] * len(prompt) + answer_of.labels[start:]
    )

"""Render examples with the tokenizer's chat template and mark which tokens carry loss.

By default only assistant turns carry loss, including the end-of-turn token (e.g.
`<|im_end|>`), so the tuned model learns where to stop. Spans are found by rendering each
conversation prefix with the same template that inference uses, so training and inference
see the same text, default system prompt included.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from migaki.data.formats import Example
from migaki.errors import DataError, UserError

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken; else the token id itself

    @property
    def trainable_tokens(self) -> int:
        """Labelled tokens that are predicted: the first token has no left context."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


@dataclass
class TokenizeReport:
    """What tokenization changed, so nothing is dropped or cut silently."""

    rows_in: int = 0
    truncated: int = 0
    split: int = 0  # rows cut into max_length pieces
    pieces: int = 0  # the pieces those rows became
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def rows_out(self) -> int:
        return self.rows_in - sum(self.dropped.values()) + self.pieces - self.split

    def summary(self) -> str:
        if self.split:
            parts = [f"{self.rows_out} rows from {self.rows_in}"]
        else:
            parts = [f"{self.rows_out}/{self.rows_in} rows kept"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.split:
            parts.append(f"{self.split} longer than max_length split into {self.pieces} pieces")
        parts += [f"{count} dropped: {reason}" for reason, count in sorted(self.dropped.items())]
        return ", ".join(parts)


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict]:
    """Prepend `system_prompt` when the conversation has no system message of its own."""
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompt(tokenizer, messages: list[dict[str, str]], system_prompt: str | None) -> str:
    """The text a model sees before it answers: what inference feeds to generate()."""
    return tokenizer.apply_chat_template(
        with_system_prompt(messages, system_prompt), tokenize=False, add_generation_prompt=True
    )


def tokenize_example(
    example: Example, tokenizer, *, system_prompt: str | None = None, train_on_prompt: bool = False
) -> TokenizedExample:
    """Token ids and labels for one example (no truncation here)."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        return TokenizedExample(ids, list(ids))
    messages = with_system_prompt(example.messages, system_prompt)
    text, spans = _render_with_spans(example, tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if train_on_prompt:
        return TokenizedExample(ids, list(ids))
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return TokenizedExample(ids, labels)


def rendered_length(example: Example, tokenizer, data) -> int:
    """Tokens of a row as the recipe's data section renders it (no truncation)."""
    tokens = tokenize_example(
        example, tokenizer, system_prompt=data.system_prompt, train_on_prompt=data.train_on_prompt
    )
    return len(tokens.input_ids)


def _render_with_spans(
    example: Example, tokenizer, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation as text, and the character spans of each assistant answer
    (its content and end-of-turn marker, without the header the prompt already holds)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:index], tokenize=False, add_generation_prompt=True
        )
        upto = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise UserError(
                f"{example.source}:{example.line}: the chat template does not render "
                "conversations prefix by prefix, so assistant tokens cannot be located; "
                "set data.train_on_prompt: true or use a model with a standard template"
            )
        # Trailing whitespace after the end-of-turn token is template decoration, not answer.
        spans.append((len(before), len(upto.rstrip())))
    return full, spans


def tokenize_all(
    examples: list[Example],
    tokenizer,
    *,
    max_length: int,
    overlong: str = "truncate",
    system_prompt: str | None = None,
    train_on_prompt: bool = False,
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Tokenize a split, applying the length policy; returns the kept rows and a report."""
    report = TokenizeReport(rows_in=len(examples))
    kept = []
    for example in examples:
        try:
            item = tokenize_example(
                example, tokenizer, system_prompt=system_prompt, train_on_prompt=train_on_prompt
            )
        except UserError:
            raise
        except Exception as exc:  # a template may raise on odd content (e.g. roles it rejects)
            raise DataError(example.source, example.line, f"cannot render: {exc}") from None
        pieces = [item]
        if len(item.input_ids) > max_length:
            if overlong == "drop":
                report.dropped[f"longer than max_length={max_length}"] += 1
                continue
            if overlong == "split":
                cuts = range(0, len(item.input_ids), max_length)
                pieces = [
                    TokenizedExample(
                        item.input_ids[i : i + max_length], item.labels[i : i + max_length]
                    )
                    for i in cuts
                ]
                report.split += 1
                report.pieces += len(pieces)
            else:
                report.truncated += 1
                pieces = [TokenizedExample(item.input_ids[:max_length], item.labels[:max_length])]
        learnable = [piece for piece in pieces if piece.trainable_tokens]
        if not learnable:
            report.dropped["no trainable token left"] += 1
            continue
        if len(learnable) < len(pieces):  # a split row's last piece can be a single token
            report.dropped["piece with no trainable token"] += len(pieces) - len(learnable)
        kept.extend(learnable)
    return kept, report

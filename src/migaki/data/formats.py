"""Row formats: each is a function `fields -> Example` that names what is missing.

Supported: `messages` (OpenAI chat), `alpaca` (instruction/input/output), `sharegpt`
(conversations from/value), `prompt_completion` and plain `text`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from migaki.data.load import Record
from migaki.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant"}
SHAREGPT_ROLES |= {"assistant": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass
class Example:
    """A training example: a conversation, or plain text for language modelling.

    `meta` keeps the row's other fields (e.g. `facts` used by evaluation)."""

    source: str
    line: int
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation up to (not including) the last assistant turn."""
        assert self.messages is not None
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def reference(self) -> str:
        """The last assistant turn, the answer a model should give."""
        assert self.messages is not None
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]


def detect_format(fields: dict[str, Any]) -> str | None:
    """The format a row's keys indicate, or None."""
    if "messages" in fields:
        return "messages"
    if "conversations" in fields:
        return "sharegpt"
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    if "prompt" in fields and "completion" in fields:
        return "prompt_completion"
    if "text" in fields:
        return "text"
    return None


def to_examples(records: list[Record], fmt: str = "auto") -> list[Example]:
    """Convert rows to examples; with `auto`, the first row decides the file's format and every
    other row must have the same shape. Raises DataError naming the file and line."""
    if fmt != "auto":
        return [CONVERTERS[fmt](record) for record in records]
    file_format = None
    examples = []
    for record in records:
        detected = detect_format(record.fields)
        if detected is None:
            keys = ", ".join(sorted(record.fields)) or "none"
            raise DataError(
                record.source,
                record.line,
                f"cannot tell the format from the keys ({keys}); expected messages, "
                "conversations, instruction/output, prompt/completion or text",
            )
        file_format = file_format or detected
        if detected != file_format:
            raise DataError(
                record.source,
                record.line,
                f"mixed formats: this row is {detected} but the file's first row is {file_format}",
            )
        examples.append(CONVERTERS[detected](record))
    return examples


def _messages(record: Record) -> Example:
    turns = record.fields.get("messages")
    return _conversation(record, turns, "messages", "role", "content", {r: r for r in ROLES})


def _sharegpt(record: Record) -> Example:
    turns = record.fields.get("conversations")
    return _conversation(record, turns, "conversations", "from", "value", SHAREGPT_ROLES)


def _conversation(
    record: Record, turns: Any, key: str, role_key: str, text_key: str, roles: dict[str, str]
) -> Example:
    fail = _failer(record)
    if not isinstance(turns, list):
        fail(f"'{key}' must be a list of turns")
    if not turns:
        fail(f"'{key}' is empty: the conversation has no turns")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            fail(f"{key}[{index}] must be an object with '{role_key}' and '{text_key}'")
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            fail(
                f"{key}[{index}] has {role_key} {turn.get(role_key)!r}; use one of {sorted(roles)}"
            )
        content = turn.get(text_key)
        if not isinstance(content, str):
            fail(f"{key}[{index}] has no '{text_key}' text")
        messages.append({"role": role, "content": content})
    _check_order(messages, key, fail)
    return Example(record.source, record.line, messages=messages, meta=_meta(record, key))


def _check_order(messages: list[dict[str, str]], key: str, fail: Callable[[str], NoReturn]) -> None:
    if any(m["role"] == "system" for m in messages[1:]):
        fail(f"{key}: a system message may only come first")
    dialogue = [m for m in messages if m["role"] != "system"]
    if not dialogue or dialogue[0]["role"] != "user":
        fail(f"{key}: the conversation must start with a user turn (after an optional system)")
    if not any(m["role"] == "assistant" for m in dialogue):
        fail(f"{key}: the conversation has no assistant turn to learn from")
    for previous, current in itertools.pairwise(dialogue):
        if previous["role"] == current["role"]:
            fail(f"{key}: two {current['role']} turns in a row; user and assistant alternate")
    for index, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            fail(f"{key}[{index}]: the assistant turn is empty")


def _alpaca(record: Record) -> Example:
    instruction = _text_field(record, "instruction")
    output = _text_field(record, "output")
    extra = record.fields.get("input") or ""
    if not isinstance(extra, str):
        _failer(record)("'input' must be text")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    system = record.fields.get("system")
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    meta = _meta(record, "instruction", "input", "output", "system")
    return Example(record.source, record.line, messages=messages, meta=meta)


def _prompt_completion(record: Record) -> Example:
    prompt = _text_field(record, "prompt")
    completion = _text_field(record, "completion")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    meta = _meta(record, "prompt", "completion")
    return Example(record.source, record.line, messages=messages, meta=meta)


def _text(record: Record) -> Example:
    text = _text_field(record, "text")
    return Example(record.source, record.line, text=text, meta=_meta(record, "text"))


def _text_field(record: Record, key: str) -> str:
    value = record.fields.get(key)
    if value is None:
        _failer(record)(f"missing field '{key}'")
    if not isinstance(value, str):
        _failer(record)(f"field '{key}' must be text, got {type(value).__name__}")
    if not value.strip():
        _failer(record)(f"field '{key}' is empty")
    return value


def _meta(record: Record, *used: str) -> dict[str, Any]:
    return {k: v for k, v in record.fields.items() if k not in used}


def _failer(record: Record) -> Callable[[str], NoReturn]:
    def fail(message: str) -> NoReturn:
        raise DataError(record.source, record.line, message)

    return fail


CONVERTERS: dict[str, Callable[[Record], Example]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "text": _text,
}

"""Row formats: each is a function `fields -> Example` that names what is missing.

Supported: `messages` (OpenAI chat), `alpaca` (instruction/input/output), `sharegpt`
(conversations from/value), `prompt_completion`, plain `text`, `classification` (a text
with a label), `preference` (a prompt with a chosen and a rejected answer) and `choice` (a
question, its choices and the index of the right one). Every problem is a DataError with a
`kind`, so a validator can count them.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from migaki.config import ChoicePrompt
from migaki.data.load import Record
from migaki.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant"}
SHAREGPT_ROLES |= {"assistant": "assistant", "bot": "assistant", "model": "assistant"}
CLASSIFICATION_TEXT_KEYS = ("text", "sentence", "content")
CHOICE_KEY = re.compile(r"choice(0|[1-9][0-9]*)")  # numbered choice fields: choice0, choice1
TextPath = tuple[str | int, ...]  # where a text sits in a row, e.g. ("messages", 2, "content")


@dataclass
class Example:
    """A training example: a conversation, or plain text for language modelling.

    `meta` keeps the row's other fields (e.g. `facts` used by evaluation)."""

    source: str
    line: int
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # classification rows only

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

    @property
    def is_pair(self) -> bool:
        """A preference pair: the conversation ends in the chosen answer, `meta` holds the
        rejected one."""
        return "rejected" in self.meta


def detect_format(fields: dict[str, Any], label_column: str = "label") -> str | None:
    """The format a row's keys indicate, or None."""
    if "chosen" in fields and "rejected" in fields:
        return "preference"
    if "messages" in fields:
        return "messages"
    if "conversations" in fields:
        return "sharegpt"
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    if "prompt" in fields and "completion" in fields:
        return "prompt_completion"
    has_choices = "choices" in fields or "choice0" in fields
    if "question" in fields and has_choices and label_column in fields:
        return "choice"
    if label_column in fields and any(key in fields for key in CLASSIFICATION_TEXT_KEYS):
        return "classification"
    if "text" in fields:
        return "text"
    return None


def to_examples(
    records: list[Record],
    fmt: str = "auto",
    label_column: str = "label",
    choice_prompt: ChoicePrompt = "listed",
) -> list[Example]:
    """Convert rows to examples. Raises the first DataError (file:line)."""
    examples, problems, _ = convert_records(records, fmt, label_column, choice_prompt)
    if problems:
        raise problems[0]
    return examples


def convert_records(
    records: list[Record],
    fmt: str = "auto",
    label_column: str = "label",
    choice_prompt: ChoicePrompt = "listed",
) -> tuple[list[Example], list[DataError], str | None]:
    """Convert every row that can be converted; collect a DataError for each that cannot.

    With `auto`, the first row whose format is recognised decides the file's format, and every
    other row must have the same shape. Returns the examples, the problems and that format."""
    file_format = None if fmt == "auto" else fmt
    examples, problems = [], []
    for record in records:
        try:
            row_format = file_format or _detect(record, label_column)
            if fmt == "auto":
                _check_same_format(record, row_format, label_column)
            file_format = row_format
            examples.append(convert(record, row_format, label_column, choice_prompt))
        except DataError as problem:
            problems.append(problem)
    return examples, problems, file_format


def convert(
    record: Record, fmt: str, label_column: str = "label", choice_prompt: ChoicePrompt = "listed"
) -> Example:
    """One row as an Example. `choice_prompt` shapes multiple-choice rows (see `choice_prompt`)."""
    if fmt == "classification":
        return _classification(record, label_column)
    if fmt == "preference":
        return _preference(record)
    if fmt == "choice":
        return _choice(record, label_column, choice_prompt)
    return CONVERTERS[fmt](record)


def _detect(record: Record, label_column: str) -> str:
    detected = detect_format(record.fields, label_column)
    if detected is None:
        shown = (key if len(key) <= 30 else key[:30] + "…" for key in map(str, record.fields))
        keys = ", ".join(sorted(shown)) or "none"
        raise DataError(
            record.source,
            record.line,
            f"cannot tell the format from the keys ({keys}); expected messages, conversations, "
            f"instruction/output, prompt/completion, chosen/rejected, question with choices and "
            f"{label_column}, text, or text with {label_column}"
            + _label_hint(record, label_column)
            + _header_hint(record),
            "unknown_format",
        )
    return detected


def _label_hint(record: Record, label_column: str) -> str:
    """A row that would be multiple choice or classification but for its label field."""
    fields = record.fields
    choice = "question" in fields and ("choices" in fields or "choice0" in fields)
    if not choice and not any(key in fields for key in CLASSIFICATION_TEXT_KEYS):
        return ""
    return (
        f"; if another field holds the label, name it (data.label_column, or migaki eval's "
        f"--label-column; now {label_column!r})"
    )


def _header_hint(record: Record) -> str:
    if not record.source.lower().endswith((".csv", ".tsv")):
        return ""
    return "; if the file has no header line, name its columns (--columns, data.columns)"


def _check_same_format(record: Record, file_format: str, label_column: str) -> None:
    detected = _detect(record, label_column)
    if detected != file_format:
        raise DataError(
            record.source,
            record.line,
            f"mixed formats: this row is {detected} but the file's first row is {file_format}",
            "mixed_formats",
        )


def text_paths(fields: dict[str, Any], fmt: str) -> list[TextPath]:
    """Where the texts of a (valid) row sit: what cleaning reads and rewrites."""
    if fmt in ("messages", "sharegpt"):
        key, text_key = ("messages", "content") if fmt == "messages" else ("conversations", "value")
        return [(key, index, text_key) for index in range(len(fields[key]))]
    if fmt == "alpaca":
        keys = ("system", "instruction", "input", "output")
        return [(k,) for k in keys if isinstance(fields.get(k), str) and fields[k]]
    if fmt == "prompt_completion":
        return [("prompt",), ("completion",)]
    if fmt == "classification":
        return [(next(k for k in CLASSIFICATION_TEXT_KEYS if k in fields),)]
    if fmt == "preference":
        return [(k,) for k in ("prompt", "chosen", "rejected") if isinstance(fields.get(k), str)]
    if fmt == "choice":
        return [("question",), *_choice_paths(fields)]
    return [("text",)]


def get_text(fields: dict[str, Any], path: TextPath) -> str:
    value: Any = fields
    for step in path:
        value = value[step]
    return value


def with_text(fields: dict[str, Any], path: TextPath, text: str) -> dict[str, Any]:
    """A copy of the row with one text replaced; the rest is shared, not copied."""
    head, *rest = path
    copy = dict(fields) if isinstance(fields, dict) else list(fields)
    copy[head] = with_text(fields[head], tuple(rest), text) if rest else text
    return copy


HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _preference(record: Record) -> Example:
    """A prompt with a chosen and a rejected answer. Either `prompt`, `chosen`, `rejected`
    texts, or Anthropic HH-style rows: `chosen` and `rejected` are whole dialogues
    ("\n\nHuman: ... \n\nAssistant: ...") that share everything but the last answer.
    The example's messages end with the chosen answer; the rejected one is `meta["rejected"]`."""
    fail = _failer(record)
    chosen, rejected = record.fields.get("chosen"), record.fields.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        fail("'chosen' and 'rejected' must be texts", "wrong_type")
    prompt = record.fields.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            fail("'prompt' must be a non-empty text", "empty_field")
        messages, chosen_answer, rejected_answer = (
            [{"role": "user", "content": prompt}],
            chosen,
            rejected,
        )
    else:
        messages, chosen_answer = _hh_dialogue(chosen, fail)
        rejected_prompt, rejected_answer = _hh_dialogue(rejected, fail)
        if rejected_prompt != messages:
            fail("chosen and rejected dialogues differ before their last answer", "bad_preference")
    if not chosen_answer.strip() or not rejected_answer.strip():
        fail("the chosen or the rejected answer is empty", "empty_field")
    meta = _meta(record, "prompt", "chosen", "rejected") | {"rejected": rejected_answer}
    messages = [*messages, {"role": "assistant", "content": chosen_answer}]
    return Example(record.source, record.line, messages=messages, meta=meta)


def _hh_dialogue(text: str, fail: Fail) -> tuple[list[dict[str, str]], str]:
    """The turns before the last assistant answer, and that answer."""
    parts = HH_TURN.split(text)
    if len(parts) < 5 or parts[-2] != "Assistant":
        fail("expected an HH-style dialogue ending with an Assistant turn", "bad_preference")
    roles = {"Human": "user", "Assistant": "assistant"}
    turns = [
        {"role": roles[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    return turns[:-1], turns[-1]["content"]


def _classification(record: Record, label_column: str) -> Example:
    key = next((k for k in CLASSIFICATION_TEXT_KEYS if k in record.fields), "text")
    text = _text_field(record, key)
    label = record.fields.get(label_column)
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if label is None or isinstance(label, (dict, list)) or str(label).strip() == "":
        _failer(record)(f"missing or empty label '{label_column}'", "missing_field")
    meta = _meta(record, key, label_column)
    return Example(record.source, record.line, text=text, meta=meta, label=str(label).strip())


def choice_prompt(question: str, choices: list[str], style: ChoicePrompt = "listed") -> str:
    """The user turn of a multiple-choice row.

    `listed`: the question, a blank line, one choice a line, as in
    "主に子ども向けのものは？\n\n- 世界\n- 絵本\n- 論文". No instruction words, so the layout
    suits Japanese and English alike.
    `question`: the question alone, so the model answers as it would unprompted and scoring
    asks which choice it finds most natural (the classic log-likelihood set-up; a small model
    may not use a list well). Choice scoring renders the same converted example, so training
    and scoring see one text."""
    if style == "question":
        return question.strip()
    return question.strip() + "\n\n" + "\n".join(f"- {choice}" for choice in choices)


def _choice(record: Record, label_column: str, style: ChoicePrompt = "listed") -> Example:
    """A question with two or more choices (a `choices` list, or fields `choice0`, `choice1`,
    ...) and the right one in `label_column`: its index (an int or a digit string) or its
    text. The answer to learn is the right choice's text; `meta["choices"]` and
    `meta["answer"]` (the index) let evaluation score every choice."""
    fail = _failer(record)
    question = _text_field(record, "question")
    choices, keys = _choice_texts(record, fail)
    answer = _answer_index(record.fields.get(label_column), choices, label_column, fail)
    messages = [
        {"role": "user", "content": choice_prompt(question, choices, style)},
        {"role": "assistant", "content": choices[answer]},
    ]
    # The label stays out of meta: a text label would make each row a stratum of its own.
    meta = _meta(record, "question", label_column, *keys) | {"choices": choices, "answer": answer}
    return Example(record.source, record.line, messages=messages, meta=meta)


def _choice_texts(record: Record, fail: Fail) -> tuple[list[str], list[str]]:
    """The choices, stripped of surrounding spaces, and the fields that hold them."""
    fields = record.fields
    if "choices" in fields:
        keys, choices = ["choices"], fields["choices"]
        if not isinstance(choices, list):
            fail("'choices' must be a list of texts", "wrong_type")
        names = [f"choices[{index}]" for index in range(len(choices))]
    else:
        numbers = _choice_numbers(fields)
        if not numbers:
            fail(
                "missing 'choices' (a list of texts) or fields 'choice0', 'choice1', ...",
                "missing_field",
            )
        if numbers != list(range(len(numbers))):
            gap = min(set(range(numbers[-1])) - set(numbers))
            fail(
                f"choice fields must count up from choice0; 'choice{gap}' is missing",
                "missing_field",
            )
        keys = [f"choice{number}" for number in numbers]
        choices, names = [fields[key] for key in keys], [f"'{key}'" for key in keys]
    if len(choices) < 2:
        fail(
            f"a multiple-choice row needs at least 2 choices, this one has {len(choices)}",
            "too_few_choices",
        )
    for name, choice in zip(names, choices, strict=True):
        if not isinstance(choice, str):
            fail(f"{name} must be text, got {type(choice).__name__}", "wrong_type")
        if not choice.strip():
            fail(f"{name} is empty", "empty_field")
    return [choice.strip() for choice in choices], keys


def _choice_numbers(fields: dict[str, Any]) -> list[int]:
    return sorted(int(m.group(1)) for key in fields if (m := CHOICE_KEY.fullmatch(str(key))))


def _choice_paths(fields: dict[str, Any]) -> list[TextPath]:
    if "choices" in fields:
        return [("choices", index) for index in range(len(fields["choices"]))]
    return [(f"choice{number}",) for number in _choice_numbers(fields)]


def _answer_index(label: Any, choices: list[str], label_column: str, fail: Fail) -> int:
    """The index of the right choice from a label that is an index or a choice's text."""
    last = len(choices) - 1
    if label is None or (isinstance(label, str) and not label.strip()):
        message = f"missing label '{label_column}': the right choice's index (0 to {last}) or text"
        fail(message, "missing_field")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, str) and label.strip().isascii() and label.strip().isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        fail(f"label '{label_column}' must be an index or a text, got {label!r}", "wrong_type")
    if isinstance(label, int):
        if not 0 <= label <= last:
            message = f"label {label} is out of range: {len(choices)} choices, so 0 to {last}"
            fail(message, "label_not_in_set")
        return label
    # Compared as cleaning's normalization leaves them, so a cleaned row still finds its answer.
    matches = [i for i, choice in enumerate(choices) if _same_text(choice, label)]
    if not matches:
        message = (
            f"label {label!r} is not one of the choices; give its index (0 to {last}) or exact text"
        )
        fail(message, "label_not_in_set")
    if len(matches) > 1:
        fail(
            f"label {label!r} matches choices {matches}; give the index instead", "ambiguous_label"
        )
    return matches[0]


def _same_text(first: str, second: str) -> bool:
    squeeze = lambda text: " ".join(unicodedata.normalize("NFKC", text).split())  # noqa: E731
    return squeeze(first) == squeeze(second)


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
        fail(f"'{key}' must be a list of turns", "wrong_type")
    if not turns:
        fail(f"'{key}' is empty: the conversation has no turns", "empty_field")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            fail(
                f"{key}[{index}] must be an object with '{role_key}' and '{text_key}'", "wrong_type"
            )
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            fail(
                f"{key}[{index}] has {role_key} {turn.get(role_key)!r}; use one of {sorted(roles)}",
                "unknown_role",
            )
        content = turn.get(text_key)
        if not isinstance(content, str):
            fail(f"{key}[{index}] has no '{text_key}' text", "missing_field")
        if role != "system" and not content.strip():
            fail(f"{key}[{index}]: the {role} turn is empty", "empty_field")
        messages.append({"role": role, "content": content})
    _check_order(messages, key, fail)
    return Example(record.source, record.line, messages=messages, meta=_meta(record, key))


def _check_order(messages: list[dict[str, str]], key: str, fail: Fail) -> None:
    if any(m["role"] == "system" for m in messages[1:]):
        fail(f"{key}: a system message may only come first", "role_order")
    dialogue = [m for m in messages if m["role"] != "system"]
    if not any(m["role"] == "assistant" for m in dialogue):
        fail(f"{key}: the conversation has no assistant turn to learn from", "no_assistant")
    if dialogue[0]["role"] != "user":
        message = f"{key}: the conversation must start with a user turn (after an optional system)"
        fail(message, "role_order")
    for previous, current in itertools.pairwise(dialogue):
        if previous["role"] == current["role"]:
            message = f"{key}: two {current['role']} turns in a row; user and assistant alternate"
            fail(message, "role_order")


def _alpaca(record: Record) -> Example:
    instruction = _text_field(record, "instruction")
    output = _text_field(record, "output")
    extra = record.fields.get("input") or ""
    if not isinstance(extra, str):
        _failer(record)("'input' must be text", "wrong_type")
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
    fail = _failer(record)
    if value is None:
        fail(f"missing field '{key}'", "missing_field")
    if not isinstance(value, str):
        fail(f"field '{key}' must be text, got {type(value).__name__}", "wrong_type")
    if not value.strip():
        fail(f"field '{key}' is empty", "empty_field")
    return value


def _meta(record: Record, *used: str) -> dict[str, Any]:
    return {k: v for k, v in record.fields.items() if k not in used}


Fail = Callable[[str, str], NoReturn]


def _failer(record: Record) -> Fail:
    def fail(message: str, kind: str) -> NoReturn:
        raise DataError(record.source, record.line, message, kind)

    return fail


CONVERTERS: dict[str, Callable[[Record], Example]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "text": _text,
}

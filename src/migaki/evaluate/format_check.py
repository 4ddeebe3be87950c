"""Whether generated answers have the shape the recipe's `eval.format` asks for: `text`
(anything goes), `json` (the answer parses as JSON), or a JSON schema file (`.json`) the
parsed answer must validate against.

An answer may wrap its JSON in one Markdown code fence (```json ... ``` or a bare ``` ...
```) with nothing but whitespace outside it, since chat models write JSON that way; anything
else around the JSON (a sentence before it, two fenced blocks) makes the answer invalid. Any
JSON value counts for `json` (a bare number too); a schema says more (`"type": "object"`).
NaN and Infinity, which Python's json module reads but JSON does not have, are invalid.

A schema is validated by the class its `$schema` names (Draft 2020-12 without one), with
the `format` keyword an annotation only, as Draft 2020-12 specifies."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from migaki.errors import UserError

log = logging.getLogger(__name__)

FENCED = re.compile(r"\A\s*```(?:json)?[ \t]*\n(.*?)\n?[ \t]*```\s*\Z", re.DOTALL | re.IGNORECASE)


def parse_json_answer(text: str) -> tuple[bool, Any]:
    """(True, the value) when the answer is JSON, alone or in one fenced block; else
    (False, None)."""
    fenced = FENCED.match(text)
    body = fenced.group(1) if fenced else text
    try:
        return True, json.loads(body, parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError, and NaN/Infinity refused
        return False, None


def answer_validator(answer_format: str) -> Callable[[str], bool] | None:
    """A function answer -> valid for `eval.format`, or None for `text` (nothing to check).
    A schema file is read and checked here, so calling this before generating names a bad
    file before any time is spent. Raises UserError naming the file when it is missing, is not
    JSON, or is not a valid schema."""
    if answer_format == "text":
        return None
    if answer_format == "json":
        return lambda answer: parse_json_answer(answer)[0]
    validator = _schema_validator(Path(answer_format))

    def valid(answer: str) -> bool:
        parsed, value = parse_json_answer(answer)
        if not parsed:
            return False
        try:
            return validator.is_valid(value)
        except Unresolvable as error:  # a $ref to a file or address the schema cannot reach
            raise UserError(
                f"{answer_format} (eval.format): cannot resolve {error.ref!r}; put the "
                "referenced schema under $defs in the same file"
            ) from error

    return valid


def format_validity(answers: Sequence[str], answer_format: str) -> list[bool]:
    """Per answer, whether it has the shape `eval.format` asks for (always True for `text`).
    Raises UserError for a bad schema file (see `answer_validator`)."""
    valid = answer_validator(answer_format)
    if valid is None:
        return [True] * len(answers)
    return [valid(answer) for answer in answers]


def format_valid(answers: Sequence[str], answer_format: str) -> float:
    """The share of answers with the right shape (`format_validity`); 0.0 for no answers."""
    checks = format_validity(answers, answer_format)
    return sum(checks) / len(checks) if checks else 0.0


def _schema_validator(path: Path):
    where = f"{path} (eval.format)"
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"{where}: no such JSON schema file") from error
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{where}: cannot read the schema file: {error}") from error
    except ValueError as error:
        raise UserError(f"{where}: not JSON: {error}") from error
    if not isinstance(schema, dict | bool):
        raise UserError(f"{where}: a JSON schema is an object (or true/false)")
    cls = validator_for(schema, default=None)
    if cls is None:
        if isinstance(schema, dict) and "$schema" in schema:
            log.warning(
                "%s: unknown $schema %r; validating as JSON Schema Draft 2020-12",
                where,
                schema["$schema"],
            )
        cls = Draft202012Validator
    try:
        cls.check_schema(schema)
    except SchemaError as error:
        place = "/".join(str(part) for part in error.path) or "the top level"
        raise UserError(
            f"{where}: not a valid {cls.__name__} schema at {place}: {error.message}"
        ) from error
    return cls(schema)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")

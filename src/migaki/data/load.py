"""Read rows from jsonl, json, csv, tsv and parquet files, each row tagged with its line.

Every problem becomes a DataError naming the file and line, so a user can open the file at
the right place; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migaki.errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
SUFFIXES |= {".tsv": "tsv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Record:
    """One row of a data file: its fields and where it came from (line, or row for parquet)."""

    source: str
    line: int
    fields: dict[str, Any]


def read_records(path: str | Path) -> list[Record]:
    """All rows of a data file. Raises DataError (file:line) for unreadable content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "data file not found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise DataError(path, None, f"unknown data file type '{path.suffix}' (use {known})")
    if kind == "parquet":
        return _read_parquet(path)
    text = _decode(path)
    if kind == "jsonl":
        records = _read_jsonl(path, text)
    elif kind == "json":
        records = _read_json(path, text)
    else:
        records = _read_delimited(path, text, "\t" if kind == "tsv" else ",")
    if not records:
        raise DataError(path, None, "the file holds no rows")
    return records


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a leading BOM is common in files saved by Excel
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, line, f"not valid UTF-8 (byte {raw[exc.start]:#04x})") from None


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                path, number, f"invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            raise DataError(path, number, f"expected a JSON object, got {type(value).__name__}")
        records.append(Record(str(path), number, value))
    return records


def _read_json(path: Path, text: str) -> list[Record]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            path, exc.lineno, f"invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(path, 1, 'expected a JSON array of objects (or {"data": [...]})')
    records = []
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(path, None, f"item {index}: expected an object")
        records.append(Record(str(path), index, item))
    return records


def _read_delimited(path: Path, text: str, delimiter: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    if not header or any(not name for name in header):
        raise DataError(path, 1, "the first line must be a header naming the columns")
    records = []
    try:
        for row in reader:
            if None in row:
                raise DataError(
                    path, reader.line_num, f"more fields than the {len(header)} columns"
                )
            if all(value in (None, "") for value in row.values()):
                continue
            records.append(Record(str(path), reader.line_num, dict(row)))
    except csv.Error as exc:
        raise DataError(path, reader.line_num, f"malformed row ({exc})") from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise DataError(path, None, f"cannot read parquet ({exc})") from None
    return [Record(str(path), index, row) for index, row in enumerate(rows, start=1)]

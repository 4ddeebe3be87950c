"""Read rows from jsonl, json, csv, tsv, parquet and plain-text files, each row tagged with
its line.

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
SUFFIXES |= {".tsv": "tsv", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """One row of a data file: its fields and where it came from (line, or row for parquet)."""

    source: str
    line: int
    fields: dict[str, Any]


@dataclass
class Scan:
    """Every readable row of a file and every problem found, without stopping at the first."""

    records: list[Record]
    problems: list[DataError]
    notes: list[str]  # oddities that were accepted, e.g. a byte-order mark


def read_records(
    path: str | Path, columns: list[str] | None = None, text_unit: str = "paragraph"
) -> list[Record]:
    """All rows of a data file. Raises DataError (file:line) for the first unreadable row."""
    scan = scan_records(path, columns, text_unit)
    if scan.problems:
        raise scan.problems[0]
    return scan.records


def with_text_column(scan: Scan, text_column: str | None) -> Scan:
    """Rows whose `text_column` field is renamed `text`, the name every format reads; a row
    holding both (or lacking it) becomes a problem of that row."""
    if text_column is None or text_column == "text":
        return scan
    records, problems = [], list(scan.problems)
    for record in scan.records:
        fields = record.fields
        if text_column not in fields or "text" in fields:
            why = "has no field" if text_column not in fields else "also has a field 'text' beside"
            problems.append(
                DataError(
                    record.source,
                    record.line,
                    f"row {why} '{text_column}' (data.text_column)",
                    "missing_field" if text_column not in fields else "ambiguous_field",
                )
            )
            continue
        renamed = {("text" if key == text_column else key): value for key, value in fields.items()}
        records.append(Record(record.source, record.line, renamed))
    return Scan(records, problems, scan.notes)


def scan_records(
    path: str | Path, columns: list[str] | None = None, text_unit: str = "paragraph"
) -> Scan:
    """Read what can be read and collect a DataError per unreadable row. `columns` names the
    columns of a csv/tsv file that has no header line; `text_unit` says whether a row of a
    plain-text file is a paragraph (lines up to a blank line) or a line. A missing file or an
    unknown file type still raises at once: there is nothing to scan."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "data file not found", "file_not_found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise DataError(
            path, None, f"unknown data file type '{path.suffix}' (use {known})", "file_type"
        )
    if kind == "parquet":
        scan = Scan(_read_parquet(path), [], [])
    else:
        raw = path.read_bytes()
        notes = []
        if raw.startswith(BOM):  # common in files saved by Excel; harmless
            notes.append("byte-order mark at the start of the file (accepted)")
            raw = raw[len(BOM) :]
        if kind == "jsonl":
            scan = _scan_jsonl(path, raw)
        elif kind == "json":
            scan = _scan_json(path, raw)
        elif kind == "text":
            scan = _scan_text(path, raw, text_unit)
        else:
            scan = _scan_delimited(path, raw, "\t" if kind == "tsv" else ",", columns)
        scan.notes[:0] = notes
    if not scan.records and not scan.problems:
        scan.problems.append(DataError(path, None, "the file holds no rows", "empty_file"))
    return scan


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode_line(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
        raise DataError(path, number, message, "invalid_utf8") from None


def _scan_jsonl(path: Path, raw: bytes) -> Scan:
    records, problems = [], []
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            line = _decode_line(path, number, raw_line)
            if not line.strip():
                continue
            records.append(Record(str(path), number, _parse_object(path, number, line)))
        except DataError as problem:
            problems.append(problem)
    return Scan(records, problems, [])


def _parse_object(path: Path, number: int, line: str) -> dict[str, Any]:
    if line.startswith("\ufeff"):
        message = "byte-order mark inside the file (were files concatenated?)"
        raise DataError(path, number, message, "bom")
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON ({exc.msg} at column {exc.colno})"
        raise DataError(path, number, message, "invalid_json") from None
    except RecursionError:
        raise DataError(path, number, "invalid JSON (nested too deeply)", "invalid_json") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise DataError(path, number, f"expected a JSON object, got {kind}", "not_object")
    return value


def _scan_json(path: Path, raw: bytes) -> Scan:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return Scan([], [_decode_problem(path, line, raw[exc.start])], [])
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON ({exc.msg} at column {exc.colno})"
        return Scan([], [DataError(path, exc.lineno, message, "invalid_json")], [])
    except RecursionError:
        return Scan(
            [], [DataError(path, 1, "invalid JSON (nested too deeply)", "invalid_json")], []
        )
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        message = 'expected a JSON array of objects (or {"data": [...]})'
        return Scan([], [DataError(path, 1, message, "not_object")], [])
    records, problems = [], []
    for index, item in enumerate(value, start=1):
        if isinstance(item, dict):
            records.append(Record(str(path), index, item))
        else:
            problems.append(
                DataError(path, None, f"item {index}: expected an object", "not_object")
            )
    return Scan(records, problems, [])


def _scan_text(path: Path, raw: bytes, unit: str) -> Scan:
    """Rows `{"text": ...}` of a plain-text file, each tagged with its first line. A line
    that is not UTF-8 is a problem of its own; with paragraphs it also ends the one it is in,
    so no row silently loses a line from its middle."""
    records, problems, block, start = [], [], [], 0

    def close_block() -> None:
        if block:
            records.append(Record(str(path), start, {"text": "\n".join(block)}))
            block.clear()

    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            line = _decode_line(path, number, raw_line).rstrip("\r")
        except DataError as problem:
            problems.append(problem)
            close_block()
            continue
        if unit == "line" or not line.strip():
            close_block()
        if line.strip():
            start = start if block else number
            block.append(line)
    close_block()
    notes = []
    if unit == "paragraph" and len(records) == 1 and "\n" in records[0].fields["text"]:
        lines = records[0].fields["text"].count("\n") + 1
        notes.append(
            f"no blank line in {lines} lines, so the whole file is one row "
            "(data.text_unit: line makes each line a row)"
        )
    return Scan(records, problems, notes)


def _decode_problem(path: Path, line: int, byte: int) -> DataError:
    return DataError(path, line, f"not valid UTF-8 (byte {byte:#04x})", "invalid_utf8")


def _scan_delimited(path: Path, raw: bytes, delimiter: str, columns: list[str] | None) -> Scan:
    problems, bad_lines = [], set()
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(_decode_problem(path, number, raw_line[exc.start]))
            bad_lines.add(number)
    text = raw.decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""), fieldnames=columns, delimiter=delimiter)
    header = reader.fieldnames or []
    if not header or any(not name for name in header) or len(set(header)) != len(header):
        message = "the first line must be a header naming each column once"
        return Scan([], [*problems, DataError(path, 1, message, "bad_header")], [])
    records = []
    try:
        for row in reader:
            if reader.line_num in bad_lines:
                continue
            if None in row:
                message = f"more fields than the {len(header)} columns"
                problems.append(DataError(path, reader.line_num, message, "bad_row"))
                continue
            if all(value in (None, "") for value in row.values()):
                continue
            records.append(Record(str(path), reader.line_num, dict(row)))
    except csv.Error as exc:
        problems.append(DataError(path, reader.line_num, f"malformed row ({exc})", "bad_row"))
    return Scan(records, problems, [])


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise DataError(path, None, f"cannot read parquet ({exc})", "bad_file") from None
    return [Record(str(path), index, row) for index, row in enumerate(rows, start=1)]

"""Read rows from jsonl, json, csv, tsv, parquet and plain-text files, each row tagged with
its line.

A file compressed with gzip, bzip2, xz or zstd is recognised by its first bytes, whatever its
name, and read as the format its name says without the compression suffix (`train.jsonl.gz`
is jsonl). Text is UTF-8, or UTF-16/UTF-32 when the file starts with their byte-order mark.
Every problem becomes a DataError naming the file and line, so a user can open the file at
the right place; nothing is skipped silently.
"""

from __future__ import annotations

import bz2
import csv
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migaki.errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
SUFFIXES |= {".tsv": "tsv", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BOM = b"\xef\xbb\xbf"
COMPRESSED_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}
# Longest first: the UTF-32 little-endian mark starts with the UTF-16 little-endian one.
UNICODE_BOMS = [
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


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
    plain-text file is a paragraph (lines up to a blank line) or a line. A path that is not a
    readable file, an unknown file type or a compressed file that cannot be decompressed still
    raises at once: there is nothing to scan."""
    path = Path(path)
    _check_path(path)
    suffix = _format_suffix(path)
    kind = SUFFIXES.get(suffix)
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        message = f"unknown data file type '{suffix}' (use {known})"
        if not suffix:
            message = f"unknown data file type: the name needs a suffix ({known}; then .gz if any)"
        raise DataError(path, None, message, "file_type")
    if kind == "parquet":
        scan = Scan(_read_parquet(path), [], [])
    else:
        scan = _scan_text_file(path, kind, columns, text_unit)
    if not scan.records and not scan.problems:
        scan.problems.append(DataError(path, None, "the file holds no rows", "empty_file"))
    return scan


def _scan_text_file(path: Path, kind: str, columns: list[str] | None, text_unit: str) -> Scan:
    raw = _decompress(path, _read(path))
    try:
        raw, notes = _as_utf8(path, raw)
    except DataError as problem:
        return Scan([], [problem], [])
    if raw.startswith(BOM):  # common in files saved by Excel; harmless
        notes.append("byte-order mark at the start of the file (accepted)")
        raw = raw[len(BOM) :]
    if not raw.strip():
        message = "the file is empty: it holds no rows"
        if raw:
            message = "the file holds no rows, only blank lines"
        return Scan([], [DataError(path, None, message, "empty_file")], notes)
    if kind == "jsonl":
        scan = _scan_jsonl(path, raw)
    elif kind == "json":
        scan = _scan_json(path, raw)
    elif kind == "text":
        scan = _scan_text(path, raw, text_unit)
    else:
        scan = _scan_delimited(path, raw, "\t" if kind == "tsv" else ",", columns)
    scan.notes[:0] = notes
    return scan


def _check_path(path: Path) -> None:
    """Raise a DataError saying why `path` is not a file that can be read, if it is not."""
    try:
        mode = path.stat().st_mode
    except PermissionError:
        message = "no permission to reach the file (a folder above it may not be readable)"
        raise DataError(path, None, message, "unreadable") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            message = "symbolic link loop (the link leads back to itself); point it at a file"
            raise DataError(path, None, message, "file_not_found") from None
        if path.is_symlink():
            message = f"symbolic link to a missing file ({os.readlink(path)})"
            raise DataError(path, None, message, "file_not_found") from None
        raise DataError(path, None, "data file not found", "file_not_found") from None
    if stat.S_ISDIR(mode):
        message = "is a directory, not a data file (give a file inside it)"
        raise DataError(path, None, message, "not_a_file")
    if not stat.S_ISREG(mode):
        message = "not a regular file (a pipe or a device?); give a data file"
        raise DataError(path, None, message, "not_a_file")


def _read(path: Path, size: int = -1) -> bytes:
    """The first `size` bytes of the file (all with -1); a DataError says why they cannot."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except PermissionError:
        message = "no permission to read the file (ls -l shows who may; chmod u+r FILE allows you)"
        raise DataError(path, None, message, "unreadable") from None
    except OSError as exc:
        message = f"cannot read the file ({exc.strerror or exc})"
        raise DataError(path, None, message, "unreadable") from None


def _format_suffix(path: Path) -> str:
    """The suffix that names the format: `.jsonl` for both `train.jsonl` and `train.jsonl.gz`."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix in COMPRESSED_SUFFIXES else suffix


def _compression(head: bytes) -> str | None:
    """The compression a file's first bytes announce, or None for an uncompressed file."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[3:4] != b"0":
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return None


def _decompress(path: Path, raw: bytes) -> bytes:
    """`raw` decompressed if its first bytes say it is compressed, else `raw` itself."""
    compression = _compression(raw[:6])
    if compression is None:
        return raw
    if compression == "zstd":
        return _decompress_zstd(path, raw)
    module = {"gzip": gzip, "bzip2": bz2, "xz": lzma}[compression]
    try:
        return module.decompress(raw)
    # each module raises its own types for a damaged or truncated stream
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        message = f"{compression}-compressed, but cannot be decompressed ({exc}); is it complete?"
        raise DataError(path, None, message, "bad_file") from None


def _decompress_zstd(path: Path, raw: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        message = (
            "zstd-compressed, and the zstandard package that reads it is not installed: "
            f"decompress it first (zstd -d {path}) and give the decompressed file"
        )
        raise DataError(path, None, message, "compressed") from None
    # frame by frame: a file may hold several (`cat a.zst b.zst`), and a frame written from a
    # pipe carries no content size, so zstandard.decompress() would refuse it
    decompressor, parts, rest = zstandard.ZstdDecompressor(), [], raw
    try:
        while rest:
            frame = decompressor.decompressobj()
            parts.append(frame.decompress(rest))
            if not frame.eof:
                raise zstandard.ZstdError("the data ends inside a frame")
            rest = frame.unused_data
    except zstandard.ZstdError as exc:
        message = f"zstd-compressed, but cannot be decompressed ({exc}); is it complete?"
        raise DataError(path, None, message, "bad_file") from None
    return b"".join(parts)


def _as_utf8(path: Path, raw: bytes) -> tuple[bytes, list[str]]:
    """`raw` re-encoded as UTF-8 if a UTF-16 or UTF-32 byte-order mark starts it (each line
    keeps its number), and the note saying so; else `raw` as it is."""
    for bom, encoding in UNICODE_BOMS:
        if not raw.startswith(bom):
            continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].decode(encoding, errors="replace").count("\n") + 1
            message = f"not valid {encoding} ({exc.reason} at byte {exc.start})"
            raise DataError(path, line, message, "invalid_encoding") from None
        return text.encode("utf-8"), [f"{encoding} text (byte-order mark at the start), decoded"]
    return raw, []


def file_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes as stored (compressed ones not decompressed), hex."""
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

    # an uncompressed file is read from disk, so pyarrow need not hold all its bytes twice
    compressed = _compression(_read(path, 6)) is not None
    source = io.BytesIO(_decompress(path, _read(path))) if compressed else path
    try:
        rows = pq.read_table(source).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise DataError(path, None, f"cannot read parquet ({exc})", "bad_file") from None
    return [Record(str(path), index, row) for index, row in enumerate(rows, start=1)]

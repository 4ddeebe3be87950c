"""Check every row of a data file and report all problems, not only the first.

Problems are DataErrors with a `kind` (invalid_json, no_assistant, label_not_in_set, ...);
warnings are oddities that do not stop training (a byte-order mark, a row longer than
max_length, a label that looks like a typo of another).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from migaki.config import DataConfig
from migaki.data.formats import Example, convert_records
from migaki.data.load import Record, scan_records, with_text_column
from migaki.errors import DataError


@dataclass
class Validation:
    path: str
    fmt: str | None
    records: list[Record]  # the valid rows, in file order
    examples: list[Example]  # the same rows, converted
    problems: list[DataError]
    warnings: list[DataError] = field(default_factory=list)

    @property
    def rows(self) -> int:
        # an empty file's one problem is about the file, not a row of it
        return len(self.records) + sum(p.kind != "empty_file" for p in self.problems)

    def by_kind(self) -> Counter:
        return Counter(problem.kind for problem in self.problems)


def validate_file(
    path: str | Path,
    fmt: str = "auto",
    *,
    label_column: str = "label",
    labels: list[str] | None = None,
    columns: list[str] | None = None,
    text_column: str | None = None,
    text_unit: str = "paragraph",
) -> Validation:
    """Every problem in the file, and warnings. `text_column` names the field read as `text`;
    `text_unit` what a row of a plain-text file is (paragraph or line)."""
    scan = with_text_column(scan_records(path, columns, text_unit), text_column)
    examples, problems, file_format = convert_records(scan.records, fmt, label_column)
    valid_lines = {example.line for example in examples}
    records = [record for record in scan.records if record.line in valid_lines]
    warnings = [DataError(path, None, note, "note") for note in scan.notes]
    problems = scan.problems + problems
    if labels is not None:
        records, examples = _check_label_set(records, examples, labels, label_column, problems)
    else:
        warnings += _label_typos(examples, label_column)
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return Validation(str(path), file_format, records, examples, problems, warnings)


def validate_for(path: str | Path, data: DataConfig) -> Validation:
    """`validate_file` with the format, label and column settings of a recipe's data section."""
    return validate_file(
        path,
        data.format,
        label_column=data.label_column,
        labels=data.labels,
        columns=data.columns,
        text_column=data.text_column,
        text_unit=data.text_unit,
    )


def label_of(example: Example, label_column: str = "label") -> str | None:
    """A classification row's label, or the label field of any other row (for stratifying)."""
    if example.label is not None:
        return example.label
    value = example.meta.get(label_column)
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _check_label_set(
    records: list[Record],
    examples: list[Example],
    labels: list[str],
    label_column: str,
    problems: list[DataError],
) -> tuple[list[Record], list[Example]]:
    allowed = set(labels)
    kept_records, kept_examples = [], []
    for record, example in zip(records, examples, strict=True):
        label = label_of(example, label_column)
        if label is not None and label not in allowed:
            close = difflib.get_close_matches(label, labels, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            message = f"label '{label}' is not one of {sorted(allowed)}{hint}"
            problems.append(DataError(example.source, example.line, message, "label_not_in_set"))
            continue
        kept_records.append(record)
        kept_examples.append(example)
    return kept_records, kept_examples


def _label_typos(examples: list[Example], label_column: str) -> list[DataError]:
    """Rare labels one edit away from a common one are probably typos ('postive')."""
    counts = Counter(label_of(e, label_column) for e in examples)
    counts.pop(None, None)
    if len(counts) < 2:
        return []
    rare_limit = max(2, len(examples) // 1000)
    common = [label for label, n in counts.items() if n > rare_limit]
    warnings = []
    for label, n in counts.items():
        if n > rare_limit:
            continue
        close = difflib.get_close_matches(label, common, n=1, cutoff=0.75)
        if close:
            lines = [e.line for e in examples if label_of(e, label_column) == label][:5]
            message = (
                f"label '{label}' appears {n} time(s) (lines {lines}); a typo of '{close[0]}'?"
            )
            warnings.append(DataError(examples[0].source, lines[0], message, "label_typo"))
    return warnings


def too_long_warnings(
    examples: list[Example], count_tokens: Callable[[Example], int], max_length: int
) -> list[DataError]:
    """A warning per row longer than max_length tokens (the recipe's policy cuts or drops it)."""
    warnings = []
    for example in examples:
        tokens = count_tokens(example)
        if tokens > max_length:
            message = f"{tokens} tokens, longer than max_length {max_length}"
            warnings.append(DataError(example.source, example.line, message, "too_long"))
    return warnings

"""From data files to clean train/val/test rows: validate -> clean -> split -> leakage check ->
augment. `migaki data prepare` writes the result; `migaki train` uses the same function, so
what a recipe trains on is exactly what `prepare` shows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from migaki.config import CleanConfig, DataConfig, DedupConfig
from migaki.data import dedup
from migaki.data.augment import augment_records
from migaki.data.clean import StepReport, clean_records, row_text
from migaki.data.formats import Example, convert
from migaki.data.load import Record, file_hash
from migaki.data.split import split_indices
from migaki.data.tokenize import rendered_length
from migaki.data.validate import label_of, validate_for
from migaki.errors import UserError

PARTS = ("train", "val", "test")


@dataclass
class Prepared:
    """Rows per part (train/val/test, or `data` when not split), in each file's format."""

    formats: dict[str, str]
    parts: dict[str, list[Record]]
    examples: dict[str, list[Example]]
    steps: list[StepReport] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "formats": self.formats,
            "rows": {name: len(rows) for name, rows in self.parts.items()},
            "steps": [step.to_dict() for step in self.steps],
            "hashes": self.hashes,
        }


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    hashes: dict[str, str]  # file path -> sha256 of its bytes
    steps: list[StepReport] = field(default_factory=list)  # what cleaning and splitting did

    @property
    def report(self) -> dict[str, Any]:
        rows = {"train": len(self.train), "val": len(self.val), "test": len(self.test)}
        return {"rows": rows, "steps": [s.to_dict() for s in self.steps], "hashes": self.hashes}


def load_splits(data: DataConfig, seed: int, tokenizer=None) -> Splits:
    """The examples a recipe trains, validates and tests on, after its cleaning and split."""
    prepared = prepare_data(
        data, seed, clean=data.clean, tokenizer=tokenizer, skip_invalid=data.skip_invalid
    )
    examples = prepared.examples
    return Splits(
        examples["train"], examples["val"], examples["test"], prepared.hashes, prepared.steps
    )


def prepare_data(
    data: DataConfig,
    seed: int,
    *,
    clean: CleanConfig | None = None,
    split: bool = True,
    tokenizer=None,
    skip_invalid: bool = False,
) -> Prepared:
    """Read, validate, clean, split and augment the files a DataConfig names."""
    sources = {name: getattr(data, name) for name in PARTS if getattr(data, name)}
    steps: list[StepReport] = []
    formats, parts = {}, {}
    for name, path in sources.items():
        formats[name], parts[name] = _read_valid(path, data, skip_invalid, steps, name)
        if clean is not None:
            counter = _token_counter(tokenizer, data, formats[name])
            parts[name], reports = clean_records(
                parts[name], formats[name], clean, counter, data.label_column
            )
            steps += _named(reports, name, len(sources))
    if data.max_rows is not None and len(parts["train"]) > data.max_rows:
        steps.append(_sample(parts, data.max_rows, seed))
    if split:
        _split_train(parts, formats, data, seed)
        dedup_config = clean.dedup if clean and clean.dedup else DedupConfig()
        if data.split.leakage and (parts.get("val") or parts.get("test")):
            steps.append(_remove_leakage(parts, formats, dedup_config))
    else:
        parts = {"data": parts["train"]}
        formats = {"data": formats["train"]}
    if data.augment is not None and "train" in parts:
        seed_used = data.split.seed if data.split.seed is not None else seed
        parts["train"], report = augment_records(
            parts["train"], formats["train"], data.augment, seed_used
        )
        steps.append(report)
    examples = {
        name: [convert(r, formats[name], data.label_column, data.choice_prompt) for r in rows]
        for name, rows in parts.items()
    }
    hashes = {str(path): file_hash(path) for path in sources.values()}
    return Prepared(formats, parts, examples, steps, hashes)


def _read_valid(
    path: str, data: DataConfig, skip_invalid: bool, steps: list[StepReport], name: str
) -> tuple[str, list[Record]]:
    """The file's valid rows. Invalid rows stop the run unless skipped (and then counted)."""
    validation = validate_for(path, data)
    problems = validation.problems
    if (problems and not skip_invalid) or not validation.records:
        if not problems:
            raise UserError(f"{path}: no valid rows")
        more = len(problems) - 1
        suffix = (
            f" ({more} more problems; `migaki data validate {path}` lists them)" if more else ""
        )
        raise UserError(f"{problems[0]}{suffix}")
    if problems:
        report = StepReport(f"{name}/validate", validation.rows, removed=len(problems))
        for problem in problems:
            report.note(problem.kind, {"line": problem.line, "message": problem.detail})
        steps.append(report)
    return validation.fmt or "text", validation.records


def _sample(parts: dict[str, list[Record]], max_rows: int, seed: int) -> StepReport:
    """A seeded random sample of the training file, in file order."""
    rows = parts["train"]
    report = StepReport("max_rows", len(rows), removed=len(rows) - max_rows)
    report.reasons["over_max_rows"] = report.removed
    keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
    parts["train"] = [rows[i] for i in keep]
    return report


def _token_counter(tokenizer, data: DataConfig, fmt: str) -> Callable[[Record], int] | None:
    if tokenizer is None:
        return None

    def count(record: Record) -> int:
        example = convert(record, fmt, data.label_column, data.choice_prompt)
        return rendered_length(example, tokenizer, data)

    return count


def _named(reports: list[StepReport], source: str, sources: int) -> list[StepReport]:
    if sources > 1:
        for report in reports:
            report.step = f"{source}/{report.step}"
    return reports


def _split_train(
    parts: dict[str, list[Record]], formats: dict[str, str], data: DataConfig, seed: int
) -> None:
    """Cut val and test from train where no file of their own is given."""
    val_share = 0.0 if data.val else data.split.val
    test_share = 0.0 if data.test else data.split.test
    rows = parts["train"]
    labels = _labels(rows, formats["train"], data) if data.split.stratify else None
    groups = _groups(rows, data.group_by)
    split_seed = data.split.seed if data.split.seed is not None else seed
    train, val, test = split_indices(len(rows), val_share, test_share, split_seed, labels, groups)
    parts["train"] = [rows[i] for i in train]
    for name, chosen in (("val", val), ("test", test)):
        if name not in parts:
            parts[name] = [rows[i] for i in chosen]
            formats[name] = formats["train"]
    if not parts["train"]:
        raise UserError(f"{data.train}: no rows left for training after the split")


def _labels(rows: list[Record], fmt: str, data: DataConfig) -> list[str | None] | None:
    labels = [label_of(convert(r, fmt, data.label_column), data.label_column) for r in rows]
    return labels if any(label is not None for label in labels) else None


def _groups(rows: list[Record], group_by: str | None) -> list[Any] | None:
    if group_by is None:
        return None
    groups = [row.fields.get(group_by) for row in rows]
    if all(group is None for group in groups):
        raise UserError(f"data.group_by: no row has a field '{group_by}'")
    return [g if g is None or isinstance(g, (str, int, float, bool)) else str(g) for g in groups]


def _remove_leakage(
    parts: dict[str, list[Record]], formats: dict[str, str], config: DedupConfig
) -> StepReport:
    """Rows of train that (nearly) repeat a val or test row leave train; rows of val that
    repeat a test row leave val. A model must not be scored on what it trained on."""
    texts = {name: [row_text(r, formats[name]) for r in parts[name]] for name in PARTS}
    report = StepReport(
        "leakage", len(parts["train"]) + len(parts["val"]), details={"threshold": config.threshold}
    )
    for name, against in (("train", "test"), ("train", "val"), ("val", "test")):
        if not texts[name] or not texts[against]:
            continue
        found = dedup.cross_duplicates(
            texts[name], texts[against], config.threshold, config.shingle, config.num_perm
        )
        for index, (match, similarity) in sorted(found.items()):
            report.note(
                f"{name}_repeats_{against}",
                {
                    "line": parts[name][index].line,
                    "matches_line": parts[against][match].line,
                    "similarity": round(similarity, 3),
                },
            )
        parts[name] = [r for i, r in enumerate(parts[name]) if i not in found]
        texts[name] = [t for i, t in enumerate(texts[name]) if i not in found]
        report.removed += len(found)
    return report

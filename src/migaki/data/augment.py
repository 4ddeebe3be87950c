"""EDA-style augmentation for small classification data sets (Wei and Zou, 2019).

Operations: swap two words, delete words, insert a word (a synonym when a synonym file is
given, else a word of the same row), replace words by synonyms. Japanese has no spaces, so
rows in Japanese are edited character by character, and synonyms are matched as substrings.
Augmented rows carry `augmented: true` and the line they came from; they are made after the
split, from training rows only, so they never reach val or test.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from migaki.config import AugmentConfig
from migaki.data.clean import StepReport
from migaki.data.formats import get_text, text_paths, with_text
from migaki.data.heuristics import language_of
from migaki.data.load import Record
from migaki.errors import UserError


def load_synonyms(path: str | None) -> dict[str, list[str]]:
    """term -> the other terms of its group; one group per line, comma or tab separated."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise UserError(f"data.augment.synonyms: {path}: file not found")
    table: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        group = [term.strip() for term in re.split(r"[,\t、]", line) if term.strip()]
        for term in group:
            table.setdefault(term.casefold(), []).extend(t for t in group if t != term)
    return table


def augment_records(
    records: list[Record], fmt: str, config: AugmentConfig, seed: int
) -> tuple[list[Record], StepReport]:
    """The training rows followed by their augmented copies."""
    if fmt != "classification":
        raise UserError(
            f"data.augment works on classification rows (a text and a label); this data is {fmt}"
        )
    synonyms = load_synonyms(config.synonyms)
    operations = [op for op in config.operations if op != "synonym" or synonyms]
    if not operations:
        raise UserError("data.augment.operations: only 'synonym' is chosen but no synonyms file")
    rng = random.Random(seed)
    report = StepReport("augment", len(records), details={"operations": operations})
    made = []
    for record in records:
        (path,) = text_paths(record.fields, fmt)
        text = get_text(record.fields, path)
        for _ in range(config.copies):
            operation = rng.choice(operations)
            new = augment_text(text, operation, config.rate, synonyms, rng)
            if new == text or not new.strip():
                report.reasons["unchanged"] += 1
                continue
            fields = with_text(record.fields, path, new)
            fields = {**fields, "augmented": True, "augmented_from": record.line}
            made.append(Record(record.source, record.line, fields))
            report.note(operation, {"line": record.line, "before": text, "after": new})
    report.details["added"] = len(made)
    return records + made, report


def augment_text(
    text: str, operation: str, rate: float, synonyms: dict[str, list[str]], rng: random.Random
) -> str:
    japanese = language_of(text) == "ja"
    if operation == "synonym":
        return _replace_synonyms(text, rate, synonyms, rng, japanese)
    units = list(text) if japanese else text.split()
    if len(units) < 2:
        return text
    changes = max(1, round(rate * len(units)))
    if operation == "swap":
        for _ in range(changes):
            i, j = rng.sample(range(len(units)), 2)
            units[i], units[j] = units[j], units[i]
    elif operation == "delete":
        kept = [u for u in units if rng.random() >= rate]
        units = kept or [rng.choice(units)]
    elif operation == "insert":
        for _ in range(changes):
            word = rng.choice(units)
            choices = synonyms.get(word.casefold())
            units.insert(rng.randrange(len(units) + 1), rng.choice(choices) if choices else word)
    return ("" if japanese else " ").join(units)


def _replace_synonyms(
    text: str, rate: float, synonyms: dict[str, list[str]], rng: random.Random, japanese: bool
) -> str:
    if japanese:
        # Longest terms first, so a compound is replaced before the word inside it.
        present = [t for t in sorted(synonyms, key=len, reverse=True) if t in text]
        for term in present[: max(1, round(rate * len(text) / 4))]:
            text = text.replace(term, rng.choice(synonyms[term]), 1)
        return text
    words = text.split()
    candidates = [i for i, w in enumerate(words) if w.casefold() in synonyms]
    rng.shuffle(candidates)
    for i in candidates[: max(1, round(rate * len(words)))]:
        words[i] = rng.choice(synonyms[words[i].casefold()])
    return " ".join(words)

"""Seeded train/val/test splits: stratified by label, aware of groups; writing a split."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

from migaki.data.formats import Example


def split_examples(
    examples: list[Example], val: float, test: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle with `seed` and cut off test, then val shares."""
    parts = split_indices(len(examples), val, test, seed)
    return tuple([examples[i] for i in part] for part in parts)  # type: ignore[return-value]


def split_indices(
    count: int,
    val: float,
    test: float,
    seed: int,
    labels: Sequence[str | None] | None = None,
    groups: Sequence[Hashable | None] | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Row indices of train, val and test; the same seed gives the same split everywhere.

    With `labels`, each label is split on its own so its share is the same in every split
    (stratified). With `groups`, rows sharing a group (a conversation, a customer) land in the
    same split; a row without a group is a group of its own. Both together stratify groups by
    their most common label."""
    if labels is None and groups is None:
        return _split_units([[i] for i in range(count)], val, test, random.Random(seed))
    units = _units(count, groups)
    rng = random.Random(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for stratum in _strata(units, labels):
        for part, chosen in zip(parts, _split_units(stratum, val, test, rng), strict=True):
            part.extend(chosen)
    return tuple(sorted(part) for part in parts)  # type: ignore[return-value]


def _units(count: int, groups: Sequence[Hashable | None] | None) -> list[list[int]]:
    if groups is None:
        return [[i] for i in range(count)]
    by_group: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        key = ("row", index) if group is None else ("group", group)
        by_group.setdefault(key, []).append(index)
    return list(by_group.values())


def _strata(units: list[list[int]], labels: Sequence[str | None] | None) -> list[list[list[int]]]:
    if labels is None:
        return [units]
    by_label: dict[str, list[list[int]]] = {}
    for unit in units:
        label = Counter(str(labels[i]) for i in unit).most_common(1)[0][0]
        by_label.setdefault(label, []).append(unit)
    return [by_label[label] for label in sorted(by_label)]


def _split_units(
    units: list[list[int]], val: float, test: float, rng: random.Random
) -> tuple[list[int], list[int], list[int]]:
    """Shuffle the units, then fill test and val up to their share of rows."""
    order = list(range(len(units)))
    rng.shuffle(order)
    rows = sum(len(unit) for unit in units)
    targets = (round(rows * test), round(rows * val))
    taken: list[list[int]] = [[], []]
    position = 0
    for part, target in enumerate(targets):
        while position < len(order) and len(taken[part]) < target:
            taken[part].extend(units[order[position]])
            position += 1
    train = [i for u in order[position:] for i in units[u]]
    return sorted(train), sorted(taken[1]), sorted(taken[0])


def write_split(examples: list[Example], path: Path) -> None:
    """Write a split as JSON lines in the messages (or text) format, keeping extra fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            row = {"messages": example.messages} if example.messages is not None else {}
            if example.text is not None:
                row["text"] = example.text
            if example.label is not None:
                row["label"] = example.label
            row.update(example.meta)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

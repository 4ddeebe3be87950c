"""Seeded train/val/test splits, and loading the splits a recipe describes."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from migaki.config import DataConfig
from migaki.data.formats import Example, to_examples
from migaki.data.load import file_hash, read_records
from migaki.errors import UserError


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    hashes: dict[str, str]  # file path -> sha256 of its bytes


def split_examples(
    examples: list[Example], val: float, test: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle with `seed` and cut off test, then val shares; the same seed gives the same
    split on every machine."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * test)
    n_val = round(len(order) * val)
    test_idx, val_idx = order[:n_test], order[n_test : n_test + n_val]
    train_idx = sorted(order[n_test + n_val :])
    pick = lambda idx: [examples[i] for i in idx]  # noqa: E731
    return pick(train_idx), pick(sorted(val_idx)), pick(sorted(test_idx))


def load_splits(data: DataConfig, seed: int) -> Splits:
    """Read the recipe's files; what is not given explicitly is split from `data.train`."""
    paths = {"train": data.train, "val": data.val, "test": data.test}
    loaded = {
        name: to_examples(read_records(path), data.format) for name, path in paths.items() if path
    }
    hashes = {str(path): file_hash(path) for path in paths.values() if path}
    split_seed = data.split.seed if data.split.seed is not None else seed
    val_share = 0.0 if data.val else data.split.val
    test_share = 0.0 if data.test else data.split.test
    train, val, test = split_examples(loaded["train"], val_share, test_share, split_seed)
    if not train:
        raise UserError(f"{data.train}: no rows left for training after the split")
    return Splits(train, loaded.get("val", val), loaded.get("test", test), hashes)


def write_split(examples: list[Example], path: Path) -> None:
    """Write a split as JSON lines in the messages (or text) format, keeping extra fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            row = {"messages": example.messages} if example.messages is not None else {}
            if example.text is not None:
                row["text"] = example.text
            row.update(example.meta)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

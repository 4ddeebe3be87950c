"""Tokenized splits cached as Arrow files, so a second run on the same data skips tokenization.

The key covers everything that decides the tokens: the examples themselves, the tokenizer (its
full definition and chat template) and the rendering settings. A changed file, tokenizer or
setting is a new key; nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa

from migaki.config import Recipe
from migaki.data.formats import Example
from migaki.data.tokenize import TokenizedExample, TokenizeReport, tokenize_all
from migaki.models.bundled import cache_root

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def tokenize_cached(
    examples: list[Example], tokenizer, **settings
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """`tokenize_all` with an Arrow cache in $MIGAKI_CACHE/tokenized (same arguments)."""
    if not examples:
        return tokenize_all(examples, tokenizer, **settings)
    path = cache_root() / "tokenized" / f"{_key(examples, tokenizer, settings)}.arrow"
    if path.is_file():
        try:
            return _read(path)
        except (OSError, pa.ArrowInvalid, KeyError, ValueError):
            log.warning("ignoring a damaged tokenization cache file %s", path)
    rows, report = tokenize_all(examples, tokenizer, **settings)
    _write(path, rows, report)
    return rows, report


def tokenize_for_recipe(
    examples: list[Example], tokenizer, recipe: Recipe, overlong: str
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Tokenize a split the way the recipe's data section says, through the cache; `overlong`
    is data.overlong as the task applies it (`Task.overlong_rows`)."""
    data = recipe.data
    return tokenize_cached(
        examples,
        tokenizer,
        max_length=data.max_length,
        overlong=overlong,
        system_prompt=data.system_prompt,
        train_on_prompt=data.train_on_prompt,
    )


def _key(examples: list[Example], tokenizer, settings: dict) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)  # None for slow tokenizers
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    digest.update(definition.encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps([example.messages, example.text], ensure_ascii=False).encode())
    return digest.hexdigest()[:32]


def _write(path: Path, rows: list[TokenizedExample], report: TokenizeReport) -> None:
    table = pa.table(
        {
            "input_ids": pa.array([r.input_ids for r in rows], type=pa.list_(pa.int32())),
            "labels": pa.array([r.labels for r in rows], type=pa.list_(pa.int32())),
        },
        metadata={
            "report": json.dumps(
                {
                    "rows_in": report.rows_in,
                    "truncated": report.truncated,
                    "split": report.split,
                    "pieces": report.pieces,
                    "dropped": dict(report.dropped),
                }
            )
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp{os.getpid()}")
    with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(staging, path)


def _read(path: Path) -> tuple[list[TokenizedExample], TokenizeReport]:
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    saved = json.loads(table.schema.metadata[b"report"])
    report = TokenizeReport(
        saved["rows_in"],
        saved["truncated"],
        saved.get("split", 0),
        saved.get("pieces", 0),
        Counter(saved["dropped"]),
    )
    rows = [
        TokenizedExample(ids, labels)
        for ids, labels in zip(
            table.column("input_ids").to_pylist(), table.column("labels").to_pylist(), strict=True
        )
    ]
    return rows, report

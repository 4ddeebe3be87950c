"""A validation split of SST-2 that looks like GLUE's dev set, built from the training file.

GLUE's SST-2 dev rows are whole sentences (about 19 words); its training file mixes those
sentences with their parse-tree phrases ("well-conceived", "the expressive power of the
camera"). A validation split drawn at random from the training file is mostly short phrases,
and its sentences' own phrases stay in training: it measures how well a model remembers
phrases, not how it reads a sentence it never saw. This script picks whole sentences instead
(rows of at least --min-words words that are part of no longer row) and removes from training
every row of --phrase-words or more words that occurs inside a chosen sentence, as GLUE's
split does (a dev sentence's phrases
are not in GLUE's training file).

    python benchmarks/sst2_sentences.py ../shared/data/sst2/train.tsv --out /tmp/sst2-sent
    migaki train examples/sst2-minilm-full.yaml \\
        data.train=/tmp/sst2-sent/train.tsv data.val=/tmp/sst2-sent/val.tsv

Writes train.tsv and val.tsv (header `sentence<TAB>label`) and prints what it removed."""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)  # header
        return [(row[0].strip(), row[1]) for row in reader]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)


def whole_sentences(rows: list[tuple[str, str]], min_words: int) -> list[int]:
    """Indices of rows with at least `min_words` words that occur inside no longer row."""
    texts = [text for text, _ in rows]
    long_rows = sorted(
        (i for i, t in enumerate(texts) if len(t.split()) >= min_words),
        key=lambda i: -len(texts[i]),
    )
    # a row can only sit inside a longer one, and every long row's container is long too
    joined = "\n".join(texts[i] for i in long_rows)
    whole = []
    for i in long_rows:
        if joined.count(texts[i]) == 1:  # itself only
            whole.append(i)
    return whole


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=872, help="validation sentences (GLUE: 872)")
    parser.add_argument("--min-words", type=int, default=10)
    parser.add_argument("--phrase-words", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = read_rows(args.train)
    whole = whole_sentences(rows, args.min_words)
    chosen = set(random.Random(args.seed).sample(whole, min(args.rows, len(whole))))
    val = [rows[i] for i in sorted(chosen)]
    # word-bounded, so "good" does not sit inside "goodness"
    sentences = "\n".join(f" {text} " for text, _ in val)
    train, inside = [], 0
    for i, (text, label) in enumerate(rows):
        if i in chosen:
            continue
        # a phrase of a validation sentence; phrases shorter than --phrase-words are common
        # to many sentences (GLUE's training file holds them from its own sentences too)
        if len(text.split()) >= args.phrase_words and f" {text} " in sentences:
            inside += 1
            continue
        train.append((text, label))
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "train.tsv", train)
    write_rows(args.out / "val.tsv", val)
    words = sum(len(t.split()) for t, _ in val) / max(len(val), 1)
    positive = sum(label == "1" for _, label in val) / max(len(val), 1)
    print(
        f"{len(rows)} rows; {len(whole)} whole sentences of {args.min_words}+ words; "
        f"validation {len(val)} of them ({words:.1f} words on average, {positive:.1%} "
        f"positive); training {len(train)} rows ({inside} removed: phrases of "
        f"{args.phrase_words}+ words inside a validation sentence)"
    )


if __name__ == "__main__":
    main()

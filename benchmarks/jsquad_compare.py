"""JSQuAD through `migaki compare`: the bundled Gemma 3 270M zero-shot, few-shot, RAG over the
articles' paragraphs, LoRA-tuned, and tuned with RAG, on held-out questions.

JSQuAD (../shared/data/jsquad/valid.json, JGLUE, CC BY-SA 4.0) is Japanese extractive QA:
a Wikipedia paragraph, questions, and answer spans. The benchmark keeps it closed-book for
training: rows are question -> first answer span, and the articles are split by title, so no
test question's article is trained on (a quarter of the titles, sorted, are held out; a
seeded sample of their questions is the test split). Every paragraph of every article is a
RAG document (`compare.documents`), so RAG has to find the right one among 1,145. Each test
row lists its answer spans as `facts`: `fact_accuracy` is the share of answers that contain
one; exact match and character F1 are against the first span.

    .venv/bin/python benchmarks/jsquad_compare.py --out runs/jsquad            # train, compare
    .venv/bin/python benchmarks/jsquad_compare.py --out runs/jsquad --skip-train   # again
    .venv/bin/python benchmarks/jsquad_compare.py --out /tmp/js --train-rows 200 --test 20 \
        train.max_steps=5                                                      # a smoke test

Prints the comparison table and the recommendation; not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jsquad" / "valid.json"
SYSTEM_PROMPT = "質問に、本文の言葉を使って短く答えてください。"


def split_rows(data: Path, train_rows: int, test_rows: int, seed: int = 0):
    """Train and test rows (by title: a quarter of the titles held out) and every paragraph."""
    articles = json.loads(data.read_text(encoding="utf-8"))["data"]
    titles = sorted(article["title"] for article in articles)
    held_out = set(titles[::4])
    train, test, paragraphs = [], [], []
    for article in articles:
        for paragraph in article["paragraphs"]:
            # contexts start "TITLE [SEP] "; the title stays as the passage's first words
            context = paragraph["context"].replace(" [SEP] ", "：", 1)
            paragraphs.append({"text": context, "title": article["title"]})
            for qa in paragraph["qas"]:
                spans = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                row = {
                    "messages": [
                        {"role": "user", "content": qa["question"]},
                        {"role": "assistant", "content": spans[0]},
                    ],
                    "facts_any": spans,
                }
                (test if article["title"] in held_out else train).append(row)
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)
    return train[:train_rows], test[:test_rows], paragraphs


def write_inputs(out: Path, data: Path, train_rows: int, test_rows: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    train, test, paragraphs = split_rows(data, train_rows, test_rows)
    for name, rows in (("train", train), ("test", test)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                # a row states its fact when it contains the first span (exact match's answer)
                record = {"messages": row["messages"], "facts": [row["facts_any"][0]]}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(out / "paragraphs.jsonl", "w", encoding="utf-8") as handle:
        for paragraph in paragraphs:
            handle.write(json.dumps(paragraph, ensure_ascii=False) + "\n")
    recipe = {
        "name": "jsquad",
        "model": {"base": "gemma3-270m", "accept_license": "gemma"},
        "task": "sft",
        "data": {
            "train": "train.jsonl",
            "test": "test.jsonl",
            "system_prompt": SYSTEM_PROMPT,
            "max_length": 128,
            "split": {"val": 0.05},
        },
        "method": {"name": "lora", "lora_rank": 16, "lora_alpha": 32},
        "train": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "eval_every": 40},
        "eval": {"max_new_tokens": 32},
        "compare": {"documents": ["paragraphs.jsonl"], "k": 3, "chunk_chars": 400},
    }
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    print(f"{len(train)} train rows, {len(test)} test rows, {len(paragraphs)} paragraphs")
    return path


def migaki(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "migaki", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/jsquad"))
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--test", type=int, default=300, help="held-out questions scored")
    parser.add_argument("--skip-train", action="store_true", help="compare the existing run")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.max_steps=5")
    args = parser.parse_args()
    recipe = write_inputs(args.out, args.data, args.train_rows, args.test)
    run = args.out / "run"
    if not args.skip_train:
        seconds = migaki("train", str(recipe), "--out", str(run), *args.overrides)
        print(f"training: {seconds / 60:.1f} min")
    seconds = migaki("compare", str(run))
    print(f"compare: {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()

"""Time `migaki data prepare` step by step on 10k, 50k and 100k rows.

Rows come from ../shared/data/sst2/train.tsv and agnews/train.tsv (English sentences and
news), with a Japanese share generated on top, or all generated when that folder is absent.
Each size runs the whole pipeline (read + validate, normalize, personal data, filters,
exact and near de-duplication, stratified split, leakage check) with the default settings and
prints seconds per step, rows per second, and how time grows with size (near-linear is the
goal: 100k rows under 60 s on a 2-core machine).

With --real it also reports, for the full sst2 and agnews training files, how many exact and
near-duplicates the pipeline removes, and how many rows the leakage check removes from
sst2's train given its dev file as the test split.

    .venv/bin/python benchmarks/data_prepare.py [--sizes 10000,50000,100000] [--real]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from migaki.config import CleanConfig, DataConfig
from migaki.data.clean import dedup_step, filter_step, normalize_step, pii_step
from migaki.data.prepare import prepare_data
from migaki.data.split import split_indices
from migaki.data.validate import label_of, validate_for

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JA_SUBJECTS = ["電気ケトル", "トースター", "炊飯器", "掃除機", "エアコン", "冷蔵庫"]
JA_PHRASES = ["の返品は購入日から30日以内に可能です", "の保証期間は1年間です", "が故障しました"]


def source_rows(limit: int) -> tuple[list[dict], str]:
    """Real English rows where available, a fifth Japanese rows generated with variations."""
    rows: list[dict] = []
    sst2, agnews = SHARED / "sst2" / "train.tsv", SHARED / "agnews" / "train.tsv"
    if sst2.is_file() and agnews.is_file():
        with open(sst2, encoding="utf-8", newline="") as handle:
            rows += [
                {"text": r["sentence"], "label": r["label"]}
                for r in csv.DictReader(handle, delimiter="\t")
            ]
        with open(agnews, encoding="utf-8", newline="") as handle:
            rows += [{"text": t, "label": lab} for t, lab in csv.reader(handle, delimiter="\t")]
        origin = "sst2 + agnews + generated Japanese"
    else:
        origin = "generated"
    rng = random.Random(0)
    while len(rows) < limit * 1.25:
        subject, phrase = rng.choice(JA_SUBJECTS), rng.choice(JA_PHRASES)
        number = rng.randrange(100000)
        contact = f" 連絡先 {number}@example.jp" if rng.random() < 0.05 else ""
        rows.append({"text": f"{subject}KZ-{number}{phrase}。{contact}", "label": str(number % 3)})
        if not origin.startswith("sst2"):
            words = rng.choices(["kettle", "works", "broken", "great", "toaster", "refund"], k=12)
            rows.append({"text": " ".join(words), "label": str(number % 2)})
    rng.shuffle(rows)
    return rows[:limit], origin


def time_pipeline(rows: list[dict], folder: Path) -> dict[str, float]:
    """Seconds per step of the default pipeline on these rows."""
    path = folder / f"rows-{len(rows)}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    data, clean = DataConfig(train=str(path)), CleanConfig()
    timings: dict[str, float] = {}

    def timed(name, function, *args):
        start = time.perf_counter()
        result = function(*args)
        timings[name] = time.perf_counter() - start
        return result

    check = timed("read + validate", validate_for, path, data)
    records, fmt = check.records, check.fmt
    records, _ = timed("normalize", normalize_step, records, fmt, clean.normalize)
    records, _ = timed("personal data", pii_step, records, fmt, clean.pii)
    records, _ = timed("filters", filter_step, records, fmt, clean.filter, None)
    records, report = timed("de-duplicate", dedup_step, records, fmt, clean.dedup)
    labels = [label_of(e) for e in check.examples][: len(records)]
    timed("split", split_indices, len(records), 0.1, 0.1, 0, labels)
    start = time.perf_counter()
    prepared = prepare_data(data, seed=0, clean=clean)
    timings["whole prepare_data"] = time.perf_counter() - start
    leakage = next(s for s in prepared.steps if s.step == "leakage")
    timings["_removed"] = report.removed
    timings["_leakage"] = leakage.removed
    return timings


def real_counts() -> None:
    sst2, agnews = SHARED / "sst2", SHARED / "agnews" / "train.tsv"
    if not sst2.is_dir() or not agnews.is_file():
        print(f"--real: {SHARED} is absent; skipped")
        return
    cases = [
        ("sst2/train.tsv", DataConfig(train=str(sst2 / "train.tsv"))),
        ("agnews/train.tsv", DataConfig(train=str(agnews), columns=["text", "label"])),
        (
            "sst2 train vs dev (dev as test)",
            DataConfig(
                train=str(sst2 / "train.tsv"), test=str(sst2 / "dev.tsv"), split={"val": 0.0}
            ),
        ),
    ]
    for name, data in cases:
        start = time.perf_counter()
        prepared = prepare_data(data, seed=0, clean=CleanConfig())
        seconds = time.perf_counter() - start
        print(f"\n{name}: {seconds:.1f} s")
        for step in prepared.steps:
            print(f"  {step.summary()}")
            if step.step.endswith("dedup") and "label_conflicts" in step.details:
                print(
                    f"    exact duplicates with conflicting labels: "
                    f"{step.details['label_conflicts']}"
                )
        print("  rows out: " + ", ".join(f"{k} {len(v)}" for k, v in prepared.parts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--real", action="store_true", help="also report on the full real files")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, origin = source_rows(max(sizes))
    print(f"rows from {origin}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            results[size] = time_pipeline(rows[:size], Path(tmp))
    steps = [k for k in results[sizes[0]] if not k.startswith("_")]
    print(f"\n{'step':<20}" + "".join(f"{size:>10,}" for size in sizes))
    for step in steps:
        print(f"{step:<20}" + "".join(f"{results[s][step]:>10.2f}" for s in sizes))
    total = {
        s: sum(v for k, v in results[s].items() if not k.startswith(("_", "whole"))) for s in sizes
    }
    print(f"{'sum of steps':<20}" + "".join(f"{total[s]:>10.2f}" for s in sizes))
    print(f"{'rows/s':<20}" + "".join(f"{s / total[s]:>10,.0f}" for s in sizes))
    print(f"{'duplicates removed':<20}" + "".join(f"{results[s]['_removed']:>10,}" for s in sizes))
    smallest, largest = sizes[0], sizes[-1]
    growth = (total[largest] / total[smallest]) / (largest / smallest)
    print(
        f"\ntime grows {total[largest] / total[smallest]:.1f}x for {largest / smallest:.0f}x rows "
        f"(1.0 = linear: {growth:.2f})"
    )
    if args.real:
        real_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())

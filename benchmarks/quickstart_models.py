"""The quickstart on each bundled causal LM, one after the other on this machine, within the same
time budget: the figures the README's "Which default model" table holds.

    python benchmarks/quickstart_models.py                       # gemma3-270m, smollm2, 8 min
    python benchmarks/quickstart_models.py --minutes 0 --models smollm2-135m-instruct
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/quickstart_models.py

Each model runs `migaki quickstart --out DIR model.base=MODEL` in a fresh process, alone on
the CPU (two at once would slow each other), and is timed whole. The last line caps this CPU
at AVX2, as on machines without AVX-512. gemma3-270m needs its licence accepted once
(`migaki models pull gemma3-270m --accept-license`). Prints one row per model: steps that
fit, right facts (all / Japanese / English), character F1, answers that end, minutes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run_one(model: str, minutes: float, out: Path) -> dict:
    command = [sys.executable, "-m", "migaki", "quickstart", "--out", str(out)]
    command += ["--minutes", f"{minutes:g}", f"model.base={model}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        return {"model": model, "error": lines[-1]}
    tuned = json.loads((out / "eval.json").read_text())["systems"]["tuned"]
    manifest = json.loads((out / "manifest.json").read_text())
    budget = manifest.get("time_budget") or {}
    return {
        "model": model,
        "steps": manifest["steps"],
        "recipe_steps": budget.get("recipe_steps", manifest["steps"]),
        "precision": manifest["precision"],
        "seconds": seconds,
        **{key: tuned.get(key) for key in ("fact_accuracy", "char_f1", "stopped")},
        **{f"fact_accuracy_{lang}": tuned.get(f"fact_accuracy_{lang}") for lang in ("ja", "en")},
    }


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m-instruct")
    parser.add_argument("--minutes", type=float, default=8.0, help="the quickstart's budget")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, budget {args.minutes:g} min"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="migaki-qs-") as scratch:
        for model in args.models.split(","):
            rows.append(run_one(model, args.minutes, Path(scratch) / model))
    print(f"{'model':<24}{'steps':>11}{'facts all/ja/en':>24}{'char F1':>9}{'ends':>8}{'min':>7}")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<24} failed: {row['error']}")
            continue
        facts = " / ".join(
            _share(row[key]) for key in ("fact_accuracy", "fact_accuracy_ja", "fact_accuracy_en")
        )
        steps = f"{row['steps']}/{row['recipe_steps']}"
        print(
            f"{row['model']:<24}{steps:>11}{facts:>24}{row['char_f1']:>9.3f}"
            f"{_share(row['stopped']):>8}{row['seconds'] / 60:>7.1f}  ({row['precision']})"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

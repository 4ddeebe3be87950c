"""JCommonsenseQA scored by choice log-likelihood: the bundled SmolLM2-135M-Instruct before and
after LoRA instruction tuning with examples/jcqa-smollm2-lora.yaml.

Each question of ../shared/data/jcommonsenseqa/valid.jsonl (five choices) is rendered as the
chat the recipe trains on; every choice is put in the assistant's turn and the one whose
tokens the model finds most likely is its pick (`migaki eval` does the same for any multiple-
choice data). The base model is scored with both user turns `data.choice_prompt` offers (the
question with its choices listed, and the question alone), the tuned one as it trained.
Prints accuracy by summed log-prob and by mean log-prob per token, chance level, and wall
times. Not a test: nothing is asserted. On a machine shared with other jobs, torch's
worker threads wait on each other at every operation: with OMP_NUM_THREADS=1 a forward pass was
25x faster than with 2 threads on a busy 2-core machine.

    .venv/bin/python benchmarks/jcqa.py --limit 100               # the base model only
    .venv/bin/python benchmarks/jcqa.py --train --out runs/jcqa   # training ~9 min on 2 cores
    .venv/bin/python benchmarks/jcqa.py --run runs/jcqa           # an existing run
    .venv/bin/python benchmarks/jcqa.py --train --limit 20 train.max_steps=5 data.max_rows=200

Scoring 100 rows took 73 s on one busy core (model load and the loss pass included), so all
1,119 rows take about 12 min per model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from migaki.cli import quiet_libraries
from migaki.config import load_recipe
from migaki.evaluate import evaluate
from migaki.rundir import load_run_recipe
from migaki.train import train
from migaki.train.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jcommonsenseqa"
RECIPE = REPO / "examples" / "jcqa-smollm2-lora.yaml"
COLUMNS = ("choice_accuracy", "choice_accuracy_norm", "loss")


def score(
    target: str | Path, valid: Path, limit: int | None, choice_prompt: str | None = None
) -> tuple[dict[str, Any], float]:
    """Choice metrics of a model alias or a run on the validation file, and the seconds taken.
    `choice_prompt` None: as the run trained."""
    start = time.perf_counter()
    result = evaluate(target, data=valid, generate=False, limit=limit, choice_prompt=choice_prompt)
    return result["systems"]["tuned"], time.perf_counter() - start


def train_run(recipe_file: Path, data: Path, out: Path, overrides: list[str]) -> tuple[Path, float]:
    recipe = load_recipe(recipe_file, [f"data.train={data / 'train.jsonl'}", *overrides])
    start = time.perf_counter()
    run = train(recipe, out=out)
    return run, time.perf_counter() - start


def training_summary(run: Path, seconds: float | None) -> str:
    metrics = read_metrics(run)
    steps = max((m.get("step", 0) for m in metrics), default=0)
    val = [m["loss"] for m in metrics if m.get("split") == "val" and "loss" in m]
    parts = [f"{steps} steps"]
    if val:
        parts.append(f"val loss {val[0]:.3f} -> {val[-1]:.3f} (best {min(val):.3f})")
    if seconds is not None:
        parts.append(f"{seconds:.0f} s ({seconds / max(steps, 1):.2f} s/step)")
    return ", ".join(parts)


def print_table(rows: list[tuple[str, dict[str, Any], float]]) -> None:
    head = f"{'system':<28}" + "".join(f"{c:>22}" for c in COLUMNS) + f"{'seconds':>10}"
    print(head)
    print("-" * len(head))
    for name, metrics, seconds in rows:
        cells = "".join(f"{metrics.get(c, float('nan')):>22.4f}" for c in COLUMNS)
        print(f"{name:<28}{cells}{seconds:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides for --train, KEY=VALUE")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JCommonsenseQA folder")
    parser.add_argument("--limit", type=int, help="score the first N rows of valid.jsonl only")
    parser.add_argument("--train", action="store_true", help="train the example recipe first")
    parser.add_argument("--out", type=Path, help="run directory for --train (default: temporary)")
    parser.add_argument("--run", type=Path, help="score this existing run as the tuned model")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--recipe", type=Path, default=RECIPE, help="the example to train (its base is scored)"
    )
    parser.add_argument(
        "--base-prompts",
        default="listed,question",
        help="user turns the base is scored with (data.choice_prompt values, comma-separated)",
    )
    args = parser.parse_args(argv)
    if (args.overrides or args.out) and not args.train:
        parser.error("recipe overrides and --out apply to --train only")
    valid = args.data / "valid.jsonl"
    needed = [valid, *([args.data / "train.jsonl"] if args.train else [])]
    if not all(path.is_file() for path in needed):
        print(f"{args.data}: no JCommonsenseQA {' and '.join(p.name for p in needed)}; skipped")
        return 0
    quiet_libraries()

    rows = []
    base_model = load_recipe(args.recipe).model.base
    for prompt in args.base_prompts.split(","):
        base, base_seconds = score(base_model, valid, args.limit, prompt)
        rows.append((f"base, {prompt}", base, base_seconds))
    run, train_seconds = args.run, None
    with tempfile.TemporaryDirectory() as scratch:
        if args.train:
            out = args.out or Path(scratch) / "run"
            run, train_seconds = train_run(args.recipe, args.data, out, args.overrides)
        if run is not None:
            tuned, tuned_seconds = score(run, valid, args.limit)
            prompt = load_run_recipe(Path(run)).data.choice_prompt
            rows.append((f"tuned, {prompt}", tuned, tuned_seconds))
            summary = training_summary(Path(run), train_seconds)
    print(
        f"\nJCommonsenseQA {valid}: {base['choice_rows']} rows, chance "
        f"{base['choice_chance']:.3f}; torch threads {torch.get_num_threads()}"
    )
    print_table(rows)
    if run is not None:
        print(f"training: {summary}")
    if args.json:
        figures = {name: metrics | {"seconds": seconds} for name, metrics, seconds in rows}
        args.json.write_text(json.dumps({"systems": figures, "train_seconds": train_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a LoRA run learn the same in bf16 autocast as in fp32? And which is faster here?

Trains the quickstart recipe (LoRA, bundled sample data) on --model (default the bundled
SmolLM2-135M-Instruct, as the figures in the README were measured; gemma3-270m needs its
licence accepted once) for --steps steps in each precision, one after the other in this
process, and prints the training loss per step side by side, the largest gap, and seconds per
step. Not a test: it prints.

    python benchmarks/precision_check.py --steps 30
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from migaki.config import load_recipe
from migaki.precision import _bf16_speedup
from migaki.quickstart import recipe_path
from migaki.train import train
from migaki.train.tracking import read_metrics


def run(precision: str, steps: int, root: Path, model: str) -> tuple[dict[int, float], float]:
    recipe = load_recipe(
        recipe_path(),
        [
            f"model.base={model}",
            f"train.precision={precision}",
            f"train.max_steps={steps}",
            "train.eval_every=1000",
            "method.lora_dropout=0",
        ],
    )
    started = time.perf_counter()
    run_dir = train(recipe, out=root / precision)
    seconds = time.perf_counter() - started
    losses = {m["step"]: m["loss"] for m in read_metrics(run_dir) if m.get("split") == "train"}
    return losses, seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"bf16/fp32 matmul speed on this CPU: {_bf16_speedup():.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        fp32, fp32_step = run("fp32", args.steps, Path(tmp), args.model)
        bf16, bf16_step = run("bf16", args.steps, Path(tmp), args.model)
    print(f"{'step':>5} {'fp32':>9} {'bf16':>9}")
    for step in sorted(fp32):
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"{step:>5} {fp32[step]:>9.4f} {bf16[step]:>9.4f}")
    gap = max(abs(fp32[s] - bf16[s]) for s in fp32)
    print(f"largest |fp32 - bf16| loss gap: {gap:.4f}")
    print(
        f"loss fell: fp32 {fp32[1]:.3f} -> {fp32[args.steps]:.3f}, "
        f"bf16 {bf16[1]:.3f} -> {bf16[args.steps]:.3f}"
    )
    print(f"seconds per step (incl. set-up): fp32 {fp32_step:.2f}, bf16 {bf16_step:.2f}")


if __name__ == "__main__":
    main()

"""DPO on Anthropic HH-RLHF harmless pairs with the bundled SmolLM2-135M-Instruct and LoRA
(examples/hh-dpo-smollm2-lora.yaml): preference accuracy on a held-out 20% before and after.

The last 20% of ../shared/data/hh_rlhf_harmless/train.jsonl is held out (written to a scratch
file and given to the recipe as data.val), the rest trains. `pref_accuracy` is the share of
held-out pairs whose implicit reward beta * log(policy / reference) prefers the chosen answer:
0 at step 0, where policy and reference are the same model. For scale the benchmark prints
what answer length alone gives on the same pairs (the shorter answer wins), since DPO is
known to pick up length. Not a test: nothing is asserted.

    .venv/bin/python benchmarks/hh_dpo.py                       # ~20 min on 2 CPU cores
    .venv/bin/python benchmarks/hh_dpo.py train.max_steps=20    # a shorter run
    .venv/bin/python benchmarks/hh_dpo.py --speed               # shared prompts vs whole rows

--speed times one forward and backward pass of the policy log-probabilities (as DPO training
runs them) over batches of real pairs: each pair as one row, its prompt run once and the two
answers kept apart by the attention mask (`pair_logps`, what migaki uses), against every
sequence run as a row of its own (`labelled_logps`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from migaki.cli import quiet_libraries
from migaki.config import load_recipe
from migaki.train import train
from migaki.train.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh_rlhf_harmless" / "train.jsonl"
RECIPE = REPO / "examples" / "hh-dpo-smollm2-lora.yaml"


def hold_out(data: Path, share: float, scratch: Path) -> tuple[Path, Path]:
    """The file's first (1 - share) lines to train on and its last share held out."""
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = len(lines) - round(len(lines) * share)
    train_file, heldout_file = scratch / "train.jsonl", scratch / "heldout.jsonl"
    train_file.write_text("".join(lines[:cut]), encoding="utf-8")
    heldout_file.write_text("".join(lines[cut:]), encoding="utf-8")
    return train_file, heldout_file


def rendered_pairs(data: Path, tokenizer, max_length: int, system_prompt: str | None = None):
    """The valid pairs of a file, tokenized as DPO training renders them."""
    from migaki.config import DataConfig
    from migaki.data.pairs import tokenize_pairs
    from migaki.data.prepare import prepare_data

    config = DataConfig(train=str(data), split={"val": 0.0, "test": 0.0})
    examples = prepare_data(config, 0, skip_invalid=True).examples["train"]
    pairs, _ = tokenize_pairs(
        examples, tokenizer, max_length=max_length, system_prompt=system_prompt
    )
    return pairs


def shorter_wins(recipe, heldout: Path) -> tuple[float, int]:
    """Share of held-out pairs whose chosen answer has fewer tokens, as the recipe renders
    them (ties count half)."""
    from migaki import models

    tokenizer = models.load_tokenizer(models.resolve(recipe.model.base), False)
    pairs = rendered_pairs(heldout, tokenizer, recipe.data.max_length, recipe.data.system_prompt)
    score = sum(
        1.0
        if p.chosen.trainable_tokens < p.rejected.trainable_tokens
        else 0.5
        if p.chosen.trainable_tokens == p.rejected.trainable_tokens
        else 0.0
        for p in pairs
    )
    return score / max(len(pairs), 1), len(pairs)


def run_benchmark(
    data: Path, out: Path | None, overrides: list[str], recipe_file: Path = RECIPE
) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        train_file, heldout = hold_out(data, 0.2, Path(scratch))
        recipe = load_recipe(
            recipe_file, [f"data.train={train_file}", f"data.val={heldout}", *overrides]
        )
        length_baseline, pairs = shorter_wins(recipe, heldout)
        start = time.perf_counter()
        run = train(recipe, out=out or Path(scratch) / "run")
        seconds = time.perf_counter() - start
        metrics = read_metrics(run)
    val = [m for m in metrics if m.get("split") == "val" and "pref_accuracy" in m]
    return {
        "heldout_pairs": pairs,
        "validation": [
            {k: m[k] for k in ("step", "pref_accuracy", "reward_margin", "loss")} for m in val
        ],
        "length_baseline": length_baseline,
        "train_seconds": seconds,
        "run": str(out) if out else None,
    }


def print_benchmark(figures: dict) -> None:
    print(f"\nheld-out pairs: {figures['heldout_pairs']}")
    print(f"{'step':>6}{'pref_accuracy':>16}{'reward_margin':>16}{'val loss':>10}")
    for row in figures["validation"]:
        print(
            f"{row['step']:>6}{row['pref_accuracy']:>16.3f}"
            f"{row['reward_margin']:>16.3f}{row['loss']:>10.4f}"
        )
    print(f"answer length alone (shorter wins): {figures['length_baseline']:.3f}")
    minutes = figures["train_seconds"] / 60
    print(f"migaki train: {minutes:.1f} min; torch threads {torch.get_num_threads()}")


def speed(data: Path, batches: int, batch_pairs: int, max_length: int) -> dict:
    """Seconds per forward+backward of the policy log-probs: shared prompts vs whole rows."""
    from migaki import models
    from migaki.config import MethodConfig
    from migaki.data.pairs import collate_pairs
    from migaki.methods import apply_method
    from migaki.objectives import labelled_logps, pair_logps
    from migaki.precision import autocast as _autocast
    from migaki.precision import choose_precision

    source = models.resolve("smollm2-135m-instruct")
    tokenizer = models.load_tokenizer(source, False)
    model = apply_method(models.load_causal_lm(source), MethodConfig(lora_dropout=0.0), "dpo")
    pairs = rendered_pairs(data, tokenizer, max_length)[: batches * batch_pairs]
    device = torch.device("cpu")
    precision = choose_precision("auto", device)
    times = {"shared prompt (pair_logps)": 0.0, "whole rows (labelled_logps)": 0.0}
    for i in range(batches):
        rows = pairs[i * batch_pairs : (i + 1) * batch_pairs]
        batch = collate_pairs(rows, tokenizer.pad_token_id)
        for name, function in zip(times, (pair_logps, labelled_logps), strict=True):
            start = time.perf_counter()
            with _autocast(precision, device):
                logps, _ = function(model, batch)
            logps.sum().backward()
            times[name] += time.perf_counter() - start
            model.zero_grad()
    real = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
    return {
        "batches": batches,
        "pairs_per_batch": batch_pairs,
        "max_length": max_length,
        "precision": precision,
        "seconds": times,
        "real_tokens": real,
    }


def print_speed(figures: dict) -> None:
    seconds = figures["seconds"]
    whole = seconds["whole rows (labelled_logps)"]
    print(
        f"\n{figures['batches']} batches of {figures['pairs_per_batch']} HH pairs, max_length "
        f"{figures['max_length']}, {figures['precision']}, forward + backward of policy log-probs"
    )
    for name, value in seconds.items():
        rate = figures["real_tokens"] / value
        print(f"{name:<30}{value:>8.1f} s{rate:>10.0f} real tokens/s{whole / value:>8.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, KEY=VALUE")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH harmless jsonl")
    parser.add_argument("--out", type=Path, help="keep the run directory here")
    parser.add_argument("--speed", action="store_true", help="time shared prompts vs whole rows")
    parser.add_argument("--batches", type=int, default=6, help="--speed: batches timed")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the example to train")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"{args.data}: no HH-RLHF harmless pairs; skipped")
        return 0
    quiet_libraries()
    if args.speed:
        figures = speed(args.data, args.batches, 8, 160)
        print_speed(figures)
    else:
        figures = run_benchmark(args.data, args.out, args.overrides, args.recipe)
        print_benchmark(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

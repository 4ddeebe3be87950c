"""Generation speed of a run's evaluation, side by side in one process: the adapter left as PEFT
layers against merged into the base, and the generation batch size.

    python benchmarks/generation_speed.py RUN_DIR [--batch-sizes 8,16,64] [--rows 37]

Prints seconds for the run's test questions at eval.max_new_tokens, and the share of answers
that ended by themselves (which must not change with the batch size beyond float noise)."""

from __future__ import annotations

import argparse
import time

import torch

from migaki.data import read_records
from migaki.data.formats import convert_records
from migaki.evaluate import generate_answers
from migaki.methods import load_final, merged
from migaki.models.inference import load_for_inference
from migaki.models.load import load_causal_lm, resolve
from migaki.rundir import final_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--batch-sizes", default="8,16,64")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()

    peft = load_for_inference(args.run)
    recipe = peft.recipe
    rows, _, _ = convert_records(read_records(f"{args.run}/data/test.jsonl"), "auto")
    conversations = [e.prompt_messages for e in rows][: args.rows]
    tokens = recipe.eval.max_new_tokens
    print(
        f"{len(conversations)} questions, {tokens} new tokens at most, precision "
        f"{peft.precision}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"{'model':<10}{'batch':>6}{'seconds':>10}{'stopped':>10}")

    base = load_causal_lm(resolve(recipe.model.base, recipe.model.accept_license))
    model = merged(
        recipe.method.name, load_final(recipe.method.name, base, str(final_dir(args.run)))
    )
    folded = type(peft)(model.eval(), peft.tokenizer, recipe, peft.precision)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for label, loaded in (("peft", peft), ("merged", folded)):
            start = time.perf_counter()
            answers = generate_answers(loaded, conversations, tokens, batch_size=batch)
            seconds = time.perf_counter() - start
            stopped = sum(s for _, s in answers) / len(answers)
            print(f"{label:<10}{batch:>6}{seconds:>10.1f}{stopped:>10.1%}")


if __name__ == "__main__":
    main()

"""Generation speed of a run's evaluation, side by side in one process: migaki's way before
batched generation (transformers' `generate` on fixed left-padded batches, every row running
until its batch's longest ends, the adapter apart; kept below as the reference) against
`generate_answers` (rows leave the batch when they end, waiting rows join it) on the model as
`eval` loads it (`load_for_generation`: a LoRA adapter merged), for the tuned model and its base.

    python benchmarks/generation_speed.py RUN_DIR [--rows 37] [--batch-size 32]
        [--precision fp32|bf16]

Prints seconds for the run's test questions at eval.max_new_tokens, the speed-up, the share
of answers that ended by themselves, and how many answers are identical to the reference's.
The tuned model also runs the new way with its adapter apart, which shows what merging
gives; `--precision` overrides the one this machine picks (`auto`: bf16 where it measured
faster). Not a test: nothing is asserted. On a busy machine set OMP_NUM_THREADS=1 (see
benchmarks/jcqa.py).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from dataclasses import replace

import torch

from migaki.data import read_records
from migaki.data.formats import convert_records
from migaki.data.tokenize import render_prompt
from migaki.evaluate import generate_answers, load_for_generation
from migaki.models.inference import LoadedModel, load_for_inference
from migaki.models.templates import end_of_turn_ids
from migaki.precision import autocast


@torch.no_grad()
def generate_answers_before(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 128,
    batch_size: int = 32,
) -> list[tuple[str, bool]]:
    """`generate_answers` as it was before batched generation (greedy only)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    stops = end_of_turn_ids(tokenizer)
    system_prompt = loaded.recipe.data.system_prompt if loaded.recipe else None
    prompts = [render_prompt(tokenizer, messages, system_prompt) for messages in conversations]
    device = next(model.parameters()).device
    results = []
    tokenizer.padding_side = "left"
    batch_size = math.ceil(len(prompts) / math.ceil(len(prompts) / batch_size))  # evened out
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        with autocast(loaded.precision, device):
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                use_cache=True,
                do_sample=False,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops[0] if len(stops) == 1 else stops,
            )
        for row in output[:, encoded["input_ids"].shape[1] :]:
            ids = row.tolist()
            end = next((i for i, token in enumerate(ids) if token in stops), None)
            if end is not None:
                ids = ids[:end]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip().rstrip("\ufffd")
            results.append((text, end is not None))
    tokenizer.padding_side = "right"
    return results


def cpu_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--rows", type=int, default=None, help="the first N test questions")
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    args = parser.parse_args()

    apart = load_for_inference(args.run)
    tuned = load_for_generation(args.run)
    base = load_for_inference(args.run, tuned=False)
    if args.precision:
        apart, tuned, base = (replace(m, precision=args.precision) for m in (apart, tuned, base))
    recipe = tuned.recipe
    rows, _, _ = convert_records(read_records(f"{args.run}/data/test.jsonl"), "auto")
    conversations = [e.prompt_messages for e in rows][: args.rows]
    tokens = recipe.eval.max_new_tokens
    batch = args.batch_size or recipe.eval.batch_size
    print(
        f"{len(conversations)} questions, {tokens} new tokens at most, batch size {batch}, "
        f"precision {tuned.precision}, {torch.get_num_threads()} threads, CPU {cpu_name()} "
        f"({torch.backends.cpu.get_cpu_capability()})"
    )
    systems = [("tuned", apart, tuned), ("base", base, base)]
    print(f"{'model':<8}{'way':<26}{'seconds':>9}{'speed-up':>10}{'stopped':>9}{'identical':>11}")
    for name, reference, loaded in systems:
        before, before_s = timed(generate_answers_before, reference, conversations, tokens, batch)
        ways = [("new", loaded)]
        if type(loaded.model) is not type(reference.model):  # merging changed the model
            ways.insert(0, ("new, adapter apart", reference))
        print(f"{name:<8}{'before':<26}{before_s:>9.1f}{'':>10}{_stopped(before):>9.1%}")
        for label, model in ways:
            answers, seconds = timed(generate_answers, model, conversations, tokens, batch)
            same = sum(a == b for a, b in zip(answers, before, strict=True))
            print(
                f"{name:<8}{label:<26}{seconds:>9.1f}{before_s / seconds:>9.2f}x"
                f"{_stopped(answers):>9.1%}{f'{same}/{len(answers)}':>11}"
            )


def _stopped(answers: list[tuple[str, bool]]) -> float:
    return sum(stopped for _, stopped in answers) / max(len(answers), 1)


if __name__ == "__main__":
    main()

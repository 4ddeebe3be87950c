"""Multiple-choice scoring speed on JCommonsenseQA, three ways side by side in one process, on
the same rows and the same model, with the same answers:

  (a) one forward pass per choice: each choice row alone through `answer_logprobs`;
  (b) one question at a time: its prompt once, the key/value cache repeated for the choices
      as one padded batch (migaki's way before batched scoring, kept below as the reference);
  (c) `score_choices`: the choices of many questions per pass (`choice_logprobs`).

    .venv/bin/python benchmarks/choice_scoring.py --limit 200
    .venv/bin/python benchmarks/choice_scoring.py [--model smollm2-135m-instruct | --model RUN]
    .venv/bin/python benchmarks/choice_scoring.py --ways ac      # (b) left out: 1,000 questions

The questions go in chunks and the three ways take turns on each chunk (their order rotating),
so a machine shared with other jobs slows them alike and the ratios hold. Prints seconds,
speed-ups, accuracy of each (which must be equal) and the largest difference between their
log-probabilities. Not a test: nothing is asserted. On a busy machine set OMP_NUM_THREADS=1
(torch's worker threads wait on each other at every operation there, see benchmarks/jcqa.py).
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from migaki.cli import quiet_libraries
from migaki.data.batches import collate
from migaki.data.tokenize import TokenizedExample
from migaki.evaluate.choices import answer_logprobs, score_choices, tokenize_choices
from migaki.evaluate.evaluation import conversation_examples
from migaki.models.inference import LoadedModel, load_for_inference
from migaki.objectives import decoder, is_prompt_learning, logps_from_states
from migaki.precision import autocast
from migaki.rundir import is_run, load_run_recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jcommonsenseqa" / "valid.jsonl"
WAYS = ("a: one pass per choice", "b: one question per pass", "c: batched (score_choices)")


def one_pass_per_choice(loaded: LoadedModel, questions: list) -> list[list[float]]:
    pad, device = loaded.tokenizer.pad_token_id, next(loaded.model.parameters()).device
    scores = []
    for rows in questions:
        alone = []
        for row in rows:
            batch = {key: value.to(device) for key, value in collate([row], pad).items()}
            alone.append(answer_logprobs(loaded.model, batch)[0].item())
        scores.append(alone)
    return scores


def one_question_per_pass(loaded: LoadedModel, questions: list) -> list[list[float]]:
    pad = loaded.tokenizer.pad_token_id
    return [question_logprobs(loaded.model, rows, pad)[0].tolist() for rows in questions]


def question_logprobs(
    model, rows: list[TokenizedExample], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """migaki's scoring of one question before batched scoring, as it was: the rows' common
    token prefix once, its cache repeated for the rest of each row (a padded batch)."""
    device = next(model.parameters()).device
    shared = _shared_prefix(rows)
    if shared == 0 or is_prompt_learning(model):
        batch = collate(rows, pad_token_id)
        return answer_logprobs(model, {key: value.to(device) for key, value in batch.items()})
    body = decoder(model)
    prefix = body(
        input_ids=torch.tensor([rows[0].input_ids[:shared]], device=device), use_cache=True
    )
    cache, cache_name = _cache_of(prefix, body)
    cache.batch_repeat_interleave(len(rows))
    rest = collate(
        [TokenizedExample(r.input_ids[shared:], r.labels[shared:]) for r in rows], pad_token_id
    )
    rest = {key: value.to(device) for key, value in rest.items()}
    seen = torch.ones(len(rows), shared, dtype=rest["attention_mask"].dtype, device=device)
    tail = body(
        input_ids=rest["input_ids"],
        attention_mask=torch.cat([seen, rest["attention_mask"]], dim=1),
        use_cache=True,
        **{cache_name: cache},
    )
    hidden = torch.cat(
        [prefix.last_hidden_state.expand(len(rows), -1, -1), tail.last_hidden_state], dim=1
    )
    prefix_labels = torch.tensor([rows[0].labels[:shared]] * len(rows), device=device)
    labels = torch.cat([prefix_labels, rest["labels"]], dim=1)
    return logps_from_states(model.get_output_embeddings(), hidden, labels)


def _cache_of(output, body: torch.nn.Module) -> tuple[object, str]:
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = output.past_key_values
    takes_cache = "cache" in inspect.signature(body.forward).parameters
    return cache, "cache" if takes_cache else "past_key_values"


def _shared_prefix(rows: list[TokenizedExample]) -> int:
    shortest = min(len(row.input_ids) for row in rows)
    length = 0
    while length < shortest - 1 and all(
        row.input_ids[length] == rows[0].input_ids[length] for row in rows
    ):
        length += 1
    return length


def cpu_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


def accuracy(scores: list[list[float]], answers: list[int]) -> float:
    picks = [max(range(len(row)), key=lambda i: (row[i], -i)) for row in scores]
    return sum(p == a for p, a in zip(picks, answers, strict=True)) / max(len(answers), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JCommonsenseQA file")
    parser.add_argument("--limit", type=int, default=1000, help="the first N questions")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model alias or run")
    parser.add_argument("--batch-size", type=int, default=32, help="choice rows per pass, (c)")
    parser.add_argument("--chunk", type=int, default=100, help="questions per turn of each way")
    parser.add_argument("--ways", default="abc", help="which of a, b, c to run (a always runs)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: auto")
    args = parser.parse_args(argv)
    # (a) is what the others are measured against, so it always runs
    chosen = sorted({0} | {"abc".index(w) for w in args.ways.lower() if w in "abc"})
    if not args.data.is_file():
        print(f"{args.data}: no JCommonsenseQA file; skipped")
        return 0
    quiet_libraries()
    loaded = load_for_inference(args.model)
    if args.precision:
        loaded = replace(loaded, precision=args.precision)
    recipe = load_run_recipe(Path(args.model)) if is_run(Path(args.model)) else None
    examples = conversation_examples(Path(args.model), args.data, recipe, None, None)
    examples = examples[: args.limit]
    system_prompt = recipe.data.system_prompt if recipe else None
    questions = [tokenize_choices(e, loaded.tokenizer, system_prompt) for e in examples]
    answers = [e.meta["answer"] for e in examples]
    rows = sum(len(q) for q in questions)
    tokens = sum(len(r.input_ids) for q in questions for r in q)
    print(
        f"{len(examples)} questions ({rows} choice rows, {tokens} tokens as whole rows) of "
        f"{args.data}; model {args.model}, precision {loaded.precision}; CPU {cpu_name()}, "
        f"torch threads {torch.get_num_threads()}, batch size (c) {args.batch_size} rows"
    )
    ways = (
        one_pass_per_choice,
        one_question_per_pass,
        lambda loaded, qs: score_choices(loaded, qs, batch_size=args.batch_size).logprobs,
    )
    seconds = [0.0] * 3
    scores: list[list[list[float]]] = [[], [], []]
    device = next(loaded.model.parameters()).device
    loaded.model.eval()
    for turn, start in enumerate(range(0, len(examples), args.chunk)):
        for way in [chosen[(turn + k) % len(chosen)] for k in range(len(chosen))]:
            chunk = slice(start, start + args.chunk)
            # (c) takes the examples and tokenizes them itself; that time is counted
            given = examples[chunk] if way == 2 else questions[chunk]
            began = time.perf_counter()
            with torch.no_grad(), autocast(loaded.precision, device):
                scores[way] += ways[way](loaded, given)
            seconds[way] += time.perf_counter() - began
        done = min(start + args.chunk, len(examples))
        spent = ", ".join(f"{'abc'[w]} {seconds[w]:.0f} s" for w in chosen)
        print(f"  {done} questions: {spent}", file=sys.stderr)

    print(f"{'way':<32}{'seconds':>10}{'a / this':>10}{'accuracy':>10}{'max |diff| to a':>18}")
    for way in chosen:
        name = WAYS[way]
        diff = max(
            abs(x - y)
            for mine, theirs in zip(scores[way], scores[0], strict=True)
            for x, y in zip(mine, theirs, strict=True)
        )
        print(
            f"{name:<32}{seconds[way]:>10.1f}{seconds[0] / seconds[way]:>9.2f}x"
            f"{accuracy(scores[way], answers):>10.4f}{diff:>18.2e}"
        )
    same = {accuracy(scores[way], answers) for way in chosen}
    versus = f"b / c: {seconds[1] / seconds[2]:.2f}x; " if 1 in chosen and 2 in chosen else ""
    print(f"{versus}accuracies {'equal' if len(same) == 1 else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

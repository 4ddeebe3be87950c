"""Generation with the same chat rendering as training."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from migaki.data.tokenize import render_prompt
from migaki.models.inference import LoadedModel, load_for_inference
from migaki.models.templates import end_of_turn_ids
from migaki.precision import autocast
from migaki.rundir import is_run, load_run_recipe
from migaki.tasks import check_generates


def load_for_generation(
    target: str | Path, tuned: bool = True, verify: bool = False
) -> LoadedModel:
    """`load_for_inference`, refusing a run whose task scores rather than generates (one line
    naming the run and the command that scores it)."""
    path = Path(target)
    check_generates(path, load_run_recipe(path) if is_run(path) else None)
    return load_for_inference(path, tuned, verify)


@torch.no_grad()
def generate_answers(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 128,
    batch_size: int = 32,
    temperature: float = 0.0,
) -> list[tuple[str, bool]]:
    """Answers to each conversation (greedy when temperature is 0) and whether the model
    ended its turn by itself (rather than hitting max_new_tokens): at the chat template's
    end-of-turn token, or EOS. Rows go in batches of at most `batch_size`, evened out (37 rows
    at 32: 19 and 18): on a 2-core CPU 37 questions at once took half the time of batches of
    8 (benchmarks/generation_speed.py)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    stops = end_of_turn_ids(tokenizer)
    system_prompt = loaded.recipe.data.system_prompt if loaded.recipe else None
    prompts = [render_prompt(tokenizer, messages, system_prompt) for messages in conversations]
    device = next(model.parameters()).device
    results = []
    if not prompts:
        return []
    tokenizer.padding_side = "left"  # generation continues from the right end of each row
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
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops[0] if len(stops) == 1 else stops,
            )
        for row in output[:, encoded["input_ids"].shape[1] :]:
            ids = row.tolist()
            end = next((i for i, token in enumerate(ids) if token in stops), None)
            stopped = end is not None
            if stopped:
                ids = ids[:end]
            # a cut at max_new_tokens can split a multi-byte character; drop the broken tail
            text = tokenizer.decode(ids, skip_special_tokens=True).strip().rstrip("\ufffd")
            results.append((text, stopped))
    tokenizer.padding_side = "right"
    return results

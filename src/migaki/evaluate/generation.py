"""Generation with the same chat rendering as training, and loading a run's tuned model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from migaki import models
from migaki.config import Recipe
from migaki.data.tokenize import render_prompt
from migaki.errors import UserError
from migaki.methods import load_final
from migaki.rundir import final_dir, load_run_recipe
from migaki.train.precision import choose_precision


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe | None  # None for a bare base model
    precision: str


def refuse_reward_model(path: Path, recipe) -> None:
    if recipe is not None and recipe.task == "reward":
        raise UserError(
            f"{path}: a reward model scores conversations and does not generate text; "
            f"`migaki eval {path} --data PAIRS` scores preference pairs with it"
        )


def load_for_inference(target: str | Path, tuned: bool = True) -> LoadedModel:
    """A run directory (its final/ on top of its base) or any model migaki loads.

    With `tuned=False` a run gives its base model, rendered the same way."""
    path = Path(target)
    recipe = load_run_recipe(path) if (path / "recipe.yaml").is_file() else None
    if recipe is not None and recipe.task == "classification":
        raise UserError(
            f"{path}: a {recipe.task} run does not generate text; "
            f"`migaki eval {path} --data FILE` scores it"
        )
    refuse_reward_model(path, recipe)
    base_name = recipe.model.base if recipe else str(target)
    source = models.resolve(base_name)
    tokenizer = models.load_tokenizer(source, recipe.model.trust_remote_code if recipe else False)
    model = models.load_causal_lm(source)
    if recipe is not None and tuned:
        model = load_final(recipe.method.name, model, str(final_dir(path)))
    model.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    precision = choose_precision("auto", device)
    return LoadedModel(model, tokenizer, recipe, precision)


@torch.no_grad()
def generate_answers(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    temperature: float = 0.0,
) -> list[tuple[str, bool]]:
    """Answers to each conversation (greedy when temperature is 0) and whether the model
    ended its turn by itself (rather than hitting max_new_tokens)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    system_prompt = loaded.recipe.data.system_prompt if loaded.recipe else None
    prompts = [render_prompt(tokenizer, messages, system_prompt) for messages in conversations]
    device = next(model.parameters()).device
    results = []
    tokenizer.padding_side = "left"  # generation continues from the right end of each row
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        with _autocast(loaded.precision, device):
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                use_cache=True,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row in output[:, encoded["input_ids"].shape[1] :]:
            ids = row.tolist()
            stopped = tokenizer.eos_token_id in ids
            if stopped:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            # a cut at max_new_tokens can split a multi-byte character; drop the broken tail
            text = tokenizer.decode(ids, skip_special_tokens=True).strip().rstrip("\ufffd")
            results.append((text, stopped))
    tokenizer.padding_side = "right"
    return results


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)

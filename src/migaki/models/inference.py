"""Loading a causal LM to run: a run's tuned model (its final/ on top of its base) or any
model migaki loads, on the inference device, with the precision it runs in. What a run's task
allows (a classifier does not generate) is for the caller to ask (`migaki.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from migaki.config import Recipe
from migaki.methods import load_final
from migaki.models.load import load_causal_lm, load_tokenizer, resolve
from migaki.precision import choose_precision, inference_device
from migaki.rundir import final_dir, is_run, load_run_recipe


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe | None  # None for a bare base model
    precision: str


def load_for_inference(target: str | Path, tuned: bool = True) -> LoadedModel:
    """A run directory (its final/ on top of its base) or any model migaki loads.

    With `tuned=False` a run gives its base model, rendered the same way. Raises UserError
    for a run without final/ or a model that cannot be found."""
    path = Path(target)
    recipe = load_run_recipe(path) if is_run(path) else None
    source = resolve(recipe.model.base if recipe else str(target))
    tokenizer = load_tokenizer(source, recipe.model.trust_remote_code if recipe else False)
    model = load_causal_lm(source)
    if recipe is not None and tuned:
        model = load_final(recipe.method.name, model, str(final_dir(path)))
    model.eval()
    device = inference_device()
    model.to(device)
    return LoadedModel(model, tokenizer, recipe, choose_precision("auto", device))

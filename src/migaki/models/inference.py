"""Loading a causal LM to run: a run's tuned model (its final/ on top of its base) or any
model migaki loads, on the inference device, with the precision it runs in. What a run's task
allows (a classifier does not generate) is for the caller to ask (`migaki.tasks`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from migaki.config import Recipe
from migaki.errors import UserError
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


def load_for_inference(target: str | Path, tuned: bool = True, verify: bool = False) -> LoadedModel:
    """A run directory (its final/ on top of its base) or any model migaki loads.

    With `tuned=False` a run gives its base model, rendered the same way; `verify` hashes
    final/ whatever its size. Raises UserError for a run without final/ or with a damaged
    one, or a model that cannot be found."""
    path = Path(target)
    recipe = load_run_recipe(path) if is_run(path) else None
    final = final_dir(path, verify) if recipe is not None and tuned else None  # before loading
    accept_license = recipe.model.accept_license if recipe else None
    source = resolve(recipe.model.base if recipe else str(target), accept_license)
    model_config = recipe.model if recipe else None
    tokenizer = load_tokenizer(
        source,
        model_config.trust_remote_code if model_config else False,
        chat_template=model_config.chat_template if model_config else None,
    )
    model = load_causal_lm(source)
    if final is not None:
        with named_final_errors(final):
            model = load_final(recipe.method.name, model, str(final))
    model.eval()
    device = inference_device()
    model.to(device)
    return LoadedModel(model, tokenizer, recipe, choose_precision("auto", device))


@contextmanager
def named_final_errors(final: Path) -> Iterator[None]:
    """Turn a failure to load a run's final/ into one UserError naming it: a final/ written
    before file manifests has nothing to check it against."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{final}: cannot be loaded ({type(exc).__name__}: {_first_line(exc)}); the "
            "run's result is damaged: copy it again or train the run again"
        ) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else "damaged"

"""Continual learning: a run that starts from an earlier run's result (`train.init_from`, or
`migaki train RECIPE --init-from RUN`).

What carries over depends on what the earlier run's final/ holds:

- an adapter (PEFT methods lora, dora, qlora, ia3, prefix, prompt, or migaki's `adapter`):
  the new run applies the same method, with the same settings, to the same base model and
  loads the adapter's weights into it, so it goes on training that adapter. Its final/ is
  again an adapter on the recipe's base model. The task may change between those that train
  the language model (sft to pretrain, say), not to DPO, KTO or a task with a head.
- a whole model (full, freeze, gradual, head): final/ becomes the new run's base model
  (`model.base` is set to it, and recipe.yaml records that), and the recipe's method, any
  method, is applied to it. A causal-LM final/ may start a run of another task (an SFT model
  as the start of DPO, a reward model or a classifier); a classifier starts only classifiers.

Either way the earlier run must have been trained from the recipe's `model.base`: its tokens,
its architecture and, for adapters, its weights are what the carried-over weights fit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file

from migaki.config import MethodConfig, Recipe
from migaki.errors import UserError
from migaki.methods import ADAPTER_METHODS, PEFT_METHODS, adapter
from migaki.rundir import load_run_recipe, read_manifest, run_of
from migaki.tasks import Task, task_for

log = logging.getLogger(__name__)

# PEFT settings that decide the adapter's shape or meaning, and the recipe key behind each
PEFT_SETTINGS = {
    "peft_type": "method.name",
    "task_type": "task",
    "r": "method.lora_rank",
    "lora_alpha": "method.lora_alpha",
    "use_dora": "method.name",
    "target_modules": "method.target_modules",
    "feedforward_modules": "method.name",
    "num_virtual_tokens": "method.num_virtual_tokens",
    "modules_to_save": "task",
}


@dataclass(frozen=True)
class InitRun:
    """The earlier run a new run starts from."""

    run_dir: Path
    final: Path
    base: str  # the earlier run's model.base
    task: Task
    method: str
    final_step: int | None  # the training step final/ holds

    @property
    def carries_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir.resolve()),
            "final_step": self.final_step,
            "method": self.method,
            "task": self.task.name,
            "carried": "adapter weights" if self.carries_adapter else "base model",
        }


def prepare(recipe: Recipe, task: Task) -> tuple[Recipe, InitRun | None]:
    """Check the recipe's continual-learning settings before anything loads, and find the run
    `train.init_from` names. When its final/ is a whole model, the recipe returned is a copy
    whose `model.base` is that final/. Raises UserError naming the key and the path."""
    if recipe.train.init_from is None:
        return recipe, None
    init = find_run(recipe.train.init_from)
    _check_compatible(init, recipe, task)
    if init.carries_adapter or _same_model(recipe.model.base, str(init.final)):
        return recipe, init
    recipe = recipe.model_copy(deep=True)
    recipe.model.base = str(init.final)
    log.info("init from %s: its final/ (step %s) is the base model", init.run_dir, init.final_step)
    return recipe, init


def find_run(path: str | Path) -> InitRun:
    """The run directory at `path` (or the run whose final/ `path` is) with its final/."""
    run_dir = run_of(path) or Path(path).expanduser()
    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(
            f"{final}: not found; train.init_from (--init-from) needs a run that finished "
            "training (resume it with --resume first)"
        )
    earlier = load_run_recipe(run_dir)
    return InitRun(
        run_dir,
        final,
        earlier.model.base,
        task_for(earlier),
        earlier.method.name,
        read_manifest(run_dir).get("final_step"),
    )


def check_labels(init: InitRun | None, labels: list[str] | None) -> None:
    """A classifier goes on with the labels it learnt, in the same order (their index is the
    output unit); raises UserError naming both lists otherwise."""
    path = init.final / "labels.json" if init is not None else None
    if labels is None or path is None or not path.is_file():
        return  # no labels to keep: a causal LM, or a reward model's single score
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier != labels:
        raise UserError(
            f"train.init_from: {init.run_dir} learnt the labels {earlier}, this run has "
            f"{labels}; set data.labels to {earlier} (new labels need a new classifier)"
        )


def load_init_weights(model: torch.nn.Module, init: InitRun, method: MethodConfig) -> None:
    """Copy the earlier run's adapter into `model`, the freshly applied method (its base is
    frozen, the adapter trainable); nothing to do when final/ was loaded as the base model.
    Raises UserError when the adapter's settings differ from the recipe's."""
    if init.method in PEFT_METHODS:
        _load_peft_adapter(model, init.final)
    elif init.method == "adapter":
        _load_bottleneck_adapters(model, init.final, method)
    else:
        return
    log.info("init from %s: adapter weights of step %s loaded", init.run_dir, init.final_step)


def _check_compatible(init: InitRun, recipe: Recipe, task: Task) -> None:
    where = f"train.init_from: {init.run_dir}"
    if not any(_same_model(m, recipe.model.base) for m in (init.base, str(init.final))):
        raise UserError(
            f"{where} was trained from model.base {init.base}, but this recipe's model.base is "
            f"{recipe.model.base}; its weights only fit that model: set model.base: {init.base}"
        )
    if init.carries_adapter and init.method != recipe.method.name:
        raise UserError(
            f"{where}: its final/ is a {init.method} adapter; method.name must be {init.method} "
            f"to go on training it (not {recipe.method.name})"
        )
    if init.task is task:
        return
    if init.task.head is not None:
        raise UserError(
            f"{where}: a {init.task.name} run's final/ has a task head; it can start only "
            f"another {init.task.name} run (this recipe's task is {task.name})"
        )
    # A head task needs a head the adapter lacks; the reference of DPO and KTO (the base
    # without the adapter) would not be the model the earlier run ended with.
    if init.carries_adapter and (task.head is not None or task.reference):
        raise UserError(
            f"{where}: task {task.name} cannot go on training its {init.method} adapter "
            f"(trained for task {init.task.name}); train the earlier run with method full, so "
            "that its final/ becomes the base model"
        )


def _same_model(first: str, second: str) -> bool:
    """The same alias, or two paths to the same folder or file."""
    if first == second:
        return True
    a, b = Path(first).expanduser(), Path(second).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _load_peft_adapter(model: torch.nn.Module, final: Path) -> None:
    saved = PeftConfig.from_pretrained(str(final)).to_dict()
    current = model.peft_config["default"].to_dict()
    for key, recipe_key in PEFT_SETTINGS.items():
        if _setting(saved.get(key)) != _setting(current.get(key)):
            raise UserError(
                f"train.init_from: the adapter in {final} has {key} {_shown(saved.get(key))}, "
                f"this recipe gives {_shown(current.get(key))} ({recipe_key}); use the "
                "earlier run's settings to go on training it"
            )
    state = load_peft_weights(str(final), device="cpu")
    _check_shapes(state, get_peft_model_state_dict(model), final)
    set_peft_model_state_dict(model, state)
    now = get_peft_model_state_dict(model)
    if any(not torch.equal(now[k].cpu(), state[k].to(now[k].dtype)) for k in state):
        raise RuntimeError(f"{final}: PEFT did not load every adapter weight")


def _load_bottleneck_adapters(model: torch.nn.Module, final: Path, method: MethodConfig) -> None:
    config_path = final / adapter.CONFIG_NAME
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("adapter_size", "adapter_placement"):
        if saved.get(key) != getattr(method, key):
            raise UserError(
                f"train.init_from: the adapters in {final} have {key} {saved.get(key)}, this "
                f"recipe gives {getattr(method, key)} (method.{key}); use the earlier run's "
                "settings to go on training them"
            )
    state = load_file(final / adapter.WEIGHTS_NAME)
    parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    _check_shapes(state, parameters, final)
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor)


def _check_shapes(state: dict[str, torch.Tensor], expected: dict[str, Any], final: Path) -> None:
    """The saved weights are exactly the adapter's weights, one for one in name and shape."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise UserError(
            f"train.init_from: the adapter in {final} does not fit this model ({len(missing)} "
            f"weights missing, {len(unexpected)} unexpected, {len(wrong)} of another shape, "
            f"e.g. {example})"
        )


def _setting(value: Any) -> Any:
    return sorted(value) if isinstance(value, set | list | tuple) else value


def _shown(value: Any) -> str:
    value = _setting(value)
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(str, value[:4]))}, ... ({len(value)} in all)]"
    return str(value)

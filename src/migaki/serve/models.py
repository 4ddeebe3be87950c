"""The models one server holds: run directories, exports and bundled aliases, each under a
name the `model` field of a request picks. Runs whose final/ is a switchable PEFT adapter
(lora, dora, ia3, qlora) on the same base share one copy of that base in memory, each
adapter loaded under its name; everything else loads as its own model."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from migaki.data.tokenize import render_prompt
from migaki.errors import UserError
from migaki.methods import SWITCHABLE
from migaki.models import load_causal_lm, load_tokenizer, resolve
from migaki.models.inference import load_for_inference, named_final_errors
from migaki.models.templates import end_of_turn_ids
from migaki.precision import choose_precision, inference_device
from migaki.rundir import final_dir, is_run, load_run_recipe
from migaki.tasks import check_generates

log = logging.getLogger(__name__)
# What a served name may be: it reaches no file system, but it is echoed in answers and logs
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


@dataclass
class Served:
    """One name the server answers to."""

    name: str
    target: str  # what it was started from (run directory, export folder, alias)
    run: str | None  # the run directory, absolute, when the target is a run
    base: str | None  # the base model's name (a run's model.base, or the target itself)
    tokenizer: object
    system_prompt: str | None  # training's, added to conversations that carry none
    stops: list[int]  # end-of-turn tokens: generation ends there
    model: torch.nn.Module  # shared between the adapters of one base
    adapter: str | None = None  # the PEFT adapter to switch on, when the model is shared
    precision: str = field(default_factory=lambda: choose_precision("auto", inference_device()))
    lock: threading.Lock = field(default_factory=threading.Lock)  # one batch at a time

    def render(self, messages: list[dict[str, str]]) -> str:
        """The conversation as training rendered it, ready for the answer."""
        return render_prompt(self.tokenizer, messages, self.system_prompt)


def split_target(text: str) -> tuple[str | None, str]:
    """`NAME=TARGET` or `TARGET` (named after its folder)."""
    name, sep, target = text.partition("=")
    if sep and NAME.match(name) and not Path(text).exists():
        return name, target
    return None, text


def default_name(target: str) -> str:
    path = Path(target)
    name = path.resolve().name if path.exists() else target
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "-", name).lstrip("-._:") or "model"
    return cleaned[:100]


class ModelPool:
    """Served models by name; adapters of one base share it. Loading and unloading are
    serialized; lookups are plain dictionary reads."""

    def __init__(self) -> None:
        self.models: dict[str, Served] = {}
        self._bases: dict[str, PeftModel] = {}  # base name -> the PEFT model holding adapters
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.models)

    def get(self, name: str) -> Served | None:
        return self.models.get(name)

    def add(self, target: str, name: str | None = None) -> Served:
        """Load `target` (a run directory, a model folder, a GGUF file or a bundled alias) and
        serve it as `name`. Raises UserError for a name taken or malformed, a target that
        cannot be found, or a run that does not generate."""
        name = name or default_name(target)
        if not NAME.match(name):
            raise UserError(f"{name}: a served name takes letters, digits and . _ : - only")
        with self._lock:
            if name in self.models:
                raise UserError(f"{name}: already served; give another name (NAME=TARGET)")
            path = Path(target)
            recipe = load_run_recipe(path) if is_run(path) else None
            check_generates(target, recipe)
            if recipe is not None and recipe.method.name in SWITCHABLE:
                served = self._add_adapter(name, path, recipe)
            else:
                served = self._add_whole(name, target, recipe)
            self.models[name] = served
            log.info("serving %s as %s", target, name)
            return served

    def remove(self, name: str) -> None:
        """Stop serving `name`; an adapter's weights leave its shared base."""
        with self._lock:
            served = self.models.pop(name)
            if served.adapter is None:
                return
            if not any(other.model is served.model for other in self.models.values()):
                # the base's last adapter: PEFT cannot delete it, so the base goes with it
                self._bases = {k: v for k, v in self._bases.items() if v is not served.model}
                return
            with served.lock:
                served.model.delete_adapter(served.adapter)

    def _add_adapter(self, name: str, run: Path, recipe) -> Served:
        final = final_dir(run)
        base_name = recipe.model.base
        source = resolve(base_name, recipe.model.accept_license)
        shared = self._bases.get(base_name)
        with named_final_errors(final):
            if shared is None:
                base = load_causal_lm(source)
                shared = PeftModel.from_pretrained(base, str(final), adapter_name=name)
                shared.eval().to(inference_device())
                self._bases[base_name] = shared
            else:
                shared.load_adapter(str(final), adapter_name=name)
                shared.to(inference_device())
        tokenizer = load_tokenizer(
            source, recipe.model.trust_remote_code, chat_template=recipe.model.chat_template
        )
        lock = next((s.lock for s in self.models.values() if s.model is shared), threading.Lock())
        return Served(
            name,
            str(run),
            str(run.resolve()),
            base_name,
            tokenizer,
            recipe.data.system_prompt,
            end_of_turn_ids(tokenizer),
            shared,
            adapter=name,
            lock=lock,
        )

    def _add_whole(self, name: str, target: str, recipe) -> Served:
        loaded = load_for_inference(target)
        run = str(Path(target).resolve()) if recipe is not None else None
        return Served(
            name,
            target,
            run,
            recipe.model.base if recipe is not None else target,
            loaded.tokenizer,
            recipe.data.system_prompt if recipe is not None else None,
            end_of_turn_ids(loaded.tokenizer),
            loaded.model,
        )

"""A run's tuned model as a whole Hugging Face folder: adapters merged into the base, whole
models as they are, a classifier with its label map; safetensors, the tokenizer with the chat
template of training, and a generation config that stops at the end-of-turn token."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig

from migaki.config import Recipe
from migaki.errors import UserError
from migaki.evaluate.classification import load_classifier
from migaki.methods import merged
from migaki.models import BUNDLED, ModelSource, load_tokenizer, resolve
from migaki.models.bundled import bundled_dir
from migaki.models.inference import load_for_inference
from migaki.models.templates import end_of_turn_ids
from migaki.rundir import final_dir
from migaki.tasks import task_for

# Methods whose final/ cannot become plain weights, and what to do instead.
NOT_MERGEABLE = {
    "prefix": "prefix tuning feeds learned key/value vectors to every layer at run time",
    "prompt": "prompt tuning prepends learned embeddings to every input at run time",
    "adapter": "migaki's bottleneck adapters add layers the base architecture does not have",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE.md", "GEMMA_TERMS.html")


@dataclass
class Tuned:
    """The run's tuned model, ready to save: a causal LM or a classifier, in fp32."""

    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe
    classifier: bool


def check_exportable(run: Path, recipe: Recipe) -> None:
    reason = NOT_MERGEABLE.get(recipe.method.name)
    if reason is not None:
        raise UserError(
            f"{run}: method {recipe.method.name} cannot be exported as a whole model ({reason}); "
            "load the run itself (migaki generate/chat/eval take the run directory) or train "
            "again with method.name=lora"
        )


def tuned_model(run: Path, recipe: Recipe) -> Tuned:
    """The run's final/ on its base, adapters folded into the base weights."""
    check_exportable(run, recipe)
    task = task_for(recipe)
    if task.head is not None:
        final = final_dir(run)
        labels = json.loads((final / "labels.json").read_text(encoding="utf-8"))
        tokenizer = load_tokenizer(ModelSource("final", final, "local"), chat=False)
        model = load_classifier(run, recipe, labels, tokenizer.pad_token_id)
        return Tuned(merged(recipe.method.name, model), tokenizer, recipe, classifier=True)
    loaded = load_for_inference(run)
    model = loaded.model.to("cpu")
    return Tuned(merged(recipe.method.name, model), loaded.tokenizer, recipe, classifier=False)


def write_hf(tuned: Tuned, to: Path, dtype: str = "fp32") -> None:
    """Save the model (safetensors), tokenizer and generation config into `to`, plus the base
    model's licence file when it has one."""
    to.mkdir(parents=True, exist_ok=True)
    model = tuned.model.to(DTYPES[dtype])  # in place: the merged copy is not used again
    model.config.use_cache = True
    model.save_pretrained(to, safe_serialization=True)
    system_prompt = tuned.recipe.data.system_prompt
    if system_prompt is not None and not tuned.classifier:
        tuned.tokenizer.chat_template = with_default_system(
            tuned.tokenizer.chat_template, system_prompt
        )
    tuned.tokenizer.save_pretrained(to)
    if not tuned.classifier:
        _generation_config(tuned).save_pretrained(to)
    for name in LICENCE_FILES:
        for folder in _licence_folders(tuned.recipe):
            if (folder / name).is_file() and not (to / name).exists():
                shutil.copyfile(folder / name, to / name)


def _licence_folders(recipe: Recipe) -> list[Path]:
    """Where the base model's licence file may lie: beside its weights, one folder up, and
    for a bundled alias the folder it was pulled into (its weights may be a converted copy)."""
    base = recipe.model.base
    source = Path(resolve(base, recipe.model.accept_license).path)
    folders = [source, source.parent]
    if base in BUNDLED:
        folders.append(bundled_dir(base))
    return folders


def with_default_system(template: str, system_prompt: str) -> str:
    """The chat template with training's system prompt as the default: a caller (a server, a
    runtime reading the folder) that sends no system message gets the rendering of training,
    which added `data.system_prompt` to every conversation without one."""
    # a JSON string is a Jinja string literal too (quotes, backslashes and newlines escaped)
    literal = json.dumps(system_prompt, ensure_ascii=False)
    return (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif %}" + template
    )


def _generation_config(tuned: Tuned) -> GenerationConfig:
    """Greedy by default, and stopping at every token that ends an assistant turn: without the
    end-of-turn id in eos_token_id, runtimes that read this file never stop."""
    stops = end_of_turn_ids(tuned.tokenizer)
    return GenerationConfig(
        eos_token_id=stops[0] if len(stops) == 1 else stops,
        pad_token_id=tuned.tokenizer.pad_token_id,
        bos_token_id=tuned.tokenizer.bos_token_id,
        do_sample=False,
        max_new_tokens=tuned.recipe.eval.max_new_tokens,
    )

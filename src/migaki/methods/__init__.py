"""Fine-tuning methods. Each module has the same parts: `apply(model, method_config)` and
`load_final(base, final_dir)`, and `save_final(model, directory)` where the model's own
`save_pretrained` is not what final/ should hold; adding a method is one module and one line
below."""

from __future__ import annotations

from types import ModuleType

import torch
from safetensors.torch import load_file, save_file

from migaki.methods import adapter, freeze, full, gradual, head, ia3, lora, prompt

METHODS: dict[str, ModuleType] = {
    "lora": lora,
    "dora": lora,
    "qlora": lora,
    "ia3": ia3,
    "prefix": prompt,
    "prompt": prompt,
    "adapter": adapter,
    "full": full,
    "freeze": freeze,
    "gradual": gradual,
    "head": head,
}
SWITCHABLE = ("lora", "dora", "qlora", "ia3")  # PEFT adapters `disable_adapter` switches off
PROMPT_LEARNING = ("prefix", "prompt")  # their loss must run the whole PEFT model
PEFT_METHODS = (*SWITCHABLE, *PROMPT_LEARNING)
ADAPTER_METHODS = (*PEFT_METHODS, "adapter")  # final/ holds an adapter, not a whole model
# adapters whose update folds into the base weights: outside training a qlora run's base loads
# in full precision (models.inference), so its adapter folds exactly too
MERGEABLE = SWITCHABLE


def apply_method(
    model: torch.nn.Module, method, sequence_classifier: bool = False
) -> torch.nn.Module:
    """Wrap or edit `model` for `method.name`; only the method's weights stay trainable.
    `sequence_classifier`: the model has a task head (classification, reward), which LoRA
    trains in full beside its adapter."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if method.name == "lora":
        return lora.apply(model, method, sequence_classifier)
    return METHODS[method.name].apply(model, method)


def load_final(name: str, base: torch.nn.Module, final_dir: str) -> torch.nn.Module:
    return METHODS[name].load_final(base, final_dir)


def merged(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """`model` with a mergeable adapter folded into its base weights: the same function, run
    as plain linear layers (faster to generate with, and what an export writes). Other
    methods' models are returned as they are."""
    if name in MERGEABLE and hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_final(name: str, model: torch.nn.Module, directory: str) -> None:
    """What final/ holds: a PEFT adapter, a whole model, or the method's own files."""
    module = METHODS[name]
    if hasattr(module, "save_final"):
        module.save_final(model, directory)
    else:
        model.save_pretrained(directory)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def save_trainable(model: torch.nn.Module, path: str) -> None:
    """The trainable weights only: what a checkpoint needs besides the (frozen) base."""
    # named_parameters() lists a tied weight (embeddings = LM head) once, so no two tensors
    # here share storage (safetensors refuses that) and nothing needs a copy.
    save_file(trainable_state(model), path)


def load_trainable(model: torch.nn.Module, path: str) -> None:
    state = load_file(path)
    parameters = dict(model.named_parameters())
    missing = [name for name, p in parameters.items() if p.requires_grad and name not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor)

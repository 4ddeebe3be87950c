"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): small trained layers
inside a frozen decoder.

Each adapter computes `x + up(gelu(down(x)))` (hidden -> size -> hidden) on the output of the
block it follows: after self-attention and after the feed-forward block of every decoder layer
("houlsby"), or after the feed-forward block only ("pfeiffer"). `up` starts at zero, so before
training the adapted model computes exactly what the base model does.

An adapter is a submodule of its block (`layers.3.mlp.migaki_adapter`), applied by a forward
hook on that block, so the base model's parameter names stay as they are and anything that
calls the decoder directly (migaki's loss does) goes through the adapters.

`save_final` writes the adapter weights on their own (`adapter_model.safetensors`) and their
settings (`adapter_config.json`); `load_final` puts them back onto the same base model. They
cannot be merged into the base weights: the bottleneck is non-linear, so no change to the
base's linear layers computes the same thing. And no other library (PEFT, the `adapters`
package, llama.cpp, vLLM) loads these files: serving a model tuned this way needs migaki, or
code that rebuilds the adapters the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from migaki.config import MethodConfig
from migaki.errors import UserError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_ATTR = "migaki_adapter"
PLACEMENTS: dict[str, tuple[str, ...]] = {"houlsby": ("self_attn", "mlp"), "pfeiffer": ("mlp",)}
SUPPORTED = "decoder-only models shaped like Llama (Llama, Qwen2, Mistral, SmolLM2)"


class Bottleneck(nn.Module):
    """`x + up(gelu(down(x)))` on (batch, seq, hidden); `up` starts at zero (the identity)."""

    def __init__(
        self,
        hidden_size: int,
        size: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, size, device=device, dtype=dtype)
        self.up = nn.Linear(size, hidden_size, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.up(F.gelu(self.down(hidden_states)))


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    """Insert adapters of width `method.adapter_size` at `method.adapter_placement` into every
    decoder layer; only they are trainable afterwards. Edits `model` in place and returns it.

    Raises UserError if the model is not shaped like Llama or already has adapters.
    """
    # The trainer freezes the base before calling us; freezing here too keeps the promise
    # "only the adapters train" for callers who do not.
    model.requires_grad_(False)
    _insert(model, method.adapter_size, method.adapter_placement)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights by parameter name (`model.layers.0.mlp.migaki_adapter.up.weight`),
    as detached CPU copies; empty if the model has no adapters."""
    return {
        name: parameter.detach().cpu().clone()
        for name, parameter in _adapter_parameters(model).items()
    }


def save_final(model: PreTrainedModel, directory: str | Path) -> None:
    """Write the adapter weights (safetensors) and their settings (JSON) to `directory`,
    creating it. The base model's weights are not written: `load_final` needs the same base."""
    state = adapter_state(model)
    if not state:
        raise UserError("the model has no adapters to save; adapter.apply() adds them")
    layers = _decoder_layers(model)
    first = layers[0]
    config = {
        "migaki_method": "adapter",
        "adapter_size": getattr(first.mlp, ADAPTER_ATTR).down.out_features,
        "adapter_placement": "houlsby" if hasattr(first.self_attn, ADAPTER_ATTR) else "pfeiffer",
        "num_layers": len(layers),
        "hidden_size": _hidden_size(model),
        "base_model": model.config._name_or_path,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_final(base: PreTrainedModel, final_dir: str | Path) -> PreTrainedModel:
    """Insert the adapters saved in `final_dir` into `base` and load their weights; returns
    `base`, frozen and in eval mode.

    Raises UserError if the config or weights file is missing or malformed, if the config was
    made for a base of another hidden size or layer count, or if the weights do not match the
    adapters one for one in name and shape. On error `base` is left without adapters.
    """
    final_dir = Path(final_dir)
    config = _read_config(final_dir / CONFIG_NAME)
    _check_same_base(config, base, final_dir / CONFIG_NAME)
    _insert(base, config["adapter_size"], config["adapter_placement"])
    try:
        _load_weights(base, final_dir / WEIGHTS_NAME)
    except UserError:
        _remove(base)
        raise
    base.requires_grad_(False)
    return base.eval()


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """model.model.layers, each with `self_attn` and `mlp`; UserError naming what is missing."""
    name = type(model).__name__
    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(decoder, nn.Module) or not isinstance(layers, nn.ModuleList):
        missing = "model.model" if not isinstance(decoder, nn.Module) else "model.model.layers"
        raise UserError(f"adapters need {SUPPORTED}; {name} has no {missing}")
    for index, layer in enumerate(layers):
        for block in ("self_attn", "mlp"):
            if not isinstance(getattr(layer, block, None), nn.Module):
                raise UserError(
                    f"adapters need {SUPPORTED}; {name} has no model.layers.{index}.{block}"
                )
    return layers


def _hidden_size(model: nn.Module) -> int:
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(hidden_size, int):
        raise UserError(f"adapters need {SUPPORTED}; {type(model).__name__} has no hidden_size")
    return hidden_size


def _insert(model: nn.Module, size: int, placement: str) -> None:
    """Attach a Bottleneck to each block named by `placement` and hook it onto the output."""
    layers = _decoder_layers(model)
    hidden_size = _hidden_size(model)
    if _adapter_parameters(model):
        raise UserError("the model already has adapters; load a fresh base model")
    for layer in layers:
        for block_name in PLACEMENTS[placement]:
            block = getattr(layer, block_name)
            # The block's own weights say where it lives; with fp32 master weights the adapter
            # is fp32 too, and autocast decides the compute dtype as for the rest of the model.
            reference = next(block.parameters())
            adapter = Bottleneck(hidden_size, size, device=reference.device, dtype=reference.dtype)
            block.add_module(ADAPTER_ATTR, adapter)
            # Kept on the adapter (not a parameter, not saved) so _remove can undo the hook.
            adapter.hook_handle = block.register_forward_hook(_add_adapter)


def _add_adapter(block: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: the block's output through its adapter."""
    # The adapter is looked up on the block at call time, not captured, so the hook always
    # uses the block's current adapter (e.g. after load_state_dict or .to()).
    adapter = getattr(block, ADAPTER_ATTR)
    if isinstance(output, torch.Tensor):  # MLP: hidden states (batch, seq, hidden)
        return adapter(output)
    # Attention: (hidden states, attention weights); only the hidden states go through.
    return (adapter(output[0]), *output[1:])


def _remove(model: nn.Module) -> None:
    for module in list(model.modules()):
        adapter = getattr(module, ADAPTER_ATTR, None)
        if isinstance(adapter, Bottleneck):
            adapter.hook_handle.remove()
            delattr(module, ADAPTER_ATTR)


def _adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    marker = f".{ADAPTER_ATTR}."
    return {name: p for name, p in model.named_parameters() if marker in name}


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: not found; a run's final/ with adapters holds this file")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("migaki_method") != "adapter":
        raise UserError(f"{path}: not a migaki adapter config (migaki_method is not 'adapter')")
    required = ("adapter_size", "adapter_placement", "num_layers", "hidden_size")
    missing = [key for key in required if key not in config]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}")
    size, placement = config["adapter_size"], config["adapter_placement"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserError(f"{path}: adapter_size must be a positive integer (got {size!r})")
    if placement not in PLACEMENTS:
        raise UserError(
            f"{path}: adapter_placement must be houlsby or pfeiffer (got {placement!r})"
        )
    return config


def _check_same_base(config: dict[str, Any], base: PreTrainedModel, path: Path) -> None:
    """The adapters fit only the base they were trained on: same width, same depth."""
    actual = {"hidden_size": _hidden_size(base), "num_layers": len(_decoder_layers(base))}
    trained_on = config.get("base_model") or "another model"
    for key, value in actual.items():
        if config[key] != value:
            raise UserError(
                f"{path}: the adapters were trained on {trained_on} with {key} "
                f"{config[key]}, but this base model has {key} {value}; load them onto the "
                "base model they were trained on"
            )


def _load_weights(model: nn.Module, path: Path) -> None:
    """Copy the weights in `path` into the model's adapters; every one must be there."""
    if not path.is_file():
        raise UserError(f"{path}: adapter weights not found")
    try:
        state = load_file(path)
    except SafetensorError as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    parameters = _adapter_parameters(model)
    missing = sorted(set(parameters) - set(state))
    if missing:
        raise UserError(f"{path}: lacks {len(missing)} adapter weights, e.g. {missing[0]}")
    unexpected = sorted(set(state) - set(parameters))
    if unexpected:
        raise UserError(
            f"{path}: holds {len(unexpected)} weights the adapters have no place for, "
            f"e.g. {unexpected[0]}"
        )
    for name, parameter in parameters.items():
        if state[name].shape != parameter.shape:
            raise UserError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, but the adapter needs "
                f"{tuple(parameter.shape)}"
            )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])

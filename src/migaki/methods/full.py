"""Full fine-tuning: every weight trains."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, PreTrainedModel

from migaki.config import MethodConfig


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def load_final(base: PreTrainedModel, final_dir: str) -> PreTrainedModel:
    """final/ is a complete model; the base is not needed."""
    return AutoModelForCausalLM.from_pretrained(
        final_dir, dtype=base.dtype, use_safetensors=True, attn_implementation="sdpa"
    )

"""LoRA through PEFT: low-rank updates on the chosen linear layers; the base stays frozen."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from migaki.config import MethodConfig


def apply(model: PreTrainedModel, method: MethodConfig) -> PeftModel:
    config = LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=method.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_final(base: PreTrainedModel, final_dir: str) -> PeftModel:
    """The tuned model from a run's final/ (a PEFT adapter) on top of its base."""
    return PeftModel.from_pretrained(base, final_dir)

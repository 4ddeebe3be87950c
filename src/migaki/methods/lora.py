"""LoRA through PEFT: low-rank updates on the chosen linear layers; the base stays frozen.

The same module serves `dora` (weight-decomposed LoRA: each update split into magnitude and
direction) and `qlora` (LoRA on a base loaded in 4 bits, see `models.load_causal_lm`)."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from migaki.config import MethodConfig


def apply(
    model: PreTrainedModel, method: MethodConfig, sequence_classifier: bool = False
) -> PeftModel:
    if method.name == "qlora":
        # Casts norms to fp32 for stable training on a quantized base; checkpointing stays as
        # the recipe set it.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_weights_differentiable(model)
    config = LoraConfig(
        r=method.lora_rank,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=method.target_modules,
        use_dora=method.name == "dora",
        # SEQ_CLS also trains (and saves) the new classification head in full.
        task_type="SEQ_CLS" if sequence_classifier else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_final(base: PreTrainedModel, final_dir: str) -> PeftModel:
    """The tuned model from a run's final/ (a PEFT adapter) on top of its base."""
    return PeftModel.from_pretrained(base, final_dir)


def keep_4bit_weights_differentiable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    On a CPU with avx512_bf16, bitsandbytes 0.50 repacks a Linear4bit's weights the first time
    it runs in eval mode without gradients (a validation pass) and never unpacks them when
    training resumes. The packed kernel has no backward, so from then on no gradient flows
    through the frozen 4-bit layers to the adapters below them: training goes on, silently
    wrong. Unpacked weights cost some CPU validation speed and nothing on a GPU."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False

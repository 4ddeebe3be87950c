"""IA3 through PEFT: learned vectors that rescale keys, values and feed-forward activations;
the fewest trainable weights of the additive methods."""

from __future__ import annotations

from peft import IA3Config, PeftModel, get_peft_model
from transformers import PreTrainedModel

from migaki.config import MethodConfig


def apply(model: PreTrainedModel, method: MethodConfig) -> PeftModel:
    # PEFT knows the attention and feed-forward module names of common architectures.
    return get_peft_model(model, IA3Config(task_type="CAUSAL_LM"))


def load_final(base: PreTrainedModel, final_dir: str) -> PeftModel:
    return PeftModel.from_pretrained(base, final_dir)

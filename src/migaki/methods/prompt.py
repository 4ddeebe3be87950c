"""Prompt learning through PEFT: `prompt` learns soft tokens prepended to the input
embeddings; `prefix` learns key/value prefixes for every attention layer. The model's own
weights do not change.

Both live in PeftModel's forward (not inside the decoder), so their loss runs the whole
model: see `objectives.prompt_learning_loss`. Packed rows are not used with them.
"""

from __future__ import annotations

from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import PreTrainedModel

from migaki.config import MethodConfig


def apply(model: PreTrainedModel, method: MethodConfig) -> PeftModel:
    if method.name == "prefix":
        config = PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=method.num_virtual_tokens
        )
    else:
        config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=method.num_virtual_tokens
        )
    return get_peft_model(model, config)


def load_final(base: PreTrainedModel, final_dir: str) -> PeftModel:
    return PeftModel.from_pretrained(base, final_dir)

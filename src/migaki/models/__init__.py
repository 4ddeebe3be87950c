"""Base models: bundled defaults, local Hugging Face folders and GGUF files."""

from migaki.models.bundled import BUNDLED, cache_root, pull
from migaki.models.load import (
    ModelSource,
    generates_text,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    recipe_tokenizer,
    resolve,
)

__all__ = [
    "BUNDLED",
    "ModelSource",
    "cache_root",
    "generates_text",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_tokenizer",
    "pull",
    "recipe_tokenizer",
    "resolve",
]

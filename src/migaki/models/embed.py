"""Sentence embeddings with an encoder (the bundled MiniLM by default): mean of the last hidden
states over the attention mask, L2-normalized, so a dot product is a cosine similarity.

Used by `migaki monitor` (drift of served traffic) and meant for any feature that compares
texts by meaning (few-shot retrieval). The model is loaded once per process and device.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from migaki.errors import UserError
from migaki.models.load import resolve

DEFAULT_ENCODER = "minilm-l6"
# all-MiniLM-L6-v2 was trained on texts of up to 256 word pieces (its sentence-transformers
# setting); longer ones are cut there, as sentence-transformers does.
MAX_LENGTH = 256


def embed(
    texts: Sequence[str],
    model_name_or_path: str | Path = DEFAULT_ENCODER,
    batch_size: int = 64,
    max_length: int = MAX_LENGTH,
    device: str | None = None,
) -> np.ndarray:
    """Embed `texts` with an encoder: a bundled alias (`minilm-l6`) or a Hugging Face folder
    holding an encoder (BERT-like) and its tokenizer.

    Returns a float32 array (len(texts), hidden_size) of unit vectors (a text without any
    token gives a zero vector). Texts are cut at `max_length` tokens (or the model's
    position limit, if lower); `device` defaults to CUDA when available, else the CPU.
    Raises UserError for a model that cannot be found or is no encoder."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = _load(str(model_name_or_path), device)
    limit = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    out = [np.zeros((0, model.config.hidden_size), dtype=np.float32)]
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(device)
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out.append(_mean_pooled(hidden.last_hidden_state, batch["attention_mask"]))
    return np.concatenate(out)


def _mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """hidden (batch, seq, dim), mask (batch, seq) -> unit vectors (batch, dim), float32."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    mean = summed / weights.sum(dim=1).clamp(min=1e-9)
    unit = torch.nn.functional.normalize(mean.float(), p=2, dim=-1)
    return unit.cpu().numpy()


@cache
def _load(name: str, device: str):
    """The encoder's tokenizer and model (eval mode, on `device`), loaded once per process."""
    source = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = AutoModel.from_pretrained(source.path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name}: cannot load it as a sentence encoder ({first})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"{name}: its tokenizer has no padding token; cannot batch texts")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval()

"""Objectives: functions `loss(model, batch) -> LossParts`.

The causal-LM loss runs the LM head only on positions that carry a label, so the full
(tokens x vocab) logits are never built for prompt tokens and padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from migaki.data.tokenize import IGNORE_INDEX


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over labelled tokens (scalar, fp32)
    tokens: int  # labelled tokens in the batch
    correct: int  # labelled tokens whose argmax prediction is right


def causal_lm_loss(model, batch: dict[str, torch.Tensor]) -> LossParts:
    """Next-token cross-entropy summed over labelled positions.

    batch: input_ids, attention_mask, labels, each (batch, seq); labels are IGNORE_INDEX where
    no loss is taken. Labels are shifted here, so the collator stays format-agnostic.
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX  # (batch, seq-1)
    hidden = _decoder(model)(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state  # (batch, seq, hidden)
    selected = hidden[:, :-1][keep]  # (labelled, hidden)
    logits = model.get_output_embeddings()(selected).float()  # (labelled, vocab)
    target = labels[keep]
    loss_sum = F.cross_entropy(logits, target, reduction="sum")
    correct = int((logits.argmax(dim=-1) == target).sum())
    return LossParts(loss_sum, int(keep.sum()), correct)


def _decoder(model) -> torch.nn.Module:
    """The transformer body below the LM head (LoRA layers, if any, live inside it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()

"""Objectives: functions `loss(model, batch) -> LossParts`, and a module form for wrappers.

The causal-LM loss runs the LM head only on positions that carry a label, so the full
(tokens x vocab) logits are never built for prompt tokens and padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from migaki.data.tokenize import IGNORE_INDEX


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over labelled tokens (scalar, fp32)
    tokens: int  # labelled tokens in the batch
    correct: int  # labelled tokens whose argmax prediction is right
    confusion: torch.Tensor | None = None  # classification: (true, predicted) counts
    extras: dict[str, float] | None = None  # preference: summed rewards, logged per pair


def causal_lm_loss(model, batch: dict[str, torch.Tensor], chunk_rows: int = 4096) -> LossParts:
    """Next-token cross-entropy summed over labelled positions.

    batch: input_ids and labels (batch, seq), plus attention_mask for padded batches or
    position_ids for packed ones; labels are IGNORE_INDEX where no loss is taken. Labels are
    shifted here, so collators stay format-agnostic.

    The LM head runs only on labelled positions, `chunk_rows` at a time, and each chunk's logits
    are recomputed in the backward pass instead of kept: the (tokens x vocab) logits are never
    held in memory at once.
    """
    if _is_prompt_learning(model):
        return prompt_learning_loss(model, batch)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX  # (batch, seq-1)
    hidden = decoder(model)(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,  # a cache disables the packed-sequence mask: attention would leak
    ).last_hidden_state  # (batch, seq, hidden)
    selected = hidden[:, :-1][keep]  # (labelled, hidden)
    target = labels[keep]  # (labelled,)
    head = model.get_output_embeddings()
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    correct = 0
    for start in range(0, len(target), chunk_rows):
        rows, wanted = selected[start : start + chunk_rows], target[start : start + chunk_rows]
        if torch.is_grad_enabled():
            chunk_loss, chunk_correct = checkpoint(
                _head_loss, head, rows, wanted, use_reentrant=False
            )
        else:
            chunk_loss, chunk_correct = _head_loss(head, rows, wanted)
        loss_sum = loss_sum + chunk_loss
        correct += int(chunk_correct)
    return LossParts(loss_sum, int(keep.sum()), correct)


def prompt_learning_loss(model, batch: dict[str, torch.Tensor]) -> LossParts:
    """The loss through PeftModel's forward, which adds soft prompts or prefixes that the
    decoder alone would not see. Logits come for every position here (these methods train few
    weights and are not the ones that need the memory saving)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    logits = logits[:, -batch["input_ids"].shape[1] :]  # drop the soft-prompt positions
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    selected, target = logits[:, :-1][keep].float(), labels[keep]
    loss_sum = F.cross_entropy(selected, target, reduction="sum")
    correct = int((selected.argmax(dim=-1) == target).sum())
    return LossParts(loss_sum, int(keep.sum()), correct)


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def _head_loss(head: torch.nn.Module, rows: torch.Tensor, target: torch.Tensor):
    logits = head(rows).float()  # (chunk, vocab)
    loss = F.cross_entropy(logits, target, reduction="sum")
    return loss, (logits.argmax(dim=-1) == target).sum()


def classification_loss(model, batch: dict[str, torch.Tensor]) -> LossParts:
    """Cross-entropy summed over the rows of a batch, with the confusion counts that give
    accuracy and macro F1 over a whole validation set."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.float()
    target = batch["labels"]
    loss_sum = F.cross_entropy(logits, target, reduction="sum")
    predicted = logits.argmax(dim=-1)
    classes = logits.shape[-1]
    confusion = torch.bincount(target * classes + predicted, minlength=classes * classes)
    correct = int((predicted == target).sum())
    return LossParts(loss_sum, len(target), correct, confusion.view(classes, classes).cpu())


class ClassificationLoss(torch.nn.Module):
    """`classification_loss` as a module, for the same reason as CausalLMLoss."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        return classification_loss(self.model, batch)


class DPOLoss(torch.nn.Module):
    """Direct preference optimization on batches of [chosen..., rejected...] sequences.

    The reference model is the same network with its adapter switched off (PEFT's
    `disable_adapter`), so no second copy of the weights is held in memory."""

    def __init__(self, model: torch.nn.Module, beta: float, loss_type: str) -> None:
        super().__init__()
        self.model, self.beta, self.loss_type = model, beta, loss_type

    def forward(self, **batch: torch.Tensor) -> LossParts:
        from migaki.train.preference import dpo_loss

        policy = self._logps(batch)
        with torch.no_grad(), self.model.disable_adapter():
            reference = self._logps(batch)
        pairs = len(policy) // 2
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=-1)
        stats = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            loss_type=self.loss_type,
            chosen_tokens=tokens[:pairs],
            rejected_tokens=tokens[pairs:],
        )
        extras = {
            "reward_chosen": stats.reward_chosen_sum,
            "reward_rejected": stats.reward_rejected_sum,
        }
        return LossParts(stats.loss_sum, stats.pairs, stats.correct, extras=extras)

    def _logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from migaki.train.preference import sequence_logps

        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        return sequence_logps(logits, batch["labels"])


class CausalLMLoss(torch.nn.Module):
    """A model with its loss as `forward`, so DDP, FSDP or DeepSpeed wrap the whole computation
    (the loss calls the decoder directly, which would bypass a wrapper around the bare model)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        return causal_lm_loss(self.model, batch)


def decoder(model) -> torch.nn.Module:
    """The transformer body below the LM head (LoRA layers, if any, live inside it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()

"""Gradual unfreezing, as in classic transfer learning (ULMFiT): phase 1 trains only the head
(a classifier, or an LM head not tied to the embeddings) and the top `trainable_layers` layers
with the final norm; from step `unfreeze_at` on,
phase 2 trains every transformer layer with the learning rate scaled by `unfreeze_lr_scale`.

Every weight of phase 2 is trainable from the start, so the optimizer, checkpoints, resume and
DDP see one fixed set of weights; during phase 1 the gradients of the weights still waiting are
dropped before clipping and the optimizer step, so they do not move and AdamW keeps no state for
them. Phase 1 therefore costs as much compute per step as phase 2.

The input embeddings stay frozen in both phases: they hold a row for every token of the
vocabulary, and a fine-tuning set would move only the rows it happens to contain (a model whose
LM head shares the embedding matrix keeps that head frozen too). final/ is a whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from migaki.config import MethodConfig
from migaki.methods import full
from migaki.methods.freeze import top_parameters


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    for parameter in phase2_parameters(model):
        parameter.requires_grad_(True)
    return model


def phase2_parameters(model: PreTrainedModel) -> list[nn.Parameter]:
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    embeddings |= {id(p) for n, p in model.named_parameters() if "embed" in n.split(".")[-2]}
    return [p for p in model.parameters() if id(p) not in embeddings]


@dataclass
class Unfreezing:
    """The phase of each optimizer step: a pure function of the step, so resume needs no state."""

    unfreeze_at: int
    lr_scale: float
    waiting: list[nn.Parameter]  # trained in phase 2 only

    def lr_factor(self, step: int) -> float:
        return 1.0 if step < self.unfreeze_at else self.lr_scale

    def drop_waiting_gradients(self, step: int) -> None:
        if step < self.unfreeze_at:
            for parameter in self.waiting:
                parameter.grad = None


def unfreezing(model: PreTrainedModel, method: MethodConfig, total_steps: int) -> Unfreezing:
    at = method.unfreeze_at
    step = round(at * total_steps) if at < 1 else min(int(at), total_steps)
    first = {id(p) for p in top_parameters(model, method)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:  # the LM head is the head of a causal LM (unless tied: then frozen)
        first |= {id(p) for p in output.parameters() if p.requires_grad}
    waiting = [p for p in model.parameters() if p.requires_grad and id(p) not in first]
    return Unfreezing(step, method.unfreeze_lr_scale, waiting)


load_final = full.load_final

"""Feature extraction: the backbone stays frozen and only the new task head trains
(classification). Cheapest of all methods; final/ is a whole model, like `full`."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from migaki.config import MethodConfig
from migaki.errors import UserError
from migaki.methods import full

HEAD_NAMES = ("classifier", "score")  # BERT-style encoders, decoder classifiers


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    head = task_head(model)
    if head is None:
        raise UserError("method head trains a task head: use it with task: classification")
    head.requires_grad_(True)
    return model


def task_head(model: PreTrainedModel) -> nn.Module | None:
    """A classification model's new head (with an encoder's pooler, which feeds it), or None."""
    head = next((getattr(model, n) for n in HEAD_NAMES if hasattr(model, n)), None)
    pooler = getattr(model.base_model, "pooler", None) if head is not None else None
    if pooler is not None:
        return nn.ModuleList([pooler, head])
    return head


load_final = full.load_final

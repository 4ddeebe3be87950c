"""Feature extraction: the backbone stays frozen and only the new task head trains
(classification). Cheapest of all methods; final/ is a whole model, like `full`."""

from __future__ import annotations

from transformers import PreTrainedModel

from migaki.config import MethodConfig
from migaki.errors import UserError
from migaki.methods import full

HEAD_NAMES = ("classifier", "score")  # BERT-style encoders, decoder classifiers


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    head = next((getattr(model, n) for n in HEAD_NAMES if hasattr(model, n)), None)
    if head is None:
        raise UserError("method head trains a task head: use it with task: classification")
    head.requires_grad_(True)
    return model


load_final = full.load_final

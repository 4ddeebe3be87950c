"""Partial fine-tuning: the top `trainable_layers` transformer layers train, with the final norm
and a classification head where the model has them, plus any parameter whose name contains one
of `trainable_modules`; the rest stays frozen. final/ is a whole model, like `full`."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from migaki.config import MethodConfig
from migaki.errors import UserError
from migaki.methods import full
from migaki.methods.head import task_head


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    for parameter in top_parameters(model, method):
        parameter.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("method freeze: nothing trains (set trainable_layers or trainable_modules)")
    return model


def top_parameters(model: PreTrainedModel, method: MethodConfig) -> list[nn.Parameter]:
    """The weights `freeze` trains: top layers, final norm, task head and named modules."""
    layers = transformer_layers(model)
    if method.trainable_layers > len(layers):
        raise UserError(
            f"method.trainable_layers is {method.trainable_layers} but the model has "
            f"{len(layers)} layers"
        )
    chosen: list[nn.Module] = list(layers[len(layers) - method.trainable_layers :])
    norm = getattr(_body(model), "norm", None)
    if method.trainable_layers and norm is not None:
        chosen.append(norm)  # it scales what the top layers hand to the head
    head = task_head(model)
    if head is not None:
        chosen.append(head)  # a new, randomly initialised head must learn
    parameters = {id(p): p for module in chosen for p in module.parameters()}
    matched = set()
    for name, parameter in model.named_parameters():
        hits = {pattern for pattern in method.trainable_modules if pattern in name}
        if hits:
            parameters[id(parameter)] = parameter
            matched |= hits
    missing = [p for p in method.trainable_modules if p not in matched]
    if missing:
        raise UserError(f"method.trainable_modules: no parameter name contains '{missing[0]}'")
    return list(parameters.values())


def transformer_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer blocks: a decoder's `layers`, or an encoder's `layer`."""
    body = _body(model)
    for holder in (body, getattr(body, "encoder", None)):
        for name in ("layers", "layer", "h", "blocks"):
            layers = getattr(holder, name, None)
            if isinstance(layers, nn.ModuleList):
                return layers
    raise UserError(
        f"{type(model).__name__}: cannot find its transformer layers for method freeze/gradual"
    )


def _body(model: PreTrainedModel) -> nn.Module:
    if hasattr(model, "get_decoder"):
        try:
            return model.get_decoder()
        except (AttributeError, NotImplementedError):
            pass
    return model.base_model


load_final = full.load_final

"""Partial fine-tuning: the top `trainable_layers` decoder layers and the final norm train,
plus any parameter whose name contains one of `trainable_modules`; the rest stays frozen.
final/ is a whole model, like `full`."""

from __future__ import annotations

from transformers import PreTrainedModel

from migaki.config import MethodConfig
from migaki.errors import UserError
from migaki.methods import full


def apply(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    decoder = model.get_decoder()
    layers = decoder.layers
    if method.trainable_layers > len(layers):
        raise UserError(
            f"method.trainable_layers is {method.trainable_layers} but the model has "
            f"{len(layers)} layers"
        )
    for layer in layers[len(layers) - method.trainable_layers :]:
        layer.requires_grad_(True)
    if method.trainable_layers and hasattr(decoder, "norm"):
        decoder.norm.requires_grad_(True)  # it scales what the top layers hand to the head
    matched = set()
    for name, parameter in model.named_parameters():
        hits = {pattern for pattern in method.trainable_modules if pattern in name}
        if hits:
            parameter.requires_grad_(True)
            matched |= hits
    missing = [p for p in method.trainable_modules if p not in matched]
    if missing:
        raise UserError(f"method.trainable_modules: no parameter name contains '{missing[0]}'")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("method freeze: nothing trains (set trainable_layers or trainable_modules)")
    return model


load_final = full.load_final

"""train.ema: an exponential moving average of the trained weights.

Training goes on with the optimizer's own weights; validation, the best checkpoint and final/
use the average, which is smoother than any single step's weights (the noise of the last
updates averages out). Every checkpoint keeps the average beside the weights
(average.safetensors), so a resumed run continues the same average.

Why not torch.optim.swa_utils.AveragedModel or timm's ModelEma: both deep-copy the whole
model, frozen weights included, which doubles a LoRA run's memory for a base model that never
changes; this keeps an fp32 copy of the trainable weights alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

AVERAGE_FILE = "average.safetensors"


class WeightAverage:
    """The moving average of `model`'s trainable weights, kept in fp32 (a bf16 average could
    not take the small steps a decay near 1 makes)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().float().clone() for p in self.params]

    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step `step` (counted from 1). The decay grows
        as (1 + step) / (10 + step) up to `decay`, so the first steps' weights, far from where
        training goes, fade out quickly; being a function of the step, it resumes exactly."""
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, param in zip(self.shadow, self.params, strict=True):
                average.lerp_(param.detach().float(), weight)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the average; its own weights again after it."""
        own = [p.detach().clone() for p in self.params]
        self._copy_into_model(self.shadow)
        try:
            yield
        finally:
            self._copy_into_model(own)

    def reset(self) -> None:
        """Start the average again from the model's weights (a checkpoint without one)."""
        with torch.no_grad():
            for average, param in zip(self.shadow, self.params, strict=True):
                average.copy_(param.detach().float())

    def apply(self) -> None:
        """Put the average into the model for good (before final/ is written)."""
        self._copy_into_model(self.shadow)

    def save(self, folder: Path) -> None:
        tensors = {name: average for name, average in zip(self.names, self.shadow, strict=True)}
        save_file(tensors, str(Path(folder) / AVERAGE_FILE))

    def load(self, folder: Path) -> bool:
        """Take the average saved in checkpoint `folder`; False (and the average unchanged)
        when the checkpoint has none, as one written with train.ema off."""
        path = Path(folder) / AVERAGE_FILE
        if not path.is_file():
            return False
        tensors = load_file(str(path))
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise ValueError(f"{path} lacks {missing[0]} ({len(missing)} weights in all)")
        with torch.no_grad():
            for name, average in zip(self.names, self.shadow, strict=True):
                average.copy_(tensors[name])
        return True

    def _copy_into_model(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for param, value in zip(self.params, values, strict=True):
                param.copy_(value)

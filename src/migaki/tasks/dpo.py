"""Direct preference optimization: on chosen/rejected pairs, raise the chosen answer's
likelihood relative to the untrained model's more than the rejected one's. The reference is
the base with the adapter switched off or, for methods without one, log-probabilities
computed up front."""

from __future__ import annotations

import hashlib
import logging

import torch

from migaki.config import WHOLE_WEIGHTS, Recipe
from migaki.data.pairs import collate_pairs
from migaki.data.prepare import Splits
from migaki.data.tokenize import IGNORE_INDEX
from migaki.losses import dpo_loss
from migaki.methods import SWITCHABLE
from migaki.metrics import evaluation_groups, process_share
from migaki.objectives import TIE_NATS, LossParts, pair_logps, preference_parts
from migaki.tasks.reward import PREFERENCE_VALIDATION
from migaki.tasks.rows import pair_batches, pair_rows
from migaki.tasks.task import Task

log = logging.getLogger(__name__)


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    return pair_rows(splits, tokenizer, recipe, "dpo")


class DPOLoss(torch.nn.Module):
    """Direct preference optimization on batches of [chosen..., rejected...] sequences.

    The reference model is the same network with its adapter switched off (PEFT's
    `disable_adapter`), so no second copy of the weights is held in memory. Reference
    log-probabilities never change, so each sequence's is computed once (in eval mode, without
    dropout) and kept: later epochs and every validation after the first skip that forward.
    Methods without an adapter to switch off (`full`, `freeze`, `gradual`) get every reference
    log-probability up front from the untrained weights (`precompute_reference`), so they need
    no frozen copy either."""

    def __init__(
        self,
        model: torch.nn.Module,
        beta: float,
        loss_type: str,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model, self.beta, self.loss_type = model, beta, loss_type
        self.label_smoothing, self.sft_weight = label_smoothing, sft_weight
        self.reference_logps: dict[bytes, float] = {}

    def forward(self, **batch: torch.Tensor) -> LossParts:
        policy, tokens = self.logps(batch)
        reference = self._reference(batch).to(policy.device)
        pairs = len(policy) // 2
        stats = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            loss_type=self.loss_type,
            chosen_tokens=tokens[:pairs],
            rejected_tokens=tokens[pairs:],
            sft_weight=self.sft_weight,
        )
        # A reference computed in another batch differs from an unchanged policy by float
        # noise (~1e-6 nats in fp32); a margin that small is a tie, not a win. bf16 noise is
        # larger, so validation references are computed in validation's own batches.
        margin = (policy[:pairs] - reference[:pairs]) - (policy[pairs:] - reference[pairs:])
        stats.correct = int((margin.detach() > TIE_NATS).sum())
        return preference_parts(stats)

    def logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer log-probabilities and answer token counts of the batch's rows."""
        return pair_logps(self.model, batch)

    def _reference(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = [
            sequence_key(ids, labels)
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
        ]
        if not all(key in self.reference_logps for key in keys):
            if not hasattr(self.model, "disable_adapter"):
                raise RuntimeError("a reference log-probability was not precomputed")
            with self.model.disable_adapter():
                self._store_reference(batch, keys)
        return torch.tensor([self.reference_logps[key] for key in keys])

    def precompute_reference(self, batches) -> None:
        """Reference log-probabilities of every sequence in `batches`, from the current
        (untrained) weights."""
        for batch in batches:
            keys = [
                sequence_key(ids, labels)
                for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
            ]
            self._store_reference(batch, keys)

    def _store_reference(self, batch: dict[str, torch.Tensor], keys: list[bytes]) -> None:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logps, _ = self.logps(batch)
        self.model.train(was_training)
        self.reference_logps.update(zip(keys, logps.tolist(), strict=True))


def sequence_key(input_ids: torch.Tensor, labels: torch.Tensor) -> bytes:
    """A padded row's identity: its labelled tokens and the tokens before the last label."""
    labelled = (labels != IGNORE_INDEX).nonzero()
    end = int(labelled[-1]) + 1 if len(labelled) else 0
    digest = hashlib.blake2b(input_ids[:end].cpu().numpy().tobytes(), digest_size=16)
    digest.update((labels[:end] != IGNORE_INDEX).cpu().numpy().tobytes())
    return digest.digest()


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    preference = recipe.preference
    return DPOLoss(
        model,
        preference.beta,
        preference.loss_type,
        preference.label_smoothing,
        preference.sft_weight,
    )


def start(accelerator, objective, rows, recipe: Recipe, pad_token_id) -> None:
    """Methods without an adapter to switch off (full, freeze, gradual) get their reference
    log-probabilities up front; an adapter's base is the reference, computed as batches come."""
    if not hasattr(accelerator.unwrap_model(objective).model, "disable_adapter"):
        precompute_reference(accelerator, objective, rows, recipe, pad_token_id)


def precompute_reference(accelerator, objective, rows, recipe: Recipe, pad_token_id) -> None:
    """Reference log-probabilities of every train pair and of this process's val pairs, from
    the untrained weights, in batches of similar lengths (little padding). The val pairs are
    batched exactly as validation batches them: in bf16 a sum depends on the batch it is
    computed in (by up to ~0.01 nats), enough to count pairs as won or lost at step 0, where
    policy and reference are the same weights."""
    size = recipe.train.batch_size // recipe.train.grad_accum
    val = process_share(rows["val"], accelerator)
    groups = evaluation_groups(rows["train"], size) + evaluation_groups(val, size)
    device = accelerator.device
    batches = (
        {k: v.to(device) for k, v in collate_pairs(group, pad_token_id).items()} for group in groups
    )
    log.info(
        "reference log-probabilities of %d pairs, computed once up front",
        sum(len(group) for group in groups),
    )
    with accelerator.autocast():
        accelerator.unwrap_model(objective).precompute_reference(batches)


TASK = Task(
    name="dpo",
    rows="chosen/rejected pairs",
    methods=(*SWITCHABLE, *WHOLE_WEIGHTS),  # whole weights: reference computed up front
    refuse_method="task {task} needs the untrained model as its reference: use one of "
    "{allowed} (not {method})",
    tokenize=tokenize,
    collate=pair_batches,
    objective=objective,
    validation=PREFERENCE_VALIDATION,
    reference=True,
    keys=("preference.sft_weight",),
    start=start,
)

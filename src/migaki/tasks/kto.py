"""Kahneman-Tversky optimization: answers marked desirable or not (unpaired feedback, or the
two sides of preference pairs), against the base without the adapter as the reference."""

from __future__ import annotations

import logging
from functools import partial

import torch

from migaki.config import Recipe
from migaki.data.pairs import collate_kto, kto_rows, tokenize_feedback, tokenize_pairs
from migaki.data.prepare import Splits
from migaki.errors import UserError
from migaki.losses import kto_loss
from migaki.methods import SWITCHABLE
from migaki.metrics import Collate
from migaki.objectives import LossParts, labelled_logps, preference_parts
from migaki.tasks.dpo import DPOLoss
from migaki.tasks.reward import PREFERENCE_VALIDATION
from migaki.tasks.rows import SPLITS
from migaki.tasks.task import Task

log = logging.getLogger(__name__)


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    """KTO rows: answers marked desirable or not, from unpaired feedback rows (prompt,
    completion, label true/false) or from preference pairs (chosen desirable, rejected not)."""
    rows = {}
    for split_name in SPLITS:
        examples = getattr(splits, split_name)
        settings = {
            "max_length": recipe.data.max_length,
            "system_prompt": recipe.data.system_prompt,
        }
        if all(e.is_pair for e in examples):
            pairs, report = tokenize_pairs(examples, tokenizer, **settings)
            rows[split_name] = kto_rows(pairs)
        elif all(isinstance(e.meta.get("label"), bool) for e in examples):
            rows[split_name], report = tokenize_feedback(examples, tokenizer, **settings)
        else:
            raise UserError(
                f"{recipe.data.train}: task kto needs prompt/completion rows with a label "
                "true or false, or chosen/rejected pairs"
            )
        if examples:
            log.info("data %s feedback: %s", split_name, report.summary())
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training row left")
    return rows


def batches(recipe: Recipe, pad_token_id: int, device: torch.device) -> Collate:
    return partial(collate_kto, pad_token_id=pad_token_id)


class KTOLoss(DPOLoss):
    """Kahneman-Tversky optimization on rows marked desirable or not (`collate_kto` batches:
    the rows, then mismatched prompt/answer rows that estimate the KL term). The reference is
    the adapter-less base, cached per sequence as in DPO. The KL estimate is taken per
    micro-batch on each process (TRL averages it over processes first)."""

    def __init__(
        self,
        model: torch.nn.Module,
        beta: float,
        desirable_weight: float,
        undesirable_weight: float,
    ) -> None:
        super().__init__(model, beta, "sigmoid")
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    def logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return labelled_logps(self.model, batch)  # rows, not pairs

    def forward(self, **batch: torch.Tensor) -> LossParts:
        desirable = batch.pop("desirable")
        rows = len(desirable)
        real = {key: value[:rows] for key, value in batch.items()}
        policy, _ = labelled_logps(self.model, real)
        with torch.no_grad():
            mismatched = {key: value[rows:] for key, value in batch.items()}
            policy_kl, _ = labelled_logps(self.model, mismatched)
        reference = self._reference(batch).to(policy.device)
        kl = (policy_kl - reference[rows:]).mean()
        stats = kto_loss(
            policy,
            reference[:rows],
            desirable,
            kl,
            self.beta,
            self.desirable_weight,
            self.undesirable_weight,
        )
        parts = preference_parts(stats)
        parts.extras |= {"chosen_rows": stats.chosen_rows, "rejected_rows": stats.rejected_rows}
        return parts


def objective(recipe: Recipe, model: torch.nn.Module, setup: None) -> torch.nn.Module:
    preference = recipe.preference
    return KTOLoss(
        model, preference.beta, preference.desirable_weight, preference.undesirable_weight
    )


TASK = Task(
    name="kto",
    rows="prompt/completion rows labelled true or false, or chosen/rejected pairs",
    methods=SWITCHABLE,
    refuse_method="task {task} uses the base without the adapter as its reference, so it "
    "needs lora, dora, qlora or ia3 (not {method})",
    tokenize=tokenize,
    collate=batches,
    objective=objective,
    validation=PREFERENCE_VALIDATION,
    reference=True,
)

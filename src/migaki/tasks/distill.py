"""Knowledge distillation: the student matches a teacher's token distributions (a model folder,
an alias, or a migaki run with its adapter merged in) mixed with the usual label loss."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from migaki import models
from migaki.config import Recipe
from migaki.data.prepare import Splits
from migaki.data.tokenize import IGNORE_INDEX
from migaki.errors import UserError
from migaki.losses import distill_loss
from migaki.methods import PROMPT_LEARNING, merged
from migaki.models.inference import load_for_inference
from migaki.objectives import LossParts, decoder
from migaki.rundir import load_run_recipe, run_of
from migaki.tasks.orpo import DECODER_METHODS, DECODER_REFUSAL
from migaki.tasks.rows import language_model_batches, language_model_rows
from migaki.tasks.sft import LANGUAGE_MODEL_VALIDATION
from migaki.tasks.task import Task

log = logging.getLogger(__name__)


def check(recipe: Recipe) -> list[str]:
    return [] if recipe.distill.teacher else ["distill.teacher: task distill needs a teacher model"]


def load_teacher(recipe: Recipe, tokenizer) -> torch.nn.Module:
    """The distillation teacher: a model folder or alias, or a migaki run (its directory or its
    final/), whose adapter is merged in where PEFT can. It must read text with the student's
    tokenizer."""
    name = recipe.distill.teacher
    run = run_of(name)
    if run is None:
        source = models.resolve(name, recipe.model.accept_license)
        _check_teacher_vocab(
            models.load_tokenizer(source, recipe.model.trust_remote_code), tokenizer, recipe
        )
        teacher = models.load_causal_lm(
            source, recipe.model.attn_implementation, recipe.model.trust_remote_code
        )
    else:
        teacher = _run_teacher(run, name, tokenizer, recipe)
    log.info("teacher %s: %s parameters", name, f"{teacher.num_parameters():,}")
    return teacher


def _run_teacher(run: Path, name: str, tokenizer, recipe: Recipe) -> torch.nn.Module:
    # The registry imports every task module, this one included, so the teacher run's task is
    # looked up when a teacher loads rather than when this module does.
    from migaki.tasks import check_generates

    teacher_recipe = load_run_recipe(run)
    check_generates(run, teacher_recipe)
    method = teacher_recipe.method.name
    if method in PROMPT_LEARNING:
        raise UserError(
            f"distill.teacher: {name} was trained with {method} tuning, whose virtual tokens "
            "the teacher's hidden states would leave out; use a run of another method"
        )
    loaded = load_for_inference(run)
    _check_teacher_vocab(loaded.tokenizer, tokenizer, recipe)
    return merged(method, loaded.model)  # one plain model, faster


def _check_teacher_vocab(teacher_tokenizer, tokenizer, recipe: Recipe) -> None:
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"distill.teacher: {recipe.distill.teacher} uses another tokenizer than "
            f"{recipe.model.base}; token distributions can only be matched over one vocabulary"
        )


def tokenize(splits: Splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    return language_model_rows(splits, tokenizer, recipe, TASK.overlong_rows(recipe))


class DistillLoss(torch.nn.Module):
    """Knowledge distillation: the student matches the teacher's temperature-scaled token
    distributions (KL) mixed with the usual label loss, on the labelled positions only. Both
    LM heads run there in chunks, and the student's chunk is recomputed in the backward pass.
    The teacher is frozen and stays in eval mode."""

    def __init__(
        self,
        model: torch.nn.Module,
        teacher: torch.nn.Module,
        temperature: float,
        alpha: float,
        chunk_rows: int = 1024,
    ) -> None:
        super().__init__()
        self.model, self.teacher = model, teacher.requires_grad_(False).eval()
        self.temperature, self.alpha, self.chunk_rows = temperature, alpha, chunk_rows

    def train(self, mode: bool = True) -> DistillLoss:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, **batch: torch.Tensor) -> LossParts:
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "position_ids": batch.get("position_ids"),
            "use_cache": False,
        }
        hidden = decoder(self.model)(**inputs).last_hidden_state[:, :-1][keep]
        with torch.no_grad():
            teacher_hidden = decoder(self.teacher)(**inputs).last_hidden_state[:, :-1][keep]
        target = labels[keep]
        head, teacher_head = (
            self.model.get_output_embeddings(),
            self.teacher.get_output_embeddings(),
        )
        loss_sum = hidden.new_zeros((), dtype=torch.float32)
        correct = 0
        for start in range(0, len(target), self.chunk_rows):
            end = start + self.chunk_rows
            with torch.no_grad():
                teacher_logits = teacher_head(teacher_hidden[start:end])
            args = (head, hidden[start:end], teacher_logits, target[start:end])
            if torch.is_grad_enabled():
                chunk_loss, chunk_correct = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                chunk_loss, chunk_correct = self._chunk(*args)
            loss_sum = loss_sum + chunk_loss
            correct += int(chunk_correct)
        return LossParts(loss_sum, int(keep.sum()), correct)

    def _chunk(self, head, rows, teacher_logits, target):
        logits = head(rows)
        vocab = min(logits.shape[-1], teacher_logits.shape[-1])  # padded embedding rows differ
        # distill_loss takes (batch, seq, vocab) logits and unshifted labels: one row whose
        # position t predicts target t, plus the unused last position the shift drops.
        student = F.pad(logits[:, :vocab], (0, 0, 0, 1)).unsqueeze(0)
        teacher = F.pad(teacher_logits[:, :vocab], (0, 0, 0, 1)).unsqueeze(0)
        labels = F.pad(target, (1, 0), value=IGNORE_INDEX).unsqueeze(0)
        loss, _ = distill_loss(student, teacher, labels, self.temperature, self.alpha)
        return loss, (logits.argmax(dim=-1) == target).sum()


def objective(recipe: Recipe, model: torch.nn.Module, teacher: torch.nn.Module) -> torch.nn.Module:
    return DistillLoss(model, teacher, recipe.distill.temperature, recipe.distill.alpha)


TASK = Task(
    name="distill",
    rows="conversations or text",
    methods=DECODER_METHODS,
    refuse_method=DECODER_REFUSAL,
    tokenize=tokenize,
    collate=language_model_batches,
    objective=objective,
    validation=LANGUAGE_MODEL_VALIDATION,
    check=check,
    setup=load_teacher,
)

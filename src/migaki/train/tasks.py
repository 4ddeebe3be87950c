"""What each task trains on and with: its rows (tokenized splits), its batches and its loss
module, and what some tasks need beside the model (a teacher, reference log-probabilities)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch

from migaki import models
from migaki.config import Recipe
from migaki.data.batches import collate
from migaki.data.cache import tokenize_for_recipe
from migaki.data.classify import (
    class_counts,
    collate_classification,
    label_map,
    tokenize_classification,
)
from migaki.data.packing import collate_packed
from migaki.data.pairs import (
    collate_kto,
    collate_pairs,
    kto_rows,
    tokenize_feedback,
    tokenize_pairs,
)
from migaki.errors import UserError
from migaki.methods import PROMPT_LEARNING
from migaki.rundir import load_run_recipe
from migaki.train.loop import evaluation_groups, process_share
from migaki.train.objectives import (
    CausalLMLoss,
    ClassificationLoss,
    DistillLoss,
    DPOLoss,
    KTOLoss,
    ORPOLoss,
    RewardLoss,
)

log = logging.getLogger(__name__)

PAIR_TASKS = ("dpo", "orpo", "reward")  # batches of chosen and rejected sequences


def objective(recipe: Recipe, model, teacher) -> torch.nn.Module:
    """The loss module of the recipe's task; its forward returns LossParts."""
    task, preference = recipe.task, recipe.preference
    if task == "classification":
        return ClassificationLoss(model)
    if task == "dpo":
        return DPOLoss(
            model,
            preference.beta,
            preference.loss_type,
            preference.label_smoothing,
            preference.sft_weight,
        )
    if task == "kto":
        return KTOLoss(
            model, preference.beta, preference.desirable_weight, preference.undesirable_weight
        )
    if task == "orpo":
        return ORPOLoss(model, preference.beta)
    if task == "reward":
        return RewardLoss(model)
    if task == "distill":
        return DistillLoss(model, teacher, recipe.distill.temperature, recipe.distill.alpha)
    return CausalLMLoss(model)  # sft, pretrain


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


def load_teacher(recipe: Recipe, tokenizer) -> torch.nn.Module:
    """The distillation teacher: a model folder or alias, or a migaki run (its directory or its
    final/), whose adapter is merged in where PEFT can. It must read text with the student's
    tokenizer."""
    name = recipe.distill.teacher
    run = _run_of(Path(name))
    if run is None:
        source = models.resolve(name)
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
    from migaki.evaluate.generation import load_for_inference  # evaluate imports train

    method = load_run_recipe(run).method.name
    if method in PROMPT_LEARNING:
        raise UserError(
            f"distill.teacher: {name} was trained with {method} tuning, whose virtual tokens "
            "the teacher's hidden states would leave out; use a run of another method"
        )
    loaded = load_for_inference(run)
    _check_teacher_vocab(loaded.tokenizer, tokenizer, recipe)
    teacher = loaded.model
    if hasattr(teacher, "merge_and_unload"):  # LoRA, DoRA, IA3: one plain model, faster
        teacher = teacher.merge_and_unload()
    return teacher


def _check_teacher_vocab(teacher_tokenizer, tokenizer, recipe: Recipe) -> None:
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"distill.teacher: {recipe.distill.teacher} uses another tokenizer than "
            f"{recipe.model.base}; token distributions can only be matched over one vocabulary"
        )


def _run_of(path: Path) -> Path | None:
    """The run directory `path` names (itself, or the run whose final/ it is), or None."""
    if (path / "recipe.yaml").is_file():
        return path
    if path.name == "final" and (path.parent / "recipe.yaml").is_file():
        return path.parent
    return None


def batch_maker(recipe: Recipe, pad_token_id: int, device: torch.device):
    """The collate function the recipe asks for: packed rows (no padding) or padded rows."""
    if recipe.task == "classification":
        return partial(collate_classification, pad_token_id=pad_token_id)
    if recipe.task in PAIR_TASKS:
        return partial(collate_pairs, pad_token_id=pad_token_id)
    if recipe.task == "kto":
        return partial(collate_kto, pad_token_id=pad_token_id)
    packing = recipe.data.packing
    if recipe.method.name in PROMPT_LEARNING:
        if packing is True:
            raise UserError(f"data.packing: method {recipe.method.name} cannot use packed rows")
        packing = False  # virtual tokens sit before each row, not before each packed example
    if packing is True or (packing == "auto" and device.type == "cuda"):
        return partial(collate_packed, capacity=recipe.data.max_length, pad_token_id=pad_token_id)
    return partial(collate, pad_token_id=pad_token_id)


def task_labels(recipe: Recipe, splits) -> list[str] | None:
    """The outputs of a model with a task head: the class labels, or one reward score."""
    if recipe.task == "classification":
        return label_map(splits.train, recipe.data.labels)
    return ["reward"] if recipe.task == "reward" else None


def tokenize_splits(splits, tokenizer, recipe: Recipe, labels: list[str] | None) -> dict:
    """Tokenized train/val/test rows; each split's report is logged (nothing dropped silently)."""
    if recipe.task in PAIR_TASKS:
        return _pair_rows(splits, tokenizer, recipe)
    if recipe.task == "kto":
        return _feedback_rows(splits, tokenizer, recipe)
    if labels is not None:
        return _classification_rows(splits, tokenizer, recipe, labels)
    if recipe.task == "pretrain" and any(e.text is None for e in splits.train[:1]):
        raise UserError(
            f"{recipe.data.train}: task pretrain learns from raw text rows "
            '({"text": ...}); conversations belong to task sft'
        )
    if recipe.task == "sft" and any(e.label is not None for e in splits.train[:1]):
        raise UserError(
            f"{recipe.data.train}: rows are classification rows (a text and a label); task sft "
            "learns from conversations or text (set data.format: text to model the text alone)"
        )
    rows = {}
    for split_name in ("train", "val", "test"):
        examples = getattr(splits, split_name)
        rows[split_name], report = tokenize_for_recipe(examples, tokenizer, recipe)
        if examples:
            log.info("data %s: %s", split_name, report.summary())
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training row has a trainable token left")
    return rows


def _pair_rows(splits, tokenizer, recipe: Recipe) -> dict:
    rows = {}
    for split_name in ("train", "val", "test"):
        examples = getattr(splits, split_name)
        if any("rejected" not in e.meta for e in examples[:1]):
            raise UserError(f"{recipe.data.train}: task {recipe.task} needs chosen/rejected rows")
        rows[split_name], report = tokenize_pairs(
            examples,
            tokenizer,
            max_length=recipe.data.max_length,
            system_prompt=recipe.data.system_prompt,
        )
        if examples:
            log.info("data %s pairs: %s", split_name, report.summary())
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training pair left")
    return rows


def _feedback_rows(splits, tokenizer, recipe: Recipe) -> dict:
    """KTO rows: answers marked desirable or not, from unpaired feedback rows (prompt,
    completion, label true/false) or from preference pairs (chosen desirable, rejected not)."""
    rows = {}
    for split_name in ("train", "val", "test"):
        examples = getattr(splits, split_name)
        settings = {
            "max_length": recipe.data.max_length,
            "system_prompt": recipe.data.system_prompt,
        }
        if all("rejected" in e.meta for e in examples):
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


def _classification_rows(splits, tokenizer, recipe: Recipe, labels: list[str]) -> dict:
    rows = {}
    for split_name in ("train", "val", "test"):
        examples = getattr(splits, split_name)
        rows[split_name], report = tokenize_classification(
            examples, tokenizer, labels, recipe.data.max_length
        )
        if examples:
            counts = ", ".join(
                f"{k} {v}" for k, v in class_counts(rows[split_name], labels).items()
            )
            log.info("data %s: %s; labels: %s", split_name, report.summary(), counts)
    if not rows["train"]:
        raise UserError(f"{recipe.data.train}: no training row left")
    return rows

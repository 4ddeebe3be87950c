"""`migaki eval` on preference pairs (prompt/chosen/rejected rows, or HH dialogues): how often
each system ranks the chosen answer above the rejected one.

Every system is scored by its own likelihoods: `likelihood_win_rate` is the share of pairs
whose chosen answer has the higher summed log-probability, `likelihood_win_rate_per_token` the
same with the mean over answer tokens (what ORPO's odds ratio ranks by; it does not favour the
shorter answer). A run trained against a reference (task dpo or kto) is also scored the way
its validation scores it: implicit rewards beta x (log pi - log pi_ref), with the untrained
model as the reference, their margin and `pref_accuracy`, computed in validation's batches and
precision. Given the run's validation file, `--data` repeats its last validation row of
metrics.jsonl (for dpo; kto validates single answers, not pairs)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from migaki import models
from migaki.config import DataConfig, Recipe
from migaki.data import Example
from migaki.data.pairs import PairRow, collate_pairs, tokenize_pairs
from migaki.errors import UserError
from migaki.evaluate.classification import load_classifier
from migaki.losses import reward_loss
from migaki.metrics import evaluation_groups
from migaki.models.inference import LoadedModel, load_for_inference
from migaki.objectives import TIE_NATS, pair_logps
from migaki.precision import autocast, choose_precision, inference_device
from migaki.tasks import task_for

log = logging.getLogger(__name__)


def is_preference_data(examples: list[Example]) -> bool:
    return bool(examples) and all(example.is_pair for example in examples)


@dataclass
class PairLogps:
    """Summed answer log-probabilities and answer token counts, one entry per pair in order."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def likelihood_metrics(self) -> dict[str, float]:
        per_token = self.chosen / self.chosen_tokens.clamp(min=1)
        per_token_rejected = self.rejected / self.rejected_tokens.clamp(min=1)
        return {
            "likelihood_win_rate": _share(self.chosen - self.rejected > 0),
            "likelihood_win_rate_per_token": _share(per_token - per_token_rejected > 0),
            "pairs": len(self.chosen),
        }


def evaluate_pairs(
    target: Path, recipe: Recipe | None, examples: list[Example], compare_base: bool
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Metrics per system ("tuned", and "base" for a reference-trained run or with
    `compare_base`), and one sample per pair saying which answer each system prefers."""
    is_run = recipe is not None
    with_reference = is_run and task_for(recipe).reference
    pairs: tuple[list[Example], list[PairRow]] | None = None
    scores: dict[str, PairLogps] = {}
    systems: dict[str, dict[str, Any]] = {}
    if with_reference or (is_run and compare_base):
        base = _base_model(target, recipe)
        pairs = _pair_rows(examples, base.tokenizer, recipe)
        scores["base"] = score_pairs(base, pairs[1], _batch_size(recipe))
        del base  # one model in memory at a time
    tuned = _with_run_precision(load_for_inference(target), recipe)
    examples, rows = pairs or _pair_rows(examples, tuned.tokenizer, recipe)
    scores["tuned"] = score_pairs(tuned, rows, _batch_size(recipe))
    systems["tuned"] = scores["tuned"].likelihood_metrics()
    if with_reference:
        systems["tuned"] |= implicit_reward_metrics(
            scores["tuned"], scores["base"], recipe.preference.beta
        )
    if "base" in scores:
        systems["base"] = scores["base"].likelihood_metrics()
    for name, metrics in systems.items():
        log.info("%s: %s", name, {k: round(v, 4) for k, v in metrics.items()})
    margins = {name: _margins(scores, name, with_reference, recipe) for name in systems}
    return systems, _samples(examples, margins)


@torch.no_grad()
def evaluate_reward_pairs(
    target: Path, recipe: Recipe, examples: list[Example]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """A reward model's scores of each pair's two conversations: the pairwise loss, mean scores,
    their margin and `pref_accuracy`, as its validation computes them."""
    source = models.resolve(recipe.model.base, recipe.model.accept_license)
    tokenizer = models.load_tokenizer(
        source, recipe.model.trust_remote_code, chat_template=recipe.model.chat_template
    )
    model = load_classifier(target, recipe, ["reward"], tokenizer.pad_token_id)
    device = inference_device()
    model.to(device)
    precision = choose_precision(recipe.train.precision, device)
    examples, rows = _pair_rows(examples, tokenizer, recipe)

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(precision, device):
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return output.logits.squeeze(-1).float()[None]

    (scores,) = _per_pair(rows, _batch_size(recipe), tokenizer.pad_token_id, device, score)
    stats = reward_loss(scores[0], scores[1])
    pairs = len(rows)
    tuned = {
        "loss": stats.loss_sum.item() / pairs,
        "reward_chosen": stats.reward_chosen_sum / pairs,
        "reward_rejected": stats.reward_rejected_sum / pairs,
        "reward_margin": (stats.reward_chosen_sum - stats.reward_rejected_sum) / pairs,
        "pref_accuracy": stats.correct / pairs,
        "pairs": pairs,
    }
    log.info("tuned: %s", {k: round(v, 4) for k, v in tuned.items()})
    return {"tuned": tuned}, _samples(examples, {"tuned": scores[0] - scores[1]}, tie=0.0)


def implicit_reward_metrics(
    policy: PairLogps, reference: PairLogps, beta: float
) -> dict[str, float]:
    """DPO's implicit rewards of the chosen and rejected answers, their margin and the share of
    pairs whose margin is positive (a margin below TIE_NATS is a tie, as in training)."""
    chosen = policy.chosen - reference.chosen
    rejected = policy.rejected - reference.rejected
    return {
        "reward_chosen": beta * chosen.mean().item(),
        "reward_rejected": beta * rejected.mean().item(),
        "reward_margin": beta * (chosen - rejected).mean().item(),
        "pref_accuracy": _share(chosen - rejected > TIE_NATS),
    }


@torch.no_grad()
def score_pairs(loaded: LoadedModel, rows: list[PairRow], batch_size: int) -> PairLogps:
    """Log-probabilities of every pair's answers."""
    model = loaded.model.eval()
    device = next(model.parameters()).device

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(loaded.precision, device):
            values, counts = pair_logps(model, batch)
        return torch.stack([values.double(), counts.double()])

    logps, tokens = _per_pair(rows, batch_size, loaded.tokenizer.pad_token_id, device, score)
    return PairLogps(logps[0], logps[1], tokens[0].long(), tokens[1].long())


def _per_pair(rows: list[PairRow], batch_size: int, pad: int, device, score) -> torch.Tensor:
    """`score(batch)` of every pair, (k, 2, pairs) in the order of `rows`: `score` gives k
    values per sequence, (k, 2 x batch pairs), the chosen sequences first. Batches hold pairs
    of similar length, as validation batches them (in bf16 a sum depends on its batch)."""
    position = {id(row): index for index, row in enumerate(rows)}
    out = None
    for group in evaluation_groups(rows, batch_size):
        batch = {k: v.to(device) for k, v in collate_pairs(group, pad).items()}
        values = score(batch).cpu()
        out = out if out is not None else torch.zeros(len(values), 2, len(rows), dtype=values.dtype)
        where = torch.tensor([position[id(row)] for row in group])
        out[:, 0, where], out[:, 1, where] = values[:, : len(group)], values[:, len(group) :]
    return out


def _base_model(target: Path, recipe: Recipe) -> LoadedModel:
    """The run's model.base: what a dpo/kto run was trained against (with an adapter switched
    off, or computed up front). A run continued from a whole model (`--init-from`) has that
    model as its model.base, so it is the reference there too."""
    return _with_run_precision(load_for_inference(target, tuned=False), recipe)


def _with_run_precision(loaded: LoadedModel, recipe: Recipe | None) -> LoadedModel:
    if recipe is None:
        return loaded
    device = next(loaded.model.parameters()).device
    return dataclasses.replace(loaded, precision=choose_precision(recipe.train.precision, device))


def _pair_rows(
    examples: list[Example], tokenizer, recipe: Recipe | None
) -> tuple[list[Example], list[PairRow]]:
    """The pairs cut to the recipe's max_length as training cuts them, with their examples; a
    pair whose answer is cut away entirely cannot be ranked and is left out (counted)."""
    data = recipe.data if recipe is not None else DataConfig(train="-")
    kept: list[Example] = []
    rows: list[PairRow] = []
    for example in examples:
        tokenized, _ = tokenize_pairs(
            [example],
            tokenizer,
            max_length=data.max_length,
            system_prompt=data.system_prompt,
        )
        kept += [example] * len(tokenized)
        rows += tokenized
    if len(rows) < len(examples):
        log.warning(
            "%d of %d pairs left out: an answer lies beyond max_length %d",
            len(examples) - len(rows),
            len(examples),
            data.max_length,
        )
    if not rows:
        raise UserError(f"no pair keeps both answers within max_length {data.max_length}")
    return kept, rows


def _batch_size(recipe: Recipe | None) -> int:
    return recipe.train.batch_size // recipe.train.grad_accum if recipe is not None else 8


def _margins(
    scores: dict[str, PairLogps], name: str, with_reference: bool, recipe: Recipe | None
) -> torch.Tensor:
    """Per pair, how far the system prefers the chosen answer: the implicit reward margin for
    a reference-trained run, else the difference of summed log-probabilities."""
    own = scores[name]
    if name == "tuned" and with_reference:
        reference = scores["base"]
        beta = recipe.preference.beta
        return beta * ((own.chosen - reference.chosen) - (own.rejected - reference.rejected))
    return own.chosen - own.rejected


def _samples(
    examples: list[Example], margins: dict[str, torch.Tensor], tie: float = TIE_NATS
) -> list[dict[str, Any]]:
    samples = []
    for index, example in enumerate(examples):
        row = {
            "prompt": example.prompt_messages[-1]["content"],
            "reference": example.messages[-1]["content"],
            "rejected": example.meta["rejected"],
        }
        for name, margin in margins.items():
            value = float(margin[index])
            row[name] = f"{'chosen' if value > tie else 'rejected'} ({value:+.3f})"
        samples.append(row)
    return samples


def _share(wins: torch.Tensor) -> float:
    return wins.double().mean().item() if len(wins) else 0.0

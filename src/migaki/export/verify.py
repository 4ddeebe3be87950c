"""Proof that an export still behaves like the model that was evaluated.

Golden rows (a few of the run's test split, or the user's) go through the pre-export model
(the run's final/ on its base, unmerged) and through the exported folder loaded back from
disk, both in fp32: greedy answers must agree and end their turn where the original did,
the log-probability of each reference-answer token may move only within the tolerance of the
export's dtype, the chat rendering must be the training one, and the exported weights must
differ from the base model's (an export that lost its adapter is the base in disguise)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from migaki import models
from migaki.config import Recipe
from migaki.data.classify import collate_classification, tokenize_classification
from migaki.data.formats import Example
from migaki.data.tokenize import render_prompt, tokenize_example
from migaki.evaluate.generation import generate_answers
from migaki.export.hf import DTYPES
from migaki.models.inference import LoadedModel
from migaki.models.templates import end_of_turn_ids

# Tolerances per exported dtype, measured on the quickstart model (README, "Export"): fp32
# differs from the unmerged model only by summation order; 16-bit weights round every value.
TOLERANCE = {  # dtype: (least share of greedy answers that agree, largest |Δ log p| per token)
    "fp32": (1.0, 1e-3),
    "bf16": (0.6, 1.0),
    "fp16": (0.8, 0.5),
}
GOLDEN_ROWS = 5


@dataclass
class Check:
    """One golden row: both models' greedy answers and the largest change in the
    log-probability of a reference-answer token (for a classifier: of a label)."""

    prompt: str
    original: str
    exported: str
    original_stopped: bool = True
    exported_stopped: bool = True
    max_delta: float = 0.0

    @property
    def agree(self) -> bool:
        return self.original == self.exported


@dataclass
class Verification:
    dtype: str
    checks: list[Check] = field(default_factory=list)
    rendering: list[str] = field(default_factory=list)  # where the chat rendering differs
    same_as_base: bool = False

    @property
    def agreement(self) -> float:
        return sum(c.agree for c in self.checks) / max(len(self.checks), 1)

    @property
    def max_delta(self) -> float:
        return max((c.max_delta for c in self.checks), default=0.0)

    def problems(self) -> list[str]:
        """Why the export cannot be trusted; empty when it passed."""
        least_agreement, largest_delta = TOLERANCE[self.dtype]
        found = []
        if self.same_as_base:
            found.append(
                "the exported weights equal the base model's: the fine-tuning was lost (or "
                f"is too small to survive rounding to {self.dtype}: export with --dtype fp32)"
            )
        found += self.rendering
        never_stops = [c for c in self.checks if c.original_stopped and not c.exported_stopped]
        if never_stops:
            found.append(
                f"{len(never_stops)} of {len(self.checks)} answers do not end their turn in the "
                "export where the original model's did (the end-of-turn token is lost)"
            )
        if self.checks and self.agreement < least_agreement:
            found.append(
                f"greedy answers agree on {self.agreement:.0%} of golden rows, below the "
                f"{least_agreement:.0%} a {self.dtype} export must reach"
            )
        if self.max_delta > largest_delta:
            found.append(
                f"a token's log-probability moved by {self.max_delta:.3g}, more than the "
                f"{largest_delta:g} a {self.dtype} export allows"
            )
        return found

    def table(self) -> list[str]:
        lines = [f"{'row':<44} {'agree':>5} {'stops':>9} {'max |Δ logp|':>12}"]
        for check in self.checks:
            stops = f"{_yes(check.original_stopped)}/{_yes(check.exported_stopped)}"
            lines.append(
                f"{_short(check.prompt)} {_yes(check.agree):>5} {stops:>9} {check.max_delta:>12.2e}"
            )
        lines.append(
            f"agreement {self.agreement:.0%}, largest |Δ logp| {self.max_delta:.2e} "
            f"(tolerance for {self.dtype}: {TOLERANCE[self.dtype][0]:.0%}, "
            f"{TOLERANCE[self.dtype][1]:g})"
        )
        return lines

    def to_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "agreement": self.agreement,
            "max_delta_logprob": self.max_delta,
            "same_as_base": self.same_as_base,
            "problems": self.problems(),
            "rows": [
                {
                    "prompt": c.prompt,
                    "original": c.original,
                    "exported": c.exported,
                    "agree": c.agree,
                    "original_stopped": c.original_stopped,
                    "exported_stopped": c.exported_stopped,
                    "max_delta_logprob": c.max_delta,
                }
                for c in self.checks
            ],
        }


def verify_language_model(
    original: LoadedModel, export_dir: Path, examples: list[Example], dtype: str
) -> Verification:
    """Golden conversations through the original and the exported causal LM. The export is
    loaded with no recipe: its own chat template must add the training system prompt."""
    recipe = original.recipe
    exported = LoadedModel(
        models.load_causal_lm(models.ModelSource("export", export_dir, "local")).eval(),
        models.load_tokenizer(models.ModelSource("export", export_dir, "local")),
        None,
        "fp32",
    )
    original = LoadedModel(original.model.to("cpu").eval(), original.tokenizer, recipe, "fp32")
    result = Verification(dtype)
    result.rendering = _rendering_problems(original, exported, examples)
    conversations = [e.prompt_messages for e in examples]
    tokens = recipe.eval.max_new_tokens
    before = generate_answers(original, conversations, tokens)
    after = generate_answers(exported, conversations, tokens)
    for example, (text_a, stop_a), (text_b, stop_b) in zip(examples, before, after, strict=True):
        row = tokenize_example(example, original.tokenizer, system_prompt=recipe.data.system_prompt)
        delta = _largest_logprob_change(original.model, exported.model, row.input_ids, row.labels)
        result.checks.append(
            Check(example.prompt_messages[-1]["content"], text_a, text_b, stop_a, stop_b, delta)
        )
    result.same_as_base = _equals_base(exported.model, recipe, dtype, classifier_labels=None)
    return result


def verify_classifier(
    original: torch.nn.Module,
    tokenizer,
    recipe: Recipe,
    export_dir: Path,
    examples: list[Example],
    labels: list[str],
    dtype: str,
) -> Verification:
    """Golden rows through the original and the exported classifier: the predicted label must
    agree, and the log-probability of each label may move only within tolerance."""
    source = models.ModelSource("export", export_dir, "local")
    exported = models.load_sequence_classifier(source, labels, tokenizer.pad_token_id).eval()
    rows, _ = tokenize_classification(examples, tokenizer, labels, recipe.data.max_length)
    result = Verification(dtype)
    with torch.no_grad():
        for example, row in zip(examples, rows, strict=False):
            batch = collate_classification([row], tokenizer.pad_token_id)
            a = original.to("cpu").eval()(**_inputs(batch)).logits.float().log_softmax(-1)[0]
            b = exported(**_inputs(batch)).logits.float().log_softmax(-1)[0]
            result.checks.append(
                Check(
                    example.text or "",
                    labels[int(a.argmax())],
                    labels[int(b.argmax())],
                    max_delta=float((a - b).abs().max()),
                )
            )
    result.same_as_base = _equals_base(exported, recipe, dtype, classifier_labels=labels)
    return result


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _rendering_problems(
    original: LoadedModel, exported: LoadedModel, examples: list[Example]
) -> list[str]:
    """The exported tokenizer, given a conversation without a system message, must render
    exactly what training rendered (the system prompt included) and stop at the same tokens."""
    found = []
    system_prompt = original.recipe.data.system_prompt
    for example in examples:
        want = render_prompt(original.tokenizer, example.prompt_messages, system_prompt)
        got = render_prompt(exported.tokenizer, example.prompt_messages, None)
        if want != got:
            found.append(
                f"the exported chat template renders a prompt differently from training "
                f"(training: {want[:60]!r}..., export: {got[:60]!r}...)"
            )
            break
    if end_of_turn_ids(original.tokenizer) != end_of_turn_ids(exported.tokenizer):
        found.append("the exported tokenizer ends a turn at other tokens than training did")
    return found


@torch.no_grad()
def _largest_logprob_change(original, exported, input_ids: list[int], labels: list[int]) -> float:
    ids = torch.tensor([input_ids])
    wanted = torch.tensor(labels[1:])
    keep = wanted >= 0
    if not keep.any():
        return 0.0
    a = _token_logprobs(original, ids, wanted, keep)
    b = _token_logprobs(exported, ids, wanted, keep)
    return float((a - b).abs().max())


def _token_logprobs(model, ids: torch.Tensor, wanted: torch.Tensor, keep: torch.Tensor):
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    logprobs = logits.log_softmax(-1)
    return logprobs[keep].gather(-1, wanted[keep].unsqueeze(-1)).squeeze(-1)


def _equals_base(exported: torch.nn.Module, recipe: Recipe, dtype: str, classifier_labels) -> bool:
    """Whether every weight the export shares with its base model is unchanged at the
    export's dtype: the sign of an adapter that never reached the weights. A classifier's new
    head is left out (it is random in the base), so its body decides."""
    source = models.resolve(recipe.model.base, recipe.model.accept_license)
    if classifier_labels is None:
        base = models.load_causal_lm(source)
    else:
        base = models.load_sequence_classifier(source, classifier_labels, 0)
    base_state = base.state_dict()
    saved = DTYPES[dtype]
    compared = 0
    for name, tensor in exported.state_dict().items():
        other = base_state.get(name)
        if other is None or other.shape != tensor.shape or "classifier" in name or "score" in name:
            continue
        compared += 1
        if not torch.equal(other.to(saved), tensor.to(saved)):
            return False
    return compared > 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _short(text: str, width: int = 44) -> str:
    """`text` on one line, cut and padded to `width` columns (CJK characters take two)."""
    out, used = "", 0
    for char in " ".join(text.split()):
        columns = 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used + columns > width - 1:
            out, used = out + "…", used + 1
            break
        out, used = out + char, used + columns
    return out + " " * (width - used)

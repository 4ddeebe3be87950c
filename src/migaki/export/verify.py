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
from migaki.export.llama_cpp import load_runtime
from migaki.models.inference import LoadedModel
from migaki.models.templates import end_of_turn_ids

# Tolerances per exported type (README, "Export", has the figures they come from). fp32
# differs from the unmerged model only by summation order; fp16, bf16 and GGUF types round
# every weight. A whole greedy answer is a brittle measure (one near-tie early on and the
# rest differs), so the rounded types are held to the next-token choice along the
# reference answer instead: the share of its tokens where both models pick the same one.
TOLERANCE = {  # type: (least share of whole greedy answers that agree,
    #                   least share of reference tokens with the same top choice,
    #                   largest |Δ log p| of a reference token)
    "fp32": (1.0, 1.0, 1e-3),  # measured: 100%, 100%, 2.2e-05 (SmolLM2 LoRA, 5 FAQ rows)
    "fp16": (0.6, 0.95, 0.2),  # 100%, 99.4%, 7.4e-03
    "bf16": (0.2, 0.90, 0.5),  # 80%, 98.5%, 9.7e-02
    "f16": (0.6, 0.95, 0.2),  # llama.cpp 100%, 99.4%, 1.0e-02
    "q8_0": (0.2, 0.90, 1.5),  # llama.cpp 40%, 95.7%, 0.38; transformers 60%, 97.5%, 0.34
    "q4_k_m": (0.0, 0.80, 8.0),  # llama.cpp 0%, 87.3%, 3.9 (576-wide rows fall back to q5_0)
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
    same_top: float = 1.0  # share of reference tokens where both models' top choice agrees
    tokens: int = 1  # reference tokens compared

    @property
    def agree(self) -> bool:
        return self.original == self.exported


@dataclass
class Verification:
    """The golden rows through one runtime reading the export. `kind` is the exported type
    (fp32, bf16, fp16 or a GGUF quantization) and picks the tolerance."""

    kind: str
    runtime: str = "transformers"
    checks: list[Check] = field(default_factory=list)
    rendering: list[str] = field(default_factory=list)  # where the chat rendering differs
    same_as_base: bool = False

    @property
    def agreement(self) -> float:
        return sum(c.agree for c in self.checks) / max(len(self.checks), 1)

    @property
    def max_delta(self) -> float:
        return max((c.max_delta for c in self.checks), default=0.0)

    @property
    def same_top(self) -> float:
        """Pooled over the tokens of every row, so a short answer weighs what it holds."""
        tokens = sum(c.tokens for c in self.checks)
        return sum(c.same_top * c.tokens for c in self.checks) / max(tokens, 1)

    def problems(self) -> list[str]:
        """Why the export cannot be trusted; empty when it passed."""
        least_agreement, least_same_top, largest_delta = TOLERANCE[self.kind]
        found = []
        if self.same_as_base:
            found.append(
                "the exported weights equal the base model's: the fine-tuning was lost (or "
                f"is too small to survive rounding to {self.kind}: export with --dtype fp32)"
            )
        found += self.rendering
        never_stops = [c for c in self.checks if c.original_stopped and not c.exported_stopped]
        if never_stops:
            found.append(
                f"{len(never_stops)} of {len(self.checks)} answers do not end their turn in the "
                f"export ({self.runtime}) where the original model's did (the end-of-turn token "
                "is lost)"
            )
        if self.checks and self.agreement < least_agreement:
            found.append(
                f"greedy answers agree on {self.agreement:.0%} of golden rows, below the "
                f"{least_agreement:.0%} a {self.kind} export must reach ({self.runtime})"
            )
        if self.checks and self.same_top < least_same_top:
            found.append(
                f"the top next-token choice along the reference answers agrees on "
                f"{self.same_top:.1%} of tokens, below the {least_same_top:.0%} a {self.kind} "
                f"export must reach ({self.runtime})"
            )
        if self.max_delta > largest_delta:
            found.append(
                f"a token's log-probability moved by {self.max_delta:.3g}, more than the "
                f"{largest_delta:g} a {self.kind} export allows ({self.runtime})"
            )
        return found

    def table(self) -> list[str]:
        lines = [
            f"{self.kind} read by {self.runtime}:",
            f"{'row':<44} {'agree':>5} {'stops':>9} {'same top':>8} {'max |Δ logp|':>12}",
        ]
        for c in self.checks:
            stops = f"{_yes(c.original_stopped)}/{_yes(c.exported_stopped)}"
            lines.append(
                f"{_short(c.prompt)} {_yes(c.agree):>5} {stops:>9} {c.same_top:>8.1%} "
                f"{c.max_delta:>12.2e}"
            )
        answers, same_top, delta = TOLERANCE[self.kind]
        lines.append(
            f"agreement {self.agreement:.0%}, same top {self.same_top:.1%}, largest |Δ logp| "
            f"{self.max_delta:.2e} (tolerance for {self.kind}: {answers:.0%}, {same_top:.0%}, "
            f"{delta:g})"
        )
        return lines

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "runtime": self.runtime,
            "agreement": self.agreement,
            "same_top": self.same_top,
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
                    "same_top": c.same_top,
                }
                for c in self.checks
            ],
        }


@dataclass
class Reference:
    """What the pre-export model does on the golden rows, computed once for every runtime
    that reads the export: greedy answers, whether each stopped, and at every
    reference-answer token its log-probability and the model's top choice."""

    examples: list[Example]
    prompts: list[str]  # the training rendering, system prompt included
    rows: list  # tokenized like training: input_ids and labels
    answers: list[tuple[str, bool]]
    scores: list[tuple[torch.Tensor, torch.Tensor]]  # per row: (log p, top choice) per token


def reference(original: LoadedModel, examples: list[Example]) -> Reference:
    recipe = original.recipe
    loaded = LoadedModel(original.model.to("cpu").eval(), original.tokenizer, recipe, "fp32")
    system_prompt = recipe.data.system_prompt
    rows = [tokenize_example(e, original.tokenizer, system_prompt=system_prompt) for e in examples]
    answers = generate_answers(
        loaded, [e.prompt_messages for e in examples], recipe.eval.max_new_tokens
    )
    prompts = [
        render_prompt(original.tokenizer, e.prompt_messages, system_prompt) for e in examples
    ]
    scores = [_answer_scores(_torch_scores(loaded.model, row.input_ids), row) for row in rows]
    return Reference(examples, prompts, rows, answers, scores)


def verify_language_model(
    original: LoadedModel, ref: Reference, export_dir: Path, kind: str, gguf_file: str | None = None
) -> Verification:
    """The golden rows through transformers reading the export: a Hugging Face folder, or
    with `gguf_file` the GGUF in it (transformers' GGUF loader de-quantizes it). The export is
    loaded with no recipe: its own chat template must add the training system prompt."""
    if gguf_file:
        model, tokenizer = _transformers_gguf(export_dir, gguf_file)
    else:
        source = models.ModelSource("export", export_dir, "local")
        model, tokenizer = models.load_causal_lm(source), models.load_tokenizer(source)
    exported = LoadedModel(model.eval(), tokenizer, None, "fp32")
    runtime = "transformers (gguf_file)" if gguf_file else "transformers"
    result = Verification(kind, runtime)
    result.rendering = _rendering_problems(original, exported.tokenizer, ref, runtime)
    tokens = original.recipe.eval.max_new_tokens
    answers = generate_answers(exported, [e.prompt_messages for e in ref.examples], tokens)
    for i, (text, stopped) in enumerate(answers):
        scores = _torch_scores(exported.model, ref.rows[i].input_ids)
        result.checks.append(_check(ref, i, text, stopped, _answer_scores(scores, ref.rows[i])))
    if not gguf_file:
        result.same_as_base = equals_base(exported.model, original.recipe, kind)
    return result


def verify_llama_cpp(
    original: LoadedModel, ref: Reference, gguf_path: Path, kind: str
) -> Verification:
    """The golden rows through llama.cpp's own runtime (an independent implementation of the
    model): the GGUF's tokenizer must read the training rendering as training's tokenizer
    did; greedy answers stop at the GGUF's end-of-generation tokens."""
    tokens = original.recipe.eval.max_new_tokens
    longest = max((len(row.input_ids) for row in ref.rows), default=0)
    llm = load_runtime(gguf_path, context=max(512, longest + tokens))
    result = Verification(kind, "llama.cpp")
    split_otherwise = 0
    for i, prompt in enumerate(ref.prompts):
        ids = original.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        split_otherwise += llm.tokenize(prompt.encode(), add_bos=False, special=True) != ids
        llm.reset()
        out = llm.create_completion(
            ids, max_tokens=tokens, temperature=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0
        )
        choice = out["choices"][0]
        text = choice["text"].strip().rstrip("\ufffd")
        row = ref.rows[i]
        llm.reset()
        llm.eval(row.input_ids)
        scores = torch.from_numpy(llm.scores[: len(row.input_ids)].copy())
        result.checks.append(
            _check(ref, i, text, choice["finish_reason"] == "stop", _answer_scores(scores, row))
        )
    llm.close()
    if split_otherwise:
        result.rendering.append(
            f"llama.cpp's tokenizer (read from the GGUF) splits {split_otherwise} of "
            f"{len(ref.prompts)} training renderings into other tokens than training's tokenizer"
        )
    return result


def _transformers_gguf(folder: Path, name: str):
    """The GGUF as transformers reads it (weights de-quantized to fp32, tokenizer and chat
    template from the file's metadata), with no cache written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model, tokenizer


def _check(ref: Reference, i: int, text: str, stopped: bool, scores) -> Check:
    original_text, original_stopped = ref.answers[i]
    (want_logprobs, want_top), (logprobs, top) = ref.scores[i], scores
    check = Check(ref.examples[i].prompt_messages[-1]["content"], original_text, text)
    check.original_stopped, check.exported_stopped = original_stopped, stopped
    if logprobs.numel():
        check.max_delta = float((want_logprobs - logprobs).abs().max())
        check.same_top = float((want_top == top).float().mean())
        check.tokens = logprobs.numel()
    return check


@torch.no_grad()
def _torch_scores(model, input_ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([input_ids]), use_cache=False).logits[0].float()


def _answer_scores(scores: torch.Tensor, row) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each reference-answer token and the model's top choice at its place, from
    the scores (logits) of every position."""
    wanted = torch.tensor(row.labels[1:])
    keep = wanted >= 0
    logprobs = scores[:-1].float().log_softmax(-1)[keep]
    return logprobs.gather(-1, wanted[keep].unsqueeze(-1)).squeeze(-1), logprobs.argmax(-1)


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
            same = bool(a.argmax() == b.argmax())
            result.checks.append(
                Check(
                    example.text or "",
                    labels[int(a.argmax())],
                    labels[int(b.argmax())],
                    max_delta=float((a - b).abs().max()),
                    same_top=float(same),
                )
            )
    result.same_as_base = equals_base(exported, recipe, dtype, classifier_labels=labels)
    return result


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _rendering_problems(
    original: LoadedModel, tokenizer, ref: Reference, runtime: str
) -> list[str]:
    """The exported tokenizer, given a conversation without a system message, must render
    exactly what training rendered (the system prompt included) and stop at the same tokens."""
    found = []
    for example, want in zip(ref.examples, ref.prompts, strict=True):
        got = render_prompt(tokenizer, example.prompt_messages, None)
        if want != got:
            found.append(
                f"the exported chat template ({runtime}) renders a prompt differently from "
                f"training (training: {want[:60]!r}..., export: {got[:60]!r}...)"
            )
            break
    if end_of_turn_ids(original.tokenizer) != end_of_turn_ids(tokenizer):
        found.append(
            f"the exported tokenizer ({runtime}) ends a turn at other tokens than training"
        )
    return found


def equals_base(
    exported: torch.nn.Module, recipe: Recipe, dtype: str, classifier_labels=None
) -> bool:
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

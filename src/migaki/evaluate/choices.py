"""Multiple-choice scoring by log-likelihood: each choice is put in the assistant's turn of the
row's own conversation, rendered and tokenized exactly as training renders it, and the choice
whose answer tokens are most likely is the model's pick. Nothing is generated, so a small
model is scored on what it knows rather than on whether it follows the answer format.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from migaki.data.batches import collate
from migaki.data.formats import Example
from migaki.data.tokenize import TokenizedExample, tokenize_example
from migaki.models.inference import LoadedModel
from migaki.objectives import decoder, is_prompt_learning, labelled_logps, logps_from_states
from migaki.precision import autocast


@dataclass
class ChoiceScores:
    """Per row and per choice: the summed log-probability (nats) of the choice's answer tokens
    (its text and the end-of-turn token) and how many tokens that is."""

    logprobs: list[list[float]]
    tokens: list[list[int]]
    answers: list[int]  # index of the right choice per row

    @property
    def picks(self) -> list[int]:
        """The most likely choice of each row (the first one on a tie)."""
        return [_argmax(row) for row in self.logprobs]

    @property
    def picks_norm(self) -> list[int]:
        """The choice with the highest mean log-probability per answer token."""
        return [
            _argmax([lp / max(n, 1) for lp, n in zip(lps, counts, strict=True)])
            for lps, counts in zip(self.logprobs, self.tokens, strict=True)
        ]

    def metrics(self) -> dict[str, float]:
        """choice_accuracy (by summed log-prob), choice_accuracy_norm (by mean log-prob per
        answer token, which does not favour short choices), choice_chance (the accuracy of a
        random pick: 1/choices averaged over rows) and choice_rows."""
        rows = max(len(self.answers), 1)
        return {
            "choice_accuracy": _hits(self.picks, self.answers) / rows,
            "choice_accuracy_norm": _hits(self.picks_norm, self.answers) / rows,
            "choice_chance": sum(1 / len(row) for row in self.logprobs) / rows,
            "choice_rows": len(self.answers),
        }


def is_choice_example(example: Example) -> bool:
    """A conversation that carries its choices and the right one's index in `meta` (rows of the
    `choice` format, and the split files `migaki train` writes from them)."""
    choices, answer = example.meta.get("choices"), example.meta.get("answer")
    return (
        example.messages is not None
        and isinstance(choices, list)
        and len(choices) >= 2
        and all(isinstance(choice, str) and choice.strip() for choice in choices)
        and isinstance(answer, int)
        and not isinstance(answer, bool)
        and 0 <= answer < len(choices)
    )


def tokenize_choices(
    example: Example, tokenizer, system_prompt: str | None = None
) -> list[TokenizedExample]:
    """One row per choice: the example's prompt with that choice as the last assistant turn,
    labels on the answer tokens only. The right choice's row is the training row itself."""
    rows = []
    for choice in example.meta["choices"]:
        answer = {"role": "assistant", "content": choice}
        variant = replace(example, messages=[*example.prompt_messages, answer])
        rows.append(tokenize_example(variant, tokenizer, system_prompt=system_prompt))
    return rows


@torch.no_grad()
def score_choices(loaded: LoadedModel, examples: list[Example]) -> ChoiceScores:
    """Score every choice of every example (see `is_choice_example`), one question at a time
    (see `question_logprobs`). No truncation: a choice cut off would be scored unfairly.
    Raises ValueError for an example without choices."""
    if not all(is_choice_example(e) for e in examples):
        raise ValueError("score_choices needs examples with meta 'choices' and 'answer'")
    model, tokenizer = loaded.model, loaded.tokenizer
    system_prompt = loaded.recipe.data.system_prompt if loaded.recipe else None
    device = next(model.parameters()).device
    model.eval()
    scores = ChoiceScores([], [], [e.meta["answer"] for e in examples])
    for example in examples:
        rows = tokenize_choices(example, tokenizer, system_prompt)
        with autocast(loaded.precision, device):
            sums, counts = question_logprobs(model, rows, tokenizer.pad_token_id)
        scores.logprobs.append(sums.tolist())
        scores.tokens.append(counts.tolist())
    return scores


def question_logprobs(
    model, rows: list[TokenizedExample], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`answer_logprobs` of the rows of one question, computing their shared start once.

    The rows share the rendered prompt, so the decoder runs once over their common token prefix
    and its key/value cache is repeated for the rest of each row (a padded batch of the
    choices): with a long question and short choices, about a fifth of the work of five whole
    rows. Causal attention makes this exact: a prefix's states do not depend on what follows.
    Returns sums (rows,) float32 in nats and counts (rows,) int64."""
    device = next(model.parameters()).device
    shared = _shared_prefix(rows)
    if shared == 0 or is_prompt_learning(model):
        batch = collate(rows, pad_token_id)
        return answer_logprobs(model, {key: value.to(device) for key, value in batch.items()})
    body = decoder(model)
    prefix = body(
        input_ids=torch.tensor([rows[0].input_ids[:shared]], device=device), use_cache=True
    )
    cache, cache_name = _cache_of(prefix, body)
    cache.batch_repeat_interleave(len(rows))
    rest = collate(
        [TokenizedExample(r.input_ids[shared:], r.labels[shared:]) for r in rows], pad_token_id
    )
    rest = {key: value.to(device) for key, value in rest.items()}
    seen = torch.ones(len(rows), shared, dtype=rest["attention_mask"].dtype, device=device)
    tail = body(
        input_ids=rest["input_ids"],
        attention_mask=torch.cat([seen, rest["attention_mask"]], dim=1),
        use_cache=True,
        **{cache_name: cache},
    )
    hidden = torch.cat(
        [prefix.last_hidden_state.expand(len(rows), -1, -1), tail.last_hidden_state], dim=1
    )  # (rows, seq, hidden), as one padded forward pass would give
    prefix_labels = torch.tensor([rows[0].labels[:shared]] * len(rows), device=device)
    labels = torch.cat([prefix_labels, rest["labels"]], dim=1)
    return logps_from_states(model.get_output_embeddings(), hidden, labels)


def answer_logprobs(
    model, batch: dict[str, torch.Tensor], chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the summed log p(token | tokens before) over its labelled tokens, and their count.

    batch: input_ids and labels (rows, seq), unshifted, IGNORE_INDEX where nothing is scored;
    attention_mask for padded rows. Like `causal_lm_loss`, the LM head runs only on labelled
    positions, `chunk_rows` at a time, so no (rows, seq, vocab) logits are built.
    Returns sums (rows,) float32 in nats and counts (rows,) int64."""
    if is_prompt_learning(model):
        # Soft prompts live in PeftModel's forward, which only returns full logits.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, -batch["input_ids"].shape[1] :]  # drop the virtual-token positions
        return logps_from_states(torch.nn.Identity(), logits, batch["labels"], chunk_rows)
    return labelled_logps(model, batch, chunk_rows)


def _cache_of(output, body: torch.nn.Module) -> tuple[object, str]:
    """The key/value cache a forward pass returned, and the argument that takes it back:
    transformers 5 renames `past_key_values` to `cache` (the old name goes in 5.40)."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = output.past_key_values
    takes_cache = "cache" in inspect.signature(body.forward).parameters
    return cache, "cache" if takes_cache else "past_key_values"


def _shared_prefix(rows: list[TokenizedExample]) -> int:
    """Tokens all rows start with, leaving each row at least one token of its own."""
    shortest = min(len(row.input_ids) for row in rows)
    length = 0
    while length < shortest - 1 and all(
        row.input_ids[length] == rows[0].input_ids[length] for row in rows
    ):
        length += 1
    return length


def _hits(picks: list[int], answers: list[int]) -> int:
    return sum(pick == answer for pick, answer in zip(picks, answers, strict=True))


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda index: (values[index], -index))

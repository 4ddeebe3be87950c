"""Multiple-choice scoring by log-likelihood: each choice is put in the assistant's turn of the
row's own conversation, rendered and tokenized exactly as training renders it, and the choice
whose answer tokens are most likely is the model's pick. Nothing is generated, so a small
model is scored on what it knows rather than on whether it follows the answer format.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, replace

import torch

from migaki.data.batches import collate
from migaki.data.formats import Example
from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
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
def score_choices(
    loaded: LoadedModel, examples: list[Example], batch_size: int | None = None
) -> ChoiceScores:
    """Score every choice of every example (see `is_choice_example`), the choices of many
    questions per forward pass (see `choice_logprobs`), `batch_size` choice rows per pass at
    most (the recipe's eval.batch_size, 32 without a recipe). No truncation: a choice cut off
    would be scored unfairly. Raises ValueError for an example without choices."""
    if not all(is_choice_example(e) for e in examples):
        raise ValueError("score_choices needs examples with meta 'choices' and 'answer'")
    model, tokenizer = loaded.model, loaded.tokenizer
    system_prompt = loaded.recipe.data.system_prompt if loaded.recipe else None
    if batch_size is None:
        batch_size = loaded.recipe.eval.batch_size if loaded.recipe else 32
    device = next(model.parameters()).device
    model.eval()
    questions = [tokenize_choices(example, tokenizer, system_prompt) for example in examples]
    with autocast(loaded.precision, device):
        scored = choice_logprobs(model, questions, tokenizer.pad_token_id, batch_size)
    return ChoiceScores(
        [sums.tolist() for sums, _ in scored],
        [counts.tolist() for _, counts in scored],
        [e.meta["answer"] for e in examples],
    )


@torch.no_grad()
def choice_logprobs(
    model, questions: list[list[TokenizedExample]], pad_token_id: int, batch_size: int = 32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`answer_logprobs` of every choice row of every question, as if each row ran alone:
    per question, sums (choices,) float32 in nats and counts (choices,) int64.

    On CPU the time goes to matrix products, so what counts is how many tokens run. The tokens
    every row starts with (system prompt, the template's opening) run once, and their key/value
    cache is reused by every pass. Each question becomes one packed row, its prompt once and
    then each choice's own tokens, with position ids that restart after the prompt and a 4D
    mask that lets each choice see the prompt and itself only (as `pair_logps` packs preference
    pairs); causal attention makes this exact. Questions of similar packed length share a pass
    of at most `batch_size` choice rows (one question at least). On JCommonsenseQA (105-token
    prompts, 8-token choices) that is about a fifth of the tokens of one row per choice
    (benchmarks/choice_scoring.py). Prompt-learning adapters (PEFT adds their virtual tokens
    in its own forward), attention kernels that take no 4D mask, and rows longer than a
    sliding attention window run as plain padded rows, sorted by length."""
    rows = [row for question in questions for row in question]
    if not rows:
        return []
    kind = _mask_kind(model)
    if kind is None or is_prompt_learning(model) or _beyond_window(model, rows):
        sums, counts = _padded_logprobs(model, rows, pad_token_id, batch_size)
        return _per_question(sums, counts, questions)
    device = next(model.parameters()).device
    start = _common_start(rows)
    body = decoder(model)
    opening = None
    if start:
        ids = torch.tensor([rows[0].input_ids[:start]], device=device)
        opening = body(input_ids=ids, use_cache=True)
    prompts = [_shared_prefix(question) for question in questions]
    scored: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(questions)
    for group in _packed_groups(questions, prompts, start, batch_size):
        pack = _pack([questions[i] for i in group], [prompts[i] for i in group], start)
        sums, counts = _packed_logprobs(model, pack, pad_token_id, opening, kind)
        done = 0
        for index in group:
            choices = len(questions[index])
            scored[index] = (sums[done : done + choices], counts[done : done + choices])
            done += choices
    return scored


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


PROMPT, PADDING = -1, -2  # segments of a packed row besides the choices 0, 1, ...


@dataclass
class _Pack:
    """Questions packed one per row: (questions, width) input_ids, position_ids and segment
    (PROMPT, the choice's index, or PADDING); and per choice row (rows, length) the packed
    slot of each of its positions after the common start, its labels there, and its question."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    slots: torch.Tensor
    labels: torch.Tensor
    question_of: torch.Tensor


def _pack(questions: list[list[TokenizedExample]], prompts: list[int], start: int) -> _Pack:
    """`_Pack` of questions whose rows share `prompts[i]` tokens each and `start` tokens all
    (those run before, their cache reused). A row runs up to its last labelled token, not
    including it: no label needs that token's state or any after it (on JCommonsenseQA the
    end-of-turn token and a newline, a fifth of each choice). Padding ids are filled in by the
    caller."""
    widths = [_packed_width(q, p, start) for q, p in zip(questions, prompts, strict=True)]
    rows = [row for question in questions for row in question]
    columns = max(_scored_end(row, start) for row in rows) - start + 1
    input_ids = torch.zeros(len(questions), max(widths), dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)
    segment = torch.full_like(input_ids, PADDING)
    # per row, one column per position from `start` to its last label; that last column's
    # state is never read (states at t score labels at t+1), so its slot stays 0
    slots = torch.zeros(len(rows), columns, dtype=torch.long)
    labels = torch.full((len(rows), columns), IGNORE_INDEX, dtype=torch.long)
    question_of = torch.zeros(len(rows), dtype=torch.long)
    row = 0
    for index, (question, prompt) in enumerate(zip(questions, prompts, strict=True)):
        own = prompt - start  # the question's prompt after the common start
        input_ids[index, :own] = torch.tensor(question[0].input_ids[start:prompt])
        position_ids[index, :own] = torch.arange(start, prompt)
        segment[index, :own] = PROMPT
        offset = own
        for choice, tokens in enumerate(question):
            end = _scored_end(tokens, start)
            tail = max(end - prompt, 0)
            placed = slice(offset, offset + tail)
            input_ids[index, placed] = torch.tensor(tokens.input_ids[prompt:end])
            position_ids[index, placed] = torch.arange(prompt, prompt + tail)
            segment[index, placed] = choice
            slots[row, : min(own, end - start)] = torch.arange(min(own, end - start))
            slots[row, own : own + tail] = torch.arange(offset, offset + tail)
            labels[row, : end - start + 1] = torch.tensor(tokens.labels[start : end + 1])
            question_of[row] = index
            offset += tail
            row += 1
    return _Pack(input_ids, position_ids, segment, slots, labels, question_of)


def _packed_logprobs(
    model, pack: _Pack, pad_token_id: int, opening, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of the choice rows of one pack, in order. `opening`: the decoder's
    output on the common start (its cache is copied, not extended), or None."""
    device = next(model.parameters()).device
    body = decoder(model)
    pack = _Pack(*(tensor.to(device) for tensor in vars(pack).values()))
    input_ids = pack.input_ids.masked_fill(pack.segment == PADDING, pad_token_id)
    seen = 0
    cache_arguments = {}
    if opening is not None:
        cache, name = _cache_of(opening, body)
        cache = copy.deepcopy(cache)  # the next pass appends to it
        cache.batch_repeat_interleave(len(input_ids))
        seen, cache_arguments = cache.get_seq_length(), {name: cache}
    hidden = body(
        input_ids=input_ids,
        attention_mask=_packed_attention(pack.segment, seen, kind),
        position_ids=pack.position_ids,
        use_cache=opening is not None,
        **cache_arguments,
    ).last_hidden_state  # (questions, width, hidden)
    states = hidden[pack.question_of[:, None], pack.slots]  # (rows, length, hidden)
    return logps_from_states(model.get_output_embeddings(), states, pack.labels)


def _packed_attention(segment: torch.Tensor, seen: int, kind: str) -> torch.Tensor:
    """(questions, 1, width, seen + width) mask of packed rows: the common start (`seen`
    cached tokens) seen by all; then causal, each choice seeing the prompt and itself only,
    padding unseen. Padding slots see themselves (a row that sees nothing gives NaN). sdpa
    takes it as bool; eager needs the additive form (a bool mask gives wrong results there)."""
    questions, width = segment.shape
    slot = torch.arange(width, device=segment.device)
    causal = slot[None, :] <= slot[:, None]  # (query, key)
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal[None] & (key != PADDING) & ((key == PROMPT) | (key == query))
    itself = torch.eye(width, dtype=torch.bool, device=slot.device)
    allowed = allowed | ((query == PADDING) & itself)
    start = torch.ones(questions, width, seen, dtype=torch.bool, device=slot.device)
    allowed = torch.cat([start, allowed], dim=-1)[:, None]
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=slot.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )


def _packed_groups(
    questions: list[list[TokenizedExample]], prompts: list[int], start: int, batch_size: int
) -> list[list[int]]:
    """Question indices by pass: sorted by packed width (little padding), longest first (the
    peak memory shows at once), each pass `batch_size` choice rows at most, one question at
    least."""
    order = sorted(
        range(len(questions)),
        key=lambda i: -_packed_width(questions[i], prompts[i], start),
    )
    groups: list[list[int]] = []
    rows = 0
    for index in order:
        if not groups or rows + len(questions[index]) > batch_size:
            groups.append([])
            rows = 0
        groups[-1].append(index)
        rows += len(questions[index])
    return groups


def _packed_width(question: list[TokenizedExample], prompt: int, start: int) -> int:
    return prompt - start + sum(max(_scored_end(row, start) - prompt, 0) for row in question)


def _scored_end(row: TokenizedExample, start: int) -> int:
    """The position of the row's last labelled token (`start` if it has none)."""
    labelled = [i for i, label in enumerate(row.labels) if label != IGNORE_INDEX]
    return max(labelled[-1] if labelled else start, start)


def _padded_logprobs(
    model, rows: list[TokenizedExample], pad_token_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`answer_logprobs` of rows in padded batches of similar length, back in their order."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    sums = torch.zeros(len(rows), dtype=torch.float32)
    counts = torch.zeros(len(rows), dtype=torch.long)
    for begin in range(0, len(order), batch_size):
        chosen = order[begin : begin + batch_size]
        batch = collate([rows[i] for i in chosen], pad_token_id)
        batch_sums, batch_counts = answer_logprobs(
            model, {key: value.to(device) for key, value in batch.items()}
        )
        sums[chosen], counts[chosen] = batch_sums.float().cpu(), batch_counts.cpu()
    return sums, counts


def _per_question(
    sums: torch.Tensor, counts: torch.Tensor, questions: list[list[TokenizedExample]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sizes = [len(question) for question in questions]
    return list(zip(sums.split(sizes), counts.split(sizes), strict=True))


def _common_start(rows: list[TokenizedExample]) -> int:
    """Tokens every row starts with, up to the position before the first labelled token of
    any row: the last of them is never needed to score a label, so the cache is enough."""
    limit = min(_first_label(row) for row in rows) - 1
    first = rows[0].input_ids
    length = 0
    while length < limit and all(row.input_ids[length] == first[length] for row in rows):
        length += 1
    return length


def _first_label(row: TokenizedExample) -> int:
    return next((i for i, label in enumerate(row.labels) if label != IGNORE_INDEX), len(row.labels))


def _mask_kind(model) -> str | None:
    """How the model's attention takes a 4D mask: sdpa as bool, eager as additive floats;
    None for kernels that take none (flash-attention)."""
    implementation = getattr(decoder(model).config, "_attn_implementation", None) or "sdpa"
    return {"sdpa": "bool", "eager": "additive"}.get(implementation)


def _beyond_window(model, rows: list[TokenizedExample]) -> bool:
    """Whether a row is longer than the model's sliding attention window: a 4D mask replaces
    the window's own mask, so such rows must run unpacked."""
    window = getattr(decoder(model).config, "sliding_window", None)
    return isinstance(window, int) and max(len(row.input_ids) for row in rows) > window


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

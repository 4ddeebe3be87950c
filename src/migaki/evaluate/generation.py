"""Generation with the same chat rendering as training: many rows per forward pass, each row
leaving the batch when it ends and a waiting one taking its place."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from migaki.data.tokenize import render_prompt
from migaki.evaluate.growing_cache import grow_in_place
from migaki.evaluate.lm_head import (
    ScreenedHead,
    cast_once,
    greedy_tokens,
    head_logits,
    plain_head,
    screen_for,
)
from migaki.methods import merged
from migaki.models.inference import LoadedModel, load_for_inference
from migaki.models.templates import end_of_turn_ids
from migaki.objectives import decoder, is_prompt_learning
from migaki.precision import autocast
from migaki.rundir import is_run, load_run_recipe
from migaki.tasks import check_generates


def load_for_generation(
    target: str | Path, tuned: bool = True, verify: bool = False
) -> LoadedModel:
    """`load_for_inference`, refusing a run whose task scores rather than generates (one line
    naming the run and the command that scores it), with a LoRA, DoRA, QLoRA or IA3 adapter merged
    into the base weights: the same function as plain linear layers. Unmerged, every step
    runs each adapted layer's two small products beside the big one (casting them again under
    autocast): on the quickstart's test split (AMD EPYC, 2 threads) the tuned answers took
    6.1-6.7 s unmerged and 5.0-5.4 s merged in bf16, 9.5 s and 8.4 s in fp32, the same
    answers but for bf16 rounding (benchmarks/generation_speed.py). Export's verification and
    serve load the adapter apart (`load_for_inference`)."""
    path = Path(target)
    check_generates(path, load_run_recipe(path) if is_run(path) else None)
    loaded = load_for_inference(path, tuned, verify)
    if tuned and loaded.recipe is not None:
        loaded.model = merged(loaded.recipe.method.name, loaded.model)
    return loaded


@torch.no_grad()
def generate_answers(
    loaded: LoadedModel,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 128,
    batch_size: int = 32,
    temperature: float = 0.0,
) -> list[tuple[str, bool]]:
    """Answers to each conversation (greedy when temperature is 0, else sampled from the
    softmax at that temperature) and whether the model ended its turn by itself (rather than
    hitting max_new_tokens): at the chat template's end-of-turn token, or EOS. At most
    `batch_size` rows run per forward pass (`generate_tokens`)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    stops = end_of_turn_ids(tokenizer)
    system_prompt = loaded.recipe.data.system_prompt if loaded.recipe else None
    prompts = [render_prompt(tokenizer, messages, system_prompt) for messages in conversations]
    if not prompts:
        return []
    device = next(model.parameters()).device
    model.eval()
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    with autocast(loaded.precision, device):
        if is_prompt_learning(model):
            generated = _generate_with_transformers(
                model, ids, stops, max_new_tokens, batch_size, temperature, pad
            )
        else:
            generated = generate_tokens(
                model, ids, stops, max_new_tokens, batch_size, temperature, pad
            )
    results = []
    for tokens, stopped in generated:
        # a cut at max_new_tokens can split a multi-byte character; drop the broken tail
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip().rstrip("\ufffd")
        results.append((text, stopped))
    return results


_JOIN_AT = 0.25  # waiting rows join once this share of the batch is free (or all of them fit)


@dataclass
class _Batch:
    """The rows being generated: their prompt index, key/value cache, (rows, cached tokens)
    attention mask (0 on left padding), and the position and id of each row's next input."""

    rows: list[int]
    cache: object
    mask: torch.Tensor
    positions: torch.Tensor
    next_ids: torch.Tensor


@torch.no_grad()
def generate_tokens(
    model,
    prompts: list[list[int]],
    stops: list[int],
    max_new_tokens: int,
    batch_size: int = 32,
    temperature: float = 0.0,
    pad_token_id: int = 0,
) -> list[tuple[list[int], bool]]:
    """Per prompt (token ids), the generated ids before the first stop id and whether a stop
    id ended it (False: max_new_tokens was reached).

    A hand-written loop rather than transformers' `generate`, which keeps every row of a batch
    running until its longest row ends and takes no new rows in. Here a row leaves the batch
    (and its key/value cache) when it ends, and waiting prompts, longest first, are prefilled
    and joined to the running batch, left-padded, once a quarter of its `batch_size` rows are
    free (or all that wait fit). Each row's positions count its own tokens only, so padding
    changes nothing but float rounding. A step costs nearly as much for 3 rows as for 32 (the
    weights, 671 MB of them in the 262k-token LM head, are read once per step whatever the
    rows), so the steps saved count most; the key/value cache grows in place
    (`growing_cache`) and the head goes block by block (`greedy_tokens`), which is what a
    base model that never ends its turn gains. On the quickstart's test split (Gemma 3 270M
    with LoRA, 37 questions, 64 tokens at most, 2 threads) the tuned model's answers took
    54.8 s with `generate` and 20.5 s here on an AVX2 CPU (2.67x); on an AVX-512 one 17.7 s
    and 9.5 s in fp32 (1.86x), 19.0 s and 6.1 s in bf16 (3.12x), the adapter apart both ways
    (merged as `load_for_generation` does: 2.10x and 3.81x; benchmarks/generation_speed.py,
    README "Evaluation speed"). Caches that cannot be joined (layers other than plain and
    sliding-window ones, or a window the rows outgrow) run in fixed batches, still dropping
    rows."""
    if not prompts:
        return []
    head = cast_once(plain_head(model))
    screen = screen_for(head)
    room = _window(model)
    window_fits = room is None or max(len(p) for p in prompts) + max_new_tokens < room
    waiting = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    generated: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    batch: _Batch | None = None
    while waiting or batch is not None:
        if batch is None:
            batch = _prefill(model, prompts, waiting[:batch_size], pad_token_id)
            waiting = waiting[batch_size:]
        free = batch_size - len(batch.rows)
        wanted = waiting and free >= min(len(waiting), _JOIN_AT * batch_size)
        if wanted and window_fits and _joinable(batch.cache):
            batch = _join(batch, _prefill(model, prompts, waiting[:free], pad_token_id))
            waiting = waiting[free:]
        drafts = []
        if temperature <= 0 and _joinable(batch.cache):
            drafts = _drafts(batch, prompts, generated, max_new_tokens, room)
        picked = _step_picks(model, head, screen, batch, drafts, pad_token_id, temperature)
        going, following, advance = [], [], []
        for slot, row in enumerate(batch.rows):
            accepted = _accepted(drafts[slot] if drafts else [], picked[slot])
            for token in picked[slot][: accepted + 1]:
                stopped[row] = token in stops
                if stopped[row]:
                    break
                generated[row].append(token)
                if len(generated[row]) == max_new_tokens:
                    break
            if not stopped[row] and len(generated[row]) < max_new_tokens:
                going.append(slot)
                following.append(picked[slot][accepted])
                advance.append(accepted + 1)
            width = len(picked[slot])
            batch.mask[slot, batch.mask.shape[1] - width + accepted + 1 :] = 0  # drafts refused
        batch = _keep(batch, going, following, advance)
    return list(zip(generated, stopped, strict=True))


def _prefill(model, prompts: list[list[int]], rows: list[int], pad_token_id: int) -> _Batch:
    """The rows' prompts but their last token through the decoder: the cache to go on from.
    The last token is the first decoding step's input, so the LM head runs on one position
    per row (the model's own forward on the last of many positions slices the states and,
    with a PEFT wrapper, went through a batched matmul 5x slower than the head itself).

    The tokens all the rows start with (the system prompt, the template's opening: 40% of the
    quickstart's prompts) run once and their cache is repeated for each row; each row's own
    tokens follow, left-padded after them (masked slots, positions counting real tokens)."""
    device = next(model.parameters()).device
    body = decoder(model)
    starts = [prompts[row][:-1] for row in rows]
    common = _common_length(starts) if len(rows) > 1 else 0
    common = common if common >= _SHARED_AT_LEAST else 0
    cache, seen = None, torch.zeros((len(rows), 0), dtype=torch.long, device=device)
    if common:
        shared = body(input_ids=torch.tensor([starts[0][:common]], device=device), use_cache=True)
        cache = _cache_of(shared)
        if _joinable(cache):
            cache.batch_repeat_interleave(len(rows))
            seen = torch.ones((len(rows), common), dtype=torch.long, device=device)
        else:  # a cache that cannot be repeated: every row runs whole
            cache, common = None, 0
    length = max(1, max(len(start) - common for start in starts))  # a padding slot at least
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    own = torch.zeros((len(rows), length), dtype=torch.long)
    for slot, start in enumerate(starts):
        if len(start) > common:
            ids[slot, length - len(start) + common :] = torch.tensor(start[common:])
            own[slot, length - len(start) + common :] = 1
    mask = torch.cat([seen, own.to(device)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, common:]
    arguments = {} if cache is None else {_cache_argument(body): cache}
    output = body(
        input_ids=ids.to(device),
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **arguments,
    )
    last = torch.tensor([prompts[row][-1] for row in rows], device=device)
    cache = _cache_of(output)
    grow_in_place(cache)
    return _Batch(list(rows), cache, mask, mask.sum(dim=-1), last)


_SHARED_AT_LEAST = 8  # common tokens worth a pass of their own


def _common_length(sequences: list[list[int]]) -> int:
    first, length = sequences[0], min(len(s) for s in sequences)
    for index in range(length):
        if any(s[index] != first[index] for s in sequences):
            return index
    return length


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def _join(running: _Batch, joining: _Batch) -> _Batch:
    """One batch of both, the shorter cache left-padded (keys and values of zeros, masked)."""
    seen = running.mask.shape[1], joining.mask.shape[1]
    length = max(seen)
    for ours, theirs in zip(running.cache.layers, joining.cache.layers, strict=True):
        if not ours.is_initialized:
            continue
        for name in ("keys", "values"):
            left = [F.pad(getattr(layer, name), (0, 0, length - n, 0)) for layer, n in
                    ((ours, seen[0]), (theirs, seen[1]))]  # fmt: skip
            setattr(ours, name, torch.cat(left))
        if hasattr(ours, "cumulative_length"):  # sliding-window layers count their tokens
            ours.cumulative_length = length
    mask = torch.cat(
        [F.pad(running.mask, (length - seen[0], 0)), F.pad(joining.mask, (length - seen[1], 0))]
    )
    return _Batch(
        running.rows + joining.rows,
        running.cache,
        mask,
        torch.cat([running.positions, joining.positions]),
        torch.cat([running.next_ids, joining.next_ids]),
    )


def _keep(
    batch: _Batch, going: list[int], following: list[int], advance: list[int]
) -> _Batch | None:
    """The batch after a step: the rows still going, each next input its following token at
    its position moved on by the tokens it took."""
    if not going:
        return None
    device = batch.mask.device
    if len(going) < len(batch.rows):
        index = torch.tensor(going, device=device)
        batch.cache.batch_select_indices(index)
        batch.rows = [batch.rows[slot] for slot in going]
        batch.mask, batch.positions = batch.mask[index], batch.positions[index]
    batch.next_ids = torch.tensor(following, device=device)
    batch.positions = batch.positions + torch.tensor(advance, device=device)
    return batch


_DRAFT_TOKENS = 16  # rows x (1 + draft) per step at most when drafts are checked
_DRAFT_MAX = 6  # draft tokens per row at most


def _drafts(
    batch: _Batch,
    prompts: list[list[int]],
    generated: list[list[int]],
    max_new_tokens: int,
    room: int | None,
) -> list[list[int]]:
    """Per row of a small batch, the tokens it will likely generate next (`_lookup` in its
    prompt and answer), checked in the same pass as its next token (prompt lookup decoding):
    greedy output is unchanged, and a row that repeats itself or copies its prompt takes
    several tokens per step. A decoding step of 1 to 3 rows reads the weights as a step of 16
    positions does, so a small batch checks drafts nearly for free; a large one does not.
    Refused drafts stay in the cache as masked slots, so none are made where the slots could
    outgrow a sliding attention window. [] when no row has a draft."""
    per_row = min(_DRAFT_MAX, _DRAFT_TOKENS // len(batch.rows) - 1)
    slots = batch.mask.shape[1] + 1 + per_row + max_new_tokens
    if per_row < 1 or (room is not None and slots >= room):
        return []
    drafts = [
        _lookup(prompts[row] + generated[row], min(per_row, max_new_tokens - len(generated[row])))
        for row in batch.rows
    ]
    return drafts if any(drafts) else []


def _lookup(tokens: list[int], count: int, sizes: tuple[int, ...] = (3, 2)) -> list[int]:
    """Up to `count` tokens that followed the latest earlier occurrence of the last 3 (else
    2) tokens, continued periodically when that occurrence is within reach (a loop)."""
    for size in sizes:
        if len(tokens) <= size or count < 1:
            continue
        tail = tokens[-size:]
        for start in range(len(tokens) - size - 1, -1, -1):
            if tokens[start : start + size] == tail:
                after = tokens[start + size :]
                return [after[i % len(after)] for i in range(count)]
    return []


def _accepted(draft: list[int], picked: list[int]) -> int:
    """How many draft tokens the model picked itself: each draft token is the input after
    the one before, so the run of agreement from the start counts."""
    accepted = 0
    while accepted < len(draft) and draft[accepted] == picked[accepted]:
        accepted += 1
    return accepted


def _step_picks(
    model,
    head: torch.nn.Linear | None,
    screen: ScreenedHead | None,
    batch: _Batch,
    drafts: list[list[int]],
    pad_token_id: int,
    temperature: float,
) -> list[list[int]]:
    """Per row, the token chosen after its next input and each of its draft tokens (greedy),
    or one token sampled after its next input. The cache and mask grow by 1 + the longest
    draft slots (the caller masks refused drafts)."""
    device = batch.mask.device
    width = 1 + max((len(d) for d in drafts), default=0)
    ids = torch.full((len(batch.rows), width), pad_token_id, dtype=torch.long)
    ids[:, 0] = batch.next_ids.cpu()
    for slot, draft in enumerate(drafts):
        ids[slot, 1 : 1 + len(draft)] = torch.tensor(draft, dtype=torch.long)
    batch.mask = F.pad(batch.mask, (0, width), value=1)
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": batch.mask,
        "position_ids": batch.positions[:, None] + torch.arange(width, device=device),
        "use_cache": True,
    }
    if head is None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inputs[_cache_argument(base)] = batch.cache
        logits = base(**inputs).logits.float()
    else:
        body = decoder(model)
        inputs[_cache_argument(body)] = batch.cache
        states = body(**inputs).last_hidden_state  # (rows, width, dim)
        if temperature <= 0:
            picks = screen.greedy(states) if screen else greedy_tokens(head, states)
            return picks.tolist()
        logits = head_logits(head, states)
    if temperature <= 0:
        return logits.argmax(dim=-1).tolist()
    return [[token] for token in _next_tokens(logits[:, 0], temperature).tolist()]


def _next_tokens(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(rows,) the argmax of each row's logits, or a sample from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]


def _window(model) -> int | None:
    """The model's sliding attention window, if it has one: a full window layer keeps its
    last tokens only, which `_join` cannot pad and refused drafts must not crowd out."""
    window = getattr(decoder(model).config, "sliding_window", None)
    return window if isinstance(window, int) else None


def _joinable(cache) -> bool:
    """Whether `_join` can pad and concatenate the cache: plain (and sliding-window) key/value
    layers, all filled; other kinds (recurrent states, shared layers) run in fixed batches."""
    return (
        isinstance(cache, DynamicCache)
        and len(cache.layers) > 0
        and all(isinstance(layer, DynamicLayer) and layer.is_initialized for layer in cache.layers)
    )


def _cache_argument(model) -> str:
    """transformers 5 renames `past_key_values` to `cache` (the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _generate_with_transformers(
    model,
    prompts: list[list[int]],
    stops: list[int],
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    pad_token_id: int,
) -> list[tuple[list[int], bool]]:
    """`generate_tokens` through transformers' generate, in fixed left-padded batches:
    prompt-learning adapters add their virtual tokens in PEFT's own forward and generate."""
    device = next(model.parameters()).device
    results = []
    batch_size = math.ceil(len(prompts) / math.ceil(len(prompts) / batch_size))  # evened out
    for start in range(0, len(prompts), batch_size):
        group = prompts[start : start + batch_size]
        longest = max(len(ids) for ids in group)
        ids = torch.tensor([[pad_token_id] * (longest - len(p)) + p for p in group], device=device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in group], device=device)
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            use_cache=True,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_token_id,
            eos_token_id=stops[0] if len(stops) == 1 else stops,
        )
        for row in output[:, longest:].tolist():
            end = next((i for i, token in enumerate(row) if token in stops), None)
            results.append((row if end is None else row[:end], end is not None))
    return results

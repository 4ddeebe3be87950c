"""What training and evaluation compute from a model and a batch: the causal-LM loss as a
function `loss(model, batch) -> LossParts` (and a module form for wrappers), and the summed
log-probabilities of labelled tokens that preference losses and choice scoring take. The
tasks' own loss modules live in `migaki.tasks`; their formulas on tensors in `losses`.

The LM head runs only on positions that carry a label, so the full (tokens x vocab) logits are
never built for prompt tokens and padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from migaki.data.tokenize import IGNORE_INDEX

TIE_NATS = 1e-4  # log-ratio margins below this count as ties in pref_accuracy


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # summed cross-entropy over labelled tokens (scalar, fp32)
    tokens: int  # labelled tokens in the batch
    correct: int  # labelled tokens whose argmax prediction is right
    confusion: torch.Tensor | None = None  # classification: (true, predicted) counts
    extras: dict[str, float] | None = None  # preference: summed rewards, logged per pair


def causal_lm_loss(model, batch: dict[str, torch.Tensor], chunk_rows: int = 4096) -> LossParts:
    """Next-token cross-entropy summed over labelled positions.

    batch: input_ids and labels (batch, seq), plus attention_mask for padded batches or
    position_ids for packed ones; labels are IGNORE_INDEX where no loss is taken. Labels are
    shifted here, so collators stay format-agnostic.

    The LM head runs only on labelled positions, `chunk_rows` at a time, and each chunk's logits
    are recomputed in the backward pass instead of kept: the (tokens x vocab) logits are never
    held in memory at once.
    """
    if is_prompt_learning(model):
        return prompt_learning_loss(model, batch)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX  # (batch, seq-1)
    hidden = decoder(model)(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,  # a cache disables the packed-sequence mask: attention would leak
    ).last_hidden_state  # (batch, seq, hidden)
    selected = hidden[:, :-1][keep]  # (labelled, hidden)
    target = labels[keep]  # (labelled,)
    head = model.get_output_embeddings()
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    correct = 0
    for start in range(0, len(target), chunk_rows):
        rows, wanted = selected[start : start + chunk_rows], target[start : start + chunk_rows]
        if torch.is_grad_enabled():
            chunk_loss, chunk_correct = checkpoint(
                _head_loss, head, rows, wanted, use_reentrant=False
            )
        else:
            chunk_loss, chunk_correct = _head_loss(head, rows, wanted)
        loss_sum = loss_sum + chunk_loss
        correct += int(chunk_correct)
    return LossParts(loss_sum, int(keep.sum()), correct)


def labelled_logps(
    model, batch: dict[str, torch.Tensor], chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sums of log p(label_t | tokens < t) over labelled positions, and each row's
    labelled-token count: what preference losses and choice scoring need.

    As in `causal_lm_loss`, the LM head runs only on labelled positions, in chunks recomputed in
    the backward pass, so no (rows x seq x vocab) tensor is built. Returns ((rows,) float32,
    (rows,) int64)."""
    hidden = decoder(model)(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state
    return logps_from_states(model.get_output_embeddings(), hidden, batch["labels"], chunk_rows)


def pair_logps(
    model, batch: dict[str, torch.Tensor], chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """`labelled_logps` of a `collate_pairs` batch (chosen rows, then rejected rows), with
    each pair's shared prompt run once.

    A pair's two sequences are the same tokens up to the answers, so each pair becomes one row,
    prompt + chosen answer + rejected answer, with position ids restarting at the rejected
    answer and an attention mask that keeps the rejected answer from seeing the chosen one:
    every token sees exactly what it sees in its own whole sequence, so the log-probabilities
    and their gradients are those of the whole rows (tested). On HH-style pairs (a long
    dialogue, two short answers) that is about a third fewer tokens, and less padding.
    Prompt-learning adapters, whose virtual tokens PEFT adds in front of every row, and
    attention kernels that take no 4D mask (flash-attention) take the whole rows."""
    kind = _mask_kind(model)
    if kind is None or is_prompt_learning(model):
        return labelled_logps(model, batch, chunk_rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    pairs, device = len(ids) // 2, ids.device
    lengths = mask.sum(dim=-1)
    shared = _shared_prefix_lengths(ids, mask)
    chosen_tail, rejected_tail = lengths[:pairs] - shared, lengths[pairs:] - shared
    width = int((shared + chosen_tail + rejected_tail).max())
    slot = torch.arange(width, device=device)[None, :]  # (1, width): index within a pair row
    # Where each slot of a pair row comes from: (side, position in that side's sequence).
    in_rejected = slot >= (shared + chosen_tail)[:, None]
    position = torch.where(in_rejected, slot - chosen_tail[:, None], slot)
    real = slot < (shared + chosen_tail + rejected_tail)[:, None]
    position = torch.where(real, position, 0)
    source_row = torch.arange(pairs, device=device)[:, None] + pairs * in_rejected
    row_ids = ids[source_row, position] * real
    hidden = decoder(model)(
        input_ids=row_ids,
        attention_mask=_pair_attention(in_rejected, real, shared, kind),
        position_ids=position,
        use_cache=False,
    ).last_hidden_state  # (pairs, width, hidden)
    # Back to the two sequences of each pair: sequence position p of the rejected side sits
    # in the prompt slot p (p < shared) or after the chosen answer.
    sequence = torch.arange(ids.shape[1], device=device)[None, :]
    slot_of = torch.cat(
        [
            sequence.expand(pairs, -1),
            torch.where(sequence < shared[:, None], sequence, sequence + chosen_tail[:, None]),
        ]
    ).clamp(max=width - 1)
    pair_of = torch.arange(2 * pairs, device=device) % pairs
    states = hidden[pair_of[:, None], slot_of]  # (2 * pairs, seq, hidden)
    return logps_from_states(model.get_output_embeddings(), states, labels, chunk_rows)


def _pair_attention(
    in_rejected: torch.Tensor, real: torch.Tensor, shared: torch.Tensor, kind: str
) -> torch.Tensor:
    """(pairs, 1, width, width) mask of pair rows: causal, padding unseen, and the rejected
    answer blind to the chosen one. Padding slots see themselves only (a row that sees nothing
    would give NaN). sdpa takes it as bool; eager needs the additive form (a bool mask gives
    wrong results there)."""
    width = in_rejected.shape[1]
    slot = torch.arange(width, device=in_rejected.device)
    causal = slot[None, :] <= slot[:, None]  # (query, key)
    in_chosen = (slot[None, :] >= shared[:, None]) & ~in_rejected & real
    blind = in_rejected[:, :, None] & in_chosen[:, None, :]  # rejected query, chosen key
    allowed = causal[None] & real[:, None, :] & ~blind
    allowed = allowed | (~real[:, :, None] & torch.eye(width, dtype=torch.bool, device=slot.device))
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=slot.device).masked_fill(
        ~allowed, torch.finfo(torch.float32).min
    )


def _mask_kind(model) -> str | None:
    """How the model's attention takes a 4D mask: sdpa as bool, eager as additive floats;
    None for kernels that take none."""
    implementation = getattr(decoder(model).config, "_attn_implementation", None) or "sdpa"
    return {"sdpa": "bool", "eager": "additive"}.get(implementation)


def _shared_prefix_lengths(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(pairs,) how many leading tokens each pair's chosen and rejected rows share (rows
    [chosen..., rejected...]). Labelled tokens may lie inside the shared part: identical tokens
    before them give identical states, so each side still scores its own labels there."""
    pairs = len(ids) // 2
    same = (ids[:pairs] == ids[pairs:]) & (mask[:pairs] == 1) & (mask[pairs:] == 1)
    # the first position where the rows differ, or end; cumprod stays 1 while they agree
    return same.long().cumprod(dim=-1).sum(dim=-1)


def logps_from_states(
    head: torch.nn.Module, states: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """`labelled_logps` from states (rows, seq, dim) already computed: decoder hidden states
    with the LM head as `head`, or logits with `torch.nn.Identity()`; labels (rows, seq)
    unshifted (states at t score the label at t+1)."""
    labels = labels[:, 1:]
    keep = labels != IGNORE_INDEX
    selected = states[:, :-1][keep]
    target = labels[keep]
    pieces = []
    for start in range(0, len(target), chunk_rows):
        rows, wanted = selected[start : start + chunk_rows], target[start : start + chunk_rows]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_head_logps, head, rows, wanted, use_reentrant=False))
        else:
            pieces.append(_head_logps(head, rows, wanted))
    token_logps = torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)
    row_of_token = keep.nonzero()[:, 0]
    sums = states.new_zeros(len(labels), dtype=torch.float32)
    return sums.index_add(0, row_of_token, token_logps), keep.sum(dim=-1)


def _head_logps(head: torch.nn.Module, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = head(rows).float()
    return logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def prompt_learning_loss(model, batch: dict[str, torch.Tensor]) -> LossParts:
    """The loss through PeftModel's forward, which adds soft prompts or prefixes that the
    decoder alone would not see. Logits come for every position here (these methods train few
    weights and are not the ones that need the memory saving)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    logits = logits[:, -batch["input_ids"].shape[1] :]  # drop the soft-prompt positions
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    selected, target = logits[:, :-1][keep].float(), labels[keep]
    loss_sum = F.cross_entropy(selected, target, reduction="sum")
    correct = int((selected.argmax(dim=-1) == target).sum())
    return LossParts(loss_sum, int(keep.sum()), correct)


def is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def _head_loss(head: torch.nn.Module, rows: torch.Tensor, target: torch.Tensor):
    logits = head(rows).float()  # (chunk, vocab)
    loss = F.cross_entropy(logits, target, reduction="sum")
    return loss, (logits.argmax(dim=-1) == target).sum()


def preference_parts(stats) -> LossParts:
    """LossParts of a preference loss's `PreferenceStats`: one count per pair, rewards as extras."""
    extras = {
        "reward_chosen": stats.reward_chosen_sum,
        "reward_rejected": stats.reward_rejected_sum,
    }
    return LossParts(stats.loss_sum, stats.pairs, stats.correct, extras=extras)


class CausalLMLoss(torch.nn.Module):
    """A model with its loss as `forward`, so DDP, FSDP or DeepSpeed wrap the whole computation
    (the loss calls the decoder directly, which would bypass a wrapper around the bare model)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        return causal_lm_loss(self.model, batch)


def decoder(model) -> torch.nn.Module:
    """The transformer body below the LM head (LoRA layers, if any, live inside it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()

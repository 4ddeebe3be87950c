"""Objectives: functions `loss(model, batch) -> LossParts`, and a module form for wrappers.

The causal-LM loss runs the LM head only on positions that carry a label, so the full
(tokens x vocab) logits are never built for prompt tokens and padding.
"""

from __future__ import annotations

import hashlib
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


def classification_loss(model, batch: dict[str, torch.Tensor]) -> LossParts:
    """Cross-entropy summed over the rows of a batch, with the confusion counts that give
    accuracy and macro F1 over a whole validation set."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.float()
    target = batch["labels"]
    loss_sum = F.cross_entropy(logits, target, reduction="sum")
    predicted = logits.argmax(dim=-1)
    classes = logits.shape[-1]
    confusion = torch.bincount(target * classes + predicted, minlength=classes * classes)
    correct = int((predicted == target).sum())
    return LossParts(loss_sum, len(target), correct, confusion.view(classes, classes).cpu())


class ClassificationLoss(torch.nn.Module):
    """`classification_loss` as a module, for the same reason as CausalLMLoss."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        return classification_loss(self.model, batch)


class DPOLoss(torch.nn.Module):
    """Direct preference optimization on batches of [chosen..., rejected...] sequences.

    The reference model is the same network with its adapter switched off (PEFT's
    `disable_adapter`), so no second copy of the weights is held in memory. Reference
    log-probabilities never change, so each sequence's is computed once (in eval mode, without
    dropout) and kept: later epochs and every validation after the first skip that forward.
    Methods without an adapter to switch off (`full`, `freeze`, `gradual`) get every reference
    log-probability up front from the untrained weights (`precompute_reference`), so they need
    no frozen copy either."""

    def __init__(
        self,
        model: torch.nn.Module,
        beta: float,
        loss_type: str,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model, self.beta, self.loss_type = model, beta, loss_type
        self.label_smoothing, self.sft_weight = label_smoothing, sft_weight
        self.reference_logps: dict[bytes, float] = {}

    def forward(self, **batch: torch.Tensor) -> LossParts:
        from migaki.train.preference import dpo_loss

        policy, tokens = self.logps(batch)
        reference = self._reference(batch).to(policy.device)
        pairs = len(policy) // 2
        stats = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            loss_type=self.loss_type,
            chosen_tokens=tokens[:pairs],
            rejected_tokens=tokens[pairs:],
            sft_weight=self.sft_weight,
        )
        # A reference computed in another batch differs from an unchanged policy by float
        # noise (~1e-6 nats in fp32); a margin that small is a tie, not a win. bf16 noise is
        # larger, so validation references are computed in validation's own batches.
        margin = (policy[:pairs] - reference[:pairs]) - (policy[pairs:] - reference[pairs:])
        stats.correct = int((margin.detach() > TIE_NATS).sum())
        return _preference_parts(stats)

    def logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer log-probabilities and answer token counts of the batch's rows."""
        return pair_logps(self.model, batch)

    def _reference(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = [
            _sequence_key(ids, labels)
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
        ]
        if not all(key in self.reference_logps for key in keys):
            if not hasattr(self.model, "disable_adapter"):
                raise RuntimeError("a reference log-probability was not precomputed")
            with self.model.disable_adapter():
                self._store_reference(batch, keys)
        return torch.tensor([self.reference_logps[key] for key in keys])

    def precompute_reference(self, batches) -> None:
        """Reference log-probabilities of every sequence in `batches`, from the current
        (untrained) weights."""
        for batch in batches:
            keys = [
                _sequence_key(ids, labels)
                for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
            ]
            self._store_reference(batch, keys)

    def _store_reference(self, batch: dict[str, torch.Tensor], keys: list[bytes]) -> None:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logps, _ = self.logps(batch)
        self.model.train(was_training)
        self.reference_logps.update(zip(keys, logps.tolist(), strict=True))


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
        from migaki.train.preference import kto_loss

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
        parts = _preference_parts(stats)
        parts.extras |= {"chosen_rows": stats.chosen_rows, "rejected_rows": stats.rejected_rows}
        return parts


class ORPOLoss(torch.nn.Module):
    """Odds-ratio preference optimization: the chosen answer's NLL plus a penalty on the odds
    of the rejected one. No reference model, so it suits every method, `full` included. The
    NLL is the per-pair mean over answer tokens (the tokens SFT trains on)."""

    def __init__(self, model: torch.nn.Module, beta: float) -> None:
        super().__init__()
        self.model, self.beta = model, beta

    def forward(self, **batch: torch.Tensor) -> LossParts:
        from migaki.train.preference import orpo_loss

        logps, tokens = pair_logps(self.model, batch)
        means = logps / tokens.clamp(min=1)
        pairs = len(means) // 2
        return _preference_parts(orpo_loss(means[:pairs], means[pairs:], -means[:pairs], self.beta))


class RewardLoss(torch.nn.Module):
    """A reward model: a one-output sequence classifier scores each whole conversation, and the
    pairwise (Bradley-Terry) loss pushes the chosen one's score above the rejected one's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        from migaki.train.preference import reward_loss

        scores = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.squeeze(-1)
        pairs = len(scores) // 2
        return _preference_parts(reward_loss(scores[:pairs], scores[pairs:]))


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
        from migaki.train.preference import distill_loss

        logits = head(rows)
        vocab = min(logits.shape[-1], teacher_logits.shape[-1])  # padded embedding rows differ
        # distill_loss takes (batch, seq, vocab) logits and unshifted labels: one row whose
        # position t predicts target t, plus the unused last position the shift drops.
        student = F.pad(logits[:, :vocab], (0, 0, 0, 1)).unsqueeze(0)
        teacher = F.pad(teacher_logits[:, :vocab], (0, 0, 0, 1)).unsqueeze(0)
        labels = F.pad(target, (1, 0), value=IGNORE_INDEX).unsqueeze(0)
        loss, _ = distill_loss(student, teacher, labels, self.temperature, self.alpha)
        return loss, (logits.argmax(dim=-1) == target).sum()


def _preference_parts(stats) -> LossParts:
    extras = {
        "reward_chosen": stats.reward_chosen_sum,
        "reward_rejected": stats.reward_rejected_sum,
    }
    return LossParts(stats.loss_sum, stats.pairs, stats.correct, extras=extras)


def _sequence_key(input_ids: torch.Tensor, labels: torch.Tensor) -> bytes:
    """A padded row's identity: its labelled tokens and the tokens before the last label."""
    labelled = (labels != IGNORE_INDEX).nonzero()
    end = int(labelled[-1]) + 1 if len(labelled) else 0
    digest = hashlib.blake2b(input_ids[:end].cpu().numpy().tobytes(), digest_size=16)
    digest.update((labels[:end] != IGNORE_INDEX).cpu().numpy().tobytes())
    return digest.digest()


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

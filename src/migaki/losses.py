"""Preference and distillation objectives as pure functions on tensors.

Each function takes per-sequence log-probabilities (from `sequence_logps`) or logits and returns
*sums* over the batch, never means: the loop adds the sums of every micro-batch and process and
divides once by the total count (`PreferenceStats.pairs`, or the token count `distill_loss`
returns), so gradient accumulation and data parallelism give exactly the big-batch loss.

The formulas follow TRL 1.16 (`DPOTrainer._compute_loss`, `KTOTrainer._compute_loss`,
`trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`, `RewardTrainer.compute_loss`);
tests/test_preference.py checks each against TRL itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from migaki.data.tokenize import IGNORE_INDEX

DPO_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "ipo", "hinge")


@dataclass
class PreferenceStats:
    """One batch's preference loss and metrics, summed over pairs (the loop divides by `pairs`)."""

    loss_sum: torch.Tensor  # scalar, fp32, differentiable
    pairs: int  # preference pairs (KTO: rows) in the batch
    reward_chosen_sum: (
        float  # implicit rewards beta*(logp_policy - logp_ref); reward models: scores
    )
    reward_rejected_sum: float
    correct: (
        int  # pairs whose chosen reward beats the rejected one; pref_accuracy = correct / pairs
    )
    # Rows behind reward_chosen_sum and reward_rejected_sum: `pairs` for paired losses, the
    # desirable and undesirable row counts for KTO.
    chosen_rows: int | None = None
    rejected_rows: int | None = None

    def __post_init__(self) -> None:
        if self.chosen_rows is None:
            self.chosen_rows = self.pairs
        if self.rejected_rows is None:
            self.rejected_rows = self.pairs


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    average: bool = False,
) -> torch.Tensor:
    """Per-row sum (or mean) of log p(label_t | tokens < t) over labelled positions.

    logits: (batch, seq, vocab), the model's output for input_ids (batch, seq).
    labels: (batch, seq), *unshifted* like Hugging Face labels: the token ids, or ignore_index
        where no log-prob is taken (prompt, padding). The shift happens here: logits at t score
        labels at t+1.
    average: divide each row's sum by its labelled-token count (rows with none give 0).
    Returns (batch,) float32 log-probs, differentiable with respect to logits.
    Raises ValueError when logits and labels disagree in batch or sequence length.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must share"
            " (batch, seq); for prompt-learning adapters drop the virtual-token positions from the"
            " logits first."
        )
    labels = labels[:, 1:]
    keep = labels != ignore_index  # (batch, seq-1)
    targets = labels.masked_fill(~keep, 0).unsqueeze(-1)
    rows = []
    # One row at a time in fp32: a (seq, vocab) copy instead of (batch, seq, vocab).
    for row_logits, row_targets in zip(logits[:, :-1], targets, strict=True):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_targets).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    per_token = torch.stack(rows) * keep  # (batch, seq-1)
    total = per_token.sum(dim=-1)
    if average:
        return total / keep.sum(dim=-1).clamp(min=1)
    return total


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    sft_weight: float = 0.0,
) -> PreferenceStats:
    """Direct Preference Optimization loss, summed over pairs.

    policy_chosen, policy_rejected, ref_chosen, ref_rejected: (pairs,) summed completion
        log-probs (`sequence_logps(..., average=False)`); the reference ones are detached here.
    loss_type, with d = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected):
        "sigmoid": -logsigmoid(beta*d), as TRL. label_smoothing=eps > 0 gives conservative DPO,
            -(1-eps)*logsigmoid(beta*d) - eps*logsigmoid(-beta*d); TRL 1.16's "sigmoid" ignores
            label_smoothing, so the two agree only at eps=0.
        "sigmoid_norm": -logsigmoid(beta*(d_c/n_c - d_r/n_r)), each side's log-ratio divided
            by its completion token count (as TRL 1.16's "sigmoid_norm"): a change every token
            shares cannot move the loss, so the answers' lengths teach nothing.
        "hinge": relu(1 - beta*d), as TRL.
        "ipo": (d_c/n_c - d_r/n_r - 1/(2*beta))**2 with each side's log-ratio divided by its
            completion token count (chosen_tokens, rejected_tokens: (pairs,), required), as
            TRL 1.16 normalises IPO.
    sft_weight > 0 adds sft_weight * (-policy_chosen / chosen_tokens) per pair: the chosen
        answer's token-mean NLL (RPO; TRL's loss_type ["sigmoid", "sft"] with loss_weights
        [1, sft_weight], except that TRL averages over all chosen tokens of a micro-batch where
        this weights every pair equally; the two agree for equally long chosen answers).
    Rewards are beta * (policy - ref) per side, summed log-probs, whatever the loss type.
    Raises ValueError for an unknown loss_type, label_smoothing outside [0, 0.5) or with a loss
    other than sigmoid, ipo, sigmoid_norm or an SFT term without token counts, a negative
    sft_weight, or inputs of different shapes.
    """
    _check_same_shape(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; use one of {DPO_LOSS_TYPES}.")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}.")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid' only, not {loss_type!r}.")
    if sft_weight < 0:
        raise ValueError(f"sft_weight must be 0 or more, got {sft_weight}.")
    if (loss_type in ("ipo", "sigmoid_norm") or sft_weight) and (
        chosen_tokens is None or rejected_tokens is None
    ):
        raise ValueError(
            f"loss_type {loss_type!r} or an SFT term normalises by completion length: pass"
            " chosen_tokens and rejected_tokens, the labelled-token count of each row."
        )
    chosen_logratios = policy_chosen.float() - ref_chosen.detach().float()
    rejected_logratios = policy_rejected.float() - ref_rejected.detach().float()
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:
        norm_delta = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / (
            rejected_tokens.clamp(min=1)
        )
        if loss_type == "ipo":
            losses = (norm_delta - 1 / (2 * beta)) ** 2
        else:
            losses = -F.logsigmoid(beta * norm_delta)
    if sft_weight:
        losses = losses - sft_weight * policy_chosen.float() / chosen_tokens.clamp(min=1)
    return _paired_stats(losses, beta * chosen_logratios, beta * rejected_logratios)


def orpo_loss(
    chosen_logps_mean: torch.Tensor,
    rejected_logps_mean: torch.Tensor,
    chosen_nll: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceStats:
    """ORPO: NLL on the chosen answer minus beta * log sigmoid(log odds ratio), summed over pairs.

    chosen_logps_mean, rejected_logps_mean: (pairs,) *length-averaged* completion log-probs
        (`sequence_logps(..., average=True)` on completion-only labels), as the ORPO paper and
        TRL use; odds(y) = p / (1 - p) with p = exp(mean log-prob).
    chosen_nll: (pairs,) each chosen row's token-mean cross-entropy. TRL takes it over prompt and
        completion (`-sequence_logps(logits, input_ids masked by attention_mask, average=True)`).
        TRL averages the NLL over all chosen tokens of the batch at once; summing per-row means
        here weights every pair equally instead. The two agree when each batch holds one pair
        or equally long chosen rows.
    Rewards are beta * mean log-prob per side, as TRL logs them.
    """
    _check_same_shape(chosen_logps_mean, rejected_logps_mean, chosen_nll)
    # A mean log-prob of exactly 0 (p = 1) makes log(1 - p) = -inf and the gradient NaN; clamping
    # changes nothing for any p below 1 - 1e-6.
    chosen = chosen_logps_mean.float().clamp(max=-1e-6)
    rejected = rejected_logps_mean.float().clamp(max=-1e-6)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    losses = chosen_nll.float() - beta * F.logsigmoid(log_odds)
    return _paired_stats(losses, beta * chosen, beta * rejected)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_estimate: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceStats:
    """Kahneman-Tversky Optimization loss on unpaired rows, summed over rows.

    policy_logps, ref_logps: (rows,) summed completion log-probs; ref detached here.
    desirable: (rows,) bool, True for a desirable (thumbs-up) completion.
    kl_estimate: scalar, mean over the batch of (policy - ref) summed log-probs of mismatched
        prompt/completion pairs (TRL's KL_input_ids), averaged over processes where there are
        several. It is detached and clamped at 0 here, as TRL does.
    Per row, with r = policy - ref and z = kl_estimate:
        desirable: desirable_weight * (1 - sigmoid(beta*(r - z)));
        undesirable: undesirable_weight * (1 - sigmoid(beta*(z - r))).
    `pairs` is the number of rows (the loop divides by it, matching TRL's mean over rows);
    `correct` counts desirable rows with reward beta*r > 0 plus undesirable rows with reward < 0.
    reward_chosen_sum sums over the `chosen_rows` desirable rows, reward_rejected_sum over the
    `rejected_rows` undesirable ones.
    """
    _check_same_shape(policy_logps, ref_logps, desirable)
    desirable = desirable.bool()
    kl = kl_estimate.detach().float().clamp(min=0)
    logratios = policy_logps.float() - ref_logps.detach().float()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )
    rewards = beta * logratios.detach()
    correct = (desirable & (rewards > 0)) | (~desirable & (rewards < 0))
    return PreferenceStats(
        loss_sum=losses.sum(),
        pairs=len(losses),
        reward_chosen_sum=float(rewards[desirable].sum()),
        reward_rejected_sum=float(rewards[~desirable].sum()),
        correct=int(correct.sum()),
        chosen_rows=int(desirable.sum()),
        rejected_rows=int((~desirable).sum()),
    )


def reward_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> PreferenceStats:
    """Pairwise Bradley-Terry reward-model loss, -logsigmoid(chosen - rejected - margin), summed.

    chosen_scores, rejected_scores: (pairs,) scalar scores from the reward head.
    margin: (pairs,) how much the chosen answer should win by, or None for 0.
    Rewards in the stats are the scores themselves.
    """
    _check_same_shape(chosen_scores, rejected_scores)
    difference = chosen_scores.float() - rejected_scores.float()
    if margin is not None:
        difference = difference - margin.float()
    return _paired_stats(-F.logsigmoid(difference), chosen_scores.float(), rejected_scores.float())


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, int]:
    """Knowledge distillation summed over labelled positions, and the number of those positions.

    student_logits, teacher_logits: (batch, seq, vocab) for the same input_ids; the teacher is
        detached. labels: (batch, seq), unshifted as in `sequence_logps`.
    Per labelled position: alpha * T**2 * KL(softmax(teacher/T) || softmax(student/T))
        + (1 - alpha) * cross-entropy(student, label) at temperature 1. The T**2 keeps the soft
        term's gradient scale independent of T (Hinton et al., 2015).
    Returns (fp32 scalar sum, labelled positions); divide the sum by the total count.
    Raises ValueError when the two vocabularies differ (slice the larger logits first).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits"
            f" {tuple(teacher_logits.shape)} differ; slice both to the shared vocabulary first."
        )
    labels = labels[:, 1:]
    keep = labels != ignore_index
    student = student_logits[:, :-1][keep].float()  # (labelled, vocab)
    teacher = teacher_logits[:, :-1][keep].detach().float()
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="sum",
        log_target=True,
    )
    ce = F.cross_entropy(student, labels[keep], reduction="sum")
    return alpha * temperature**2 * kl + (1 - alpha) * ce, int(keep.sum())


def _paired_stats(
    losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> PreferenceStats:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return PreferenceStats(
        loss_sum=losses.sum(),
        pairs=len(losses),
        reward_chosen_sum=float(chosen_rewards.sum()),
        reward_rejected_sum=float(rejected_rewards.sum()),
        correct=int((chosen_rewards > rejected_rewards).sum()),
    )


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -ln 2 to avoid cancellation."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


def _check_same_shape(*tensors: torch.Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if len(set(shapes)) != 1 or len(shapes[0]) != 1:
        raise ValueError(f"Expected 1-D per-row tensors of one length, got shapes {shapes}.")

"""The preference and distillation objectives equal TRL's losses and their plain formulas.

The TRL comparisons run TRL's own trainers (DPOTrainer, KTOTrainer, ORPOTrainer) on the tiny
Llama and feed migaki's functions log-probs computed from the same models' logits.
"""

import copy
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from migaki.losses import (
    distill_loss,
    dpo_loss,
    kto_loss,
    orpo_loss,
    reward_loss,
    sequence_logps,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental.orpo warns on import

BETA = 0.5
PAIRS = [
    ("How much is the kettle?", "The kettle costs 6,980 yen.", "Hello"),
    (
        "What are the support hours?",
        "Support is open from 9:30 to 17:30.",
        "The quick brown fox jumps over the lazy dog.",
    ),
    ("Hello", "Thank you for your question.", "0123456789"),
]


def conversational(prompt: str, answer: str) -> tuple[list[dict], list[dict]]:
    return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def tiny_reference(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


@pytest.fixture(scope="module")
def tiny_policy(tiny_reference):
    """The reference with every weight nudged, so log-ratios, rewards and the KL are non-zero."""
    model = copy.deepcopy(tiny_reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    return model.eval()


# TRL trainers patch their models' forward (a fused LM head), so each test gets fresh copies.
@pytest.fixture
def reference(tiny_reference):
    return copy.deepcopy(tiny_reference)


@pytest.fixture
def policy(tiny_policy):
    return copy.deepcopy(tiny_policy)


def trl_args(config_class, tmp_path, batch_size: int, **kwargs):
    return config_class(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        beta=BETA,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        **kwargs,
    )


def logps_of(model, input_ids, attention_mask, labels, average: bool = False) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return sequence_logps(logits, labels, average=average)


# sequence_logps


def test_sequence_logps_equals_a_direct_gather_and_respects_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 1, -100, 6], [-100, -100, 2, 0, -100]])
    expected = torch.zeros(2)
    for row in range(2):
        for t in range(1, 5):
            if labels[row, t] != -100:  # logits at t-1 predict the label at t
                expected[row] += logits[row, t - 1].log_softmax(-1)[labels[row, t]]
    torch.testing.assert_close(sequence_logps(logits, labels), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        sequence_logps(logits, labels, average=True), expected / torch.tensor([3.0, 2.0])
    )
    # A row with no labels gives 0, not NaN, when averaged.
    assert sequence_logps(logits, torch.full((2, 5), -100), average=True).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="share"):
        sequence_logps(logits, labels[:, :4])


def test_gradients_reach_the_policy_logits_and_not_the_reference():
    torch.manual_seed(0)
    labels = torch.tensor([[-100, 3, 1, 2], [-100, 4, 0, -100]] * 2)
    policy_logits = torch.randn(4, 4, 6, requires_grad=True)
    ref_logits = torch.randn(4, 4, 6, requires_grad=True)
    policy_chosen, policy_rejected = sequence_logps(policy_logits, labels).chunk(2)
    ref_chosen, ref_rejected = sequence_logps(ref_logits, labels).chunk(2)
    stats = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=BETA)
    stats.loss_sum.backward()
    assert policy_logits.grad is not None and policy_logits.grad.abs().sum() > 0
    assert ref_logits.grad is None
    # No gradient through ignored positions.
    assert policy_logits.grad[:, -1].abs().sum() == 0 and policy_logits.grad[1, 2].abs().sum() == 0


# DPO


def trl_dpo_batch(trl, config, pairs, policy, reference, tokenizer):
    """TRL's DPOTrainer on `pairs`: its first batch, its loss, and the trainer (for its logs)."""
    from datasets import Dataset

    rows = []
    for prompt, chosen, rejected in pairs:
        prompt_messages, chosen_messages = conversational(prompt, chosen)
        rejected_messages = conversational(prompt, rejected)[1]
        rows.append(
            {"prompt": prompt_messages, "chosen": chosen_messages, "rejected": rejected_messages}
        )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))  # rows: [chosen...; rejected...]
    return batch, trainer.compute_loss(trainer.model, batch), trainer


def dpo_inputs(batch, policy, reference) -> dict[str, torch.Tensor]:
    """migaki's dpo_loss arguments from the same batch: completion log-probs and token counts."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = (batch["input_ids"], batch["attention_mask"], labels)
    policy_chosen, policy_rejected = logps_of(policy, *inputs).chunk(2)
    ref_chosen, ref_rejected = logps_of(reference, *inputs).chunk(2)
    chosen_tokens, rejected_tokens = (labels[:, 1:] != -100).sum(-1).chunk(2)
    return {
        "policy_chosen": policy_chosen,
        "policy_rejected": policy_rejected,
        "ref_chosen": ref_chosen,
        "ref_rejected": ref_rejected,
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
    }


@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm", "hinge", "ipo"])
def test_dpo_loss_equals_trl_dpo_trainer(loss_type, policy, reference, tokenizer, tmp_path):
    trl = pytest.importorskip("trl")
    config = trl_args(trl.DPOConfig, tmp_path, batch_size=3, loss_type=[loss_type])
    batch, trl_loss, trainer = trl_dpo_batch(trl, config, PAIRS, policy, reference, tokenizer)

    stats = dpo_loss(**dpo_inputs(batch, policy, reference), beta=BETA, loss_type=loss_type)
    assert stats.pairs == 3
    torch.testing.assert_close(stats.loss_sum / stats.pairs, trl_loss.detach(), rtol=0, atol=1e-5)
    assert stats.reward_chosen_sum != 0 and stats.reward_rejected_sum != 0  # policy != reference
    logged = trainer._metrics["eval"]
    assert stats.reward_chosen_sum / 3 == pytest.approx(logged["rewards/chosen"][-1], abs=1e-5)
    assert stats.reward_rejected_sum / 3 == pytest.approx(logged["rewards/rejected"][-1], abs=1e-5)
    assert stats.correct / 3 == pytest.approx(logged["rewards/accuracies"][-1])


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_dpo_with_an_sft_term_equals_trl_sigmoid_plus_sft(
    pair, policy, reference, tokenizer, tmp_path
):
    """One pair per batch, where TRL's token mean over the batch's chosen answers and migaki's
    mean over pairs of each answer's token mean are the same number."""
    trl = pytest.importorskip("trl")
    weight = 0.7
    config = trl_args(
        trl.DPOConfig,
        tmp_path,
        batch_size=1,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1, weight],
    )
    batch, trl_loss, _ = trl_dpo_batch(trl, config, [PAIRS[pair]], policy, reference, tokenizer)

    inputs = dpo_inputs(batch, policy, reference)
    stats = dpo_loss(**inputs, beta=BETA, sft_weight=weight)
    torch.testing.assert_close(stats.loss_sum, trl_loss.detach(), rtol=0, atol=1e-5)
    without = dpo_loss(**inputs, beta=BETA)
    nll = -inputs["policy_chosen"] / inputs["chosen_tokens"]
    torch.testing.assert_close(stats.loss_sum, without.loss_sum + weight * nll.sum())


def test_an_sft_term_weights_each_pair_by_its_answers_mean_and_needs_token_counts():
    policy = torch.tensor([-6.0, -2.0]), torch.tensor([-4.0, -3.0])
    reference = torch.tensor([-5.0, -2.5]), torch.tensor([-4.0, -2.0])
    tokens = torch.tensor([3, 1]), torch.tensor([2, 2])
    base = dpo_loss(*policy, *reference, beta=BETA)
    stats = dpo_loss(
        *policy, *reference, beta=BETA, chosen_tokens=tokens[0], rejected_tokens=tokens[1],
        sft_weight=0.5,
    )  # fmt: skip
    torch.testing.assert_close(stats.loss_sum, base.loss_sum + 0.5 * (6.0 / 3 + 2.0 / 1))
    assert stats.correct == base.correct and stats.reward_chosen_sum == base.reward_chosen_sum
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(*policy, *reference, sft_weight=0.5)
    with pytest.raises(ValueError, match="sft_weight"):
        dpo_loss(*policy, *reference, chosen_tokens=tokens[0], rejected_tokens=tokens[1],
                 sft_weight=-1.0)  # fmt: skip


def test_dpo_label_smoothing_is_conservative_dpo_and_bad_arguments_are_refused():
    policy_chosen, policy_rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    d = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    eps = 0.1
    expected = (-(1 - eps) * F.logsigmoid(BETA * d) - eps * F.logsigmoid(-BETA * d)).sum()
    stats = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=BETA, label_smoothing=eps
    )
    torch.testing.assert_close(stats.loss_sum, expected)
    assert stats.correct == int((d > 0).sum()) == 1
    args = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*args, loss_type="kto")
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(*args, loss_type="ipo")
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(*args, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="shapes"):
        dpo_loss(policy_chosen, policy_rejected[:1], ref_chosen, ref_rejected)


# ORPO


def test_orpo_odds_ratio_term_equals_trl_odds_ratio_loss():
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    torch.manual_seed(0)
    chosen = -torch.rand(6) * 3 - 0.01  # mean log-probs on both sides of the -ln 2 branch
    rejected = -torch.rand(6) * 3 - 0.01
    trainer_stub = SimpleNamespace(
        beta=BETA, accelerator=SimpleNamespace(device=torch.device("cpu"))
    )
    losses, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(
        trainer_stub, chosen, rejected
    )
    stats = orpo_loss(chosen, rejected, chosen_nll=torch.zeros(6), beta=BETA)
    # TRL's `losses` is beta*logsigmoid(log odds), subtracted from the NLL.
    torch.testing.assert_close(stats.loss_sum, -losses.sum(), rtol=0, atol=1e-6)
    assert stats.reward_chosen_sum == pytest.approx(chosen_rewards.sum().item(), abs=1e-6)
    assert stats.reward_rejected_sum == pytest.approx(rejected_rewards.sum().item(), abs=1e-6)
    assert stats.correct == int((chosen_rewards > rejected_rewards).sum())


def test_orpo_loss_equals_trl_orpo_trainer(policy, tokenizer, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    prompt, chosen, rejected = PAIRS[1]
    prompt_messages, chosen_messages = conversational(prompt, chosen)
    rows = [
        {
            "prompt": prompt_messages,
            "chosen": chosen_messages,
            "rejected": conversational(prompt, rejected)[1],
        }
    ]
    # One pair per batch: TRL's NLL is a token-mean over the whole batch, migaki's a per-pair
    # token-mean; with one pair they are the same number.
    trainer = ORPOTrainer(
        model=policy,
        args=trl_args(ORPOConfig, tmp_path, batch_size=1),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trainer.model, batch)

    side = {}
    for name in ("chosen", "rejected"):
        ids, mask = batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"]
        side[name] = logps_of(policy, ids, mask, batch[f"{name}_labels"], average=True)
    ids, mask = batch["chosen_input_ids"], batch["chosen_attention_mask"]
    chosen_nll = -logps_of(policy, ids, mask, ids.masked_fill(mask == 0, -100), average=True)
    stats = orpo_loss(side["chosen"], side["rejected"], chosen_nll, beta=BETA)
    torch.testing.assert_close(stats.loss_sum / stats.pairs, trl_loss.detach(), rtol=0, atol=1e-5)


# KTO


def test_kto_loss_equals_trl_kto_trainer(policy, reference, tokenizer, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    rows = []
    for (prompt, chosen, rejected), label in zip(PAIRS, (True, False, True), strict=True):
        prompt_messages, completion = conversational(prompt, chosen if label else rejected)
        rows.append({"prompt": prompt_messages, "completion": completion, "label": label})
    trainer = trl.KTOTrainer(
        model=policy,
        ref_model=reference,
        args=trl_args(
            trl.KTOConfig, tmp_path, batch_size=3, desirable_weight=0.8, undesirable_weight=1.3
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer.compute_loss(trainer.model, batch)

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = (batch["input_ids"], batch["attention_mask"], labels)
    kl_labels = batch["KL_input_ids"].masked_fill(batch["KL_completion_mask"] == 0, -100)
    kl_inputs = (batch["KL_input_ids"], batch["KL_attention_mask"], kl_labels)
    kl_estimate = (logps_of(policy, *kl_inputs) - logps_of(reference, *kl_inputs)).mean()
    assert kl_estimate > 0  # the KL term is exercised, not clamped away
    stats = kto_loss(
        logps_of(policy, *inputs),
        logps_of(reference, *inputs),
        batch["label"],
        kl_estimate,
        beta=BETA,
        desirable_weight=0.8,
        undesirable_weight=1.3,
    )
    assert (stats.pairs, stats.chosen_rows, stats.rejected_rows) == (3, 2, 1)
    torch.testing.assert_close(stats.loss_sum / stats.pairs, trl_loss.detach(), rtol=0, atol=1e-5)
    logged = trainer._metrics["eval"]
    assert logged["kl"][-1] == pytest.approx(kl_estimate.item(), abs=1e-5)
    assert stats.reward_chosen_sum / 2 == pytest.approx(logged["rewards/chosen"][-1], abs=1e-5)
    assert stats.reward_rejected_sum == pytest.approx(logged["rewards/rejected"][-1], abs=1e-5)


def test_kto_counts_correct_rows_by_the_sign_of_their_reward():
    policy_logps = torch.tensor([-1.0, -3.0, -2.0, -5.0])
    ref_logps = torch.tensor([-2.0, -2.0, -3.0, -4.0])  # log-ratios +1, -1, +1, -1
    desirable = torch.tensor([True, True, False, False])
    stats = kto_loss(policy_logps, ref_logps, desirable, torch.tensor(-0.3), beta=BETA)
    assert stats.correct == 2  # the first (desirable, up) and the last (undesirable, down)
    r = policy_logps - ref_logps  # a negative KL estimate is clamped to 0
    expected = torch.cat([1 - torch.sigmoid(BETA * r[:2]), 1 - torch.sigmoid(-BETA * r[2:])])
    torch.testing.assert_close(stats.loss_sum, expected.sum())
    assert (stats.reward_chosen_sum, stats.reward_rejected_sum) == (0.0, 0.0)


# Reward models


def test_reward_loss_equals_the_bradley_terry_formula_and_trl_reward_trainer():
    trl = pytest.importorskip("trl")
    chosen, rejected = torch.tensor([1.5, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
    margin = torch.tensor([0.0, 1.0, 0.25])
    stats = reward_loss(chosen, rejected, margin)
    expected = -torch.log(torch.sigmoid(chosen - rejected - margin)).sum()
    torch.testing.assert_close(stats.loss_sum, expected)
    torch.testing.assert_close(
        reward_loss(chosen, rejected).loss_sum, -torch.log(torch.sigmoid(chosen - rejected)).sum()
    )
    assert (stats.pairs, stats.correct) == (3, 1)  # ties are not correct
    assert stats.reward_chosen_sum == pytest.approx(1.6)

    # RewardTrainer.compute_loss needs only these attributes of the trainer in eval mode.
    trainer_stub = SimpleNamespace(
        model=SimpleNamespace(training=False),
        args=SimpleNamespace(center_rewards_coefficient=None),
        accelerator=SimpleNamespace(gather=lambda t: t, gather_for_metrics=lambda t: t),
        _total_train_tokens=0,
        _tp_size=1,
        _metrics={"eval": defaultdict(list)},
    )

    def scorer(**inputs):
        return SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))

    trl_loss = trl.RewardTrainer.compute_loss(trainer_stub, scorer, {"margin": margin})
    torch.testing.assert_close(stats.loss_sum / stats.pairs, trl_loss, rtol=0, atol=1e-6)


# Distillation


def plain_distill(student, teacher, labels, temperature, alpha):
    """One position at a time: kl_div on log-softmax and softmax, plus cross-entropy."""
    total, count = torch.zeros(()), 0
    for row in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[row, t] == -100:
                continue
            s, p = student[row, t - 1], teacher[row, t - 1]
            kl = F.kl_div(
                F.log_softmax(s / temperature, -1), F.softmax(p / temperature, -1), reduction="sum"
            )
            ce = F.cross_entropy(s[None], labels[row, t][None], reduction="sum")
            total = total + alpha * temperature**2 * kl + (1 - alpha) * ce
            count += 1
    return total, count


def test_distill_loss_equals_a_plain_torch_reference():
    torch.manual_seed(0)
    student = torch.randn(2, 6, 9, requires_grad=True)
    teacher = torch.randn(2, 6, 9, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, 8, -100], [-100, 1, 2, -100, 0, 5]])
    for temperature, alpha in [(2.0, 0.5), (1.0, 1.0), (3.0, 0.0)]:
        loss, count = distill_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
        expected, expected_count = plain_distill(student, teacher, labels, temperature, alpha)
        assert count == expected_count == 7
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    # Temperature 1 and alpha 1: pure KL(teacher || student) over labelled positions.
    keep = labels[:, 1:] != -100
    p = teacher[:, :-1][keep].softmax(-1)
    q = student[:, :-1][keep].softmax(-1)
    pure_kl = (p * (p.log() - q.log())).sum()
    torch.testing.assert_close(distill_loss(student, teacher, labels, 1.0, 1.0)[0], pure_kl)
    distill_loss(student, teacher, labels)[0].backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError, match="vocabulary"):
        distill_loss(student, teacher[..., :5], labels)

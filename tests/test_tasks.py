"""Objectives beyond SFT, classification and DPO, each through the same recipe, loop and run
directory: ORPO, a reward model, distillation from a teacher, continued pre-training."""

import json
import logging

import pytest
import torch
from conftest import qa_rows, write_jsonl, write_recipe
from peft import PeftModel
from test_dpo import pairs
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from migaki.cli import main
from migaki.config import load_recipe
from migaki.data.formats import Example
from migaki.data.tokenize import tokenize_all
from migaki.losses import distill_loss
from migaki.models.inference import load_for_inference
from migaki.tasks.distill import DistillLoss, load_teacher
from migaki.train.tracking import read_metrics


def val_rows(run):
    return [m for m in read_metrics(run) if m.get("split") == "val"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_orpo_learns_to_prefer_the_chosen_answers(method, tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(48))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="orpo",
        method={"name": method},
        data={"split": {"val": 0.25, "test": 0.0}, "max_length": 64},
        train={"max_steps": 30, "batch_size": 8, "lr": 1e-2, "eval_every": 15},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    val = val_rows(run)
    assert [m["step"] for m in val] == [0, 15, 30]
    assert val[-1]["pref_accuracy"] >= 0.9 and val[-1]["loss"] < val[0]["loss"]
    assert {"reward_chosen", "reward_rejected", "reward_margin"} <= val[-1].keys()


def test_reward_model_ranks_chosen_above_rejected(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(48))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="reward",
        method={"name": "full"},
        data={"split": {"val": 0.25, "test": 0.0}, "max_length": 64},
        train={"max_steps": 24, "batch_size": 8, "lr": 5e-3, "eval_every": 12},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    val = val_rows(run)
    assert val[-1]["pref_accuracy"] >= 0.9 and val[-1]["reward_margin"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(run / "final")
    assert model.config.num_labels == 1
    capsys.readouterr()
    chats = write_jsonl(tmp_path / "qa.jsonl", qa_rows(4))
    assert main(["eval", str(run), "--data", str(chats)]) == 2
    assert "scores conversations and does not generate text" in capsys.readouterr().err


def test_reward_model_with_lora_saves_the_score_head(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(16))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, task="reward", data={"max_length": 64}
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    PeftModel.from_pretrained(base, str(run / "final"))


def test_distill_loss_on_labelled_positions_equals_the_full_logits_formula(tiny_model, tokenizer):
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    examples = [Example("t", 1, messages=row["messages"]) for row in qa_rows(3)]
    rows, _ = tokenize_all(examples, tokenizer, max_length=64)
    from migaki.data.batches import collate

    batch = collate(rows, tokenizer.pad_token_id)
    loss = DistillLoss(student, teacher, temperature=2.0, alpha=0.7, chunk_rows=5)
    parts = loss(**batch)
    parts.loss_sum.backward()
    chunked = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    expected, count = distill_loss(
        student(**inputs).logits, teacher(**inputs).logits, batch["labels"], 2.0, 0.7
    )
    expected.backward()
    assert parts.tokens == count
    torch.testing.assert_close(parts.loss_sum, expected, atol=1e-4, rtol=1e-5)
    for name, parameter in student.named_parameters():
        torch.testing.assert_close(chunked[name], parameter.grad, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_trains_a_student_from_a_teacher(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(24))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="distill",
        distill={"teacher": str(tiny_model), "temperature": 2.0, "alpha": 0.5},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    val = val_rows(run)
    assert val[-1]["loss"] < val[0]["loss"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trainable_params"] < manifest["total_params"]  # the teacher is not counted


@pytest.mark.parametrize("where", ["run", "run/final"])
def test_a_run_teaches_with_its_adapter_merged_in(where, tmp_path, tiny_model, tokenizer, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(24))
    tuned = tmp_path / "run"
    lora = write_recipe(tmp_path / "lora.yaml", tiny_model, data, train={"max_steps": 4})
    assert main(["train", str(lora), "--out", str(tuned)]) == 0, capsys.readouterr().err
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="distill",
        distill={"teacher": str(tmp_path / where)},
    )
    teacher = load_teacher(load_recipe(recipe), tokenizer)
    assert not hasattr(teacher, "peft_config")
    ids = torch.tensor([tokenizer("How much is product 4?")["input_ids"]])
    with torch.no_grad():
        expected = load_for_inference(tuned).model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)(input_ids=ids).logits
        got = teacher(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)
    assert main(["train", str(recipe), "--out", str(tmp_path / "student")]) == 0


def test_a_prefix_tuned_run_is_refused_as_a_teacher(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(8))
    tuned = tmp_path / "run"
    prefix = write_recipe(tmp_path / "p.yaml", tiny_model, data, method={"name": "prefix"})
    assert main(["train", str(prefix), "--out", str(tuned), "train.max_steps=1"]) == 0
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, task="distill", distill={"teacher": str(tuned)}
    )
    assert main(["train", str(recipe)]) == 2
    assert f"distill.teacher: {tuned} was trained with prefix tuning" in capsys.readouterr().err


def test_distill_refuses_a_missing_teacher(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(8))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, task="distill")
    assert main(["train", str(recipe)]) == 2
    assert "distill.teacher: task distill needs a teacher model" in capsys.readouterr().err


def test_pretrain_splits_long_texts_and_learns_every_token(tmp_path, tiny_model, caplog):
    texts = [
        {"text": f"Kumokaze kettle model {i} boils water in {90 + i} seconds. " * 6}
        for i in range(24)
    ]
    data = write_jsonl(tmp_path / "t.jsonl", texts)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="pretrain",
        data={"max_length": 32, "split": {"val": 0.2, "test": 0.0}},
        train={"max_steps": 12, "lr": 1e-2, "eval_every": 6},
    )
    run = tmp_path / "run"
    caplog.set_level(logging.INFO)
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    assert "longer than max_length split into" in caplog.text
    val = val_rows(run)
    assert val[-1]["loss"] < val[0]["loss"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["rows"]["train"] > 19  # every text became several pieces


def test_pretrain_reads_a_plain_text_file_paragraph_by_paragraph(tmp_path, tiny_model, caplog):
    paragraphs = [f"Kumokaze kettle {i} boils water\nin {90 + i} seconds." for i in range(20)]
    data = tmp_path / "manual.txt"
    data.write_text("\n\n".join(paragraphs) + "\n")
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="pretrain",
        data={"split": {"val": 0.2, "test": 0.0}},
        train={"max_steps": 4, "eval_every": 2},
    )
    run = tmp_path / "run"
    caplog.set_level(logging.INFO)
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["rows"] == {"train": 16, "val": 4, "test": 0}
    assert "no validation rows" not in caplog.text
    assert val_rows(run)


def test_a_split_too_small_for_a_validation_row_is_announced(tmp_path, tiny_model, caplog):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(4))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        train={"max_steps": 2, "early_stopping": {"patience": 2}},
    )
    caplog.set_level(logging.INFO)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 0
    assert (
        "no validation rows (data.split.val 0.1 of 4 rows rounds to 0): this run has no "
        "validation loss, early stopping, a best checkpoint (final/ holds the last step); "
        "give data.val" in caplog.text
    )


def test_pretrain_refuses_conversations(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(8))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, task="pretrain")
    assert main(["train", str(recipe)]) == 2
    assert "task pretrain learns from raw text rows" in capsys.readouterr().err


def test_split_policy_keeps_every_token(tokenizer):
    example = Example("t", 1, text="word " * 50)
    (whole,), _ = tokenize_all([example], tokenizer, max_length=1000)
    pieces, report = tokenize_all([example], tokenizer, max_length=16, overlong="split")
    assert [t for p in pieces for t in p.input_ids] == whole.input_ids
    assert all(len(p.input_ids) <= 16 for p in pieces)
    assert report.split == 1 and report.rows_out == len(pieces)


def feedback_rows(count):
    """Unpaired KTO rows: a good answer marked true, a useless one marked false."""
    rows = []
    for i in range(count):
        good = i % 2 == 0
        answer = f"Product {i} costs {1000 + i} yen." if good else "I do not know, sorry."
        rows.append({"prompt": f"How much is product {i}?", "completion": answer, "label": good})
    return rows


def test_kto_module_matches_the_formula_on_rows_and_mismatched_rows(tiny_model, tokenizer):
    from migaki.config import MethodConfig
    from migaki.data.formats import to_examples
    from migaki.data.load import Record
    from migaki.data.pairs import collate_kto, tokenize_feedback
    from migaki.losses import kto_loss, sequence_logps
    from migaki.methods import apply_method
    from migaki.tasks.kto import KTOLoss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = apply_method(base, MethodConfig(name="lora", lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    examples = to_examples([Record("f", i + 1, r) for i, r in enumerate(feedback_rows(4))])
    rows, _ = tokenize_feedback(examples, tokenizer, max_length=64)
    batch = collate_kto(rows, tokenizer.pad_token_id)
    desirable = batch["desirable"].clone()
    parts = KTOLoss(model, 0.1, 1.0, 1.5)(**dict(batch))

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    policy = sequence_logps(model(**inputs).logits, batch["labels"])
    with torch.no_grad(), model.disable_adapter():
        reference = sequence_logps(model(**inputs).logits, batch["labels"])
    kl = (policy[4:] - reference[4:]).mean()
    expected = kto_loss(policy[:4], reference[:4], desirable, kl, 0.1, 1.0, 1.5)
    torch.testing.assert_close(parts.loss_sum, expected.loss_sum, atol=1e-5, rtol=1e-5)
    assert parts.extras["chosen_rows"] == 2 and parts.correct == expected.correct
    # the mismatched rows pair each prompt with the next row's answer
    assert (
        tokenizer.decode(batch["input_ids"][4][batch["attention_mask"][4].bool()]).count(
            "product 0"
        )
        == 1
    )


@pytest.mark.parametrize("rows", ["feedback", "pairs"])
def test_kto_raises_desirable_rewards_above_undesirable(rows, tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "f.jsonl", feedback_rows(64) if rows == "feedback" else pairs(32))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="kto",
        data={"split": {"val": 0.25, "test": 0.0}, "max_length": 64},
        train={"max_steps": 24, "batch_size": 8, "lr": 2e-2, "eval_every": 24},
        preference={"beta": 0.5},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    val = val_rows(run)
    assert val[0]["reward_margin"] == 0.0
    assert val[-1]["reward_margin"] > 0 and val[-1]["pref_accuracy"] >= 0.75

"""Sequence classification: an encoder or a decoder gets a new head; accuracy and macro F1
on every validation row of metrics.jsonl; the label map travels with the model."""

import json

import pytest
import torch
from conftest import write_jsonl, write_recipe

from migaki.cli import main
from migaki.metrics import f1_macro
from migaki.testing import build_tiny_encoder
from migaki.train.tracking import read_metrics


def sentiment_rows(count):
    good = ["good kettle", "great toaster", "fine support", "lovely fan"]
    bad = ["broken kettle", "awful toaster", "slow support", "noisy fan"]
    rows = []
    for i in range(count):
        words = good if i % 2 else bad
        rows.append({"sentence": f"{words[i % 4]} {i}", "label": "pos" if i % 2 else "neg"})
    return rows


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "model")


def val_metrics(run):
    return [m for m in read_metrics(run) if m.get("split") == "val"]


@pytest.mark.parametrize("method", ["full", "lora", "freeze", "gradual", "head"])
def test_encoder_classification_learns_and_logs_accuracy_and_f1(
    method, tmp_path, tiny_encoder, capsys
):
    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(160))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_encoder,
        data,
        task="classification",
        method={"name": method},
        train={"max_steps": 40, "batch_size": 16, "lr": 5e-3, "eval_every": 20},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    metrics = val_metrics(run)
    assert [m["step"] for m in metrics] == [0, 20, 40]
    assert all({"accuracy", "f1_macro", "loss"} <= m.keys() for m in metrics)
    if method != "head":  # a frozen random backbone cannot separate the words
        assert metrics[-1]["accuracy"] >= 0.9 > metrics[0]["accuracy"] - 0.2
    assert json.loads((run / "final" / "labels.json").read_text()) == ["neg", "pos"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trainable_params"] < manifest["total_params"] or method == "full"


def test_decoder_classification_with_a_headerless_tsv(tmp_path, tiny_model, capsys):
    rows = sentiment_rows(80)
    data = tmp_path / "s.tsv"
    data.write_text("".join(f"{r['sentence']}\t{r['label']}\n" for r in rows))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="classification",
        data={"columns": ["text", "label"]},
        method={"name": "full"},
        train={"max_steps": 10, "batch_size": 8, "lr": 1e-3, "eval_every": 10},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert "accuracy" in val_metrics(run)[-1]


def test_a_method_without_classification_support_is_refused(tmp_path, tiny_encoder, capsys):
    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(20))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_encoder, data, task="classification", method={"name": "ia3"}
    )
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "ia3 is not available for task classification yet" in capsys.readouterr().err


def test_f1_macro_matches_its_definition():
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    f1_a = 2 * 5 / (2 * 5 + 1 + 2)
    f1_b = 2 * 3 / (2 * 3 + 2 + 1)
    assert f1_macro(confusion) == pytest.approx((f1_a + f1_b) / 2)


def test_doctor_reports_labels_per_split_for_classification(tmp_path, tiny_encoder, capsys):
    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(40))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_encoder, data, task="classification")
    assert main(["data", "doctor", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "labels in train: neg " in out and "labels in val: neg " in out
    assert out.rstrip().endswith("GO: the data is ready to train on")


def test_max_rows_samples_the_training_file_and_says_so(tmp_path):
    from migaki.config import DataConfig
    from migaki.data.prepare import prepare_data

    data = DataConfig(
        train=str(write_jsonl(tmp_path / "s.jsonl", sentiment_rows(100))),
        max_rows=30,
        split={"leakage": False},
    )
    prepared = prepare_data(data, seed=0)
    assert sum(len(rows) for rows in prepared.parts.values()) == 30
    (sample,) = [s for s in prepared.steps if s.step == "max_rows"]
    assert sample.removed == 70


def test_eval_scores_a_classification_run_against_the_majority_baseline(
    tmp_path, tiny_encoder, capsys
):
    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(160))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_encoder,
        data,
        task="classification",
        method={"name": "lora"},
        train={"max_steps": 40, "batch_size": 16, "lr": 5e-3, "eval_every": 40},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "majority (" in out
    result = json.loads((run / "eval.json").read_text())
    assert result["systems"]["tuned"]["accuracy"] >= 0.9
    assert set(result["per_label"]) == {"neg", "pos"}
    assert sum(map(sum, result["confusion"]["matrix"])) == result["rows"]
    assert "<h3>Per label</h3>" in (run / "report.html").read_text()
    assert main(["generate", str(run), "--prompt", "hi"]) == 2
    assert "does not generate text" in capsys.readouterr().err


def test_other_text_and_label_columns_are_named_in_the_recipe(tmp_path, tiny_encoder, capsys):
    rows = [
        {"review": r["sentence"], "stars": r["label"], "id": i}
        for i, r in enumerate(sentiment_rows(80))
    ]
    data = write_jsonl(tmp_path / "reviews.jsonl", rows)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_encoder,
        data,
        task="classification",
        data={"text_column": "review", "label_column": "stars", "split": {"test": 0.2}},
        method={"name": "full"},
        train={"max_steps": 6, "batch_size": 8, "eval_every": 6},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    assert "accuracy" in val_metrics(run)[-1]
    assert main(["eval", str(run)]) == 0  # the run's own test split
    assert main(["eval", str(run), "--data", str(data)]) == 0  # the user's layout
    relabelled = [{"review": r["review"], "gold": r["stars"]} for r in rows[:10]]
    other = write_jsonl(tmp_path / "other.jsonl", relabelled)
    assert main(["eval", str(run), "--data", str(other)]) == 2  # no `stars` field
    assert "other.jsonl: no labelled rows (review and stars)" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", str(other), "--label-column", "gold"]) == 0
    assert json.loads((run / "eval.json").read_text())["rows"] == 10
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"text": "a", "review": "b", "stars": "pos"}])
    assert main(["data", "validate", str(broken), "--recipe", str(recipe)]) == 2
    assert "also has a field 'text' beside 'review'" in capsys.readouterr().out


def test_model_dropout_sets_every_dropout_rate_of_the_config(tmp_path, tiny_encoder, capsys):
    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(64))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_encoder,
        data,
        task="classification",
        method={"name": "full"},
        train={"max_steps": 4, "batch_size": 16, "lr": 5e-3, "eval_every": 4},
    )
    losses = {}
    for dropout in (0.0, 0.5):
        run = tmp_path / f"run{dropout}"
        command = ["train", str(recipe), f"model.dropout={dropout}", "--out", str(run)]
        assert main(command) == 0, capsys.readouterr().err
        config = json.loads((run / "final" / "config.json").read_text())
        rates = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
        assert [config[key] for key in rates] == [dropout] * 3
        losses[dropout] = [m["loss"] for m in read_metrics(run) if m.get("split") == "train"]
    assert losses[0.0][0] != losses[0.5][0]  # the masks change the very first step's loss

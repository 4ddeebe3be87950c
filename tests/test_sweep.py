"""migaki sweep: trials are run directories, the pruner stops bad ones through the loop's
on_validation hook, a killed sweep resumes, and best-recipe.yaml trains as any recipe."""

import json

import optuna
import pytest
from conftest import run_cli, run_cli_process, write_recipe

from migaki.config import load_recipe
from migaki.errors import UserError
from migaki.sweep import sweep
from migaki.train.tracking import read_metrics

LR = {"low": 1e-6, "high": 0.05, "log": True}


def sweep_recipe(tmp_path, tiny_model, qa_file, space, **options):
    """The conftest recipe at 4 steps, validated every 2, with a sweep: section."""
    return write_recipe(
        tmp_path / "sweep.yaml",
        tiny_model,
        qa_file,
        train={"max_steps": 4, "eval_every": 2},
        sweep={"space": space, **options},
    )


def study_in(out, name="sweep"):
    out.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=f"sqlite:///{out / 'sweep.db'}", study_name=name, load_if_exists=True
    )


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"train.scheduler": {"low": 0, "high": 1}}, "sweep.space.train.scheduler: "),
        ({"method.lora_rank": {"low": 2, "high": 7.5}}, "takes whole numbers"),
        ({"train.track": {"choices": [["mlflow"], []]}}, "choices must be numbers"),
        ({"train.lrr": {"low": 0.1, "high": 1}}, "sweep.space.train.lrr: not a recipe key"),
    ],
)
def test_a_bad_space_is_refused_naming_the_file_and_key(
    tmp_path, tiny_model, qa_file, space, expected
):
    recipe = sweep_recipe(tmp_path, tiny_model, qa_file, space)
    with pytest.raises(UserError) as caught:
        sweep(recipe, 2, out=tmp_path / "out")
    assert str(recipe) in str(caught.value) and expected in str(caught.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_recipe_without_a_sweep_section_is_refused(tmp_path, recipe_file):
    with pytest.raises(UserError, match=r"recipe\.yaml: sweep: is missing"):
        sweep(recipe_file, 2, out=tmp_path / "out")


def test_an_existing_study_needs_resume(tmp_path, tiny_model, qa_file, capsys):
    recipe = sweep_recipe(tmp_path, tiny_model, qa_file, {"train.lr": LR})
    study_in(tmp_path / "out")
    code, out, err = run_cli(capsys, "sweep", recipe, "--trials", 1, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "study 'sweep' exists already; pass --resume" in err


def test_pruning_failure_best_recipe_and_resume_after_a_kill(tmp_path, tiny_model, qa_file):
    space = {"train.lr": LR, "train.warmup": {"choices": [0.0, -1.0]}}
    recipe = sweep_recipe(tmp_path, tiny_model, qa_file, space, startup_trials=1)
    out = tmp_path / "out"
    study = study_in(out)  # the trials' values are queued, so the outcome is known
    study.enqueue_trial({"train.lr": 0.02, "train.warmup": 0.0})  # learns
    study.enqueue_trial({"train.lr": 1e-6, "train.warmup": 0.0})  # barely moves: pruned
    study.enqueue_trial({"train.lr": 0.02, "train.warmup": -1.0})  # an invalid recipe

    result = sweep(recipe, 3, out=out, resume=True)

    assert [(t.number, t.state) for t in result.trials] == [
        (0, "complete"),
        (1, "pruned"),
        (2, "failed"),
    ]
    pruned = out / "trial-001"
    manifest = json.loads((pruned / "manifest.json").read_text())
    assert (
        manifest["status"] == "pruned"
        and "at step 2 is worse than the median" in (manifest["stopped"])
    )
    assert manifest["steps"] == 2 and (pruned / "final" / "files.json").is_file()
    assert [m["event"] for m in read_metrics(pruned) if "event" in m] == ["pruned"]
    assert result.trials[1].value > result.trials[0].value  # reported at step 2 each
    assert "sweep.yaml (trial 2): train.warmup:" in result.trials[2].note
    assert result.best.number == 0
    best = load_recipe(result.best_recipe)
    assert best.sweep is None and best.train.lr == 0.02 and best.train.warmup == 0.0
    assert best.train.max_steps == 4 and best.model.base == str(tiny_model)
    first_value = result.best.value
    assert (
        first_value
        == json.loads((out / "trial-000" / "manifest.json").read_text())["best_val_loss"]
    )  # the last validation's loss, also the best of that run

    # a kill in the middle of trial 3: the study holds it as running, with its values
    study = study_in(out)
    study.enqueue_trial({"train.lr": 0.02, "train.warmup": 0.0})  # trial 0's: not pruned
    killed = study.ask()
    killed.suggest_float("train.lr", **LR)
    killed.suggest_categorical("train.warmup", [0.0, -1.0])

    result = sweep(recipe, 4, out=out, resume=True)

    states = [(t.number, t.state) for t in result.trials]
    assert states[3:] == [(3, "failed"), (4, "complete")]  # 0, 1, 2 and 4 count
    assert result.trials[4].params == {"train.lr": 0.02, "train.warmup": 0.0}
    assert result.trials[4].value == first_value  # the same values train the same run
    assert result.trials[3].note == "stopped with its sweep; repeated as trial 4"
    assert result.trials[4].note == "repeats trial 3"
    assert (out / "trial-004" / "final").is_dir() and not (out / "trial-003").exists()


def test_the_command_runs_in_a_fresh_process_and_prints_the_table(tmp_path, tiny_model, qa_file):
    recipe = sweep_recipe(tmp_path, tiny_model, qa_file, {"train.lr": {"low": 1e-3, "high": 1e-2}})
    out = tmp_path / "out"
    done = run_cli_process(
        "sweep", recipe, "--trials", 2, "--out", out, "train.max_steps=2", timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["trial", "state", "loss", "minutes", "train.lr", "note"]
    assert [line.split()[:2] for line in lines[1:3]] == [["0", "complete"], ["1", "complete"]]
    assert f"wrote {out / 'best-recipe.yaml'}" in done.stdout
    assert load_recipe(out / "best-recipe.yaml").train.max_steps == 2  # the override kept
    assert {p.name for p in out.iterdir()} == {
        "sweep.db",
        "trial-000",
        "trial-001",
        "best-recipe.yaml",
    }

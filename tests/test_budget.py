"""train.max_minutes: the step count becomes what fits, the schedule ends there, a resume keeps
it. A fake clock makes the runs deterministic (no test asserts real timings)."""

import itertools
import json
import shutil

import pytest
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.config import load_recipe
from migaki.train import budget as budget_module
from migaki.train import session, train
from migaki.train.budget import TimeBudget
from migaki.train.checkpoint import read_state
from migaki.train.schedule import learning_rate, warmup_steps
from migaki.train.tracking import read_metrics


def test_fitting_steps_counts_padded_tokens_and_validations():
    budget = TimeBudget(100.0, 0.0, lambda step: 10 if step % 2 else 30, clock=lambda: 10.0)
    budget.step_seconds = lambda: 4.0
    budget.step_tokens, budget.steps_timed = 40, 3  # 0.1 s per token
    budget.validation_seconds = [5.0]
    # 100 s - 10 spent - 5 for the last validation = 85 s. Steps cost 3, 1, 3, 1 s ... and
    # every 4th adds a 5 s validation: 13 s per 4 steps, 6 x 4 steps = 78 s, then 3 + 1 + 3 s
    assert budget.fitting_steps(0, 1000, 4, validating_now=False) == 27
    # 5 s less: 80 s, 6 x 13 s = 78 s, and the next 3 s step no longer fits
    assert budget.fitting_steps(0, 1000, 4, validating_now=True) == 24
    assert budget.fitting_steps(0, 20, 4, validating_now=False) == 20  # never above the recipe
    budget.reserve = 2.0  # two validations kept free: 10 s less, 70 s: 5 x 13 s, then 3 + 1 s
    assert budget.fitting_steps(0, 1000, 4, validating_now=True) == 22
    assert not budget.exhausted()
    budget.clock = lambda: 90.0
    assert budget.exhausted()  # 90 s of 100, 10 of them kept free
    budget.clock = lambda: 99.0
    assert budget.fitting_steps(30, 1000, 4, validating_now=False) == 30  # never below now


def test_timing_starts_after_the_first_step_of_each_process():
    ticks = iter(range(100))
    budget = TimeBudget(600.0, 0.0, lambda step: 10, clock=lambda: float(next(ticks)))
    for step in (41, 42, 43):  # a resumed run: its first step here is warm-up
        budget.step_done(step)
        assert not budget.due(validated=True)
    budget.step_done(44)
    assert budget.steps_timed == 3 and budget.step_tokens == 30
    assert budget.due(validated=False)
    budget.step_done(45)
    assert not budget.due(validated=False) and budget.due(validated=True)


def test_exhausted_counts_earlier_processes():
    budget = TimeBudget(60.0, 100.0, lambda step: 1, spent=50.0, clock=lambda: 111.0)
    assert budget.exhausted()
    assert budget.elapsed() == pytest.approx(61.0)


def _fake_clock(monkeypatch):
    """Every clock reading comes one second after the one before."""
    real = session.start_budget

    def start(*args):
        budget = real(*args)
        if budget is not None:
            ticks = itertools.count()
            budget.clock, budget.started = lambda: float(next(ticks)), 0.0
        return budget

    monkeypatch.setattr(session, "start_budget", start)


def _budgeted_recipe(tmp_path, tiny_model, **train_keys):
    """A recipe of 200 steps on 64 rows with a one-minute budget (of the fake clock's)."""
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(64))
    keys = {"max_steps": 200, "max_minutes": 1.0, **train_keys}
    return write_recipe(tmp_path / "r.yaml", tiny_model, data, train=keys)


def test_a_run_takes_the_steps_that_fit_and_its_schedule_ends_there(
    tmp_path, tiny_model, monkeypatch
):
    _fake_clock(monkeypatch)
    recipe = _budgeted_recipe(tmp_path, tiny_model, eval_every=10, warmup=0.1)
    run = train(load_recipe(recipe), out=tmp_path / "run")

    manifest = json.loads((run / "manifest.json").read_text())
    budget = manifest["time_budget"]
    assert budget["minutes"] == 1.0 and budget["recipe_steps"] == 200
    assert 5 < budget["steps"] < 60 and manifest["steps"] == budget["steps"]
    assert manifest["status"] == "completed" and (run / "final").is_dir()
    metrics = read_metrics(run)
    events = [m for m in metrics if m.get("event") == "time_budget"]
    assert events and events[-1]["steps"] == budget["steps"]
    train_rows = [m for m in metrics if m.get("split") == "train"]
    assert [m["step"] for m in train_rows] == list(range(1, budget["steps"] + 1))
    # the cosine schedule was re-planned: the last step runs near zero learning rate
    assert train_rows[-1]["lr"] < 0.1 * max(m["lr"] for m in train_rows)
    val_steps = [m["step"] for m in metrics if m.get("split") == "val"]
    assert val_steps[-1] == budget["steps"]  # the last step is validated


def test_a_spent_budget_ends_the_run_at_once(tmp_path, recipe_file, monkeypatch):
    monkeypatch.setattr(budget_module, "TIMED_STEPS", 1000)  # never estimate, only watch
    _fake_clock(monkeypatch)
    recipe = load_recipe(recipe_file, ["train.max_minutes=0.01", "train.max_steps=50"])
    run = train(recipe, out=tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"] == 1 and manifest["time_budget"]["steps"] == 1
    assert read_state(run / "checkpoints" / "step-1").planned_steps == 1


def test_a_budget_that_fits_everything_changes_nothing(tmp_path, recipe_file):
    run = train(load_recipe(recipe_file, ["train.max_minutes=600"]), out=tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"] == 6
    assert manifest["time_budget"] == {"minutes": 600, "recipe_steps": 6, "steps": 6}
    assert not [m for m in read_metrics(run) if m.get("event") == "time_budget"]


def test_a_resume_keeps_the_step_count_it_chose(tmp_path, tiny_model, monkeypatch):
    _fake_clock(monkeypatch)
    recipe = _budgeted_recipe(tmp_path, tiny_model, eval_every=5, keep_checkpoints=50)
    run = train(load_recipe(recipe), out=tmp_path / "run")
    checkpoints = sorted(
        (run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])
    )
    first = checkpoints[0]
    state = read_state(first)
    assert state.planned_steps is not None and state.elapsed_s > 0
    for later in checkpoints[1:]:  # as if the run had been killed after its first checkpoint
        shutil.rmtree(later)
    shutil.rmtree(run / "final")
    monkeypatch.setattr(budget_module, "TIMED_STEPS", 1000)  # no new estimate after resuming
    train(load_recipe(recipe), out=run, resume=True)

    cfg = load_recipe(recipe).train
    resumed = [m for m in read_metrics(run) if m.get("split") == "train" and m["step"] > state.step]
    total = state.planned_steps
    expected = learning_rate(state.step, total, warmup_steps(cfg.warmup, total), cfg.lr, "cosine")
    assert resumed[0]["lr"] == pytest.approx(expected, rel=1e-6)
    assert resumed[-1]["step"] <= total

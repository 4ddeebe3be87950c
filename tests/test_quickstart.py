"""The quickstart's budget and its table (training and evaluation replaced by fakes)."""

import json

import pytest
from conftest import run_cli

from migaki import quickstart
from migaki.models import bundled


def _fake_result() -> dict:
    tuned = {
        "loss": 0.3,
        "fact_accuracy": 0.5,
        "char_f1": 0.6,
        "stopped": 0.9,
        "fact_accuracy_ja": 0.4,
        "char_f1_ja": 0.55,
        "stopped_ja": 0.8,
        "rows_ja": 2,
        "fact_accuracy_en": 0.6,
        "char_f1_en": 0.65,
        "stopped_en": 1.0,
        "rows_en": 2,
    }
    base = {key: value / 2 for key, value in tuned.items()}
    sample = {"prompt": "電話番号は？", "reference": "0120です。", "base": "え", "tuned": "0120"}
    return {"rows": 4, "systems": {"base": base, "tuned": tuned}, "samples": [sample]}


def _fake_run(tmp_path, monkeypatch, budget) -> list:
    seen = []

    def train(recipe, out, name, budget_reserve):
        seen.append((recipe, budget_reserve))
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "manifest.json").write_text(json.dumps({"time_budget": budget}))
        return run

    monkeypatch.setattr(quickstart, "train", train)
    monkeypatch.setattr(quickstart, "evaluate", lambda run, compare_base: _fake_result())
    return seen


def test_the_budget_gives_training_its_share(tmp_path, monkeypatch, capsys):
    budget = {"minutes": 7.5, "recipe_steps": 148, "steps": 96}
    seen = _fake_run(tmp_path, monkeypatch, budget)
    code, out, _ = run_cli(capsys, "quickstart", "--minutes", "10")
    assert code == 0
    recipe, reserve = seen[0]
    assert recipe.train.max_minutes == 10 and reserve == quickstart.EVALUATION_IN_VALIDATIONS
    assert "(96 of 148 steps fit in 7.5 min)" in out
    assert "  Japanese (2) right fact" in out and "  English (2) ends" in out
    english = next(line for line in out.splitlines() if "English (2) right fact" in line)
    assert english.split()[-2:] == ["30.0%", "60.0%"]


def test_no_budget_and_an_own_training_budget(tmp_path, monkeypatch, capsys):
    seen = _fake_run(tmp_path, monkeypatch, None)
    assert run_cli(capsys, "quickstart", "--minutes", "0")[0] == 0
    assert seen[-1][0].train.max_minutes is None
    assert run_cli(capsys, "quickstart", "train.max_minutes=3")[0] == 0
    assert seen[-1][0].train.max_minutes == 3 and seen[-1][1] == 0


def test_minutes_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "quickstart", "--minutes", "soon")
    assert exit_info.value.code == 2
    assert "'soon' is not a number of minutes" in capsys.readouterr().err


def test_the_gemma_licence_is_asked_for_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIGAKI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bundled, "_terms_location", lambda model, source: "TERMS.html")
    seen = _fake_run(tmp_path, monkeypatch, None)
    code, _, err = run_cli(capsys, "quickstart")
    assert code == 2 and not seen
    assert "gemma3-270m is under the Gemma Terms of Use" in err and "TERMS.html" in err
    assert "run `migaki quickstart --accept-license`" in err
    assert run_cli(capsys, "quickstart", "--accept-license")[0] == 0
    assert seen[-1][0].model.accept_license == "gemma"
    # a base that needs no acceptance is not asked about
    assert run_cli(capsys, "quickstart", "model.base=smollm2-135m-instruct")[0] == 0

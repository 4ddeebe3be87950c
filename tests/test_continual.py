"""Continual learning: --init-from, train.replay and the forgetting guard, on the tiny model."""

import json
import logging
import random
import shutil

import pytest
import yaml
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.cli import build_parser, main
from migaki.data.replay import _draw
from migaki.testing import build_tiny_encoder
from migaki.train.tracking import read_metrics


def val_records(run_dir):
    return [m for m in read_metrics(run_dir) if m.get("split") == "val"]


def manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def weather_rows(count: int) -> list[dict]:
    """General text, unlike the support conversations the runs train on."""
    winds = ["north", "south", "east", "west"]
    return [
        {"text": f"On day {i} the wind blew from the {winds[i % 4]} and it was {i % 7} degrees."}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model):
    """A recipe on 40 conversations (32 train / 4 val / 4 test) and a general text file."""
    root = tmp_path_factory.mktemp("continual")
    data = write_jsonl(root / "qa.jsonl", qa_rows(40))
    write_jsonl(root / "general.jsonl", weather_rows(60))
    write_recipe(root / "recipe.yaml", tiny_model, data)
    return root


def earlier_run(workdir, method: str):
    """A finished 6-step run of the shared recipe with `method`, trained once per module."""
    out = workdir / f"{method}-a"
    if not out.exists():
        recipe = str(workdir / "recipe.yaml")
        assert main(["train", recipe, "--out", str(out), f"method.name={method}"]) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(workdir):
    return earlier_run(workdir, "lora")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("lora", "lora"),
        ("full", "full"),
        ("full", "lora"),
        ("prompt", "prompt"),
        ("ia3", "ia3"),
        ("adapter", "adapter"),
    ],
)
def test_init_from_starts_where_the_earlier_run_ended(workdir, first, second):
    recipe = workdir / "recipe.yaml"
    earlier = earlier_run(workdir, first)
    later = workdir / f"{first}-{second}-b"
    code = main(
        [
            "train",
            str(recipe),
            "--out",
            str(later),
            "--init-from",
            str(earlier),
            f"method.name={second}",
        ]
    )
    assert code == 0
    ended = manifest(earlier)
    assert ended["final_step"] == 6  # final/ holds the best step, here the last one
    # step 0 of the new run validates the earlier run's final/ on the same val rows
    assert abs(val_records(later)[0]["loss"] - ended["best_val_loss"]) < 1e-5
    assert val_records(later)[-1]["loss"] < val_records(later)[0]["loss"]
    init = manifest(later)["init_from"]
    assert init["run"] == str(earlier.resolve()) and init["final_step"] == 6
    assert init["carried"] == ("base model" if first == "full" else "adapter weights")
    saved_base = yaml.safe_load((later / "recipe.yaml").read_text())["model"]["base"]
    if first == "full":  # the earlier final/ is the new base: eval and export load it
        assert saved_base == str(earlier / "final")
    else:
        assert saved_base == yaml.safe_load((earlier / "recipe.yaml").read_text())["model"]["base"]


def test_a_whole_sft_model_starts_dpo_as_its_base_and_reference(workdir, tiny_model):
    pairs = [
        {
            "prompt": f"How much is product {i}?",
            "chosen": f"Product {i} costs {1000 + i} yen.",
            "rejected": "I do not know.",
        }
        for i in range(24)
    ]
    data = write_jsonl(workdir / "pairs.jsonl", pairs)
    recipe = write_recipe(workdir / "dpo.yaml", tiny_model, data, task="dpo")
    earlier, later = earlier_run(workdir, "full"), workdir / "dpo-b"
    assert main(["train", str(recipe), "--out", str(later), "--init-from", str(earlier)]) == 0
    assert yaml.safe_load((later / "recipe.yaml").read_text())["model"]["base"] == str(
        earlier / "final"
    )
    assert manifest(later)["base_model"]["path"] == str(earlier / "final")
    assert val_records(later)[0]["pref_accuracy"] == 0.0  # policy == reference at step 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_init_from_a_classifier_keeps_its_head_and_labels(tmp_path, method, capsys):
    rows = [
        {
            "sentence": f"{'great' if i % 2 else 'awful'} kettle {i}",
            "label": "pos" if i % 2 else "neg",
        }
        for i in range(60)
    ]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    encoder = build_tiny_encoder(tmp_path / "encoder")
    recipe = write_recipe(
        tmp_path / "r.yaml", encoder, data, task="classification", method={"name": method}
    )
    earlier, later = tmp_path / "a", tmp_path / "b"
    assert main(["train", str(recipe), "--out", str(earlier)]) == 0
    assert main(["train", str(recipe), "--out", str(later), "--init-from", str(earlier)]) == 0
    ended = manifest(earlier)["best_val_loss"]
    assert abs(val_records(later)[0]["loss"] - ended) < 1e-5
    capsys.readouterr()
    swapped = ["--init-from", str(earlier), "data.labels=[pos, neg]"]
    assert main(["train", str(recipe), "--out", str(tmp_path / "c"), *swapped]) == 2
    assert (
        "learnt the labels ['neg', 'pos'], this run has ['pos', 'neg']" in capsys.readouterr().err
    )


def test_resumed_guard_keeps_the_step_0_baseline(workdir, lora_run):
    run = workdir / "resumed-guard"
    common = [
        "--init-from",
        str(lora_run),
        f"train.forgetting.data={workdir / 'general.jsonl'}",
        "train.forgetting.max_rows=10",
    ]
    recipe = str(workdir / "recipe.yaml")
    assert main(["train", recipe, "--out", str(run), *common]) == 0
    resumed = ["--resume", "--force", "train.max_steps=9"]
    assert main(["train", recipe, "--out", str(run), *common, *resumed]) == 0
    records = {r["step"]: r for r in val_records(run)}
    assert sorted(records) == [0, 3, 6, 9]
    baseline = records[0]["reference_loss"]
    rise = (records[9]["reference_loss"] - baseline) / baseline
    assert abs(records[9]["forgetting"] - rise) < 1e-9


def test_continual_paths_resolve_against_the_recipe_folder(workdir, tmp_path, monkeypatch):
    from migaki.config import load_recipe

    monkeypatch.chdir(tmp_path)  # neither path exists from here
    recipe = load_recipe(
        workdir / "recipe.yaml", ["train.replay.data=general.jsonl", "train.init_from=lora-a"]
    )
    assert recipe.train.replay.data == str(workdir / "general.jsonl")
    assert recipe.train.init_from == str(workdir / "lora-a")


def test_init_from_a_run_without_final_exits_2_naming_the_path(workdir, capsys):
    unfinished = workdir / "unfinished"
    unfinished.mkdir()
    code = main(["train", str(workdir / "recipe.yaml"), "--init-from", str(unfinished)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{unfinished / 'final'}: not found" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.name=ia3", "its final/ is a lora adapter; method.name must be lora"),
        ("method.lora_rank=8", "has r 4, this recipe gives 8 (method.lora_rank)"),
        ("task=dpo", "task dpo cannot go on training its lora adapter (trained for task sft)"),
    ],
)
def test_init_from_refuses_an_adapter_it_cannot_go_on_with(
    workdir, lora_run, capsys, override, message
):
    out = workdir / f"refused-{override}"
    code = main(["train", str(workdir / "recipe.yaml"), "--init-from", str(lora_run), override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_init_from_refuses_another_base_model(workdir, lora_run, tiny_model, capsys):
    other = workdir / "other-model"
    shutil.copytree(tiny_model, other, dirs_exist_ok=True)
    code = main(
        [
            "train",
            str(workdir / "recipe.yaml"),
            "--init-from",
            str(lora_run),
            f"model.base={other}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"was trained from model.base {tiny_model}" in err
    assert f"this recipe's model.base is {other}" in err


def test_replay_mixes_its_share_into_the_training_split_only(workdir, caplog, capsys):
    run = workdir / "replay"
    general = workdir / "general.jsonl"
    with caplog.at_level(logging.INFO):
        code = main(
            [
                "train",
                str(workdir / "recipe.yaml"),
                "--out",
                str(run),
                f"train.replay.data={general}",
                "train.replay.share=0.2",
                "train.max_steps=2",
            ]
        )
    assert code == 0
    assert f"replay: 8 rows from {general} (share 0.20)" in caplog.text
    splits = {
        name: (run / "data" / f"{name}.jsonl").read_text().splitlines()
        for name in ("train", "val", "test")
    }
    replayed = [line for line in splits["train"] if "the wind blew" in line]
    assert len(splits["train"]) == 40 and len(replayed) == 8  # 8 of 40 rows: share 0.2
    assert not any("the wind blew" in line for line in splits["val"] + splits["test"])
    report = json.loads((run / "data" / "prepare_report.json").read_text())
    [step] = [s for s in report["steps"] if s["step"] == "replay"]
    assert step["added"] == 8 and step["train_rows"] == {"task": 32, "replay": 8, "total": 40}
    assert report["rows"]["train"] == 40
    assert str(general) in report["hashes"] and str(general) in manifest(run)["data"]["hashes"]

    # a changed replay file is changed training data: resume refuses it
    write_jsonl(general, weather_rows(61))
    resumed = [f"train.replay.data={general}", "train.replay.share=0.2", "train.max_steps=2"]
    code = main(["train", str(workdir / "recipe.yaml"), "--out", str(run), "--resume", *resumed])
    write_jsonl(general, weather_rows(60))
    assert code == 2 and "the data files differ" in capsys.readouterr().err


def test_replay_draws_without_replacement_then_repeats_whole_passes():
    rows = _draw(10, 4, random.Random(42))
    assert len(set(rows)) == 4 and rows == _draw(10, 4, random.Random(42))
    repeated = _draw(3, 7, random.Random(42))  # two whole passes, then one drawn row
    assert len(repeated) == 7 and sorted(repeated.count(i) for i in range(3)) == [2, 2, 3]


def test_replay_refuses_rows_of_another_kind(workdir, capsys):
    labelled = write_jsonl(workdir / "labelled.jsonl", [{"text": "ok", "label": "a"}] * 3)
    code = main(
        [
            "train",
            str(workdir / "recipe.yaml"),
            "--out",
            str(workdir / "refused-replay"),
            f"train.replay.data={labelled}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "train.replay rows must be like the training rows" in err


def test_forgetting_guard_measures_the_reference_set_like_validation(workdir, tiny_model):
    """With the validation rows as the reference set, reference_loss is the val loss."""
    rows = qa_rows(40)
    train_file = write_jsonl(workdir / "g-train.jsonl", rows[:36])
    val_file = write_jsonl(workdir / "g-val.jsonl", rows[36:])
    recipe = write_recipe(
        workdir / "g.yaml",
        tiny_model,
        train_file,
        data={"val": str(val_file), "split": {"val": 0.0, "test": 0.0}},
        train={"forgetting": {"data": str(val_file), "max_increase": 0.5}},
    )
    run = workdir / "guard-same"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    records = val_records(run)
    assert [r["step"] for r in records] == [0, 3, 6]
    assert all(abs(r["reference_loss"] - r["loss"]) < 1e-6 for r in records)
    assert records[0]["forgetting"] == 0.0
    expected = (records[-1]["loss"] - records[0]["loss"]) / records[0]["loss"]
    assert abs(records[-1]["forgetting"] - expected) < 1e-9
    summary = manifest(run)["forgetting"]
    assert summary["baseline"] == records[0]["reference_loss"] and summary["rows"] == 4


def guard_run(workdir, name, action):
    """A full fine-tune at a high learning rate: the loss on general text rises."""
    run = workdir / name
    code = main(
        [
            "train",
            str(workdir / "recipe.yaml"),
            "--out",
            str(run),
            "method.name=full",
            "train.lr=0.05",
            "train.max_steps=12",
            f"train.forgetting.data={workdir / 'general.jsonl'}",
            "train.forgetting.max_increase=0.02",
            f"train.forgetting.action={action}",
            "train.forgetting.max_rows=20",
        ]
    )
    assert code == 0
    return run


def test_forgetting_guard_warns_and_goes_on(workdir, caplog):
    with caplog.at_level(logging.WARNING):
        run = guard_run(workdir, "guard-warn", "warn")
    warnings = [m for m in read_metrics(run) if m.get("event") == "forgetting_warning"]
    assert warnings and all(w["forgetting"] > 0.02 for w in warnings)
    assert "forgetting: the loss on" in caplog.text and "above train.forgetting" in caplog.text
    assert manifest(run)["status"] == "completed" and manifest(run)["steps"] == 12
    assert all("reference_loss" in r for r in val_records(run))


def test_forgetting_guard_stops_the_run_and_still_writes_final(workdir):
    run = guard_run(workdir, "guard-stop", "stop")
    [stop] = [m for m in read_metrics(run) if m.get("event") == "forgetting_stop"]
    assert stop["forgetting"] > 0.02 and stop["reference_loss"] > stop["baseline"]
    result = manifest(run)
    assert result["status"] == "stopped_forgetting" and result["steps"] == stop["step"] < 12
    assert (run / "final" / "model.safetensors").is_file()
    assert val_records(run)[-1]["step"] == stop["step"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task=classification", "train.forgetting: it measures the language-modelling loss"),
        ("data.split.val=0", "train.forgetting: the guard measures at each validation"),
    ],
)
def test_forgetting_guard_refuses_what_it_cannot_measure(workdir, capsys, override, message):
    general = workdir / "general.jsonl"
    out = workdir / "refused-guard"
    recipe = str(workdir / "recipe.yaml")
    code = main(["train", recipe, "--out", str(out), f"train.forgetting.data={general}", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_train_help_shows_init_from(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--init-from RUN_DIR" in capsys.readouterr().out

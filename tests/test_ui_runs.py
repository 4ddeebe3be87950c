"""`migaki ui`'s reading of run directories (`ui.runs`) and its path guard (`ui.paths`), on run
folders written by hand: statuses, starting runs, runs that cannot be read, metrics.jsonl
as it grows, comparison, every refused path, and no real path in anything sent back."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from migaki.config import build_recipe
from migaki.rundir import save_recipe, this_process
from migaki.ui import runs
from migaki.ui.paths import PathRefused, Roots, inside, run_path

STARTED = "2026-12-05T09:00:00+0000"
FINISHED = "2026-12-05T09:08:32+0000"  # 512 s later


@pytest.fixture
def roots(tmp_path) -> Roots:
    (tmp_path / "runs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "faq.jsonl").write_text("{}\n")
    return Roots(tmp_path / "runs", {"data": tmp_path / "data"})


def make_run(roots: Roots, name: str, manifest=None, records=(), **train) -> Path:
    """A run folder: its recipe (real paths, as `migaki train` writes them), manifest.json
    when given, and metrics.jsonl of `records`."""
    run = roots.runs / name
    run.mkdir()
    model = roots.runs.parent / "models" / "tiny-llama"
    raw = {
        "model": {"base": str(model)},
        "data": {"train": str(roots.data["data"] / "faq.jsonl")},
        "train": train,
    }
    save_recipe(build_recipe(raw), run)
    if manifest is not None:
        (run / "manifest.json").write_text(json.dumps(manifest))
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (run / "metrics.jsonl").write_text(lines)
    return run


def completed(**fields) -> dict:
    return {
        "status": "completed",
        "started": STARTED,
        "finished": FINISHED,
        "steps": 40,
        "best_val_loss": 0.81,
        "best_step": 40,
        "peak_memory_mb": 2100.0,
        "plan": {"total_steps": 40},
        "process": this_process(),
        **fields,
    }


RECORDS = [
    {"step": 0, "split": "val", "loss": 1.5, "perplexity": 4.48, "time": 1.0},
    {"step": 20, "split": "train", "loss": 1.2, "tokens_per_s": 200.0, "time": 2.0},
    {"step": 20, "split": "val", "loss": 0.9, "perplexity": 2.46, "time": 3.0},
    {"step": 40, "split": "train", "loss": 0.8, "tokens_per_s": 210.4, "time": 4.0},
    {"step": 40, "split": "val", "loss": 0.81, "perplexity": 2.25, "epoch": 2.0, "time": 5.0},
]


# --- statuses -----------------------------------------------------------------------------


def test_a_completed_run_is_summarised_from_its_manifest_records_and_eval(roots):
    run = make_run(roots, "faq-1", completed(), RECORDS)
    tuned = {"fact_accuracy": 0.43, "char_f1": 0.67, "stopped": 1.0, "bleu": 12.0}
    tuned |= {"exact_match": 0.1, "loss": 0.8, "perplexity": 2.2, "rouge1": 0.5}
    eval_json = {"target": str(run), "systems": {"tuned": tuned, "base": {"loss": 2.0}}}
    (run / "eval.json").write_text(json.dumps(eval_json))

    summary = runs.run_summary(run)

    assert summary == {
        "name": "faq-1",
        "status": "completed",
        "base_model": "tiny-llama",
        "method": "lora",
        "task": "sft",
        "data": "faq.jsonl",
        "started": STARTED,
        "finished": FINISHED,
        "wall_s": 512.0,
        "cost": None,  # the recipe names no estimate.price_per_hour
        "step": 40,
        "total_steps": 40,
        "best_val_loss": 0.81,
        "best_step": 40,
        # the headline figures, in HEADLINE's order
        "metrics": {
            "fact_accuracy": 0.43,
            "char_f1": 0.67,
            "exact_match": 0.1,
            "loss": 0.8,
            "perplexity": 2.2,
        },
        "train_minutes": 8.5,
        "tokens_per_s": 210.4,
        "peak_memory_mb": 2100.0,
        "can_stop": False,
        "can_resume": False,
    }


def test_without_eval_json_the_figures_are_the_last_validation_records(roots):
    run = make_run(roots, "faq-1", completed(), RECORDS)
    assert runs.run_summary(run)["metrics"] == {"loss": 0.81, "perplexity": 2.25}


def test_a_running_run_whose_process_lives_is_running_and_can_stop(roots):
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - 100))
    manifest = {"status": "running", "started": started, "process": this_process()}
    records = RECORDS[:3]
    run = make_run(roots, "live", manifest, records)

    summary = runs.run_summary(run)

    assert summary["status"] == "running"
    assert summary["can_stop"] is True and summary["can_resume"] is False
    assert 99 <= summary["wall_s"] < 200  # now - started
    # best so far from the records; the step-0 baseline is no candidate
    assert (summary["best_val_loss"], summary["best_step"]) == (0.9, 20)
    assert runs.run_status(run) == "running"


def test_a_running_run_whose_process_is_gone_was_killed(roots):
    ended = subprocess.Popen(["true"])
    ended.wait()
    process = {"host": socket.gethostname(), "pid": ended.pid, "started": time.time() - 5}
    manifest = {"status": "running", "started": STARTED, "process": process}
    run = make_run(roots, "gone", manifest, RECORDS[:2])
    reused = {**manifest, "process": {**this_process(), "started": 1.0}}  # pid reused since
    other = make_run(roots, "reused", reused)

    summary = runs.run_summary(run)

    assert summary["status"] == "killed"
    assert summary["can_stop"] is False
    assert summary["can_resume"] is False  # no checkpoint to resume from
    assert summary["wall_s"] is None  # its last record's time is before its start
    assert runs.run_status(other) == "killed"


def test_an_interrupted_run_with_a_whole_checkpoint_can_resume(roots):
    manifest = {"status": "interrupted", "started": STARTED}
    run = make_run(roots, "cut", manifest, RECORDS[:2])
    (run / "checkpoints" / "step-20").mkdir(parents=True)
    assert runs.run_summary(run)["can_resume"] is False  # no trainer_state.json: not whole
    (run / "checkpoints" / "step-20" / "trainer_state.json").write_text("{}")
    assert runs.run_summary(run)["can_resume"] is True


def test_a_run_of_another_host_is_running_only_while_its_files_change(roots):
    process = {"host": "elsewhere.example", "pid": 1, "started": 1.0}
    manifest = {"status": "running", "started": STARTED, "process": process}
    run = make_run(roots, "remote", manifest, RECORDS[:2])
    assert runs.run_summary(run)["status"] == "running"

    old = time.time() - runs.STALE_S - 60
    for name in ("metrics.jsonl", "manifest.json"):
        os.utime(run / name, (old, old))
    assert runs.run_summary(run)["status"] == "unknown"
    assert runs.run_summary(run)["can_stop"] is False


def test_runs_this_server_just_launched_show_as_starting(roots):
    make_run(roots, "no-manifest-yet")
    make_run(roots, "resuming", {"status": "interrupted", "started": STARTED})
    make_run(roots, "written-elsewhere")
    launched = {"not-a-folder-yet": "starting", "no-manifest-yet": "starting"}
    launched["resuming"] = "starting"  # a resume counts until it rewrites the manifest

    found = {s["name"]: s for s in runs.list_runs(roots.runs, launched)}

    assert {name: s["status"] for name, s in found.items()} == {
        "not-a-folder-yet": "starting",
        "no-manifest-yet": "starting",
        "resuming": "starting",
        "written-elsewhere": "unknown",  # no manifest, and not ours
    }
    assert set(found["not-a-folder-yet"]) == set(runs.SUMMARY_KEYS)


def test_runs_are_listed_newest_first_and_odd_folders_are_shown_not_dropped(roots):
    make_run(roots, "older", completed(started="2026-12-01T09:00:00+0000"))
    make_run(roots, "newer", completed(started="2026-12-06T09:00:00+0000"))
    broken = roots.runs / "broken"
    broken.mkdir()
    (broken / "recipe.yaml").write_text("model: {}\ntrain: [unclosed\n")
    invalid = make_run(roots, "invalid", completed(started="2026-12-02T09:00:00+0000"))
    (invalid / "recipe.yaml").write_text("model:\n  base: x\n")  # no data section
    bad_manifest = make_run(roots, "bad-manifest")
    (bad_manifest / "manifest.json").write_text('{"status": "runn')
    (roots.runs / "not-a-run").mkdir()
    (roots.runs / ".ui").mkdir()

    found = runs.list_runs(roots.runs)

    names = [s["name"] for s in found]
    assert set(names) == {"older", "newer", "broken", "invalid", "bad-manifest"}
    assert names.index("newer") < names.index("invalid") < names.index("older")
    by_name = {s["name"]: s for s in found}
    for name in ("broken", "invalid", "bad-manifest"):
        assert by_name[name]["status"] == "unknown"
        assert by_name[name]["can_resume"] is False
    assert "recipe.yaml cannot be read" in by_name["broken"]["error"]
    assert "data" in by_name["invalid"]["error"]
    assert "manifest.json" in by_name["bad-manifest"]["error"]
    assert str(roots.runs.parent) not in json.dumps(found)


# --- metrics.jsonl ------------------------------------------------------------------------


def test_a_half_written_last_line_is_left_for_later(roots):
    run = make_run(roots, "growing", records=RECORDS[:2])
    metrics = run / "metrics.jsonl"
    whole = metrics.stat().st_size
    with open(metrics, "a") as handle:
        handle.write('{"step": 30, "split": "tra')

    assert runs.read_records(run) == RECORDS[:2]
    records, offset = runs.follow_records(run, 0)
    assert (records, offset) == (RECORDS[:2], whole)

    with open(metrics, "a") as handle:
        handle.write('in", "loss": NaN}\n{"step": 31}')  # the next line's newline still to come
    records, offset = runs.follow_records(run, offset)
    assert records == [{"step": 30, "split": "train", "loss": None}, {"step": 31}]
    assert offset == metrics.stat().st_size
    assert runs.follow_records(run, offset) == ([], offset)

    with open(metrics, "a") as handle:
        handle.write('\nnot json\n{"step": 32}\n')  # a damaged line is passed over
    records, offset = runs.follow_records(run, offset)
    assert (records, offset) == ([{"step": 32}], metrics.stat().st_size)


def test_a_rewritten_metrics_file_is_read_again_from_its_start(roots):
    run = make_run(roots, "resumed", records=RECORDS)
    _, offset = runs.follow_records(run, 0)
    (run / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")  # cut by a resume
    assert runs.follow_records(run, offset) == ([RECORDS[0]], len(json.dumps(RECORDS[0])) + 1)
    (run / "metrics.jsonl").unlink()
    assert runs.follow_records(run, 5) == ([], 0)
    assert runs.read_records(run) == []


# --- detail and comparison ----------------------------------------------------------------


def test_the_detail_lists_files_and_exports_and_holds_no_real_path(roots, tmp_path):
    checkpoint = roots.runs / "faq-1" / "checkpoints" / "step-40"
    manifest = completed(
        base_model={"name": str(tmp_path / "models" / "tiny-llama"), "path": str(tmp_path)},
        resumable=str(checkpoint),
        command=f"{tmp_path}/venv/bin/migaki train {tmp_path}/r.yaml --out {roots.runs}/faq-1",
        init_from={"run": str(roots.runs / "older"), "final_step": 4},
        error=f"{roots.runs / 'faq-1'}: something\nand {tmp_path / 'x.jsonl'} too",
    )
    run = make_run(roots, "faq-1", manifest, RECORDS)
    for relative in (
        "report.html",
        "errors.csv",
        "data/train.jsonl",
        "data/prepare_report.json",
        "checkpoints/step-40/trainer_state.json",
        "final/config.json",
        "tensorboard/events.txt",
        ".ui.json",
        "exports/gguf/README.md",
    ):
        (run / relative).parent.mkdir(parents=True, exist_ok=True)
        (run / relative).write_text("{}")
    (run / "eval.json").write_text(json.dumps({"target": str(run), "data": "test split"}))
    export = {"format": "gguf", "type": "merged", "run": str(run)}
    export["verifications"] = [{"kind": "gguf", "rows": [{"prompt": "hi", "agree": True}]}]
    (run / "exports" / "gguf" / "migaki-export.json").write_text(json.dumps(export))
    (run / "exports" / "hf").mkdir()  # an export still being written: no record yet

    detail = runs.run_detail(roots, "faq-1")

    assert detail["files"] == [
        "data/prepare_report.json",
        "errors.csv",
        "eval.json",
        "exports/gguf/README.md",
        "exports/gguf/migaki-export.json",
        "manifest.json",
        "report.html",
    ]
    assert detail["exports"] == [
        {
            "path": "exports/gguf",
            "format": "gguf",
            "type": "merged",
            "verification": export["verifications"],
        }
    ]
    assert detail["recipe"]["data"]["train"] == "data/faq.jsonl"
    assert "train: data/faq.jsonl" in detail["recipe_yaml"]
    assert detail["manifest"]["resumable"] == "runs/faq-1/checkpoints/step-40"
    assert detail["manifest"]["command"] == "migaki train r.yaml --out runs/faq-1"
    assert detail["eval"]["target"] == "runs/faq-1"
    assert detail["data_report"] == {}
    assert (detail["compare"], detail["doctor"], detail["log_tail"]) == (None, None, None)
    assert str(tmp_path) not in json.dumps(detail)


def test_the_detail_of_an_invalid_recipe_shows_its_text(roots, tmp_path):
    run = make_run(roots, "invalid", completed())
    (run / "recipe.yaml").write_text(f"model:\n  base: {tmp_path}/m\n")

    detail = runs.run_detail(roots, "invalid")

    assert detail["recipe"] is None
    assert detail["recipe_yaml"] == "model:\n  base: m\n"
    assert detail["summary"]["status"] == "unknown"
    assert str(tmp_path) not in json.dumps(detail)


def test_compare_lists_the_recipe_keys_that_differ_and_every_figure(roots):
    make_run(roots, "a", completed(), RECORDS, lr=1e-4)
    make_run(roots, "b", completed(best_val_loss=0.7), RECORDS[:3], lr=3e-4, epochs=2)

    found = runs.compare_runs(roots.runs, ["a", "b"])

    assert [s["name"] for s in found["runs"]] == ["a", "b"]
    assert found["curves"] == {"a": RECORDS, "b": RECORDS[:3]}
    assert found["recipe_diff"] == [
        {"key": "train.epochs", "values": [3, 2]},
        {"key": "train.lr", "values": [1e-4, 3e-4]},
    ]
    assert found["metrics"] == [
        {"key": "loss", "values": [0.81, 0.9]},
        {"key": "perplexity", "values": [2.25, 2.46]},
        {"key": "best_val_loss", "values": [0.81, 0.7]},
    ]
    assert str(roots.runs.parent) not in json.dumps(found)


def test_compare_takes_two_to_five_runs_each_once(roots):
    for name in "abcdef":
        make_run(roots, name, completed())
    for names in (["a"], list("abcdef")):
        with pytest.raises(ValueError, match="2 to 5 runs"):
            runs.compare_runs(roots.runs, names)
    with pytest.raises(ValueError, match="once"):
        runs.compare_runs(roots.runs, ["a", "a"])
    with pytest.raises(PathRefused):
        runs.compare_runs(roots.runs, ["a", "../a"])
    assert len(runs.compare_runs(roots.runs, list("abcde"))["runs"]) == 5


# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "..", "a..b", "../faq", "/faq", "faq/final", ".ui", "a\\b", "a\x00b", "-a"]
)
def test_run_names_that_could_leave_the_runs_folder_are_refused(roots, name):
    make_run(roots, "faq")
    with pytest.raises(PathRefused) as refused:
        run_path(roots.runs, name)
    assert str(roots.runs) not in str(refused.value)


def test_a_run_is_only_a_run_folder_directly_inside_the_runs_folder(roots, tmp_path):
    run = make_run(roots, "faq")
    assert run_path(roots.runs, "faq") == run.resolve()
    (roots.runs / "empty").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    save_recipe(build_recipe({"model": {"base": "x"}, "data": {"train": "t"}}), elsewhere)
    (roots.runs / "link").symlink_to(elsewhere)
    for name in ("empty", "link", "missing"):
        with pytest.raises(PathRefused, match="No run named"):
            run_path(roots.runs, name)
    with pytest.raises(PathRefused):
        runs.run_detail(roots, "link")
    assert [s["name"] for s in runs.list_runs(roots.runs)] == ["faq"]


@pytest.mark.parametrize(
    "relative",
    ["", " ", "/etc/passwd", "~/x", "..", "a/../../x", "a/..", "a\\b", "a\x00b", "a\nb", "."],
)
def test_relative_paths_that_could_leave_their_folder_are_refused(roots, relative):
    with pytest.raises(PathRefused) as refused:
        inside(roots.runs, relative)
    assert str(roots.runs.parent) not in str(refused.value)


def test_a_symlink_that_leads_out_of_the_folder_is_refused(roots, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (roots.data["data"] / "link.txt").symlink_to(secret)
    (roots.data["data"] / "dir").symlink_to(tmp_path)
    for relative in ("link.txt", "dir/secret.txt"):
        with pytest.raises(PathRefused, match="outside"):
            inside(roots.data["data"], relative)
    (roots.data["data"] / "near.jsonl").symlink_to(roots.data["data"] / "faq.jsonl")
    assert inside(roots.data["data"], "near.jsonl") == (roots.data["data"] / "faq.jsonl").resolve()
    assert inside(roots.runs, "new/file.txt") == roots.runs.resolve() / "new" / "file.txt"


@pytest.mark.parametrize(
    "spec", ["faq.jsonl", "data", "data/", "/data/faq.jsonl", "other/faq.jsonl", "data/../x"]
)
def test_data_files_outside_the_data_folders_are_refused(roots, spec):
    with pytest.raises(PathRefused) as refused:
        roots.data_file(spec)
    assert str(roots.runs.parent) not in str(refused.value)


def test_data_files_and_paths_are_shown_by_folder_name(roots, tmp_path):
    faq = roots.data_file("data/faq.jsonl")
    assert faq == (roots.data["data"] / "faq.jsonl").resolve()
    assert roots.shown(faq) == "data/faq.jsonl"
    assert roots.data_file(roots.shown(faq)) == faq
    assert roots.shown(roots.runs / "faq" / "eval.json") == "runs/faq/eval.json"
    assert roots.shown(roots.runs) == "runs"
    assert roots.shown(tmp_path / "models" / "tiny") == "tiny"
    nested = Roots(roots.runs, {"data": roots.data["data"], "deep": roots.data["data"] / "a"})
    assert nested.shown(roots.data["data"] / "a" / "x.csv") == "deep/x.csv"
    with pytest.raises(PathRefused, match="Unknown data folder other"):
        roots.data_file("other/faq.jsonl")


def test_cost_is_the_wall_time_at_the_recipes_price(roots):
    run = make_run(roots, "priced", completed())
    text = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(text.replace("price_per_hour: null", "price_per_hour: 3.6"))
    assert runs.run_summary(run)["cost"] == round(3.6 * 512.0 / 3600, 4)

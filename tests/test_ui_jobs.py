"""`migaki ui`'s new-run form (schema, check, data files, doctor) and its jobs: real
`migaki train` processes on the tiny model, started, stopped with SIGINT (a checkpoint, exit
130), resumed and stopped again by a server that did not start them."""

import json
import os
import shutil
import time

import psutil
import pytest
import yaml
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.errors import UserError
from migaki.ui import form
from migaki.ui.jobs import NAME, Jobs, new_name
from migaki.ui.paths import Roots

TIMEOUT = 120  # seconds; a tiny run on a busy CPU takes a few


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children inherit it


@pytest.fixture
def children():
    """Kill whatever `migaki` process a test left running (a failed assertion mid-run)."""
    yield
    for child in psutil.Process().children(recursive=True):
        try:
            if "migaki" in child.cmdline():
                child.kill()
                child.wait(10)
        except psutil.Error:
            pass


def roots_of(data_root):
    return Roots(runs=data_root.parent / "runs", data={"mydata": data_root})


@pytest.fixture
def data_root(tmp_path, tiny_model):
    """A data folder with a training file and the tiny model (a browser names a local
    model as a path inside a data folder)."""
    root = tmp_path / "mydata"
    root.mkdir()
    write_jsonl(root / "qa.jsonl", qa_rows(24))
    shutil.copytree(tiny_model, root / "model")
    return root


def form_values(tiny_model, **sections):
    values = {
        "model": {"base": "mydata/model"},
        "data": {"train": "mydata/qa.jsonl", "max_length": 64},
        "method": {"name": "lora", "lora_rank": 4},
        "train": {"max_steps": 2, "batch_size": 4, "precision": "fp32"},
    }
    for section, fields in sections.items():
        values.setdefault(section, {}).update(fields)
    return values


def test_schema_payload_describes_the_recipe_and_lists_data_files(data_root):
    (data_root / "sub").mkdir()
    (data_root / "sub" / "more.csv").write_text("prompt,completion\na,b\n")
    (data_root / "old.jsonl.gz").write_bytes(b"")
    (data_root / "notes.pdf").write_bytes(b"%PDF")
    (data_root / ".git").mkdir()
    (data_root / ".git" / "hidden.jsonl").write_text("{}\n")
    (data_root / ".draft.jsonl").write_text("{}\n")
    payload = form.schema_payload({"mydata": data_root})
    assert {"model", "data", "method", "train", "eval"} <= set(payload["sections"])
    assert payload["sections"].index("model") < payload["sections"].index("train")
    definitions = payload["schema"]["$defs"]
    assert definitions["TrainConfig"]["properties"]["lr"]["description"] == "Peak learning rate."
    assert "lora" in payload["methods"] and "sft" in payload["tasks"] and "dpo" in payload["tasks"]
    assert "smollm2-135m-instruct" in payload["models"]
    assert payload["data_files"] == [
        {"root": "mydata", "path": "old.jsonl.gz", "size": 0},
        {"root": "mydata", "path": "qa.jsonl", "size": (data_root / "qa.jsonl").stat().st_size},
        {"root": "mydata", "path": "sub/more.csv", "size": 22},
    ]
    assert payload["local_models"] == ["mydata/model"]  # its own .json files are no data
    assert payload["data_files_note"] is None
    json.dumps(payload)  # what the route sends


def test_data_files_stop_at_the_limit_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(form, "MAX_DATA_FILES", 3)
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text("x")
    payload = form.schema_payload({"d": tmp_path})
    assert [f["path"] for f in payload["data_files"]] == ["0.txt", "1.txt", "2.txt"]
    assert "first 3" in payload["data_files_note"]


def test_check_gives_the_resolved_recipe_without_real_paths(tiny_model, data_root):
    checked = form.check(form_values(tiny_model), roots_of(data_root))
    assert checked["problems"] == []
    recipe = yaml.safe_load(checked["recipe_yaml"])
    assert recipe["data"]["train"] == "mydata/qa.jsonl"
    assert recipe["train"]["lr"] == 2e-4 and recipe["method"]["lora_rank"] == 4
    assert str(data_root) not in checked["recipe_yaml"]
    built = form.recipe_from_form(form_values(tiny_model), roots_of(data_root))
    assert built.data.train == str(data_root / "qa.jsonl")


def test_check_lists_every_problem_by_its_key(tiny_model, data_root):
    values = form_values(
        tiny_model,
        train={"lr": -1, "lrr": 1},
        method={"name": "lorra", "target_modules": 5},
        data={"packing": "sometimes"},
    )
    checked = form.check(values, roots_of(data_root))
    assert checked["recipe_yaml"] is None
    by_key = {}
    for problem in checked["problems"]:
        by_key.setdefault(problem["key"], []).append(problem["message"])
    assert set(by_key) == {
        "train.lr",
        "train.lrr",
        "method.name",
        "method.target_modules",
        "data.packing",
    }
    assert by_key["train.lr"] == ["Input should be greater than 0 (got -1)"]
    assert by_key["train.lrr"] == ["unknown key 'train.lrr' (did you mean 'lr'?)"]
    assert "(did you mean 'lora'?)" in by_key["method.name"][0]


def test_check_names_the_keys_of_combination_and_task_problems(tiny_model, data_root):
    data_file = roots_of(data_root)
    values = form_values(tiny_model, train={"batch_size": 8, "grad_accum": 3})
    [problem] = form.check(values, data_file)["problems"]
    assert problem["key"] == "train.batch_size" and "grad_accum (3)" in problem["message"]
    values = form_values(tiny_model, preference={"sft_weight": 0.3}, method={"name": "head"})
    problems = form.check(values, data_file)["problems"]
    assert {p["key"] for p in problems} == {"preference.sft_weight", "method.name"}


def test_a_refused_or_missing_data_file_is_a_problem_on_its_key(tiny_model, data_root):
    data_file = roots_of(data_root)
    values = form_values(tiny_model, data={"train": "mydata/../../etc/passwd", "val": "x"})
    values["train"]["lr"] = 0
    problems = form.check(values, data_file)["problems"]
    assert {p["key"] for p in problems} == {"data.train", "data.val", "train.lr"}
    with pytest.raises(UserError, match=r"^data\.train: A path may not hold"):
        form.recipe_from_form(values, data_file)
    missing = form.check(form_values(tiny_model, data={"train": "mydata/nope.jsonl"}), data_file)
    assert missing["problems"] == [
        {"key": "data.train", "message": "no such data file mydata/nope.jsonl"}
    ]


def test_doctor_reports_plain_text(tiny_model, data_root):
    recipe = form.recipe_from_form(form_values(tiny_model), roots_of(data_root))
    found = form.run_doctor(recipe)
    assert found["ok"] is True
    assert "GO: the data is ready to train on" in found["text"]
    assert "⟦" in found["text"] and "\x1b" not in found["text"]


def test_names_and_read_only(tmp_path):
    name = new_name({"data": {"train": "/somewhere/faq set.jsonl.gz"}})
    assert NAME.fullmatch(name) and name.startswith("faq-set-")
    assert new_name({"name": "..Ölrun", "data": {}}).startswith("lrun-")
    assert new_name({}).startswith("run-")
    jobs = Jobs(tmp_path / "runs")
    for bad in ("", "../x", ".hidden", "a/b", "a..b", "x" * 201, "名前"):
        with pytest.raises(UserError, match="run name"):
            jobs.start_train("model: {}", bad)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(UserError, match="already used"):
        jobs.start_train("model: {}", "taken")
    with pytest.raises(UserError, match="not a run"):
        jobs.resume("taken")
    assert jobs.stop("taken") is False and jobs.status("taken") is None
    assert jobs.log_tail("taken") is None and jobs.launched() == {}
    watching = Jobs(tmp_path / "runs", read_only=True)
    for call in (
        lambda: watching.start_train("model: {}", "new"),
        lambda: watching.resume("taken"),
        lambda: watching.export("taken", "hf"),
        lambda: watching.stop("taken"),
    ):
        with pytest.raises(UserError, match="--read-only"):
            call()
    assert not (tmp_path / "runs" / ".ui").exists()


def test_a_started_run_trains_and_its_log_hides_the_runs_folder(tmp_path, tiny_model, children):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    train = {"max_steps": 3, "eval_every": 3}
    text = write_recipe(tmp_path / "r.yaml", tiny_model, data, train=train).read_text()
    runs = tmp_path / "runs"
    jobs = Jobs(runs)
    assert jobs.start_train(text, "tiny") == "tiny"
    assert jobs.launched() == {"tiny": "starting"} and jobs.status("tiny") == "starting"
    with pytest.raises(UserError, match="already used"):
        jobs.start_train(text, "tiny")
    wait_for(lambda: jobs.status("tiny").startswith("exited"), "the run to end")
    assert jobs.status("tiny") == "exited 0", jobs.log_tail("tiny")
    assert (runs / ".ui" / "recipes" / "tiny.yaml").read_text() == text
    manifest = json.loads((runs / "tiny" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps"] == 3
    tail = jobs.log_tail("tiny")
    assert tail.splitlines()[0] == "$ migaki train runs/.ui/recipes/tiny.yaml --out runs/tiny"
    assert tail.splitlines()[-2] == "done: runs/tiny/final"
    assert str(tmp_path) not in tail and jobs.launched() == {}
    with pytest.raises(UserError, match="export format"):
        jobs.export("tiny", "zip")
    assert jobs.export("tiny", "hf") == "exports/hf"
    wait_for(lambda: jobs.status("tiny").startswith("exited"), "the export to end")
    assert jobs.status("tiny") == "exited 0", jobs.log_tail("tiny")
    assert (runs / "tiny" / "exports" / "hf" / "README.md").is_file()
    assert "$ migaki export runs/tiny --to runs/tiny/exports/hf --format hf" in jobs.log_tail(
        "tiny", lines=1000
    )
    with pytest.raises(UserError, match="already exists"):
        jobs.export("tiny", "hf")


def test_a_run_that_fails_before_its_manifest_stays_listed_as_failed(tmp_path, children):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(8))
    (tmp_path / "empty-model").mkdir()
    text = write_recipe(tmp_path / "r.yaml", tmp_path / "empty-model", data).read_text()
    jobs = Jobs(tmp_path / "runs")
    jobs.start_train(text, "broken")
    wait_for(lambda: jobs.status("broken").startswith("exited"), "the run to fail")
    assert jobs.status("broken") == "exited 2"
    assert jobs.launched() == {"broken": "failed"}  # not gone from the list: its log says why
    assert "error:" in jobs.log_tail("broken")


def test_estimate_measures_the_recipe_as_written(tmp_path, tiny_model, data_root, monkeypatch):
    recipe = form.recipe_from_form(form_values(tiny_model), roots_of(data_root))
    seen = {}

    def estimate(path):
        seen["recipe"] = yaml.safe_load(path.read_text())
        return {"total_steps": 2}

    monkeypatch.setattr(form, "estimate", estimate)  # the real one trains a few steps
    assert form.run_estimate(recipe, tmp_path) == {"total_steps": 2}
    assert seen["recipe"] == recipe.to_dict()


def test_stop_checkpoints_and_resume_continues(tmp_path, tiny_model, children):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(32))
    train = {"max_steps": 2000, "eval_every": 100000, "save_every": 100000}
    text = write_recipe(tmp_path / "r.yaml", tiny_model, data, train=train).read_text()
    runs = tmp_path / "runs"
    run = runs / "long"
    jobs = Jobs(runs)
    jobs.start_train(text, "long")
    wait_for(lambda: train_steps(run), "the first training step")
    assert jobs.status("long") == "running" and jobs.launched() == {}
    assert jobs.stop("long") is True
    wait_for(lambda: jobs.status("long").startswith("exited"), "the run to stop")
    assert jobs.status("long") == "exited 130", jobs.log_tail("long")
    manifest = json.loads((run / "manifest.json").read_text())
    stopped_at = manifest["interrupted"]["step"]
    assert manifest["status"] == "interrupted" and 1 <= stopped_at < 2000
    assert (run / "checkpoints" / f"step-{stopped_at}").is_dir()
    assert f"interrupted (SIGINT) at step {stopped_at}" in jobs.log_tail("long")

    jobs.resume("long")
    with pytest.raises(UserError, match="still working"):
        jobs.resume("long")
    wait_for(lambda: max(train_steps(run)) > stopped_at, "the resumed run's next step")
    assert resume_events(run) == [stopped_at] and jobs.status("long") == "running"

    # a server started later (or a terminal's run) is stopped through the manifest's pid
    jobs.close()
    later = Jobs(runs)
    pid = json.loads((run / "manifest.json").read_text())["process"]["pid"]
    assert later.status("long") is None and later.stop("long") is True
    assert exit_code(pid) == 130
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert later.stop("long") is False


def train_steps(run):
    return [r["step"] for r in records(run) if r.get("split") == "train"]


def resume_events(run):
    return [r["step"] for r in records(run) if r.get("event") == "resume"]


def records(run):
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # the last may be partial


def exit_code(pid):
    """The exit status of a child this test process no longer tracks through a Popen."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not end in {TIMEOUT} s")


def wait_for(condition, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {TIMEOUT} s waiting for {what}")

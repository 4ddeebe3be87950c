"""`migaki ui`'s HTTP side on a real uvicorn server on a free loopback port: the runs and a
run's detail, metrics as server-sent events, compare, the form's checks, the playground
through serve's own routes, and every refusal (paths, token, Host, Origin, read-only)."""

import json
import os
import shutil
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from conftest import qa_rows, run_cli_process, write_jsonl, write_recipe

from migaki.errors import UserError
from migaki.rundir import update_manifest
from migaki.ui.app import UiOptions, build_state, create_app
from migaki.ui.server import check_options

TOKEN = "ui-token-0123456789abcdef"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model):
    """runs/ with two finished tiny LoRA runs, a run whose process is gone, and a symlink
    out of the folder; data/ with a training file; a secret file beside both."""
    from migaki.cli import main

    top = tmp_path_factory.mktemp("ui")
    runs, data = top / "runs", top / "data"
    data.mkdir()
    (top / "secret.txt").write_text("not for the browser")
    train = write_jsonl(data / "faq.jsonl", qa_rows(40))
    for name, steps in (("faq", 6), ("faq-lr", 4)):
        recipe = write_recipe(top / f"{name}.yaml", tiny_model, train, train={"max_steps": steps})
        assert main(["train", str(recipe), "--out", str(runs / name)]) == 0
    shutil.copytree(runs / "faq", runs / "gone")
    update_manifest(
        runs / "gone", status="running", process={"host": socket.gethostname(), "pid": 2**22 + 7}
    )
    (runs / "escape").symlink_to(top)
    (runs / "faq" / "link.json").symlink_to(top / "secret.txt")
    return top


class Running:
    """A UI server on a free loopback port in a thread of this process."""

    def __init__(self, options: UiOptions) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        options.port = self.port
        self.state = build_state(options)
        config = uvicorn.Config(
            create_app(self.state), host="127.0.0.1", port=self.port, log_level="error"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, body=None, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body or {}, timeout=120, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.state.serve.engine.stop()


@pytest.fixture(scope="module")
def ui(folders):
    running = Running(UiOptions(runs=folders / "runs", data={"data": folders / "data"}))
    yield running
    running.stop()


def test_runs_list_status_and_no_paths(ui, folders):
    runs = {run["name"]: run for run in ui.get("/api/runs").json()["runs"]}
    assert {"faq", "faq-lr", "gone"} <= set(runs)
    assert "escape" not in runs  # a link out of the folder is no run of it
    assert runs["faq"]["status"] == "completed"
    assert runs["faq"]["method"] == "lora" and runs["faq"]["step"] == 6
    assert runs["gone"]["status"] == "killed"  # "running" in its manifest, its process gone
    assert runs["gone"]["can_resume"] is True
    detail = ui.get("/api/runs/faq")
    assert detail.status_code == 200
    assert str(folders) not in detail.text  # no real path reaches the browser
    assert detail.json()["recipe"]["train"]["max_steps"] == 6


def test_events_send_every_record_then_end(ui, folders):
    lines = (folders / "runs" / "faq" / "metrics.jsonl").read_text().splitlines()
    with httpx.stream("GET", ui.url + "/api/runs/faq/events", timeout=30) as response:
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    records = [e for e in events if e.startswith("event: record")]
    assert len(records) == len(lines)
    assert events[-1].startswith("event: end")
    first = json.loads(records[0].split("data: ", 1)[1])
    assert first == json.loads(lines[0])


def test_compare_two_runs(ui):
    found = ui.get("/api/compare?run=faq&run=faq-lr").json()
    assert [run["name"] for run in found["runs"]] == ["faq", "faq-lr"]
    diff = {row["key"]: row["values"] for row in found["recipe_diff"]}
    assert diff["train.max_steps"] == [6, 4]
    assert set(found["curves"]) == {"faq", "faq-lr"}
    assert ui.get("/api/compare?run=faq").status_code == 400  # 2 to 5 runs


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/..%2F..%2Fsecret.txt",
        "/api/runs/escape",
        "/api/runs/faq/files/..%2F..%2Fsecret.txt",
        "/api/runs/faq/files/%2Fetc%2Fpasswd",
        "/api/runs/faq/files/link.json",
        "/api/runs/faq/files/final%2Fadapter_model.safetensors",
        "/api/runs/faq/files/checkpoints",
        "/api/runs/escape/files/secret.txt",
    ],
)
def test_paths_outside_are_refused(ui, path):
    response = ui.get(path)
    assert response.status_code == 404, response.text
    assert "not for the browser" not in response.text


def test_files_inside_are_shown(ui):
    response = ui.get("/api/runs/faq/files/manifest.json")
    assert response.status_code == 200 and response.json()["status"] == "completed"
    assert "sandbox" in response.headers["content-security-policy"]


def test_form_schema_and_check(ui, folders):
    schema = ui.get("/api/schema").json()
    assert {"model", "data", "method", "train"} <= set(schema["sections"])
    assert {"root": "data", "path": "faq.jsonl"}.items() <= schema["data_files"][0].items()
    bad = ui.post(
        "/api/check",
        {"recipe": {"model": {"base": "x"}, "data": {"train": "data/../../secret.txt"}}},
    ).json()
    assert "data.train" in [problem["key"] for problem in bad["problems"]]
    assert str(folders) not in json.dumps(bad)


def test_playground_streams_through_serve_routes(ui):
    names = ui.post("/api/playground/faq").json()
    assert names == {"tuned": "faq", "base": "faq:base"}
    answers = {}
    for side in ("tuned", "base"):
        body = {
            "model": names[side],
            "messages": [{"role": "user", "content": "How much is product 2?"}],
            "stream": True,
            "max_tokens": 8,
        }
        with httpx.stream("POST", ui.url + "/v1/chat/completions", json=body, timeout=60) as r:
            chunks = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert chunks[-1] == "[DONE]"
        parsed = [json.loads(chunk) for chunk in chunks[:-1]]
        answers[side] = parsed[0]["id"]
    feedback = ui.post("/v1/feedback", {"response_id": answers["tuned"], "rating": "up"})
    assert feedback.status_code == 200, feedback.text


def test_host_origin_and_read_only_refusals(ui, folders):
    assert ui.get("/api/runs", headers={"Host": "evil.example:80"}).status_code == 421
    crossed = ui.post("/api/runs/faq/stop", headers={"Origin": "http://evil.example"})
    assert crossed.status_code == 403
    site = ui.post("/api/runs/faq/stop", headers={"Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    assert ui.post("/api/runs/faq/stop").status_code == 409  # not running: nothing to stop
    reader = Running(UiOptions(runs=folders / "runs", read_only=True))
    try:
        refused = httpx.post(reader.url + "/api/runs/gone/resume", timeout=30)
        assert refused.status_code == 403
        listed = httpx.get(reader.url + "/api/runs", timeout=30).json()["runs"]
        assert not any(run["can_resume"] or run["can_stop"] for run in listed)
    finally:
        reader.stop()


def test_token_header_and_cookie(folders):
    guarded = Running(UiOptions(runs=folders / "runs", token=TOKEN))
    try:
        assert guarded.get("/api/runs").status_code == 401
        assert guarded.get("/health").status_code == 200
        assert (
            guarded.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        good = guarded.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        with httpx.Client(base_url=guarded.url, timeout=30, follow_redirects=True) as browser:
            assert browser.get(f"/?token={TOKEN}").status_code == 200  # redirected to the page
            assert browser.get("/api/runs").status_code == 200  # the cookie signs it in
    finally:
        guarded.stop()


def test_refusals_before_starting(tmp_path):
    with pytest.raises(UserError, match="token"):
        check_options(UiOptions(runs=tmp_path, host="0.0.0.0"))
    with pytest.raises(UserError, match="no such folder"):
        check_options(UiOptions(runs=tmp_path, data={"d": tmp_path / "missing"}))
    with pytest.raises(UserError, match="16 characters"):
        check_options(UiOptions(runs=tmp_path, token="short"))


def test_cli_refuses_off_loopback_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MIGAKI_UI_TOKEN"}
    result = run_cli_process("ui", "--runs", tmp_path, "--host", "0.0.0.0", env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "token" in result.stderr


def test_resume_finishes_a_killed_run(ui, folders):
    response = ui.post("/api/runs/gone/resume")
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while True:
        status = ui.get("/api/runs/gone").json()["summary"]["status"]
        if status == "completed":
            break
        assert time.monotonic() < deadline, f"the resumed run did not finish ({status})"
        time.sleep(0.5)

"""`migaki serve`: the real server (uvicorn on a free loopback port) spoken to with the
official `openai` client, and with plain HTTP for what a client library hides."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn
from conftest import qa_rows, run_cli, write_jsonl, write_recipe

from migaki.evaluate import generate_answers
from migaki.models.inference import load_for_inference
from migaki.serve.app import Limits, create_app
from migaki.serve.feedback import FeedbackStore
from migaki.serve.server import ServeOptions, build_state

KEY = "test-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
SYSTEM = "You answer questions about our products."
QUESTION = [{"role": "user", "content": "How much is product 4?"}]


@pytest.fixture(scope="module", autouse=True)
def fp32_inference():
    """Serving in fp32 here, whatever this CPU would pick: the server's head is transformers'
    `F.linear`, `migaki generate`'s a plain product, and under bf16 autocast the two round
    differently enough to flip near-tied logits of a random tiny model (seen on a CPU with
    avx512_bf16). What these tests check is which model answers, not bf16 rounding."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("migaki.precision.cpu_bf16_is_faster", lambda: False)
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """Three LoRA runs on the tiny model, in one runs folder; their adapters differ."""
    root = tmp_path_factory.mktemp("runs")
    data = write_jsonl(root.parent / "qa.jsonl", qa_rows(40))
    from migaki.cli import main

    for name, steps in (("faq", 6), ("faq-v2", 12), ("later", 3)):
        recipe = write_recipe(
            root.parent / f"{name}.yaml",
            tiny_model,
            data,
            data={"system_prompt": SYSTEM},
            train={"max_steps": steps, "lr": 2e-2},
        )
        assert main(["train", str(recipe), "--out", str(root / name)]) == 0
    return root


class Running:
    """A server on a free loopback port in a thread of this process."""

    def __init__(self, options: ServeOptions) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
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

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, timeout=60, max_retries=0)

    def post(self, path: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers |= kwargs.pop("headers", {})
        content = body if isinstance(body, bytes | str) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers=headers, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.state.engine.stop()


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("serve-log")
    running = Running(
        ServeOptions(
            targets=[str(runs / "faq"), f"second={runs / 'faq-v2'}"],
            api_keys={KEY: "tests"},
            admin_key=ADMIN,
            log_dir=log_dir,
            runs_root=runs,
            limits=Limits(max_body_bytes=20_000, max_input_tokens=200, max_tokens=64),
        )
    )
    yield running
    running.stop()


def reference_answer(run, messages, tokens: int) -> str:
    loaded = load_for_inference(run)
    [(text, _)] = generate_answers(loaded, [messages], tokens)
    return text


def test_chat_answers_as_migaki_generate_does_through_the_openai_client(server, runs):
    client = server.client()
    assert sorted(m.id for m in client.models.list().data) == ["faq", "second"]
    answer = client.chat.completions.create(model="faq", messages=QUESTION, max_tokens=12)
    expected = reference_answer(runs / "faq", QUESTION, 12)
    assert answer.choices[0].message.content.strip() == expected
    assert answer.id.startswith("chatcmpl-") and answer.model == "faq"
    assert answer.usage.completion_tokens >= 1
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_adapters_on_one_base_share_it_and_answer_each_as_its_run(server, runs):
    faq, second = server.state.pool.get("faq"), server.state.pool.get("second")
    assert faq.model is second.model and faq.adapter != second.adapter
    client = server.client()
    for name, run in (("second", "faq-v2"), ("faq", "faq")):
        answer = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=12)
        assert answer.choices[0].message.content.strip() == reference_answer(
            runs / run, QUESTION, 12
        )


def test_streaming_gives_the_same_text_in_pieces(server):
    client = server.client()
    whole = client.chat.completions.create(model="faq", messages=QUESTION, max_tokens=16)
    stream = client.chat.completions.create(
        model="faq",
        messages=QUESTION,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 1
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_limits_stops_and_seeds(server):
    client = server.client()
    text = client.completions.create(model="faq", prompt="Product 4 costs", max_tokens=5)
    assert text.choices[0].finish_reason in ("stop", "length")
    assert text.usage.completion_tokens <= 5
    long = client.chat.completions.create(model="faq", messages=QUESTION, max_tokens=40)
    content = long.choices[0].message.content
    if len(content) > 6:  # a stop string taken from the answer cuts it there
        stop = content[3:6]
        cut = client.chat.completions.create(
            model="faq", messages=QUESTION, max_tokens=40, stop=[stop]
        )
        assert cut.choices[0].message.content == content[: content.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    sampled = [
        client.chat.completions.create(
            model="faq", messages=QUESTION, max_tokens=12, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_requests_arriving_together_are_answered_in_batches(server):
    client = server.client()
    questions = [[{"role": "user", "content": f"How much is product {i}?"}] for i in range(6)]
    alone = [
        client.chat.completions.create(model="faq", messages=q, max_tokens=10)
        .choices[0]
        .message.content
        for q in questions
    ]
    batches_before, rows_before = server.state.engine.batches, server.state.engine.rows
    with ThreadPoolExecutor(6) as pool:
        together = list(
            pool.map(
                lambda q: (
                    client.chat.completions.create(model="faq", messages=q, max_tokens=10)
                    .choices[0]
                    .message.content
                ),
                questions,
            )
        )
    assert server.state.engine.rows - rows_before == 6
    assert server.state.engine.batches - batches_before < 6
    assert together == alone


def test_a_client_that_goes_away_stops_its_generation(server):
    cancelled_before = server.state.engine.cancelled
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={"model": "faq", "messages": QUESTION, "max_tokens": 64, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    deadline = time.monotonic() + 20
    while server.state.engine.cancelled == cancelled_before:
        assert time.monotonic() < deadline, "generation went on after the client left"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("path", "body", "key", "status", "code"),
    [
        ("/v1/models", None, None, 401, None),
        ("/v1/models", None, "wrong-key-0123456789abcdef", 401, None),
        ("/v1/no-such-route", None, None, 401, None),  # unknown routes are guarded too
        ("/v1/no-such-route", None, KEY, 404, None),
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": QUESTION},
            KEY,
            404,
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            {"model": "../../etc/passwd", "messages": QUESTION},
            KEY,
            404,
            "model_not_found",
        ),
        ("/v1/chat/completions", b"{not json", KEY, 400, "invalid_json"),
        ("/v1/chat/completions", {"model": "faq", "messages": []}, KEY, 422, "invalid_value"),
        (
            "/v1/chat/completions",
            {"model": "faq", "messages": QUESTION, "n": 2},
            KEY,
            422,
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "faq", "messages": QUESTION, "max_tokens": 999},
            KEY,
            400,
            "max_tokens_too_large",
        ),
        (
            "/v1/chat/completions",
            {"model": "faq", "messages": [{"role": "user", "content": "word " * 400}]},
            KEY,
            413,
            "too_many_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": "faq", "messages": [{"role": "user", "content": "x" * 30_000}]},
            KEY,
            413,
            "body_too_large",
        ),
    ],
)
def test_bad_requests_get_openai_errors_with_the_right_status(
    server, path, body, key, status, code
):
    if body is None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(server.url + path, headers=headers, timeout=30)
    else:
        response = server.post(path, body, key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    assert "etc/passwd" not in error["message"]


def test_health_needs_no_key_and_a_full_key_is_refused_with_429(server):
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    server.state.active["tests"] = server.state.limits.concurrent_per_key
    try:
        response = server.post("/v1/chat/completions", {"model": "faq", "messages": QUESTION})
    finally:
        server.state.active["tests"] = 0
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_the_request_log_masks_personal_data_and_never_holds_a_key(server):
    client = server.client()
    message = [{"role": "user", "content": "Mail me at taro.yamada@example.com about it"}]
    answer = client.chat.completions.create(model="second", messages=message, max_tokens=4)
    log = (server.state.log.directory / "requests.jsonl").read_text(encoding="utf-8")
    assert KEY not in log and "taro.yamada@example.com" not in log
    [row] = [json.loads(line) for line in log.splitlines() if answer.id in line]
    assert row["messages"][0]["content"] == "Mail me at <EMAIL> about it"
    assert row["pii"] == {"email": 1} and row["model"] == "second"
    assert row["run"].endswith("faq-v2") and row["completion_tokens"] >= 1


def test_feedback_is_stored_and_survives_a_restart(server, runs):
    client = server.client()
    answer = client.chat.completions.create(model="faq", messages=QUESTION, max_tokens=4)
    stored = server.post(
        "/v1/feedback",
        {"response_id": answer.id, "rating": "down", "correction": "Product 4 costs 1004 yen."},
    )
    assert stored.status_code == 200, stored.text
    unknown = server.post("/v1/feedback", {"response_id": "chatcmpl-nope", "rating": "up"})
    assert unknown.status_code == 404
    empty = server.post("/v1/feedback", {"response_id": answer.id})
    assert empty.status_code == 400
    log_dir = server.state.log.directory
    assert [(f.response_id, f.rating) for f in FeedbackStore(log_dir).all()][-1] == (
        answer.id,
        "down",
    )
    # a second server on the same folder knows the first one's answers and adds to its store
    again = Running(ServeOptions(targets=[str(runs / "faq")], api_keys={KEY: "t"}, log_dir=log_dir))
    try:
        assert again.post("/v1/feedback", {"response_id": answer.id, "rating": "up"}).is_success
    finally:
        again.stop()
    assert [f.rating for f in FeedbackStore(log_dir).all() if f.response_id == answer.id] == [
        "down",
        "up",
    ]


def test_admin_loads_and_unloads_adapters_by_run_name_only(server, runs, tmp_path):
    admin = {"X-Admin-Key": ADMIN}
    refused = server.post("/v1/admin/adapters", {"run": "later"}, headers={"X-Admin-Key": "no"})
    assert refused.status_code == 401
    for bad, status in (("../faq", 400), (str(runs / "faq"), 400), ("..", 400), ("none", 404)):
        response = server.post("/v1/admin/adapters", {"run": bad}, headers=admin)
        assert response.status_code == status, (bad, response.text)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (runs / "link").symlink_to(outside)
    assert server.post("/v1/admin/adapters", {"run": "link"}, headers=admin).status_code == 404
    loaded = server.post("/v1/admin/adapters", {"run": "later"}, headers=admin)
    assert loaded.status_code == 200, loaded.text
    client = server.client()
    assert "later" in [m.id for m in client.models.list().data]
    assert server.state.pool.get("later").model is server.state.pool.get("faq").model
    client.chat.completions.create(model="later", messages=QUESTION, max_tokens=3)
    gone = httpx.delete(
        f"{server.url}/v1/admin/adapters/later",
        headers={"Authorization": f"Bearer {KEY}", **admin},
        timeout=30,
    )
    assert gone.status_code == 200
    assert "later" not in [m.id for m in client.models.list().data]


def test_serving_beyond_loopback_needs_a_key(runs, capsys):
    code, _, err = run_cli(capsys, "serve", runs / "faq", "--host", "0.0.0.0")
    assert code == 2 and "needs an API key" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "serve", runs / "faq", "--api-key", "short")
    assert code == 2 and "16 characters" in err
    code, _, err = run_cli(capsys, "serve", runs.parent / "missing-run")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_the_command_serves_in_a_fresh_process_and_ends_on_ctrl_c(runs, tmp_path):
    import signal
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migaki",
            "serve",
            f"faq={runs / 'faq'}",
            "--port",
            str(port),
            "--log-dir",
            str(tmp_path / "log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        answer = client.chat.completions.create(model="faq", messages=QUESTION, max_tokens=4)
        assert answer.choices[0].message.content is not None
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode in (0, 130), err
    assert f"serving faq on http://127.0.0.1:{port}/v1" in out
    assert (tmp_path / "log" / "requests.jsonl").read_text().count("\n") == 1


def test_the_last_adapter_of_a_base_unloads_and_loads_again(runs):
    from migaki.serve.models import ModelPool

    pool = ModelPool()
    first = pool.add(str(runs / "later"), "a")
    pool.remove("a")
    assert pool.names() == [] and not pool._bases
    again = pool.add(str(runs / "later"), "a")
    assert again.model is not first.model and again.adapter == "a"


def test_a_port_in_use_is_refused_before_anything_loads(runs, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = run_cli(capsys, "serve", runs / "faq", "--port", port, "--no-log")
    assert code == 2 and f"--port {port}: cannot listen" in err
    assert len(err.strip().splitlines()) == 1

"""`migaki ui` in a real browser: headless Chromium (Debian's, driven by Playwright) against a
UI server on a free loopback port. The runs list, a run started from the form whose curve
gains points while the test watches and which Stop ends with a checkpoint, the playground
streaming both answers, and a refused path."""

import shutil
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
import uvicorn
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.testing import build_tiny_model
from migaki.ui.app import UiOptions, build_state, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A UI over runs/ (one finished tiny run) and data/ (a training file and the tiny model,
    which the form names as data/tiny as it would name any local model)."""
    from migaki.cli import main

    top = tmp_path_factory.mktemp("browser")
    runs, data = top / "runs", top / "data"
    data.mkdir()
    model = build_tiny_model(data / "tiny")
    train = write_jsonl(data / "faq.jsonl", qa_rows(40))
    recipe = write_recipe(top / "faq.yaml", model, train)
    assert main(["train", str(recipe), "--out", str(runs / "faq")]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = build_state(UiOptions(runs=runs, data={"data": data}, port=port))
    uv = uvicorn.Server(uvicorn.Config(create_app(state), port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "the UI did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", runs
    uv.should_exit = True
    thread.join(timeout=15)
    state.serve.engine.stop()
    for child in psutil.Process().children(recursive=True):  # a run a failed test left going
        try:
            if "migaki" in " ".join(child.cmdline()):
                child.kill()
        except psutil.Error:  # ended already (a zombie until reaped)
            pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    opened = browser.new_page(viewport={"width": 1280, "height": 900})
    opened.set_default_timeout(WAIT_MS)
    yield opened
    opened.close()


def test_runs_list_shows_the_run(server, page, tmp_path):
    url, _ = server
    page.goto(url + "/#/")
    row = page.locator("tr", has_text="faq").first
    row.wait_for()
    assert "completed" in row.inner_text().lower()
    missing = page.evaluate("async () => (await import('/static/i18n.js')).missingKeys()")
    assert missing == {"en": [], "ja": []}  # every label in both languages
    shot = tmp_path / "runs.png"
    page.screenshot(path=str(shot))
    assert _not_blank(shot)


def test_form_starts_a_run_whose_curve_grows_then_stop(server, page):
    url, runs = server
    page.goto(url + "/#/new")
    page.locator("form#new-run").wait_for()
    page.fill('[name="model.base"]', "data/tiny")
    page.select_option('[name="data.train"]', "data/faq.jsonl")
    page.fill('[name="data.max_length"]', "64")
    page.fill('[name="train.max_steps"]', "5000")
    page.fill('[name="train.eval_every"]', "2500")
    page.fill('[name="train.batch_size"]', "2")
    page.fill('[name="train.lr"]', "0.001")
    _choose(page, "train.precision", "fp32")
    _choose(page, "method.name", "lora")
    page.click("button#start-run")
    page.wait_for_url("**/#/run/**")
    name = page.url.rsplit("/", 1)[1]
    chart = page.locator(".chart[data-points]").first
    page.wait_for_function(
        "el => Number(el.dataset.points) >= 3", arg=chart.element_handle(), timeout=WAIT_MS * 2
    )
    seen = int(chart.get_attribute("data-points"))
    page.wait_for_function(
        f"el => Number(el.dataset.points) > {seen}", arg=chart.element_handle()
    )  # it grows while we watch, fed by the server's events
    page.click("button#stop-run")
    page.locator(".status", has_text="interrupted").first.wait_for(timeout=WAIT_MS * 2)
    manifest = (runs / name / "manifest.json").read_text()
    assert '"interrupted"' in manifest and "resumable" in manifest


def test_playground_streams_base_and_tuned(server, page):
    url, _ = server
    page.goto(url + "/#/play/faq")
    page.locator("textarea#prompt").wait_for()
    page.fill("textarea#prompt", "How much is product 2?")
    page.click("button#send")
    for side in ("tuned", "base"):
        answer = page.locator(f'.answer[data-side="{side}"][data-done="1"]')
        answer.wait_for()
    assert page.locator('.answer[data-side="tuned"]').inner_text().strip()


def test_a_path_outside_is_refused_in_the_browser(server, page):
    url, _ = server
    page.goto(url + "/#/")
    status = page.evaluate(
        "async () => (await fetch('/api/runs/faq/files/..%2F..%2Ffaq.yaml')).status"
    )
    assert status == 404
    response = page.goto(url + "/static/..%2F..%2F..%2Fpyproject.toml")
    assert response.status == 404


def _choose(page, name: str, value: str) -> None:
    field = page.locator(f'[name="{name}"]')
    if field.evaluate("el => el.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def _not_blank(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("L").getextrema()
    return colours[1] - colours[0] > 50

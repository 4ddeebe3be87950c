"""Screenshots of every page of `migaki ui`, for a person to look at: the runs list, a run,
two runs compared, the new-run form, and the playground after one answer, in English and
Japanese. Starts `migaki ui --read-only` on a free loopback port over a runs folder, drives
Debian's Chromium with Playwright, writes PNGs, stops the server.

    .venv/bin/python benchmarks/ui_screenshots.py runs --out /tmp/ui-shots [--data DIR]
    .venv/bin/python benchmarks/ui_screenshots.py runs --run faq --compare faq faq-v2 --play

Not a test: nothing is asserted; it prints the files it wrote."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(runs: Path, data: list[str], port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "migaki", "ui", "--runs", str(runs), "--port", str(port)]
    command.append("--read-only")
    for folder in data:
        command += ["--data", folder]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the UI did not start in 120 s")


def shoot(page, url: str, path: Path, ready: str) -> None:
    page.goto(url)
    page.locator(ready).first.wait_for(timeout=120_000)
    page.wait_for_timeout(1500)  # charts draw after their data arrives
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("ui-shots"))
    parser.add_argument("--data", action="append", default=[])
    parser.add_argument("--run", help="the run to show (default: the newest)")
    parser.add_argument("--compare", nargs="+", help="runs to compare (default: the newest two)")
    parser.add_argument("--play", action="store_true", help="also ask the playground once")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_ui(args.runs, args.data, port)
    url = f"http://127.0.0.1:{port}"
    try:
        names = [run["name"] for run in httpx.get(url + "/api/runs", timeout=60).json()["runs"]]
        run = args.run or names[0]
        compared = args.compare or names[:2]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            for lang in ("en", "ja"):
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                page.goto(url + "/")
                page.evaluate(f"localStorage.setItem('migaki.lang', '{lang}')")
                page.reload()  # the language is read as the page loads
                shoot(page, url + "/#/", args.out / f"runs-{lang}.png", "#runs-table")
                shoot(page, f"{url}/#/run/{run}", args.out / f"run-{lang}.png", ".chart")
                if len(compared) >= 2:
                    query = "&".join(f"run={name}" for name in compared)
                    shoot(
                        page,
                        f"{url}/#/compare?{query}",
                        args.out / f"compare-{lang}.png",
                        "#recipe-diff",
                    )
                shoot(page, url + "/#/new", args.out / f"new-{lang}.png", "form#new-run")
                page.close()
            if args.play:
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                page.goto(f"{url}/#/play/{run}")
                page.fill("textarea#prompt", "保証期間はどのくらいですか？")
                page.click("button#send")
                for side in ("tuned", "base"):
                    done = f'.answer[data-side="{side}"][data-done="1"]'
                    page.locator(done).first.wait_for(timeout=300_000)
                page.screenshot(path=str(args.out / "play.png"), full_page=True)
                print(f"wrote {args.out / 'play.png'}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

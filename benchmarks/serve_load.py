"""Load on an OpenAI-compatible server, side by side in one run: `migaki serve` against
`transformers serve` (the Hugging Face CLI's server) on the same model.

    python benchmarks/serve_load.py RUN_DIR [--clients 8] [--seconds 30] [--max-tokens 64]

The run is exported once (`migaki export --format hf`, merged) so that both servers can load
the same weights; migaki serves the export and the run itself (base + adapter, as a team
serving several adapters would). For each server: a fresh process on a free loopback port,
one warm-up request, then `--clients` threads asking the run's test questions in turn through
the official `openai` client for `--seconds`: requests answered, errors, p50/p99 latency and
output tokens per second (completion tokens reported by the server, over the wall time)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai

from migaki.data import read_records
from migaki.data.formats import convert_records
from migaki.export import export
from migaki.rundir import load_run_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--export", help="an hf export of the run (default: made in a temp dir)")
    parser.add_argument("--only", choices=["migaki-run", "migaki-export", "transformers"])
    args = parser.parse_args()

    recipe = load_run_recipe(args.run)
    examples, _, _ = convert_records(read_records(f"{args.run}/data/test.jsonl"), "auto")
    questions = [e.prompt_messages for e in examples]
    if recipe.data.system_prompt:  # transformers serve knows nothing of training's prompt
        system = {"role": "system", "content": recipe.data.system_prompt}
        questions = [q if q[0]["role"] == "system" else [system, *q] for q in questions]
    exported = Path(args.export or Path(tempfile.mkdtemp(prefix="serve-load-")) / "hf")
    if not (exported / "config.json").is_file():
        export(args.run, exported, verify=False, force=True)
    print(
        f"{len(questions)} questions, {args.clients} clients, {args.seconds:.0f} s each, "
        f"max_tokens {args.max_tokens}, {os.cpu_count()} CPUs"
    )
    servers = {
        "migaki-run": (["-m", "migaki", "serve", f"m={args.run}", "--no-log"], "m"),
        "migaki-export": (["-m", "migaki", "serve", f"m={exported}", "--no-log"], "m"),
        "transformers": (["-m", "transformers.cli.transformers", "serve", str(exported)], None),
    }
    results = {}
    for name, (command, model) in servers.items():
        if args.only and name != args.only:
            continue
        results[name] = _measure(command, model or str(exported), questions, args)
    _print(results)


def _measure(command: list[str], model: str, questions, args) -> dict:
    port = _free_port()
    if "transformers" in command[1]:
        command = [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    else:
        command = [*command, "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        started = time.monotonic()
        _wait_healthy(process, port)
        load_s = time.monotonic() - started
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=300, max_retries=0
        )
        _ask(client, model, questions[0], args.max_tokens)  # warm-up, not counted
        figures = _load(client, model, questions, args)
        figures["load_s"] = load_s
        return figures
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _load(client, model: str, questions, args) -> dict:
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def worker(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                used = _ask(client, model, questions[i % len(questions)], args.max_tokens)
            except Exception as exc:  # every failure counts, whatever its kind
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            finally:
                i += args.clients
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens[0] += used

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50": _percentile(latencies, 50),
        "p99": _percentile(latencies, 99),
        "tokens_per_s": tokens[0] / wall,
        "wall": wall,
    }


def _ask(client, model: str, messages, max_tokens: int) -> int:
    answer = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0
    )
    return answer.usage.completion_tokens


def _percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(process: subprocess.Popen, port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


def _print(results: dict) -> None:
    print("| server | load s | requests | errors | p50 s | p99 s | output tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['load_s']:.1f} | {r['requests']} | {r['errors']} | {r['p50']:.2f} "
            f"| {r['p99']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    for name, r in results.items():
        if r["first_error"]:
            print(f"{name} first error: {r['first_error']}")
    reference = results.get("transformers")
    if reference and reference["tokens_per_s"]:
        for name, r in results.items():
            if name != "transformers":
                ratio = r["tokens_per_s"] / reference["tokens_per_s"]
                print(f"{name}: {ratio:.2f}x the output tokens/s of transformers serve")


if __name__ == "__main__":
    main()

"""The whole loop on a run, as a team would go through it: serve it, ask the run's test
questions through the OpenAI client, correct a few wrong answers through /v1/feedback,
export the corrections as SFT rows, train again from the run (`--init-from`, the run's own
training rows replayed beside the corrections), serve the new run and ask again.

    python benchmarks/feedback_loop.py RUN_DIR [--corrections 6] [--out DIR]

Prints, before and after: right facts on the corrected questions and on all the others."""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import openai
import uvicorn
import yaml

from migaki.cli import main as migaki
from migaki.data import read_records
from migaki.data.formats import convert_records
from migaki.evaluate.answers import states_facts
from migaki.serve.app import create_app
from migaki.serve.server import ServeOptions, build_state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--corrections", type=int, default=6)
    parser.add_argument("--out", help="folder for logs, rows and the new run (default: temp)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="feedback-loop-"))
    run = Path(args.run).resolve()
    examples, _, _ = convert_records(read_records(run / "data" / "test.jsonl"), "auto")

    started = time.perf_counter()
    before = _ask_all(run, examples, out / "log", correct=args.corrections)
    corrected = {i for i, (_, right, fixed) in enumerate(before) if fixed}
    print(f"asked {len(examples)} questions, corrected {len(corrected)} wrong answers")

    rows = out / "corrections.jsonl"
    assert (
        migaki(["feedback", "export", str(out / "log"), "-o", str(rows), "--as", "sft", "--force"])
        == 0
    )
    recipe = _retrain_recipe(run, rows, out / "retrain.yaml")
    assert migaki(["train", str(recipe), "--out", str(out / "run-2"), "--init-from", str(run)]) == 0
    after = _ask_all(out / "run-2", examples, out / "log-2", correct=0)

    def share(answers, keep) -> str:
        chosen = [right for i, (_, right, _) in enumerate(answers) if keep(i)]
        return f"{sum(chosen)}/{len(chosen)}"

    print("| questions | right before | right after |")
    print("| --- | --- | --- |")
    print(
        f"| corrected | {share(before, corrected.__contains__)} | "
        f"{share(after, corrected.__contains__)} |"
    )
    others = lambda i: i not in corrected  # noqa: E731
    print(f"| the others | {share(before, others)} | {share(after, others)} |")
    for i in sorted(corrected):
        print(
            f"Q: {examples[i].prompt_messages[-1]['content']}\n  before: {before[i][0]}\n"
            f"  after:  {after[i][0]}"
        )
    print(f"whole loop {time.perf_counter() - started:.0f} s; files in {out}")


def _ask_all(run: Path, examples, log_dir: Path, correct: int) -> list[tuple[str, bool, bool]]:
    """(answer, states the facts, corrected) per example, through a live server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = build_state(ServeOptions(targets=[f"faq={run}"], port=port, log_dir=log_dir))
    server = uvicorn.Server(uvicorn.Config(create_app(state), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=600)
    results = []
    try:
        for example in examples:
            answer = client.chat.completions.create(
                model="faq", messages=example.prompt_messages, max_tokens=64
            )
            text = answer.choices[0].message.content
            right = states_facts(text, example.meta.get("facts") or [])
            fix = not right and correct > 0
            if fix:
                correct -= 1
                client.post(
                    "/feedback",
                    cast_to=object,
                    body={
                        "response_id": answer.id,
                        "rating": "down",
                        "correction": example.reference,
                    },
                )
            results.append((text, right, fix))
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        state.engine.stop()
    return results


def _retrain_recipe(run: Path, rows: Path, path: Path) -> Path:
    """The run's recipe on the corrections, nine of its own training rows replayed for each
    correction so the rest is not forgotten (half and half, 4 epochs at lr 1e-3, lost more
    than half of the other right answers), a short schedule at a quarter of the quickstart's
    lr, no held-out split (the test is the run's)."""
    recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    recipe["data"] |= {
        "train": str(rows),
        "val": None,
        "test": None,
        "split": {"val": 0.0, "test": 0.0},
    }
    recipe["train"] |= {
        "epochs": 3,
        "max_steps": None,
        "max_minutes": None,
        "eval_every": 1000,
        "lr": 5.0e-4,
        "replay": {"data": str(run / "data" / "train.jsonl"), "share": 0.9},
    }
    recipe["train"].pop("init_from", None)
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


if __name__ == "__main__":
    main()

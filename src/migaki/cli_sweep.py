"""`migaki sweep RECIPE --trials N`: parse, then call `migaki.sweep` (filled in by its owner)."""

from __future__ import annotations

from migaki.cli_parsing import add_command

EXAMPLE = "migaki sweep recipe.yaml --trials 20 --storage sqlite:///runs/sweep.db"


def add_sweep_command(commands) -> None:
    """Register `migaki sweep` on the top-level subparsers."""
    sweep = add_command(
        commands,
        "sweep",
        "Hyper-parameter search (Optuna TPE) over the recipe's `sweep:` section; every trial "
        "is a run directory.",
        EXAMPLE,
    )
    sweep.add_argument("recipe", metavar="RECIPE", help="recipe YAML file with a sweep: section")

"""`migaki compare RECIPE_OR_RUN`: parse, then call `migaki.evaluate.compare`."""

from __future__ import annotations

from migaki.cli_parsing import add_command

EXAMPLE = "migaki compare runs/faq\n  migaki compare runs/faq --systems base few_shot tuned --k 4"


def add_compare_command(commands) -> None:
    """Register `migaki compare` on the top-level subparsers."""
    compare = add_command(
        commands,
        "compare",
        "Base model zero-shot, few-shot prompting, RAG, the fine-tuned run and the run with "
        "RAG on the same test rows, side by side, with a recommendation.",
        EXAMPLE,
    )
    compare.add_argument("target", metavar="RECIPE_OR_RUN", help="run directory or recipe")

"""`migaki compare RECIPE_OR_RUN`: its arguments; `commands.compare` runs it."""

from __future__ import annotations

from migaki.cli_parsing import add_command
from migaki.config import COMPARE_SYSTEMS

EXAMPLE = (
    "migaki compare runs/faq\n"
    "  migaki compare runs/faq --systems base few_shot tuned --k 8\n"
    "  migaki compare recipe.yaml compare.documents=[manuals/]   # before training"
)


def add_compare_command(commands) -> None:
    """Register `migaki compare` on the top-level subparsers."""
    compare = add_command(
        commands,
        "compare",
        "Was fine-tuning the right tool? The base model zero-shot, few-shot prompting, RAG, "
        "the fine-tuned run and the run with RAG on the same test rows, side by side (the "
        "task's metrics, seconds and prompt tokens per call, training cost), then a "
        "recommendation that follows from the numbers. A run writes compare.json and "
        "report.html; a recipe compares the untrained systems.",
        EXAMPLE,
    )
    compare.add_argument("target", metavar="RECIPE_OR_RUN", help="run directory or recipe YAML")
    compare.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of a recipe"
    )
    compare.add_argument("--data", metavar="FILE", help="test rows (default: the test split)")
    compare.add_argument(
        "--systems",
        nargs="+",
        choices=COMPARE_SYSTEMS,
        metavar="SYSTEM",
        help=f"systems to compare (default compare.systems: {' '.join(COMPARE_SYSTEMS)})",
    )
    compare.add_argument(
        "--k", type=int, metavar="K", help="few-shot examples and passages (compare.k)"
    )
    compare.add_argument("--limit", type=int, metavar="N", help="the first N test rows only")
    compare.add_argument("--max-new-tokens", type=int, metavar="N", help="longest answer")
    compare.add_argument(
        "--metric",
        metavar="NAME",
        help="figure the recommendation weighs (default: fact_accuracy, choice_accuracy or "
        "char_f1, the first the rows have)",
    )
    compare.set_defaults(handler="compare")

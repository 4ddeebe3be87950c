"""Pieces every `migaki` command parser shares: a summary, an example and -v."""

from __future__ import annotations

import argparse


def add_command(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose --help shows its summary and an example."""
    sub = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    verbose_flag(sub)
    return sub


def add_command_group(commands, name: str, summary: str, description: str):
    """A command whose actions follow it (`migaki data validate`): returns the subparsers to
    add the actions to with `add_command`."""
    group = commands.add_parser(name, help=summary, description=description)
    return group.add_subparsers(title="actions", metavar="ACTION")


def verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings")

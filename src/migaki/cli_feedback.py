"""`migaki feedback export`: parse, call `migaki.monitor.feedback`, print what it did."""

from __future__ import annotations

import argparse

from migaki.cli_parsing import add_command, add_command_group

EXAMPLE = (
    "migaki feedback export logs/ -o corrections.jsonl --as sft\n"
    "  migaki feedback export logs/ -o pairs.jsonl --as dpo --force"
)
SHOWN_IDS = 10  # response ids listed per reason; the rest are counted


def add_feedback_command(commands) -> None:
    """Register `migaki feedback ...` on the top-level subparsers."""
    actions = add_command_group(
        commands,
        "feedback",
        "Turn the feedback `migaki serve` collected into training rows.",
        "Feedback on served answers: export.",
    )
    export = add_command(
        actions,
        "export",
        "Write the ratings and corrections of a serve log folder as training rows: sft (the "
        "corrections as answers), dpo (each correction chosen over the logged answer) or kto "
        "(answers rated up or down, corrections as desirable). Each row keeps its response_id; "
        "the file passes `migaki data validate`.",
        EXAMPLE,
    )
    export.add_argument("log_dir", metavar="LOG_DIR", help="the --log-dir of migaki serve")
    export.add_argument("-o", "--out", required=True, metavar="FILE", help="jsonl file to write")
    export.add_argument(
        "--as",
        dest="kind",
        required=True,
        choices=["sft", "dpo", "kto"],
        help="the rows to write: sft, dpo or kto",
    )
    export.add_argument("--force", action="store_true", help="replace an existing FILE")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    # Loaded only when the command runs: building the parser (`migaki --help`) needs none of
    # it, nor the serve log readers and sqlite3 it brings.
    from migaki.monitor import feedback

    result = feedback.export_feedback(args.log_dir, args.out, args.kind, force=args.force)
    older = result.older_entries
    print(
        f"read {result.entries} feedback entries: {result.responses} logged responses"
        + (f" ({older} older entries: the latest rating and correction kept)" if older else "")
    )
    if result.unknown:
        entries = sum(result.unknown.values())
        print(
            f"skipped {entries} entries on {len(result.unknown)} response ids not in the log: "
            + _ids(list(result.unknown))
        )
    for reason, ids in result.unused.items():
        print(f"no {result.kind} row from {len(ids)} responses: {reason}: {_ids(ids)}")
    if result.rejected:
        print(f"left out {len(result.rejected)} rows the data validation refused:")
    for response_id, why in result.rejected:
        print(f"  {response_id}: {why}")
    print(f"wrote {result.rows} {result.kind} rows to {result.out}")


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" … {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")

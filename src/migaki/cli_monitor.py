"""`migaki monitor RUN --log LOG_DIR`: parse, call `migaki.monitor`, write the report, print
the figures. Exit status 3 when a figure is flagged, so a scheduled job can act on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from migaki.cli_parsing import add_command
from migaki.errors import UserError

EXAMPLE = (
    "migaki monitor runs/faq --log logs/\n"
    "  migaki monitor runs/faq --log logs/ -o drift.html --json drift.json; "
    "[ $? -eq 3 ] && notify-team"
)
FLAGGED = 3  # exit status when any figure is flagged (2 stays a user error)


def add_monitor_command(commands) -> None:
    """Register `migaki monitor` on the top-level subparsers."""
    monitor = add_command(
        commands,
        "monitor",
        "Compare the requests `migaki serve` logged for a run with the run's training data: "
        "input lengths, languages, rare tokens, personal data, embedding drift, and the "
        "requests farthest from anything trained on. Writes an HTML report (and JSON); exit "
        f"status {FLAGGED} when a figure passes its threshold, 0 otherwise, 2 on bad input.",
        EXAMPLE,
    )
    monitor.add_argument("run", metavar="RUN", help="run directory the server served")
    monitor.add_argument(
        "--log", required=True, metavar="LOG_DIR", help="the --log-dir of migaki serve"
    )
    monitor.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="HTML report to write (default LOG_DIR/monitor-RUNNAME.html, beside the log)",
    )
    monitor.add_argument("--json", dest="json_path", metavar="FILE", help="also write the figures")
    monitor.add_argument(
        "--encoder",
        default="minilm-l6",
        metavar="MODEL",
        help="sentence encoder for the embedding figures: a bundled alias or a BERT-like "
        "folder (default minilm-l6, trained on English: prefer a multilingual one for "
        "Japanese traffic)",
    )
    monitor.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    # Loaded only when the command runs: the figures need torch, transformers and the
    # encoder, which `migaki --help` and argument errors must not wait for.
    from migaki.monitor import drift, report

    figures = drift.monitor_run(args.run, args.log, encoder=args.encoder)
    out = Path(args.out or Path(args.log) / f"monitor-{Path(figures['run']).name}.html")
    _write(out, report.render_monitor_report(figures))
    written = [str(out)]
    if args.json_path:
        _write(Path(args.json_path), json.dumps(figures, ensure_ascii=False, indent=1))
        written.append(args.json_path)
    _print_figures(figures)
    print(f"wrote {' and '.join(written)}")
    return FLAGGED if figures["flagged"] else 0


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the report ({exc.strerror})") from None


def _print_figures(report: dict) -> None:
    others = sum(report["left_out"]["other models"].values())
    print(
        f"{report['requests']} requests of {report['run']} against {report['training_rows']} "
        f"training rows" + (f" ({others} requests of other models left out)" if others else "")
    )
    width = max(len(figure["title"]) for figure in report["figures"].values())
    print(f"  {'figure':<{width}}  {'value':>8}  {'threshold':>9}  {'p':>6}")
    for figure in report["figures"].values():
        p_value = "—" if figure["p_value"] is None else f"{figure['p_value']:.3f}"
        mark = "  << flagged" if figure["flagged"] else ""
        print(
            f"  {figure['title']:<{width}}  {figure['value']:>8.4f}  "
            f"{figure['threshold']:>9.4g}  {p_value:>6}{mark}"
        )
    if report["farthest"]:
        first = report["farthest"][0]
        print(
            f"farthest request: {report['log']}:{first['line']} (similarity "
            f"{first['similarity']:.3f}): {first['question'][:80]}"
        )

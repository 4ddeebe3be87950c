"""Render the data report dict that `migaki data report` builds as one self-contained HTML page.

Everything the page needs is inside it: styles inline, plots as base64 PNG data URIs, no
scripts, web fonts or links to the network, so the file can be mailed or opened offline.
Every string that comes from the data is escaped, because rows routinely hold markup such as
`<script>`. Sections whose key is missing or None are left out.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 200  # longer texts are cut with an ellipsis for display
MAX_EXAMPLES = 20  # error and personal-data examples shown
MAX_CLUSTERS = 20
MAX_STEP_EXAMPLES = 10
MAX_BARS = 30  # bars in one chart; the table beside it lists every class
MAX_TABLE_ROWS = 100
MAX_LINES_SHOWN = 10  # line numbers listed per duplicate cluster

# Font files with Japanese glyphs, by name, for a font list cached before they were installed.
CJK_FILE_HINTS = ("cjk", "notosansjp", "sourcehansans", "ipaex", "ipag", "takao", "vl-gothic")
# Families with Japanese glyphs, best first; matched as a prefix of installed font names.
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "Noto Sans CJK",
    "Source Han Sans",
    "IPAexGothic",
    "IPAGothic",
    "IPAPGothic",
    "TakaoGothic",
    "VL Gothic",
    "Hiragino Sans",
    "Yu Gothic",
    "Meiryo",
    "MS Gothic",
    "WenQuanYi",
    "Droid Sans Fallback",
)
PERCENTILE_ORDER = ("p50", "p90", "p95", "p99", "max")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans CJK JP",
"Yu Gothic",Meiryo,sans-serif;margin:1.5rem auto;max-width:75rem;padding:0 1rem;color:#222;
line-height:1.4}
h1{font-size:1.5rem;margin:0 0 .3rem}
h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1rem;margin:1.2rem 0 .3rem}
nav{font-size:.9rem;margin:.3rem 0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600}
td{white-space:pre-wrap;overflow-wrap:anywhere;max-width:32rem}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.row{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}
img{max-width:100%;height:auto}
.note{color:#666;font-size:.85rem}
"""


def render_data_report(report: dict[str, Any]) -> str:
    """Return the complete HTML document (a str, UTF-8 declared) for a data report dict.

    Only `file` and `rows` are required; every other key is optional and its section is
    omitted when missing or None. Plots need matplotlib; without it the tables still render."""
    built = [(anchor, title, build(report)) for anchor, title, build in SECTIONS]
    present = [(anchor, title, body) for anchor, title, body in built if body is not None]
    nav = " · ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title, _ in present)
    sections = "".join(
        f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'
        for anchor, title, body in present
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc('Data report: ' + str(report.get('file', '')))}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Data report</h1>{_summary(report)}"
        f"{f'<nav>{nav}</nav>' if nav else ''}{sections}"
        '<p class="note">Written by migaki.</p></body></html>\n'
    )


# --- sections: each takes the whole report and returns its HTML body, or None to omit it ---


def _summary(report: dict[str, Any]) -> str:
    labels = report.get("labels")
    pairs = [
        ("File", report.get("file")),
        ("Generated", report.get("generated")),
        ("Rows", report.get("rows")),
        ("Valid rows", report.get("valid_rows")),
        ("Format", report.get("format")),
        ("Errors", _error_count(report.get("errors"))),
        ("Duplicate rows", _duplicate_summary(report.get("duplicates"))),
        ("Rows with personal data", (report.get("pii") or {}).get("rows")),
        ("Label imbalance (largest / smallest)", _imbalance(labels) if labels else None),
    ]
    return key_value_table([(key, value) for key, value in pairs if value is not None])


def _errors_section(report: dict[str, Any]) -> str | None:
    errors = report.get("errors")
    if errors is None:
        return None
    by_kind = _counts_table("Kind", _sorted_counts(errors.get("by_kind")), shares=False)
    examples = errors.get("examples") or []
    rows = [(_line(ex.get("line")), ex.get("kind"), ex.get("message")) for ex in examples]
    return (
        by_kind
        + html_table(["Line", "Kind", "Message"], rows[:MAX_EXAMPLES], numeric=(0,), empty=False)
        + _more_note(len(rows), MAX_EXAMPLES, "examples")
    )


def _lengths_section(report: dict[str, Any]) -> str | None:
    chars, tokens = report.get("char_lengths"), report.get("token_lengths")
    if chars is None and tokens is None:
        return None
    # Tokens are what training sees, so their histogram wins when both are there.
    shown, unit = (tokens, "tokens") if tokens is not None else (chars, "characters")
    max_length = tokens.get("max_length") if tokens is not None else None
    png = _histogram_png(shown.get("histogram"), unit, max_length)
    image = img_tag(png, f"Histogram of row lengths in {unit}")
    return f'<div class="row">{image}<div>{_percentile_table(chars, tokens)}</div></div>' + (
        _token_note(tokens) if tokens is not None else ""
    )


def _labels_section(report: dict[str, Any]) -> str | None:
    labels = report.get("labels")
    if labels is None:
        return None
    counts = _sorted_counts(labels.get("counts"))
    field = labels.get("field")
    intro = f"<p>Field <code>{esc(field)}</code>. " if field else "<p>"
    intro += f"Imbalance ratio (largest / smallest class): {esc(_imbalance(labels))}.</p>"
    image = img_tag(_bars_png(counts, "rows"), "Rows per label")
    return intro + f'<div class="row">{image}{_counts_table("Label", counts)}</div>'


def _languages_section(report: dict[str, Any]) -> str | None:
    languages = report.get("languages")
    if languages is None:
        return None
    counts = _sorted_counts(languages)
    image = img_tag(_bars_png(counts, "rows"), "Rows per language")
    return f'<div class="row">{image}{_counts_table("Language", counts)}</div>'


def _duplicates_section(report: dict[str, Any]) -> str | None:
    duplicates = report.get("duplicates")
    if duplicates is None:
        return None
    clusters = duplicates.get("clusters") or []
    overview = key_value_table(
        [
            ("Rows in exact duplicates", duplicates.get("exact_rows")),
            ("Rows in near duplicates", duplicates.get("near_rows")),
            ("Near-duplicate threshold", duplicates.get("threshold")),
            ("Clusters", len(clusters)),
        ]
    )
    rows = [_cluster_row(cluster) for cluster in clusters[:MAX_CLUSTERS]]
    headers = ["Kind", "Size", "Lines", "Similarity", "Example 1", "Example 2"]
    table = html_table(headers, rows, numeric=(1, 3), empty=False)
    return overview + table + _more_note(len(clusters), MAX_CLUSTERS, "clusters")


def _pii_section(report: dict[str, Any]) -> str | None:
    pii = report.get("pii")
    if pii is None:
        return None
    counts = _sorted_counts(pii.get("by_type"))
    image = img_tag(_bars_png(counts, "matches"), "Personal data matches per type")
    intro = f"<p>{esc(_fmt(pii.get('rows')))} rows hold personal data (excerpts are masked).</p>"
    examples = pii.get("examples") or []
    rows = [(_line(ex.get("line")), ex.get("type"), ex.get("excerpt")) for ex in examples]
    return (
        intro
        + f'<div class="row">{image}{_counts_table("Type", counts, shares=False)}</div>'
        + html_table(["Line", "Type", "Excerpt"], rows[:MAX_EXAMPLES], numeric=(0,), empty=False)
        + _more_note(len(rows), MAX_EXAMPLES, "examples")
    )


def _filters_section(report: dict[str, Any]) -> str | None:
    filters = report.get("filters")
    if filters is None:
        return None
    steps = filters.get("steps") or []
    if not steps:
        return '<p class="note">No filter steps ran.</p>'
    return "".join(_filter_step(step) for step in steps)


SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], str | None]]] = [
    ("errors", "Errors", _errors_section),
    ("lengths", "Lengths", _lengths_section),
    ("labels", "Labels", _labels_section),
    ("languages", "Languages", _languages_section),
    ("duplicates", "Duplicates", _duplicates_section),
    ("pii", "Personal data", _pii_section),
    ("filters", "Filters", _filters_section),
]


# --- pieces of sections ---


def _filter_step(step: dict[str, Any]) -> str:
    changed, removed = _fmt(step.get("changed", 0)), _fmt(step.get("removed", 0))
    examples = step.get("examples") or []
    shown = examples[:MAX_STEP_EXAMPLES]
    if any("before" in ex or "after" in ex for ex in shown):
        headers = ["Line", "Reason", "Before", "After"]
        rows = [
            (
                _line(ex.get("line")),
                ex.get("reason"),
                ex.get("before", ex.get("text")),
                ex.get("after"),
            )
            for ex in shown
        ]
    else:
        headers = ["Line", "Reason", "Text"]
        rows = [(_line(ex.get("line")), ex.get("reason"), ex.get("text")) for ex in shown]
    return (
        f"<h3>{esc(step.get('step', 'step'))}</h3>"
        f"<p>{esc(changed)} rows changed, {esc(removed)} rows removed.</p>"
        + _counts_table("Reason", _sorted_counts(step.get("reasons")), shares=False)
        + html_table(headers, rows, numeric=(0,), empty=False)
        + _more_note(len(examples), MAX_STEP_EXAMPLES, "examples")
    )


def _cluster_row(cluster: dict[str, Any]) -> tuple[Any, ...]:
    examples = [*(cluster.get("examples") or []), None, None]
    return (
        cluster.get("kind"),
        cluster.get("size"),
        _line_list(cluster.get("lines") or []),
        cluster.get("similarity"),
        examples[0],
        examples[1],
    )


def _percentile_table(chars: dict[str, Any] | None, tokens: dict[str, Any] | None) -> str:
    columns = [
        (name, part.get("percentiles") or {})
        for name, part in [("Characters", chars), ("Tokens", tokens)]
        if part is not None
    ]
    keys = [key for key in PERCENTILE_ORDER if any(key in p for _, p in columns)]
    keys += sorted({key for _, p in columns for key in p} - set(keys))
    rows = [[key, *(p.get(key) for _, p in columns)] for key in keys]
    numeric = tuple(range(1, len(columns) + 1))
    return html_table(["", *(name for name, _ in columns)], rows, numeric=numeric)


def _token_note(tokens: dict[str, Any]) -> str:
    parts = []
    if tokens.get("tokenizer"):
        parts.append(f"Tokenizer: {esc(tokens['tokenizer'])}.")
    if tokens.get("max_length") is not None:
        over = tokens.get("over_max_length")
        parts.append(f"max_length {esc(_fmt(tokens['max_length']))} (red line)")
        if over is not None:
            parts[-1] += f"; {esc(_fmt(over))} rows are longer"
        parts[-1] += "."
    return f'<p class="note">{" ".join(parts)}</p>' if parts else ""


def _error_count(errors: dict[str, Any] | None) -> int | None:
    if errors is None:
        return None
    return sum((errors.get("by_kind") or {}).values())


def _duplicate_summary(duplicates: dict[str, Any] | None) -> str | None:
    if duplicates is None:
        return None
    exact, near = duplicates.get("exact_rows"), duplicates.get("near_rows")
    return f"{_fmt(exact)} exact, {_fmt(near)} near"


def _imbalance(labels: dict[str, Any]) -> str:
    """The caller's ratio if given, else largest / smallest class; '—' when undefined."""
    ratio = labels.get("imbalance_ratio")
    counts = [n for n in (labels.get("counts") or {}).values() if n]
    if ratio is None and counts:
        ratio = max(counts) / min(counts)
    return "—" if ratio is None else f"{ratio:.2f}"


def _sorted_counts(counts: dict[str, int] | None) -> list[tuple[str, int]]:
    """Largest first, ties by name, so the table and the chart list classes in one order."""
    return sorted((counts or {}).items(), key=lambda item: (-item[1], str(item[0])))


# --- HTML helpers: every value passes through _fmt and esc exactly once ---


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A cell's display text: grouped integers, two-decimal floats, long strings cut."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() else f"{value:,.2f}"
    text = str(value)
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _line(line: Any) -> str | None:
    # Line numbers read as positions in a file, so no thousands separators.
    return None if line is None else str(line)


def _line_list(lines: Sequence[Any]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_LINES_SHOWN])
    extra = len(lines) - MAX_LINES_SHOWN
    return shown + (f", … (+{extra})" if extra > 0 else "")


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Sequence[int] = (),
    empty: bool = True,
) -> str:
    """A table of raw values; `numeric` columns align right. With `empty=False` a table
    without rows is left out."""
    body = "".join(
        "<tr>"
        + "".join(
            ('<td class="num">' if i in numeric else "<td>") + f"{esc(_fmt(value))}</td>"
            for i, value in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    if not body and not empty:
        return ""
    head = "".join(f"<th>{esc(name)}</th>" for name in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_value_table(pairs: Iterable[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{esc(key)}</th><td>{esc(_fmt(value))}</td></tr>" for key, value in pairs
    )
    return f"<table><tbody>{body}</tbody></table>"


def _counts_table(name: str, counts: list[tuple[str, int]], shares: bool = True) -> str:
    total = sum(n for _, n in counts)
    rows: list[tuple[Any, ...]] = [
        (key, n, f"{100 * n / total:.1f}%" if total else "—") if shares else (key, n)
        for key, n in counts[:MAX_TABLE_ROWS]
    ]
    headers = [name, "Rows", "Share"] if shares else [name, "Count"]
    table = html_table(headers, rows, numeric=(1, 2))
    return f"<div>{table}{_more_note(len(counts), MAX_TABLE_ROWS, 'rows')}</div>"


def _more_note(total: int, shown: int, what: str) -> str:
    if total <= shown:
        return ""
    return f'<p class="note">Showing {shown} of {total:,} {what}.</p>'


def img_tag(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" width="560">'


# --- plots ---


def _histogram_png(histogram: dict[str, Any] | None, unit: str, max_length: Any) -> bytes | None:
    edges = list((histogram or {}).get("edges") or [])
    counts = list((histogram or {}).get("counts") or [])
    if len(edges) != len(counts) + 1 or not any(counts):
        return None

    def draw(ax: Any) -> None:
        ax.stairs(counts, edges, fill=True, color="#4c78a8")
        if max_length is not None:
            ax.axvline(
                max_length, color="#d62728", linestyle="--", label=f"max_length {max_length}"
            )
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel(unit)
        ax.set_ylabel("rows")

    return render_png(draw, (5.6, 2.8))


def _bars_png(counts: list[tuple[str, int]], xlabel: str) -> bytes | None:
    shown = counts[:MAX_BARS]
    if not shown or not any(n for _, n in shown):
        return None

    def draw(ax: Any) -> None:
        names = [_fmt(name)[:40] for name, _ in shown]
        bars = ax.barh(range(len(shown)), [n for _, n in shown], color="#4c78a8")
        ax.set_yticks(range(len(shown)), names)
        ax.invert_yaxis()  # largest class on top, in the table's order
        ax.bar_label(bars, fmt="{:,.0f}", padding=2, fontsize=8)
        ax.margins(x=0.15)
        ax.set_xlabel(xlabel)

    return render_png(draw, (5.6, 0.9 + 0.28 * len(shown)))


def render_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes | None:
    """Draw on a fresh Agg figure and return PNG bytes, or None without matplotlib.

    A bare Figure with its own Agg canvas touches no pyplot state, so nothing global is
    switched and the figure is freed with its last reference."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        _warn_no_matplotlib()
        return None
    # Missing-glyph warnings (no CJK font installed) would only be noise: the tables beside
    # each plot show the real text.
    with warnings.catch_warnings(), matplotlib.rc_context(font_rc()):
        warnings.simplefilter("ignore")
        figure = Figure(figsize=size, dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        draw(figure.add_subplot())
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
        figure.clear()
    return buffer.getvalue()


@cache
def _warn_no_matplotlib() -> None:
    log.warning("matplotlib is not installed; the data report has tables but no plots")


@cache
def font_rc() -> dict[str, Any]:
    """rcParams for plots: a CJK font first when one is installed, DejaVu Sans behind it for
    the glyphs it lacks (some Japanese fonts have no minus sign)."""
    cjk = cjk_font()
    return {"font.family": [cjk, "DejaVu Sans"] if cjk else ["DejaVu Sans"]}


@cache
def cjk_font() -> str | None:
    """The installed font family that best covers Japanese (CJK_FONTS order), or None.

    matplotlib's font list is cached on disk when it first runs; fonts installed later
    (fonts-noto-cjk after the virtual environment) are missing from it, so the system's CJK
    font files are added by name when the list has none."""
    from matplotlib import font_manager

    found = pick_cjk_font(font.name for font in font_manager.fontManager.ttflist)
    if found is None:
        for path in font_manager.findSystemFonts():
            if any(hint in Path(path).name.lower() for hint in CJK_FILE_HINTS):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError) as exc:  # a broken font file
                    log.debug("font %s not added: %s", path, exc)
        found = pick_cjk_font(font.name for font in font_manager.fontManager.ttflist)
    if found is None:
        log.info("no CJK font installed: Japanese in plots shows as boxes (tables are fine)")
    return found


def pick_cjk_font(available: Iterable[str]) -> str | None:
    """The family of `available` that comes first in CJK_FONTS (prefix match), or None."""
    names = sorted(set(available))
    for wanted in CJK_FONTS:
        for name in names:
            if name.lower().startswith(wanted.lower()):
                return name
    return None

"""The HTML page of `migaki monitor`: one self-contained file (styles inline, plots as base64
PNG, no scripts or network), built from the report dict of `drift.monitor_run`.

The pieces (table helpers, styles, plots through matplotlib's Agg canvas with a CJK font when
one is installed) are those of the data report, so both pages read alike. Every string from
the log or the data is escaped: requests routinely hold markup.
"""

from __future__ import annotations

from typing import Any

# The data report's building blocks, so both pages read alike
from migaki.data.report_html import (
    CSS,
    esc,
    html_table,
    img_tag,
    key_value_table,
    render_png,
)

TRAIN_COLOUR, TRAFFIC_COLOUR = "#4c78a8", "#e45756"
EXTRA_CSS = ".flag{color:#b00020;font-weight:600}.ok{color:#2e7d32}"


def render_monitor_report(report: dict[str, Any]) -> str:
    """The complete HTML document (a str, UTF-8 declared) for a report of `monitor_run`."""
    figures = report["figures"]
    sections = [
        ("figures", "Figures", _figures_table(report)),
        ("lengths", "Input length", _lengths(figures["lengths"])),
        ("languages", "Languages", _languages(figures["languages"])),
        ("rare", "Rare tokens", _rare(figures["rare_tokens"], report["thresholds"]["rare_count"])),
        ("pii", "Personal data", _pii(figures["personal_data"])),
        ("embeddings", "Embeddings", _embeddings(figures["embeddings"], report["encoder"])),
        ("farthest", "Farthest from the training data", _farthest(report["farthest"])),
    ]
    nav = " · ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title, _ in sections)
    body = "".join(
        f'<section id="{anchor}"><h2>{esc(title)}</h2>{html}</section>'
        for anchor, title, html in sections
    )
    verdict = (
        f'<p class="flag">Drift flagged: {esc(", ".join(report["flagged"]))}.</p>'
        if report["flagged"]
        else '<p class="ok">No figure passes its threshold.</p>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc('Traffic drift: ' + report['run'])}</title>"
        f"<style>{CSS}{EXTRA_CSS}</style></head><body>"
        f"<h1>Traffic drift</h1>{verdict}{_summary(report)}<nav>{nav}</nav>{body}"
        '<p class="note">Written by migaki monitor.</p></body></html>\n'
    )


def _summary(report: dict[str, Any]) -> str:
    left_out = report["left_out"]
    others = ", ".join(f"{m} ({n})" for m, n in left_out["other models"].items()) or "none"
    return key_value_table(
        [
            ("Run", report["run"]),
            ("Log", report["log"]),
            ("Generated", report["generated"]),
            ("Training rows", report["training_rows"]),
            ("Requests compared", report["requests"]),
            ("Left out: other models", others),
            ("Left out: no user text", left_out["no user text"]),
            ("Tokenizer", report["tokenizer"]),
        ]
    )


def _figures_table(report: dict[str, Any]) -> str:
    rows = []
    for figure in report["figures"].values():
        mark = '<td class="flag">flagged</td>' if figure["flagged"] else '<td class="ok">ok</td>'
        cells = [figure["value"], figure["threshold"], figure["p_value"]]
        numbers = "".join(f'<td class="num">{esc(_number(v))}</td>' for v in cells)
        rows.append(f"<tr><td>{esc(figure['title'])}</td>{numbers}{mark}</tr>")
    head = "".join(f"<th>{name}</th>" for name in ("Figure", "Value", "Threshold", "p", ""))
    p_value = report["thresholds"]["p_value"]
    note = (
        f'<p class="note">A figure is flagged when its value passes its threshold and its '
        f"permutation p-value ({report['thresholds']['permutations']} shuffles, fixed seed) is "
        f"below {esc(_number(p_value))}: a small log differs from the training data by chance."
        "</p>"
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"


def _lengths(figure: dict[str, Any]) -> str:
    histogram = figure["histogram"]
    png = _overlay_png(histogram["edges"], histogram["train"], histogram["traffic"], "tokens")
    table = html_table(
        ["", "Training rows", "Requests"],
        [
            (key, _number(figure["train"][key]), _number(figure["traffic"][key]))
            for key in ("median", "p90")
        ],
        numeric=(1, 2),
    )
    image = img_tag(png, "Input lengths: training rows and requests")
    return f'<div class="row">{image}{table}</div>'


def _languages(figure: dict[str, Any]) -> str:
    languages = list(figure["train"])
    rows = [
        (lang, _percent(figure["train"][lang]), _percent(figure["traffic"][lang]))
        for lang in languages
    ]
    table = html_table(["Language", "Training rows", "Requests"], rows, numeric=(1, 2))
    png = _paired_bars_png(languages, figure["train"], figure["traffic"])
    return f'<div class="row">{img_tag(png, "Language shares")}{table}</div>'


def _rare(figure: dict[str, Any], rare_count: int) -> str:
    rows = [
        ("never seen in training", figure["train"]["unknown"], figure["traffic"]["unknown"]),
        (f"seen fewer than {rare_count} times", figure["train"]["rare"], figure["traffic"]["rare"]),
    ]
    shown = [(name, _percent(a), _percent(b)) for name, a, b in rows]
    note = (
        '<p class="note">Share of tokens (the run\'s tokenizer). Training rows are counted each '
        "against the other rows: what text like the training data gives.</p>"
    )
    return html_table(["Tokens", "Training rows", "Requests"], shown, numeric=(1, 2)) + note


def _pii(figure: dict[str, Any]) -> str:
    kinds = sorted(set(figure["train"]["by_type"]) | set(figure["traffic"]["by_type"]))
    rows = [
        ("rows with any", _percent(figure["train"]["rate"]), _percent(figure["traffic"]["rate"]))
    ]
    rows += [
        (kind, figure["train"]["by_type"].get(kind, 0), figure["traffic"]["by_type"].get(kind, 0))
        for kind in kinds
    ]
    note = (
        '<p class="note">Requests: what serve masked before logging. Training rows: what '
        "is found in them, or placeholders showing it was masked before training.</p>"
    )
    return html_table(["", "Training rows", "Requests"], rows, numeric=(1, 2)) + note


def _embeddings(figure: dict[str, Any], encoder: str) -> str:
    nearest = figure["nearest_similarity"]
    edges = nearest["train"]["edges"]
    png = _overlay_png(
        edges, nearest["train"]["counts"], nearest["traffic"]["counts"], "cosine similarity"
    )
    table = key_value_table(
        [
            ("Encoder", encoder),
            ("Centroid cosine distance", _number(figure["value"])),
            ("MMD² (Gaussian kernel)", _number(figure["mmd2"])),
            ("Permutation p", _number(figure["p_value"])),
            ("Embedded training rows", figure["embedded"]["train"]),
            ("Embedded requests", figure["embedded"]["traffic"]),
            ("Median nearest similarity, training rows", _number(nearest["train"]["median"])),
            ("Median nearest similarity, requests", _number(nearest["traffic"]["median"])),
        ]
    )
    alt = "Similarity to the nearest training row"
    scatter = img_tag(_scatter_png(figure["projection"]), "Embeddings on two principal axes")
    return (
        f'<div class="row">{img_tag(png, alt)}{table}</div>'
        f'<p class="note">{alt}: of each request, and of each training row to the other rows '
        "(left). Below: both samples on the first two principal axes.</p>" + scatter
    )


def _farthest(farthest: list[dict[str, Any]]) -> str:
    rows = [
        (
            entry["line"],
            entry["time"],
            entry["question"],
            _number(entry["similarity"]),
            f"{entry['nearest_train_line']}: {entry['nearest_train_text']}",
        )
        for entry in farthest
    ]
    headers = ["Log line", "Time", "Request", "Similarity", "Nearest training row (line: text)"]
    note = '<p class="note">Lowest similarity to any training row first.</p>'
    return html_table(headers, rows, numeric=(0, 3)) + note


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


# --- plots: training rows in blue, requests in red ---


def _overlay_png(edges: list[float], train: list[int], traffic: list[int], unit: str):
    """Two histograms on shared bins, each as shares of its own sample."""

    def draw(ax: Any) -> None:
        for counts, colour, label in (
            (train, TRAIN_COLOUR, "training"),
            (traffic, TRAFFIC_COLOUR, "requests"),
        ):
            total = sum(counts) or 1
            ax.stairs([n / total for n in counts], edges, color=colour, linewidth=1.6, label=label)
        ax.set_xlabel(unit)
        ax.set_ylabel("share")
        ax.legend(fontsize=8)

    return render_png(draw, (5.6, 2.8))


def _paired_bars_png(names: list[str], train: dict[str, float], traffic: dict[str, float]):
    def draw(ax: Any) -> None:
        places = range(len(names))
        ax.bar(
            [p - 0.2 for p in places],
            [train[n] for n in names],
            0.4,
            color=TRAIN_COLOUR,
            label="training",
        )
        ax.bar(
            [p + 0.2 for p in places],
            [traffic[n] for n in names],
            0.4,
            color=TRAFFIC_COLOUR,
            label="requests",
        )
        ax.set_xticks(list(places), names)
        ax.set_ylabel("share")
        ax.legend(fontsize=8)

    return render_png(draw, (4.0, 2.6))


def _scatter_png(projection: dict[str, list]):
    def draw(ax: Any) -> None:
        for points, colour, label in (
            (projection["train"], TRAIN_COLOUR, "training"),
            (projection["traffic"], TRAFFIC_COLOUR, "requests"),
        ):
            if points:
                ax.scatter(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    s=10,
                    alpha=0.6,
                    color=colour,
                    label=label,
                )
        ax.set_xlabel("first principal axis")
        ax.set_ylabel("second principal axis")
        ax.legend(fontsize=8)

    return render_png(draw, (5.6, 4.0))

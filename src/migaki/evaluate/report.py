"""report.html of `migaki eval`: the metrics of every system side by side and every sample."""

from __future__ import annotations

import html
from typing import Any


def render_html(result: dict[str, Any]) -> str:
    """A self-contained page: the metrics table and every sample answer."""
    systems = result["systems"]
    keys = sorted({k for metrics in systems.values() for k in metrics})
    head = "".join(f"<th>{html.escape(name)}</th>" for name in systems)
    body = "".join(
        f"<tr><td>{key}</td>"
        + "".join(f"<td>{systems[name].get(key, float('nan')):.4f}</td>" for name in systems)
        + "</tr>"
        for key in keys
    )
    sample_cols = [
        c
        for c in ("prompt", "reference", "rejected", "base", "tuned")
        if any(c in s for s in result["samples"])
    ]
    sample_rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(s.get(c, '')))}</td>" for c in sample_cols)
        + "</tr>"
        for s in result["samples"]
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>migaki evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse;margin-bottom:2em}</style>"
        f"<h1>Evaluation of {html.escape(result['target'])}</h1>"
        f"<p>{result['rows']} rows from {html.escape(result['data'])}</p>"
        f"<table><tr><th>metric</th>{head}</tr>{body}</table>"
        f"<table><tr>{''.join(f'<th>{c}</th>' for c in sample_cols)}</tr>{sample_rows}</table>"
    )

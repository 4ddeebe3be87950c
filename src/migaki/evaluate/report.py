"""report.html of a run: one self-contained page built from whatever the run directory holds.

`migaki eval` and `migaki compare` both call `write_report(run_dir)`. Each section is present
only when its source file is: metrics.jsonl (training curves), eval.json (metrics, error
analysis, slices, counterfactual, forgetting, judge, answers; or a classifier's per-label
figures and confusion matrix), compare.json (the comparison and its recommendation, shown at
the top), data/prepare_report.json (the data summary). Keys this module does not know are shown
in generic tables, and a missing key leaves its part out, so a slightly different eval.json
still renders. Every string from the files is escaped (answers hold markup such as <script>);
plots are embedded PNGs; nothing links outside the page.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migaki.data.report_html import CSS, esc, html_table, img_tag, key_value_table
from migaki.evaluate import plots

log = logging.getLogger(__name__)

MAX_CELL_CHARS = 160  # longer texts are cut in tables; the full text opens from a <details>
MAX_ROWS = 50  # rows per table of records
NOT_FIGURES = {"step", "epoch", "split", "loss", "time", "tokens", "event"}
RISE_RULE = (
    "Best step: the validation with the lowest loss once training began (the step-0 "
    "validation of the untrained model is not a candidate; the earliest wins a tie). "
    "Validation loss began to rise at the first validation after the best whose loss is above "
    "the best and stays above it at every later validation."
)
EXTRA_CSS = """
.recommendation{border:2px solid #4c78a8;background:#eef4fb;padding:.6rem 1rem;
border-radius:4px;margin:1rem 0}
.recommendation h2{border:none;margin:0 0 .3rem}
.flag{color:#b00020;font-weight:600}
tr.primary>*{background:#fff4c2}
td.diag{font-weight:700}
h4{font-size:.9rem;margin:.8rem 0 .2rem;color:#444}
td{overflow-wrap:break-word}
details summary{cursor:pointer}
"""
EVAL_KEYS = {"target", "data", "rows", "systems", "samples", "task", "per_label", "confusion"}
EVAL_KEYS |= {"mistakes", "skipped", "analysis", "slices", "counterfactual", "forgetting"}
EVAL_KEYS |= {"judge"}
COMPARE_KEYS = {"target", "data", "rows", "k", "primary", "systems", "training"}
COMPARE_KEYS |= {"recommendation", "samples"}
ROW_COLUMNS = ("index", "line", "language", "kind", "label", "prompt", "text", "reference")
ROW_COLUMNS += ("answer", "expected", "predicted")
GROUP_COLUMNS = ("label", "length", "language", "value", "rows", "errors", "error_rate")
# eval.json keys shown as one generic section each: (title, what it measures, flag text)
MAPPING_SECTIONS = {
    "counterfactual": (
        "Counterfactual",
        "Rows asked again with one attribute of the prompt swapped: an answer that changes "
        "(share) depends on what should not matter.",
        "Flagged: answers change when the attribute is swapped.",
    ),
    "forgetting": (
        "Forgetting",
        "Loss on general text before (base) and after (tuned) fine-tuning; flagged when the "
        "increase passes the threshold.",
        "Flagged: the tuned model lost more general ability than the threshold allows.",
    ),
    "judge": ("Judge", "Answers scored by a judge model against the rubric.", "Flagged."),
}
SLICE_KEYS = {"metric", "gap", "flagged", "note", "values", "best", "worst", "rule"}
SLICES_NOTE = (
    "Rows split by the value of each field, with the metric on each part; a field is flagged "
    "when its metric differs too much between values."
)


@dataclass
class ReportSources:
    """What a run directory holds for the report; None where the file is absent."""

    name: str = "run"
    metrics: list[dict[str, Any]] | None = None  # metrics.jsonl, the latest record per step
    eval: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    prepare: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # files or lines that could not be read


@dataclass(frozen=True)
class CurveMarks:
    best_step: int | None
    best_loss: float | None
    rise_step: int | None


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html from the files in run_dir; returns its path."""
    path = Path(run_dir) / "report.html"
    path.write_text(render_report(run_dir), encoding="utf-8")
    return path


def render_report(run_dir: Path) -> str:
    """The complete HTML page (a str) for run_dir; sections whose file is absent are left out."""
    return render_page(read_sources(Path(run_dir)))


def best_and_rise(val: Sequence[tuple[int, float]]) -> CurveMarks:
    """The best validation and where validation loss began to rise (RISE_RULE), from
    (step, loss) pairs in step order. A loss that is not finite counts as above any other."""
    points = [(step, loss if math.isfinite(loss) else math.inf) for step, loss in val]
    candidates = [(loss, i) for i, (step, loss) in enumerate(points) if step > 0]
    candidates = [(loss, i) for loss, i in candidates if math.isfinite(loss)]
    if not candidates:
        return CurveMarks(None, None, None)
    best_loss, best_index = min(candidates)  # the lowest index on a tie
    rise = None
    for step, loss in reversed(points[best_index + 1 :]):
        if loss <= best_loss:  # a later tie: the rise, if any, starts after it
            break
        rise = step
    return CurveMarks(points[best_index][0], best_loss, rise)


# --- reading the run directory ---


def read_sources(run_dir: Path) -> ReportSources:
    """The report's inputs from run_dir. An unreadable file is named in `problems` (shown on
    the page and logged) rather than raised: the report must not fail an eval that worked."""
    sources = ReportSources(name=run_dir.resolve().name)
    sources.metrics = _read_metrics(run_dir / "metrics.jsonl", sources.problems)
    sources.eval = _read_json(run_dir / "eval.json", sources.problems)
    sources.compare = _read_json(run_dir / "compare.json", sources.problems)
    sources.prepare = _read_json(run_dir / "data" / "prepare_report.json", sources.problems)
    return sources


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _problem(problems, f"{path.name} could not be read ({exc}); its sections are out")
    if not isinstance(value, dict):
        return _problem(problems, f"{path.name} is not a JSON object; its sections are out")
    return value


def _read_metrics(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    """Records of metrics.jsonl; a resumed run logs steps again, so the last record of a
    (split, step) wins. Events (time budget, early stop) are kept in order."""
    if not path.is_file():
        return None
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    events, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            bad += 1
        elif "split" in record:
            latest[(record["split"], record["step"])] = record
        else:
            events.append(record)
    if bad:
        _problem(problems, f"metrics.jsonl: {bad} lines are not step records and were skipped")
    return [*sorted(latest.values(), key=lambda r: r["step"]), *events]


def _problem(problems: list[str], message: str) -> None:
    log.warning("report.html: %s", message)
    problems.append(message)


# --- the page ---


def render_page(sources: ReportSources) -> str:
    """The HTML document for `sources`."""
    built = [(anchor, title, build(sources)) for anchor, title, build in SECTIONS]
    present = [(anchor, title, body) for anchor, title, body in built if body]
    nav = " · ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title, _ in present)
    sections = "".join(
        f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'
        for anchor, title, body in present
    )
    problems = "".join(f'<p class="flag">{esc(p)}</p>' for p in sources.problems)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc('Run report: ' + sources.name)}</title>"
        f"<style>{CSS}{EXTRA_CSS}</style></head><body>"
        f"<h1>{esc('Run report: ' + sources.name)}</h1>{_summary(sources)}{problems}"
        f"{_recommendation(sources.compare)}{f'<nav>{nav}</nav>' if nav else ''}{sections}"
        '<p class="note">Written by migaki.</p></body></html>\n'
    )


def _summary(sources: ReportSources) -> str:
    source = sources.eval or sources.compare or {}
    pairs = [("Model", source.get("target")), ("Evaluated on", source.get("data"))]
    pairs.append(("Rows", source.get("rows")))
    if not any(value is not None for _, value in pairs):
        return ""
    return key_value_table([(key, value) for key, value in pairs if value is not None])


def _recommendation(compare: dict[str, Any] | None) -> str:
    text = (compare or {}).get("recommendation")
    if not text:
        return ""
    return f'<div class="recommendation"><h2>Recommendation</h2><p>{esc(text)}</p></div>'


def _training_section(sources: ReportSources) -> str | None:
    records = sources.metrics
    if records is None:
        return None
    train, val = _series(records, "train", "loss"), _series(records, "val", "loss")
    if not train and not val:
        return '<p class="note">metrics.jsonl holds no training or validation loss.</p>'
    marks = best_and_rise(val)
    png = plots.training_curves_png(train, val, marks.best_step, marks.rise_step)
    rise = marks.rise_step if marks.rise_step is not None else "not seen"
    facts = [("Best validation step", marks.best_step), ("Best validation loss", marks.best_loss)]
    facts += [("Validation loss began to rise at step", rise if val else None)]
    facts += [(f"Last validation loss (step {val[-1][0]})", val[-1][1])] if val else []
    facts += [(f"Last train loss (step {train[-1][0]})", train[-1][1])] if train else []
    figures = {
        key: _series(records, "val", key)
        for key in _keys(r for r in records if r.get("split") == "val")
        if key not in NOT_FIGURES
    }
    figures = {key: points for key, points in figures.items() if points}
    parts = [img_tag(png, "Train and validation loss against step")]
    parts += [_kv_table((key, value) for key, value in facts if value is not None)]
    parts += [f'<p class="note">{esc(RISE_RULE)}</p>']
    other = plots.validation_figures_png(figures, marks.best_step)
    if other:
        parts += ["<h3>Other validation figures</h3>", img_tag(other, "Validation figures")]
    events = [r for r in records if "event" in r]
    if events:
        parts.append(_details(f"Events logged ({len(events)})", _records_table(events)))
    return "".join(parts)


def _series(records: list[dict[str, Any]], split: str, key: str) -> list[tuple[int, float]]:
    return [
        (r["step"], float(r[key]))
        for r in records
        if r.get("split") == split and _is_number(r.get(key))
    ]


def _metrics_section(sources: ReportSources) -> str | None:
    result = sources.eval
    if not result or not isinstance(result.get("systems"), dict):
        return None
    systems = {name: m for name, m in result["systems"].items() if isinstance(m, dict)}
    parts = [_systems_table(systems, primary=_name(_dict(result.get("analysis")).get("metric")))]
    if result.get("per_label"):
        parts += ["<h3>Per label</h3>", _named_table(result["per_label"], "label")]
    if isinstance(result.get("confusion"), dict):
        parts += ["<h3>Confusion matrix</h3>", _confusion_table(result["confusion"])]
    if result.get("skipped"):
        parts += ["<h3>Rows skipped</h3>", _generic(result["skipped"])]
    return "".join(parts)


def _comparison_section(sources: ReportSources) -> str | None:
    compare = sources.compare
    if not compare or not isinstance(compare.get("systems"), dict):
        return None
    systems = {name: s for name, s in compare["systems"].items() if isinstance(s, dict)}
    primary = compare.get("primary")
    columns = {name: _dict(s.get("metrics")) for name, s in systems.items()}
    extra = [("description", {name: s.get("description") for name, s in systems.items()})]
    tail = [("latency_s", "latency (s per row)"), ("prompt_tokens", "prompt tokens per request")]
    known = {"metrics", "description", *(key for key, _ in tail)}
    tail += [(key, key) for key in _keys(systems.values()) if key not in known]
    after = [(label, {name: s.get(key) for name, s in systems.items()}) for key, label in tail]
    intro = [("Rows", compare.get("rows")), ("Few-shot examples (k)", compare.get("k"))]
    intro += [("Primary metric", primary), ("Evaluated on", compare.get("data"))]
    parts = [_kv_table((key, value) for key, value in intro if value is not None)]
    parts.append(_systems_table(columns, primary, before=extra, after=after))
    if compare.get("training"):
        parts += ["<h3>Training of the tuned run</h3>", _generic(compare["training"])]
    if compare.get("samples"):
        order = ("prompt", "reference", *systems)
        parts += ["<h3>Answers side by side</h3>", _generic(compare["samples"], order)]
    return "".join(parts)


def _analysis_section(sources: ReportSources) -> str | None:
    result = sources.eval or {}
    analysis, mistakes = result.get("analysis"), result.get("mistakes")
    if not analysis and not mistakes:
        return None
    parts = []
    if isinstance(analysis, dict):
        metric = _name(analysis.get("metric"))
        titles = {
            "summary": "Summary",
            "worst_by_metric": f"Worst rows by {metric or 'the metric'}",
            "worst_by_loss": "Rows with the highest loss",
            "worst_by_confidence": "Most confident errors",
            "by_label": "By label",
            "by_length": "By length",
            "by_language": "By language",
            "confused_pairs": "Most confused pairs",
        }
        if metric:
            parts.append(f"<p>Rows are ranked by <b>{esc(metric)}</b>.</p>")
        if analysis.get("csv"):
            csv = esc(analysis["csv"])
            parts.append(f'<p class="note">Every row with its figures: <code>{csv}</code>.</p>')
        rows_first = (*ROW_COLUMNS, metric, "loss", "confidence")
        for key, value in analysis.items():
            if key in ("metric", "csv") or not value:
                continue
            order = rows_first if key.startswith("worst") else (*GROUP_COLUMNS, metric)
            parts += [f"<h3>{esc(titles.get(key, key))}</h3>", _generic(value, order)]
    elif analysis:
        parts.append(_generic(analysis))
    if mistakes:
        columns = ("line", "text", "label", "predicted", "confidence")
        parts += ["<h3>Most confident mistakes</h3>", _generic(mistakes, columns)]
    return "".join(parts)


def _slices_section(sources: ReportSources) -> str | None:
    slices = (sources.eval or {}).get("slices")
    if not slices:
        return None
    if not isinstance(slices, dict):
        return _generic(slices)
    parts = [f'<p class="note">{esc(SLICES_NOTE)}</p>']
    for name, part in slices.items():
        parts.append(f"<h3>{esc(name)}</h3>")
        if not isinstance(part, dict):
            parts.append(_generic(part))
            continue
        metric, values = _name(part.get("metric")), part.get("values")
        if part.get("flagged"):
            flag = f"Flagged: {metric} differs too much between values of {name}."
            parts.append(f'<p class="flag">{esc(flag)}</p>')
        if part.get("gap") is not None:
            best, worst = (f" ({_text(part[k])})" if k in part else "" for k in ("best", "worst"))
            gap = f"Gap in {metric} between the best value{best} and the worst{worst}: "
            parts.append(f"<p>{esc(gap + _text(part['gap']))}.</p>")
        for key in ("note", "rule"):
            if part.get(key):
                parts.append(f'<p class="note">{esc(_text(part[key]))}</p>')
        if isinstance(values, list) and metric:
            bars = [(_text(v.get("value")), v.get(metric)) for v in values if isinstance(v, dict)]
            parts.append(img_tag(plots.bars_png(bars, str(metric)), f"{metric} by {name}"))
        if values:
            parts.append(_generic(values, ("value", "rows", metric)))
        rest = {k: v for k, v in part.items() if k not in SLICE_KEYS}
        parts.append(_generic(rest) if rest else "")
    return "".join(parts)


def _mapping_section(key: str) -> Callable[[ReportSources], str | None]:
    """A section for one eval.json dict: what it measures, a flag when `flagged`, its figures."""
    intro, flag = MAPPING_SECTIONS[key][1:]

    def build(sources: ReportSources) -> str | None:
        value = (sources.eval or {}).get(key)
        if not value:
            return None
        flagged = isinstance(value, dict) and value.get("flagged") and flag
        return (
            (f'<p class="flag">{esc(flag)}</p>' if flagged else "")
            + f'<p class="note">{esc(intro)}</p>'
            + _generic(value)
        )

    return build


def _samples_section(sources: ReportSources) -> str | None:
    result = sources.eval or {}
    samples = result.get("samples")
    if not samples:
        return None
    systems = list(_dict(result.get("systems")))
    return _generic(samples, ("prompt", "reference", "chosen", "rejected", *systems))


def _data_section(sources: ReportSources) -> str | None:
    report = sources.prepare
    if not report:
        return None
    parts, used = [], set()
    rows, steps, hashes = report.get("rows"), report.get("steps"), report.get("hashes")
    if isinstance(rows, dict):
        total = sum(n for n in rows.values() if _is_number(n))
        table = [*rows.items(), ("total", total)]
        parts += ["<h3>Rows per split</h3>", html_table(["Split", "Rows"], table, numeric=(1,))]
        used.add("rows")
    if isinstance(steps, list) and steps and all(isinstance(step, dict) for step in steps):
        parts += ["<h3>Cleaning steps</h3>", _steps_table(steps)]
        for step in steps:
            if step.get("examples"):
                title = f"{step.get('step', 'step')}: examples ({len(step['examples'])})"
                parts.append(_details(title, _generic(step["examples"], ("reason",))))
        used.add("steps")
    if isinstance(hashes, dict):
        parts += ["<h3>Source files (SHA-256)</h3>", _kv_table(hashes.items())]
        used.add("hashes")
    rest = {key: value for key, value in report.items() if key not in used}
    return "".join(parts) + (_generic(rest) if rest else "")


def _steps_table(steps: list[dict[str, Any]]) -> str:
    """Each cleaning step's rows in, out and removed, and why."""
    records = []
    for step in steps:
        rows_in, removed = step.get("rows_in"), step.get("removed")
        rows_out = step.get("rows_out")
        if rows_out is None and _is_number(rows_in) and _is_number(removed):
            rows_out = rows_in - removed
        reasons = step.get("reasons") or {}
        record = {"step": step.get("step"), "rows in": rows_in, "rows out": rows_out}
        record |= {"removed": removed, "changed": step.get("changed"), "reasons": reasons or "—"}
        skip = {"step", "rows_in", "rows_out", "removed", "changed", "reasons", "examples"}
        record |= {k: v for k, v in step.items() if k not in skip}
        records.append(record)
    return _records_table(records)


def _other_section(sources: ReportSources) -> str | None:
    parts = []
    files = [("eval.json", sources.eval, EVAL_KEYS)]
    files.append(("compare.json", sources.compare, COMPARE_KEYS))
    for name, result, known in files:
        rest = {k: v for k, v in (result or {}).items() if k not in known}
        if rest:
            parts += [f"<h3>{esc(name)}</h3>", _generic(rest)]
    return "".join(parts) or None


SECTIONS: list[tuple[str, str, Callable[[ReportSources], str | None]]] = [
    ("training", "Training curves", _training_section),
    ("metrics", "Metrics", _metrics_section),
    ("comparison", "Comparison", _comparison_section),
    ("errors", "Error analysis", _analysis_section),
    ("slices", "Slices", _slices_section),
    *((key, title, _mapping_section(key)) for key, (title, *_) in MAPPING_SECTIONS.items()),
    ("samples", "Answers", _samples_section),
    ("data", "Data", _data_section),
    ("other", "Other results", _other_section),
]


# --- tables: every value passes through _text and esc once ---


def _systems_table(
    systems: dict[str, dict[str, Any]],
    primary: str | None = None,
    before: Sequence[tuple[str, dict[str, Any]]] = (),
    after: Sequence[tuple[str, dict[str, Any]]] = (),
) -> str:
    """Systems as columns, one row per metric (the primary one first and highlighted), with
    `before` and `after` rows of other per-system values."""
    metrics = _keys(systems.values())
    if primary in metrics:
        metrics = [primary, *(m for m in metrics if m != primary)]
    rows = [*before, *((m, {name: s.get(m) for name, s in systems.items()}) for m in metrics)]
    rows = [(label, values) for label, values in [*rows, *after] if _any_value(values)]
    body = "".join(
        ('<tr class="primary">' if label == primary else "<tr>")
        + f"<th>{esc(label)}</th>"
        + "".join(_cell(values.get(name)) for name in systems)
        + "</tr>"
        for label, values in rows
    )
    head = "<th>metric</th>" + "".join(f"<th>{esc(name)}</th>" for name in systems)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion_table(confusion: dict[str, Any]) -> str:
    """Rows are true labels, columns predicted ones; cells shaded by their count."""
    labels, matrix = confusion.get("labels") or [], confusion.get("matrix") or []
    if not labels or len(matrix) != len(labels) or not all(isinstance(r, list) for r in matrix):
        return _generic(confusion)
    peak = max((n for row in matrix for n in row if _is_number(n)), default=0) or 1
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{esc(label)}</th>" for label in labels)
    body = ""
    for i, (label, row) in enumerate(zip(labels, matrix, strict=True)):
        cells = ""
        for j, n in enumerate(row):
            share = n / peak if _is_number(n) else 0
            style = (
                f"background:rgba(76,120,168,{share:.2f});color:{'#fff' if share > 0.6 else '#222'}"
            )
            diag = " diag" if i == j else ""
            cells += f'<td class="num{diag}" style="{style}">{esc(_text(n))}</td>'
        body += f"<tr><th>{esc(label)}</th>{cells}</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _generic(value: Any, order: Sequence[Any] = (), depth: int = 0) -> str:
    """Any JSON value as HTML: a list of objects as a table of their keys (`order` first), an
    object as a key/value table with its nested values below, anything else as text."""
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return _records_table(value, order)
        return f"<p>{_inline(value)}</p>"
    if not isinstance(value, dict):
        return f"<p>{_inline(value)}</p>"
    nested = {k: v for k, v in value.items() if _is_nested(v)}
    flat = [(k, v) for k, v in value.items() if k not in nested]
    if nested and not flat and all(isinstance(v, dict) and _is_flat(v) for v in nested.values()):
        return _named_table(nested, "name")
    parts = [_kv_table(flat)] if flat else []
    for key, inner in nested.items():
        shown = _generic(inner, order, depth + 1) if depth < 3 else f"<p>{_inline(inner)}</p>"
        parts.append(f"<h4>{esc(key)}</h4>{shown}")
    return "".join(parts)


def _named_table(mapping: Any, name: str) -> str:
    """An object of objects as a table: one row per key, its name in the first column."""
    if not isinstance(mapping, dict):
        return _generic(mapping)
    records = [
        {name: key, **(v if isinstance(v, dict) else {"value": v})} for key, v in mapping.items()
    ]
    return _records_table(records, (name,))


def _records_table(records: Sequence[Any], order: Sequence[Any] = ()) -> str:
    rows = [r if isinstance(r, dict) else {"value": r} for r in records]
    columns = [c for c in order if c is not None and any(c in r for r in rows)]
    columns = list(dict.fromkeys(columns + _keys(rows)))
    head = "".join(f"<th>{esc(column)}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(column)) for column in columns) + "</tr>"
        for row in rows[:MAX_ROWS]
    )
    more = f'<p class="note">Showing {MAX_ROWS} of {len(rows):,} rows.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" + more * (
        len(rows) > MAX_ROWS
    )


def _kv_table(pairs: Iterable[tuple[Any, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(key)}</th>{_cell(value)}</tr>" for key, value in pairs)
    return f"<table><tbody>{body}</tbody></table>" if body else ""


def _cell(value: Any) -> str:
    numeric = ' class="num"' if _is_number(value) else ""
    return f"<td{numeric}>{_inline(value)}</td>"


def _inline(value: Any) -> str:
    """Escaped display text; past MAX_CELL_CHARS cut, with the whole text in a <details>."""
    text = _text(value)
    if len(text) <= MAX_CELL_CHARS:
        return esc(text)
    cut = esc(text[: MAX_CELL_CHARS - 1]) + "…"
    return f"<details><summary>{cut}</summary>{esc(text)}</details>"


def _details(title: str, body: str) -> str:
    return f"<details><summary>{esc(title)}</summary>{body}</details>"


def _text(value: Any) -> str:
    """A value's display text: grouped integers, four decimals, objects as `key: value`."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_text(v)}" for key, v in value.items())
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list) for v in value):
            return ", ".join(_text(v) for v in value)
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _keys(records: Iterable[Any]) -> list[str]:
    """The keys of dict records, in order of first appearance."""
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            seen |= dict.fromkeys(record)
    return list(seen)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _name(value: Any) -> str | None:
    """A metric's name, or None when the file holds something else there."""
    return value if isinstance(value, str) else None


def _any_value(values: dict[str, Any]) -> bool:
    return any(value is not None and value != "" for value in values.values())


def _is_nested(value: Any) -> bool:
    """A dict, or a list holding dicts or lists: shown below a heading, not in a cell."""
    if isinstance(value, list):
        return any(isinstance(v, dict | list) for v in value)
    return isinstance(value, dict) and bool(value)


def _is_flat(value: dict[str, Any]) -> bool:
    return not any(_is_nested(v) for v in value.values())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

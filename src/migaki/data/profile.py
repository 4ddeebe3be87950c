"""What `migaki data report` shows about a data file, as a JSON-ready dict: row counts,
lengths, labels, languages, duplicate clusters, personal data and what filters would do.

The file itself is not changed: personal data is only reported (masked in excerpts), and the
cleaning steps run on a copy to show what `migaki data prepare` would remove.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from migaki.config import CleanConfig, DataConfig, PiiConfig
from migaki.data.clean import StepReport, clean_records, row_text
from migaki.data.heuristics import language_of
from migaki.data.tokenize import rendered_length
from migaki.data.validate import label_of, validate_for

ERROR_EXAMPLES = 20


def profile_file(
    path: str | Path,
    data: DataConfig,
    clean: CleanConfig,
    *,
    tokenizer=None,
    tokenizer_name: str | None = None,
) -> dict[str, Any]:
    """The report dict for one data file (see `report_html.render_data_report`)."""
    validation = validate_for(path, data)
    records, examples, fmt = validation.records, validation.examples, validation.fmt or "text"
    texts = [row_text(record, fmt) for record in records]
    report: dict[str, Any] = {
        "file": str(path),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": validation.rows,
        "valid_rows": len(records),
        "format": validation.fmt,
        "errors": _errors(validation.problems),
        "warnings": [str(w) for w in validation.warnings[:ERROR_EXAMPLES]],
        "char_lengths": length_summary([len(t) for t in texts]),
        "languages": dict(Counter(language_of(t) for t in texts).most_common()),
    }
    if tokenizer is not None and examples:
        lengths = [rendered_length(example, tokenizer, data) for example in examples]
        summary = length_summary(lengths)
        summary |= {
            "tokenizer": tokenizer_name,
            "max_length": data.max_length,
            "over_max_length": sum(n > data.max_length for n in lengths),
            "total": int(sum(lengths)),
        }
        report["token_lengths"] = summary
    report["labels"] = _labels(examples, data.label_column)
    # Personal data is only counted here; the report must not change or drop rows it shows.
    reporting = clean.model_copy(
        update={"pii": (clean.pii or PiiConfig()).model_copy(update={"action": "report"})}
    )
    _, steps = clean_records(records, fmt, reporting, None, data.label_column)
    report |= _from_steps(steps)
    return report


def length_summary(lengths: list[int]) -> dict[str, Any] | None:
    if not lengths:
        return None
    values = np.asarray(lengths)
    counts, edges = np.histogram(values, bins=min(40, max(1, len(set(lengths)))))
    percentiles = {f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 95, 99)}
    percentiles |= {"min": int(values.min()), "max": int(values.max())}
    return {
        "percentiles": percentiles,
        "mean": round(float(values.mean()), 1),
        "histogram": {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()},
    }


def _errors(problems: list) -> dict[str, Any]:
    return {
        "by_kind": dict(Counter(p.kind for p in problems).most_common()),
        "examples": [
            {"line": p.line, "kind": p.kind, "message": str(p)} for p in problems[:ERROR_EXAMPLES]
        ],
    }


def _labels(examples: list, label_column: str) -> dict[str, Any] | None:
    counts = Counter(label_of(e, label_column) for e in examples)
    counts.pop(None, None)
    if not counts:
        return None
    ordered = dict(counts.most_common())
    ratio = max(ordered.values()) / min(ordered.values())
    return {"field": label_column, "counts": ordered, "imbalance_ratio": round(ratio, 2)}


def _from_steps(steps: list[StepReport]) -> dict[str, Any]:
    out: dict[str, Any] = {"filters": {"steps": [step.to_dict() for step in steps]}}
    for step in steps:
        if step.step == "dedup":
            clusters = step.details["clusters"]
            out["duplicates"] = {
                "exact_rows": step.reasons.get("exact", 0),
                "near_rows": step.reasons.get("near", 0),
                "threshold": step.details["threshold"],
                "clusters": sorted(clusters, key=lambda c: -c["size"]),
                "label_conflicts": step.details.get("label_conflicts"),
            }
        if step.step == "pii":
            out["pii"] = {
                "rows": step.details["rows_with_pii"],
                "by_type": step.details["by_type"],
                "examples": [
                    {"line": e["line"], "type": e["reason"], "excerpt": e["excerpt"]}
                    for e in step.examples
                ],
            }
    return out

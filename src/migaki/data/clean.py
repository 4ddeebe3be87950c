"""The cleaning pipeline: normalize -> personal data -> filters -> de-duplication.

It works on rows as they are in the file (records), so cleaned data can be written back in
the input's own format. Every step reports how many rows it changed or removed, why, and a
few examples: nothing is removed silently.

Personal data is masked before de-duplication so that rows differing only in an e-mail
address collapse into one, and filters run before de-duplication so it compares fewer rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migaki.config import CleanConfig, DedupConfig, FilterConfig, NormalizeConfig, PiiConfig
from migaki.data import dedup, pii
from migaki.data.formats import get_text, text_paths, with_text
from migaki.data.heuristics import language_of, repetition_ratio, symbol_ratio
from migaki.data.load import Record
from migaki.data.normalize import normalize_text
from migaki.errors import UserError

EXAMPLES_PER_REASON = 3
SHOWN_CHARS = 300


@dataclass
class StepReport:
    """What one step did to the rows."""

    step: str
    rows_in: int
    changed: int = 0
    removed: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def note(self, reason: str, example: dict[str, Any]) -> None:
        """Count one row under `reason`, keeping the first few as examples."""
        self.reasons[reason] += 1
        if self.reasons[reason] <= EXAMPLES_PER_REASON:
            self.examples.append({"reason": reason, **example})

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.removed

    def summary(self) -> str:
        what = []
        if self.removed:
            what.append(f"removed {self.removed}")
        if self.changed:
            what.append(f"changed {self.changed}")
        why = ", ".join(f"{reason} {count}" for reason, count in self.reasons.most_common())
        body = "; ".join(what) if what else "no change"
        return f"{self.step}: {self.rows_in} rows, {body}" + (f" ({why})" if why else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "changed": self.changed,
            "removed": self.removed,
            "reasons": dict(self.reasons.most_common()),
            "examples": self.examples,
            **self.details,
        }


TokenCounter = Callable[[Record], int]


def row_text(record: Record, fmt: str) -> str:
    """All texts of a row joined: what filters, language and duplicates look at."""
    return "\n".join(get_text(record.fields, path) for path in text_paths(record.fields, fmt))


def clean_records(
    records: list[Record],
    fmt: str,
    config: CleanConfig,
    count_tokens: TokenCounter | None = None,
    label_column: str = "label",
) -> tuple[list[Record], list[StepReport]]:
    """Run the enabled steps in order; returns the kept rows and one report per step."""
    reports = []
    if config.normalize:
        records, report = normalize_step(records, fmt, config.normalize)
        reports.append(report)
    if config.pii:
        records, report = pii_step(records, fmt, config.pii)
        reports.append(report)
    if config.filter:
        records, report = filter_step(records, fmt, config.filter, count_tokens)
        reports.append(report)
    if config.dedup:
        records, report = dedup_step(records, fmt, config.dedup, label_column)
        reports.append(report)
    return records, reports


def normalize_step(
    records: list[Record], fmt: str, config: NormalizeConfig
) -> tuple[list[Record], StepReport]:
    report = StepReport("normalize", len(records))
    out = []
    for record in records:
        fields, reasons = record.fields, set()
        for path in text_paths(fields, fmt):
            before = get_text(fields, path)
            after, changed = normalize_text(before, config)
            if changed:
                reasons.update(changed)
                fields = with_text(fields, path, after)
                example = {"line": record.line, "before": _shown(before), "after": _shown(after)}
        if reasons:
            report.changed += 1
            for reason in sorted(reasons):
                report.note(reason, example)
            record = Record(record.source, record.line, fields)
        out.append(record)
    return _drop_emptied(out, fmt, report)


def _drop_emptied(
    records: list[Record], fmt: str, report: StepReport
) -> tuple[list[Record], StepReport]:
    """Rows whose text normalized to nothing (only spaces or control characters) go."""
    kept = []
    for record in records:
        if any(get_text(record.fields, p).strip() for p in text_paths(record.fields, fmt)):
            kept.append(record)
        else:
            report.removed += 1
            report.note("empty_after_normalize", {"line": record.line})
    return kept, report


def pii_step(records: list[Record], fmt: str, config: PiiConfig) -> tuple[list[Record], StepReport]:
    report = StepReport("pii", len(records), details={"action": config.action})
    by_type: Counter = Counter()
    rows_with_pii = 0
    out = []
    for record in records:
        fields, found = record.fields, Counter()
        for path in text_paths(fields, fmt):
            text = get_text(fields, path)
            masked, counts = pii.mask_pii(text, config.types)
            if counts:
                found += counts
                excerpt = _excerpt_around_mask(masked)
                if config.action == "mask":
                    fields = with_text(fields, path, masked)
        if not found:
            out.append(record)
            continue
        by_type += found
        rows_with_pii += 1
        types = ",".join(sorted(found))
        example = {"line": record.line, "types": types, "excerpt": excerpt}
        if config.action == "drop":
            report.removed += 1
        else:
            report.changed += config.action == "mask"
            out.append(Record(record.source, record.line, fields))
        for kind in sorted(found):
            report.note(kind, example)
    # `reasons` count a row once per type it holds; `by_type` counts every occurrence.
    report.details["by_type"] = dict(by_type.most_common())
    report.details["rows_with_pii"] = rows_with_pii
    return out, report


def _excerpt_around_mask(masked: str) -> str:
    """Up to SHOWN_CHARS characters around the first placeholder (never the personal data)."""
    first = min((masked.find(p) for p in pii.PLACEHOLDERS.values() if p in masked), default=0)
    start = max(0, first - SHOWN_CHARS // 2)
    return _shown(masked[start:])


def filter_step(
    records: list[Record], fmt: str, config: FilterConfig, count_tokens: TokenCounter | None
) -> tuple[list[Record], StepReport]:
    if (config.min_tokens is not None or config.max_tokens is not None) and count_tokens is None:
        raise UserError("data.clean.filter.min_tokens/max_tokens need the recipe's tokenizer")
    blocked = _blocklist(config.blocklist)
    report = StepReport("filter", len(records))
    kept = []
    for record in records:
        text = row_text(record, fmt)
        reason = _filter_reason(record, text, config, blocked, count_tokens)
        if reason is None:
            kept.append(record)
        else:
            report.removed += 1
            report.note(reason, {"line": record.line, "text": _shown(text)})
    return kept, report


def _filter_reason(
    record: Record,
    text: str,
    config: FilterConfig,
    blocked: list[str],
    count_tokens: TokenCounter | None,
) -> str | None:
    """Why the row goes, or None. Cheap checks first."""
    if len(text) < config.min_chars:
        return "too_short"
    if config.max_chars is not None and len(text) > config.max_chars:
        return "too_long"
    if config.languages is not None and language_of(text) not in config.languages:
        return f"language_{language_of(text)}"
    if blocked:
        folded = text.casefold()
        if any(term in folded for term in blocked):
            return "blocklist"
    if config.max_repetition is not None and repetition_ratio(text) > config.max_repetition:
        return "repetition"
    if config.max_symbol_ratio is not None and symbol_ratio(text) > config.max_symbol_ratio:
        return "symbols"
    if count_tokens is not None and (config.min_tokens is not None or config.max_tokens):
        tokens = count_tokens(record)
        if config.min_tokens is not None and tokens < config.min_tokens:
            return "too_few_tokens"
        if config.max_tokens is not None and tokens > config.max_tokens:
            return "too_many_tokens"
    return None


def _blocklist(path: str | None) -> list[str]:
    if path is None:
        return []
    if not Path(path).is_file():
        raise UserError(f"data.clean.filter.blocklist: {path}: file not found")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [term.strip().casefold() for term in lines if term.strip() and not term.startswith("#")]


def dedup_step(
    records: list[Record], fmt: str, config: DedupConfig, label_column: str = "label"
) -> tuple[list[Record], StepReport]:
    report = StepReport("dedup", len(records), details={"threshold": config.threshold})
    texts = [row_text(record, fmt) for record in records]
    removed: set[int] = set()
    clusters = []
    if config.exact:
        for cluster in dedup.exact_clusters(texts):
            _remove_cluster(cluster, "exact", records, texts, removed, report, clusters)
        _label_conflicts(records, fmt, label_column, clusters, report)
    if config.near:
        remaining = [i for i in range(len(records)) if i not in removed]
        near = dedup.near_duplicate_clusters(
            [texts[i] for i in remaining], config.threshold, config.shingle, config.num_perm
        )
        for cluster in near:
            members = [remaining[i] for i in cluster]
            _remove_cluster(members, "near", records, texts, removed, report, clusters, config)
    report.removed = len(removed)
    report.details["clusters"] = clusters
    return [r for i, r in enumerate(records) if i not in removed], report


def _remove_cluster(
    cluster: list[int],
    kind: str,
    records: list[Record],
    texts: list[str],
    removed: set[int],
    report: StepReport,
    clusters: list[dict],
    config: DedupConfig | None = None,
) -> None:
    """Keep the cluster's first row, remove the others, and record the cluster."""
    keeper, *others = cluster
    entry = {
        "kind": kind,
        "size": len(cluster),
        "lines": [records[i].line for i in cluster],
        "examples": [_shown(texts[i]) for i in cluster[:2]],
    }
    if config is not None:
        entry["similarity"] = round(
            dedup.jaccard(texts[keeper], texts[others[0]], config.shingle), 3
        )
    clusters.append(entry)
    for index in others:
        removed.add(index)
        report.note(kind, {"line": records[index].line, "duplicate_of": records[keeper].line})


def _label_conflicts(
    records: list[Record], fmt: str, label_column: str, clusters: list[dict], report: StepReport
) -> None:
    """Exact duplicates that carry different labels: the data contradicts itself."""
    if fmt != "classification":
        return
    by_line = {record.line: record for record in records}
    conflicts = [
        c
        for c in clusters
        if len({str(by_line[i].fields.get(label_column)) for i in c["lines"]}) > 1
    ]
    report.details["label_conflicts"] = len(conflicts)
    report.details["label_conflict_lines"] = [c["lines"] for c in conflicts[:10]]


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"

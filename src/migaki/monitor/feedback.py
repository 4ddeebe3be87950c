"""Feedback on served answers turned into training rows: `migaki feedback export`.

`migaki serve` logs each answered request (`LOG_DIR/requests.jsonl`, serve/log.py) and keeps
the ratings and corrections clients send (`LOG_DIR/feedback.sqlite`, serve/feedback.py). This
module joins the two and writes rows in the formats the data layer reads:

- `sft`: a correction becomes a chat row, the logged conversation then the correction as the
  assistant's answer: `{"messages": [..., {"role": "assistant", "content": CORRECTION}],
  "response_id": ID}`.
- `dpo`: a correction becomes a preference pair, the correction chosen over the logged answer.
  The data layer's pairs have no chat form: a conversation of one user turn is written
  `{"prompt": USER, "chosen": CORRECTION, "rejected": ANSWER, "response_id": ID}`, a longer one
  as HH dialogues (`"chosen": "\\n\\nHuman: …\\n\\nAssistant: CORRECTION"`, `"rejected"`
  the same ending in the logged answer). A conversation with a system message (HH dialogues
  have no system turn), or a text holding an HH turn marker, gives no pair (reported).
- `kto`: a rating becomes the logged conversation and answer with `"label": true` (up) or
  `false` (down); a correction (with a down rating, an up rating or none) also becomes the
  conversation with the correction and `"label": true`, unless it repeats the logged answer.
  Rows are `{"messages": [...], "label": BOOL, "response_id": ID}`.

Every row keeps `response_id`, which the data layer carries along as a row's metadata.
Several entries for one response: the latest rating and the latest non-blank correction win,
each on its own (an entry with only a rating keeps the earlier correction). A request of the
completion endpoint (`prompt`, no messages) becomes one user turn holding the prompt, as the
data layer reads a prompt/completion row; note that serve answered it without the chat
template. Feedback on a response the log does not hold, feedback that gives no row of the
chosen kind, and rows the data layer's validation refuses are counted and named, not dropped
silently; the file written passes `migaki data validate`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from migaki.config import DataConfig
from migaki.data.load import SUFFIXES
from migaki.data.validate import Validation, validate_for
from migaki.errors import UserError
from migaki.serve.feedback import FEEDBACK, Feedback, read_feedback
from migaki.serve.log import REQUESTS, LoggedRequest, read_requests

ExportKind = Literal["sft", "dpo", "kto"]
KINDS: tuple[str, ...] = ("sft", "dpo", "kto")
HH_MARKERS = ("\n\nHuman: ", "\n\nAssistant: ")
NO_CORRECTION = "a rating and no correction ({kind} rows come from corrections)"


@dataclass
class FeedbackExport:
    """What `export_feedback` read, wrote and left out, and why."""

    out: Path
    kind: str
    entries: int  # feedback entries read from feedback.sqlite
    responses: int  # logged responses those entries are about
    older_entries: int  # entries that a later entry on the same response overrides in part
    rows: int = 0  # rows written to `out`
    unknown: dict[str, int] = field(default_factory=dict)  # response id not logged -> entries
    unused: dict[str, list[str]] = field(default_factory=dict)  # why no row -> response ids
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (response id, why refused)


@dataclass
class _Latest:
    """A logged response with its latest rating and latest correction."""

    request: LoggedRequest
    rating: str | None = None
    correction: str | None = None
    entries: int = 0


def export_feedback(
    log_dir: str | Path, out: str | Path, kind: ExportKind, force: bool = False
) -> FeedbackExport:
    """Write the feedback of `log_dir` (requests.jsonl and feedback.sqlite of `migaki serve`)
    as `kind` rows (sft, dpo or kto; see the module docstring) to the jsonl file `out`.

    Returns the counts: entries read, rows written, what was skipped and why. Raises UserError
    for an unknown kind, an `out` that exists (unless `force`) or is not .jsonl, a missing log
    folder, log or feedback store, an empty log or store, and when no row is left to write;
    DataError (FILE:LINE) for a corrupt log line. Nothing is written when it raises."""
    if kind not in KINDS:
        raise UserError(f"--as {kind}: export as one of {', '.join(KINDS)}")
    out = Path(out)
    _check_out(out, force)
    log_dir = Path(log_dir)
    requests = read_requests(log_dir)
    entries = read_feedback(log_dir)
    if not entries:
        raise UserError(f"{log_dir / FEEDBACK}: no feedback entries yet (POST /v1/feedback)")
    latest, unknown = _latest_feedback(requests, entries)
    result = FeedbackExport(
        out=out,
        kind=kind,
        entries=len(entries),
        responses=len(latest),
        older_entries=sum(item.entries - 1 for item in latest),
        unknown=unknown,
    )
    rows = _rows(latest, kind, result.unused)
    if not rows:
        raise UserError(_nothing_to_export(log_dir, result))
    _write_valid(rows, out, result)
    return result


def _check_out(out: Path, force: bool) -> None:
    if SUFFIXES.get(out.suffix.lower()) != "jsonl":
        raise UserError(f"{out}: name the output FILE.jsonl (one row a line)")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; name a file to write")
    if out.exists() and not force:
        raise UserError(f"{out}: exists already; give --force to replace it")


def _latest_feedback(
    requests: list[LoggedRequest], entries: list[Feedback]
) -> tuple[list[_Latest], dict[str, int]]:
    """Each logged response that has feedback, in log order, with its latest rating and
    correction (entries come oldest first); and the entries per response id not in the log."""
    logged = {request.id: request for request in requests}  # ids are unique per answer
    latest: dict[str, _Latest] = {}
    unknown: dict[str, int] = {}
    for entry in entries:
        if entry.response_id not in logged:
            unknown[entry.response_id] = unknown.get(entry.response_id, 0) + 1
            continue
        item = latest.setdefault(entry.response_id, _Latest(logged[entry.response_id]))
        item.entries += 1
        if entry.rating is not None:
            item.rating = entry.rating
        if entry.correction is not None and entry.correction.strip():
            item.correction = entry.correction
    return sorted(latest.values(), key=lambda item: item.request.line), unknown


def _rows(latest: list[_Latest], kind: str, unused: dict[str, list[str]]) -> list[dict]:
    """The rows of every response, in log order; why a response gave none (or one row less)
    goes into `unused`."""
    rows = []
    for item in latest:
        made, reason = ROW_MAKERS[kind](item, _conversation(item.request))
        for row in made:
            rows.append(row | {"response_id": item.request.id})
        if reason is not None:
            unused.setdefault(reason, []).append(item.request.id)
    return rows


def _conversation(request: LoggedRequest) -> list[dict[str, str]]:
    """The conversation the answer replied to: the chat messages (role and content only), or
    the completion prompt as one user turn."""
    if request.messages is None:
        return [{"role": "user", "content": request.prompt or ""}]
    return [{"role": m.get("role"), "content": m.get("content")} for m in request.messages]


def _sft_rows(item: _Latest, conversation: list[dict]) -> tuple[list[dict], str | None]:
    if item.correction is None:
        return [], NO_CORRECTION.format(kind="sft")
    return [{"messages": [*conversation, _assistant(item.correction)]}], None


def _dpo_rows(item: _Latest, conversation: list[dict]) -> tuple[list[dict], str | None]:
    correction, answer = item.correction, item.request.response
    if correction is None:
        return [], NO_CORRECTION.format(kind="dpo")
    if correction.strip() == answer.strip():
        return [], "the correction repeats the logged answer (no preference to learn)"
    if any(m["role"] == "system" for m in conversation):
        return [], "a system message (preference rows have no system turn)"
    if len(conversation) == 1 and conversation[0]["role"] == "user":
        prompt = conversation[0]["content"]
        return [{"prompt": prompt, "chosen": correction, "rejected": answer}], None
    return _hh_pair(conversation, correction, answer)


def _hh_pair(conversation: list[dict], chosen: str, rejected: str) -> tuple[list[dict], str | None]:
    """A pair of HH dialogues sharing the conversation (a list of user and assistant turns,
    starting with a user turn), or why the conversation cannot be written as one."""
    roles = {"user": "Human", "assistant": "Assistant"}
    if not conversation or conversation[0]["role"] != "user":
        return [], "the conversation does not start with a user turn"
    if any(m["role"] not in roles for m in conversation):
        return [], "a turn neither user nor assistant (HH dialogues have no other)"
    texts = [str(m["content"]) for m in conversation] + [chosen, rejected]
    if any(marker in text for text in texts for marker in HH_MARKERS):
        return [], "a text holds an HH turn marker (a blank line, then 'Human: ' or 'Assistant: ')"
    prompt = "".join(f"\n\n{roles[m['role']]}: {m['content']}" for m in conversation)
    pair = {"chosen": f"{prompt}\n\nAssistant: {chosen}"}
    return [pair | {"rejected": f"{prompt}\n\nAssistant: {rejected}"}], None


def _kto_rows(item: _Latest, conversation: list[dict]) -> tuple[list[dict], str | None]:
    rows, reason = [], None
    if item.rating is not None:
        answer = [*conversation, _assistant(item.request.response)]
        rows.append({"messages": answer, "label": item.rating == "up"})
    if item.correction is not None:
        if item.correction.strip() == item.request.response.strip():
            reason = "the correction repeats the logged answer (its rating, if any, is used)"
        else:
            rows.append({"messages": [*conversation, _assistant(item.correction)], "label": True})
    return rows, reason


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


ROW_MAKERS = {"sft": _sft_rows, "dpo": _dpo_rows, "kto": _kto_rows}


def _nothing_to_export(log_dir: Path, result: FeedbackExport) -> str:
    """Why no row came out, and which feedback the chosen kind needs."""
    needs = {
        "sft": "corrections (POST /v1/feedback with a correction); --as kto uses ratings",
        "dpo": "corrections that differ from the logged answer (POST /v1/feedback with a "
        "correction); --as kto uses ratings",
        "kto": "ratings up or down, or corrections",
    }[result.kind]
    found = f"{result.entries} feedback entries"
    if result.unknown:
        found += f", {sum(result.unknown.values())} of them on responses not in {REQUESTS}"
    reasons = "; ".join(f"{reason}: {len(ids)}" for reason, ids in result.unused.items())
    return (
        f"{log_dir / FEEDBACK}: nothing to export as {result.kind} ({found}"
        + (f"; {reasons}" if reasons else "")
        + f"); {result.kind} rows need {needs}"
    )


def _write_valid(rows: list[dict], out: Path, result: FeedbackExport) -> None:
    """Write the rows the data layer's validation accepts to `out` (through a hidden file
    beside it, renamed into place); record the refused ones in `result.rejected`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(f".{out.stem}.partial.jsonl")
    try:
        _write_jsonl(draft, rows)
        check = _validate(draft)
        refused = {problem.line: problem.detail for problem in check.problems}
        if None in refused:  # about the file, not a row: cannot happen for rows we wrote
            raise RuntimeError(f"validation refused the whole export: {refused[None]}")
        kept = [row for line, row in enumerate(rows, start=1) if line not in refused]
        result.rejected = [(rows[line - 1]["response_id"], why) for line, why in refused.items()]
        if not kept:
            first = result.rejected[0]
            raise UserError(
                f"{out}: the data validation refused every row ({len(rows)}), e.g. response "
                f"{first[0]}: {first[1]}"
            )
        if refused:
            _write_jsonl(draft, kept)
            if _validate(draft).problems:  # rows valid one by one stay valid together
                raise RuntimeError(f"the rows left for {out} still fail validation")
        os.replace(draft, out)
        result.rows = len(kept)
    finally:
        draft.unlink(missing_ok=True)


def _validate(path: Path) -> Validation:
    """The checks of `migaki data validate FILE`, with its defaults."""
    return validate_for(path, DataConfig(train=str(path)))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

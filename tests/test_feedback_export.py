"""`migaki feedback export`: serve's request log and feedback store turned into sft, dpo and
kto rows that the data layer reads, with every skipped entry reported."""

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from migaki.monitor.feedback import export_feedback
from migaki.serve.feedback import FeedbackStore
from migaki.serve.log import RequestLog

SYSTEM = {"role": "system", "content": "You answer questions about the shop."}
HOURS = {"role": "user", "content": "When do you open?"}
LATE = {"role": "user", "content": "And on Sunday?"}


def log_request(log_dir: Path, request_id: str, response: str, **question) -> None:
    """One answered request: `messages=[...]` (chat) or `prompt="..."` (completions)."""
    RequestLog(log_dir).append(
        request_id=request_id,
        model="faq",
        run=None,
        base="tiny",
        endpoint="chat.completions" if "messages" in question else "completions",
        response=response,
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=3,
        latency_s=0.1,
        **question,
    )


@pytest.fixture
def log_dir(tmp_path) -> Path:
    """Four answered requests: one user turn, a longer chat, one with a system message, and a
    completion prompt."""
    directory = tmp_path / "logs"
    log_request(directory, "r1", "We open at ten.", messages=[HOURS])
    chat = [HOURS, {"role": "assistant", "content": "At ten."}, LATE]
    log_request(directory, "r2", "Also at ten.", messages=chat)
    log_request(directory, "r3", "Hello.", messages=[SYSTEM, HOURS])
    log_request(directory, "r4", "the shop opens at ten", prompt="Opening hours:")
    return directory


def feedback(log_dir: Path, *entries: tuple) -> None:
    store = FeedbackStore(log_dir)
    for response_id, rating, *correction in entries:
        store.add(response_id, rating, *correction)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def export(capsys, log_dir: Path, out: Path, kind: str, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "feedback", "export", log_dir, "-o", out, "--as", kind, *extra)


def passes_validation(capsys, path: Path) -> str:
    code, out, err = run_cli(capsys, "data", "validate", path)
    assert (code, err) == (0, ""), out
    assert "problems" not in out and "warning" not in out
    return out


def test_sft_rows_are_the_conversations_with_their_corrections(capsys, log_dir, tmp_path):
    feedback(
        log_dir,
        ("r1", "down", "We open at 9:30."),
        ("r2", "up"),
        ("r3", None, "Good morning."),
        ("r4", "down", "from nine thirty"),
    )
    out = tmp_path / "sft.jsonl"
    code, printed, err = export(capsys, log_dir, out, "sft")
    assert (code, err) == (0, "")
    assert read_rows(out) == [
        {
            "messages": [HOURS, {"role": "assistant", "content": "We open at 9:30."}],
            "response_id": "r1",
        },
        {
            "messages": [SYSTEM, HOURS, {"role": "assistant", "content": "Good morning."}],
            "response_id": "r3",
        },
        {  # a completion prompt becomes one user turn
            "messages": [
                {"role": "user", "content": "Opening hours:"},
                {"role": "assistant", "content": "from nine thirty"},
            ],
            "response_id": "r4",
        },
    ]
    assert printed.splitlines() == [
        "read 4 feedback entries: 4 logged responses",
        "no sft row from 1 responses: a rating and no correction (sft rows come from "
        "corrections): r2",
        f"wrote 3 sft rows to {out}",
    ]
    assert "3 rows, 3 valid, format messages" in passes_validation(capsys, out)


def test_dpo_pairs_choose_the_correction_over_the_logged_answer(capsys, log_dir, tmp_path):
    log_request(log_dir, "r5", "Same.", messages=[HOURS])
    feedback(
        log_dir,
        ("r1", "down", "We open at 9:30."),
        ("r2", None, "Closed on Sunday."),
        ("r3", None, "Good morning."),
        ("r4", None, "from nine thirty"),
        ("r5", "up", "Same."),
    )
    out = tmp_path / "dpo.jsonl"
    result = export_feedback(log_dir, out, "dpo")
    hh_prompt = "\n\nHuman: When do you open?\n\nAssistant: At ten.\n\nHuman: And on Sunday?"
    assert read_rows(out) == [
        {
            "prompt": "When do you open?",
            "chosen": "We open at 9:30.",
            "rejected": "We open at ten.",
            "response_id": "r1",
        },
        {  # a longer conversation: HH dialogues that share all but the last answer
            "chosen": hh_prompt + "\n\nAssistant: Closed on Sunday.",
            "rejected": hh_prompt + "\n\nAssistant: Also at ten.",
            "response_id": "r2",
        },
        {
            "prompt": "Opening hours:",
            "chosen": "from nine thirty",
            "rejected": "the shop opens at ten",
            "response_id": "r4",
        },
    ]
    assert (result.entries, result.responses, result.rows, result.rejected) == (5, 5, 3, [])
    assert result.unused == {
        "a system message (preference rows have no system turn)": ["r3"],
        "the correction repeats the logged answer (no preference to learn)": ["r5"],
    }
    assert "3 rows, 3 valid, format preference" in passes_validation(capsys, out)


def test_kto_rows_mark_rated_answers_and_corrections(capsys, log_dir, tmp_path):
    feedback(
        log_dir,
        ("r1", "up"),
        ("r2", "down", "Closed on Sunday."),
        ("r3", None, "Good morning."),
        ("r4", "down"),
    )
    out = tmp_path / "kto.jsonl"
    code, printed, err = export(capsys, log_dir, out, "kto")
    assert (code, err) == (0, "")
    chat = [HOURS, {"role": "assistant", "content": "At ten."}, LATE]

    def row(messages, answer, label, response_id):
        answer_turn = {"role": "assistant", "content": answer}
        return {"messages": [*messages, answer_turn], "label": label, "response_id": response_id}

    assert read_rows(out) == [
        row([HOURS], "We open at ten.", True, "r1"),
        row(chat, "Also at ten.", False, "r2"),
        row(chat, "Closed on Sunday.", True, "r2"),  # a correction with a down rating
        row([SYSTEM, HOURS], "Good morning.", True, "r3"),  # a correction alone
        row([{"role": "user", "content": "Opening hours:"}], "the shop opens at ten", False, "r4"),
    ]
    assert printed.splitlines()[-1] == f"wrote 5 kto rows to {out}"
    assert "5 rows, 5 valid, format messages" in passes_validation(capsys, out)


def test_the_latest_rating_and_the_latest_correction_win(capsys, log_dir, tmp_path):
    feedback(
        log_dir,
        ("r1", "up"),
        ("r1", None, "First fix."),
        ("r1", "down"),  # a rating alone keeps the earlier correction
        ("r2", "down", "Old fix."),
        ("r2", "up", "New fix."),
        ("r2", "up", "   "),  # a blank correction is no correction
    )
    kto = export_feedback(log_dir, tmp_path / "kto.jsonl", "kto")
    assert (kto.entries, kto.responses, kto.older_entries, kto.rows) == (6, 2, 4, 4)
    rows = read_rows(tmp_path / "kto.jsonl")
    assert [(r["response_id"], r["messages"][-1]["content"], r["label"]) for r in rows] == [
        ("r1", "We open at ten.", False),
        ("r1", "First fix.", True),
        ("r2", "Also at ten.", True),
        ("r2", "New fix.", True),
    ]
    code, printed, _ = export(capsys, log_dir, tmp_path / "sft.jsonl", "sft")
    assert code == 0
    assert printed.splitlines()[0] == (
        "read 6 feedback entries: 2 logged responses "
        "(4 older entries: the latest rating and correction kept)"
    )
    sft = read_rows(tmp_path / "sft.jsonl")
    assert [(r["response_id"], r["messages"][-1]["content"]) for r in sft] == [
        ("r1", "First fix."),
        ("r2", "New fix."),
    ]


def test_feedback_on_responses_not_in_the_log_is_reported(capsys, log_dir, tmp_path):
    feedback(log_dir, ("gone-1", "up"), ("r1", None, "We open at 9:30."), ("gone-1", "down"))
    feedback(log_dir, ("gone-2", None, "Something."))
    out = tmp_path / "sft.jsonl"
    code, printed, err = export(capsys, log_dir, out, "sft")
    assert (code, err) == (0, "")
    assert printed.splitlines() == [
        "read 4 feedback entries: 1 logged responses",
        "skipped 3 entries on 2 response ids not in the log: gone-1, gone-2",
        f"wrote 1 sft rows to {out}",
    ]
    assert [row["response_id"] for row in read_rows(out)] == ["r1"]


def test_rows_the_data_validation_refuses_are_reported_and_left_out(capsys, log_dir, tmp_path):
    tool = [HOURS, {"role": "tool", "content": "{}"}]
    log_request(log_dir, "r5", "At ten.", messages=tool)
    feedback(log_dir, ("r1", None, "We open at 9:30."), ("r5", None, "We open at 9:30."))
    out = tmp_path / "sft.jsonl"
    code, printed, err = export(capsys, log_dir, out, "sft")
    assert (code, err) == (0, "")
    lines = printed.splitlines()
    assert lines[1:] == [
        "left out 1 rows the data validation refused:",
        "  r5: messages[1] has role 'tool'; use one of ['assistant', 'system', 'user']",
        f"wrote 1 sft rows to {out}",
    ]
    assert not list(tmp_path.glob("logs/.*")) and not list(tmp_path.glob(".*"))
    passes_validation(capsys, out)


def test_a_dpo_export_is_read_by_the_dpo_and_kto_tasks(log_dir, tmp_path, tiny_model, tokenizer):
    from migaki.config import load_recipe
    from migaki.data.prepare import load_splits
    from migaki.tasks import TASKS

    feedback(
        log_dir,
        ("r1", "down", "We open at 9:30."),
        ("r2", None, "Closed on Sunday."),
        ("r4", None, "from nine thirty"),
    )
    out = tmp_path / "dpo.jsonl"
    export_feedback(log_dir, out, "dpo")
    for task in ("dpo", "kto"):
        path = write_recipe(
            tmp_path / f"{task}.yaml",
            tiny_model,
            out,
            task=task,
            data={"split": {"val": 0.0, "test": 0.0}, "max_length": 128},
        )
        recipe = load_recipe(path)
        splits = load_splits(recipe.data, recipe.train.seed)
        assert [e.meta["response_id"] for e in splits.train] == ["r1", "r2", "r4"]
        rows = TASKS[task].tokenize(splits, tokenizer, recipe, None)
        assert len(rows["train"]) == {"dpo": 3, "kto": 6}[task]


def refusal(capsys, *args) -> str:
    code, out, err = run_cli(capsys, *args)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1, err
    return err.strip()


def test_bad_input_exits_2_with_one_line(capsys, log_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ("feedback", "export")

    missing = refusal(capsys, *args, tmp_path / "nope", "-o", out, "--as", "sft")
    assert (
        missing == f"error: {tmp_path / 'nope'}: no such log folder (the --log-dir of migaki serve)"
    )

    no_store = refusal(capsys, *args, log_dir, "-o", out, "--as", "sft")
    assert "feedback.sqlite: no feedback here yet" in no_store

    FeedbackStore(log_dir)  # a store, but no entry in it
    no_entries = refusal(capsys, *args, log_dir, "-o", out, "--as", "sft")
    assert no_entries.endswith("feedback.sqlite: no feedback entries yet (POST /v1/feedback)")

    feedback(log_dir, ("r1", "up"), ("r2", "down"))
    nothing = refusal(capsys, *args, log_dir, "-o", out, "--as", "sft")
    assert nothing == (
        f"error: {log_dir / 'feedback.sqlite'}: nothing to export as sft (2 feedback entries; "
        "a rating and no correction (sft rows come from corrections): 2); sft rows need "
        "corrections (POST /v1/feedback with a correction); --as kto uses ratings"
    )

    broken = tmp_path / "broken"
    log_request(broken, "r1", "We open at ten.", messages=[HOURS])
    (broken / "feedback.sqlite").write_bytes(b"not a database, only text" * 100)
    unreadable = refusal(capsys, *args, broken, "-o", out, "--as", "kto")
    assert "feedback.sqlite: not a readable feedback store" in unreadable

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "requests.jsonl").write_text("\n")
    assert "the log is empty" in refusal(capsys, *args, empty, "-o", out, "--as", "kto")

    with open(log_dir / "requests.jsonl", "a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    corrupt = refusal(capsys, *args, log_dir, "-o", out, "--as", "kto")
    assert corrupt.startswith(f"error: {log_dir / 'requests.jsonl'}:5: not JSON")
    assert not out.exists()


def test_an_existing_file_is_replaced_only_with_force(capsys, log_dir, tmp_path):
    feedback(log_dir, ("r1", "up"))
    out = tmp_path / "kto.jsonl"
    out.write_text("keep me\n")
    refused = refusal(capsys, "feedback", "export", log_dir, "-o", out, "--as", "kto")
    assert refused == f"error: {out}: exists already; give --force to replace it"
    assert out.read_text() == "keep me\n"
    code, _, _ = export(capsys, log_dir, out, "kto", "--force")
    assert code == 0
    assert [row["response_id"] for row in read_rows(out)] == ["r1"]


def test_the_output_must_be_a_jsonl_file(capsys, log_dir, tmp_path):
    feedback(log_dir, ("r1", "up"))
    csv = refusal(capsys, "feedback", "export", log_dir, "-o", tmp_path / "rows.csv", "--as", "kto")
    assert csv == f"error: {tmp_path / 'rows.csv'}: name the output FILE.jsonl (one row a line)"

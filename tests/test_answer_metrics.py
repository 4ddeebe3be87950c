"""Generated answers scored against references: facts, character F1, stops, per language."""

import pytest

from migaki.data.formats import Example
from migaki.evaluate.answers import answer_metrics, char_f1, states_facts


def _row(question: str, answer: str, facts: list[str]) -> Example:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example("t.jsonl", 1, messages, meta={"facts": facts})


def test_facts_are_matched_after_width_and_case_folding():
    assert states_facts("お電話は０１２０－３９６－５１２まで", ["0120-396-512"])
    assert states_facts("Call SUPPORT today", ["support"])
    assert not states_facts("Call us", ["support"])
    assert char_f1("abc", "abc") == 1.0 and char_f1("abc", "xyz") == 0.0


def test_mixed_languages_are_scored_apart():
    rows = [
        _row("電話番号は？", "電話番号は0120-396-512です。", ["0120-396-512"]),
        _row("営業時間は？", "平日の9時から18時までです。", ["9時"]),
        _row("Phone number?", "Call 0120-396-512.", ["0120-396-512"]),
    ]
    answers = [("0120-396-512です", True), ("わかりません", False), ("Call 0120-396-512.", True)]
    metrics = answer_metrics(rows, answers)
    assert metrics["fact_accuracy"] == pytest.approx(2 / 3)
    assert metrics["rows_ja"] == 2 and metrics["rows_en"] == 1
    assert metrics["fact_accuracy_ja"] == 0.5 and metrics["fact_accuracy_en"] == 1.0
    assert metrics["stopped_ja"] == 0.5 and metrics["stopped_en"] == 1.0
    assert metrics["char_f1_en"] == 1.0 and 0 < metrics["char_f1_ja"] < 1


def test_one_language_adds_no_split():
    rows = [_row("Phone?", "Call 0120-396-512.", ["0120"])]
    metrics = answer_metrics(rows, [("Call 0120.", True)])
    assert metrics["fact_accuracy"] == 1.0
    assert not [key for key in metrics if key.endswith(("_ja", "_en"))]

"""The optional judge: prompts, score parsing (never guessed), row limits, a real tiny model."""

import copy

import pytest

from migaki.config import JudgeConfig
from migaki.errors import UserError
from migaki.evaluate import generation
from migaki.evaluate.judge import judge_answers, judge_prompt, parse_score


def rows(count: int) -> list[dict]:
    return [
        {"prompt": f"質問{i}は？", "reference": f"答え{i}です。", "answer": f"回答{i}", "f1": 0.5}
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Score: 4", 4),
        ("**Score:** 5\nThe answer is complete.", 5),
        ("The answer misses the price. score = 2", 2),
        ("Score is 3.", 3),
        ("スコア：４", 4),  # full-width digit and colon (NFKC)
        ("評価は2です", 2),
        ("I would give it 3 out of 5.", 3),  # no label: the first whole number in range
        ("Answer 12 is wrong, 0 points... 1", 1),  # 12 and 0 lie outside 1..5
        ("Score: 7", None),  # out of range: not moved into range
        ("Score: 4.5", None),  # not a whole number
        ("Score: 4.5 out of 5", None),  # nor read from the words after it
        ("Score: 4.0", 4),
        ("It is about 4.5", None),
        ("The answer is fine.", None),
        ("", None),
    ],
)
def test_scores_are_read_or_counted_unparsable(reply, score):
    assert parse_score(reply, 5) == score


def test_the_prompt_holds_rubric_question_reference_answer_and_scale():
    prompt = judge_prompt("Rate it.", 10, "Q?", "Ref.", "Ans.")
    assert prompt.startswith("Rate it.\n\nQuestion:\nQ?\n\nReference answer:\nRef.\n\n")
    assert "Answer to rate:\nAns." in prompt
    assert prompt.endswith('Reply with "Score: N", where N is a whole number from 1 to 10.')


@pytest.fixture
def fake_judge(monkeypatch):
    """A judge that replies from a list and records what it was asked; nothing is loaded."""
    calls = {"loads": [], "conversations": [], "max_new_tokens": []}

    def load(target, tuned=True, verify=False):
        calls["loads"].append((target, tuned))
        return "loaded"

    def generate(loaded, conversations, max_new_tokens=128, batch_size=32, temperature=0.0):
        assert loaded == "loaded"
        calls["conversations"] += conversations
        calls["max_new_tokens"].append(max_new_tokens)
        replies = calls["replies"][: len(conversations)]
        return [(reply, True) for reply in replies]

    monkeypatch.setattr(generation, "load_for_generation", load)
    monkeypatch.setattr(generation, "generate_answers", generate)
    return calls


def test_judge_counts_parsed_and_unparsable_and_leaves_rows_out(fake_judge):
    fake_judge["replies"] = ["Score: 5", "no idea", "Score: 2 " + "x" * 300, "Score: 9"]
    judge = JudgeConfig(model="judge-model", max_rows=4, scale=5)
    given = rows(6)
    before = copy.deepcopy(given)
    result = judge_answers(judge, given)
    assert result == {
        "model": "judge-model",
        "rubric": judge.rubric,
        "scale": 5,
        "rows": 4,
        "left_out": 2,
        "mean_score": 3.5,
        "parsed": 2,
        "unparsable": 2,
        "scores": [5, None, 2, None],
        "replies": ["Score: 5", "no idea", ("Score: 2 " + "x" * 300)[:200], "Score: 9"],
    }
    assert given == before  # the judge never touches the rows (or their metrics)
    assert fake_judge["loads"] == [("judge-model", True)]
    assert len(fake_judge["conversations"]) == 4
    [message] = fake_judge["conversations"][1]
    assert message["role"] == "user"
    assert message["content"] == judge_prompt(judge.rubric, 5, "質問1は？", "答え1です。", "回答1")
    assert fake_judge["max_new_tokens"] == [32]


def test_no_parsed_score_gives_no_mean_and_no_rows_load_nothing(fake_judge):
    fake_judge["replies"] = ["hmm"]
    result = judge_answers(JudgeConfig(model="m", max_rows=None), rows(1))
    assert (result["mean_score"], result["parsed"], result["unparsable"]) == (None, 0, 1)
    empty = judge_answers(JudgeConfig(model="m"), [])
    assert (empty["rows"], empty["left_out"], empty["scores"]) == (0, 0, [])
    assert fake_judge["loads"] == [("m", True)]  # the empty call loaded nothing


def test_an_already_loaded_judge_is_not_loaded_again(fake_judge):
    fake_judge["replies"] = ["Score: 1", "Score: 3"]
    result = judge_answers(JudgeConfig(model="m"), rows(2), loaded="loaded")
    assert result["scores"] == [1, 3]
    assert fake_judge["loads"] == []


def test_a_tiny_model_judges_end_to_end(tiny_model):
    given = rows(3)
    result = judge_answers(JudgeConfig(model=str(tiny_model), max_rows=2), given, max_new_tokens=4)
    assert (result["rows"], result["left_out"]) == (2, 1)
    assert len(result["scores"]) == len(result["replies"]) == 2
    assert result["parsed"] + result["unparsable"] == 2
    # a random model's reply holds a score only by chance; whatever it is, it is read the
    # same way as any reply
    assert result["scores"] == [parse_score(reply, 5) for reply in result["replies"]]


def test_an_unknown_judge_model_is_refused():
    with pytest.raises(UserError, match="unknown model 'no-such-judge'"):
        judge_answers(JudgeConfig(model="no-such-judge"), rows(1))

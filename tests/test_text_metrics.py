"""Generation metrics and format validity: each figure checked against the library that
defines it (the sacrebleu command line, rouge-score's own scorer), Japanese by morphemes."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from migaki.config import build_recipe
from migaki.data.formats import Example
from migaki.data.words import morphemes
from migaki.errors import UserError
from migaki.evaluate.answers import answer_metrics, row_scores, score_system, score_system_rows
from migaki.evaluate.choices import score_choices
from migaki.evaluate.format_check import answer_validator, format_valid, format_validity
from migaki.evaluate.text_metrics import (
    choice_confidence,
    exact_match,
    normalize_answer,
    text_figures,
    text_row,
)
from migaki.models.inference import load_for_inference

ENGLISH = [
    ("The kettle costs 4,980 yen including tax.", "The kettle costs 4,980 yen with tax."),
    ("Call 0120-396-512 on weekdays from 9 to 18.", "Please call 0120-396-512, weekdays 9-18."),
    ("Returns are accepted within 30 days.", "You can return it within thirty days."),
    ("The warranty lasts one year.", "The warranty lasts one year."),
    ("Reset it by holding the button for 5 seconds.", "Hold the power button to reset."),
]
JAPANESE = [
    ("電気ケトルの価格は税込4980円です。", "電気ケトルは税込で4980円です。"),
    ("お電話は平日9時から18時まで受け付けております。", "電話は平日の9時から18時までです。"),
    ("返品は30日以内に承ります。", "30日以内なら返品できます。"),
    ("保証期間は1年間です。", "保証期間は1年間です。"),
    ("ボタンを5秒間押し続けるとリセットされます。", "電源ボタンを押してください。"),
]


def _cli_scores(tmp_path, pairs, tokenize: str) -> tuple[float, float]:
    """BLEU and chrF of `pairs` (reference, answer) by the sacrebleu command line."""
    (tmp_path / "ref.txt").write_text("".join(r + "\n" for r, _ in pairs), encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("".join(h + "\n" for _, h in pairs), encoding="utf-8")
    command = [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt")]
    command += ["-i", str(tmp_path / "hyp.txt"), "-m", "bleu", "chrf", "-tok", tokenize]
    command += ["--format", "text", "--score-only", "--width", "6"]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    bleu, chrf = (float(line) for line in output.stdout.split())
    return bleu / 100, chrf / 100


@pytest.mark.parametrize(("pairs", "tokenize"), [(ENGLISH, "13a"), (JAPANESE, "ja-mecab")])
def test_corpus_bleu_and_chrf_equal_the_sacrebleu_command_line(tmp_path, pairs, tokenize):
    references, answers = [r for r, _ in pairs], [h for _, h in pairs]
    figures = text_figures(answers, references)
    bleu, chrf = _cli_scores(tmp_path, pairs, tokenize)
    assert 0 < bleu < 1 and 0 < chrf < 1
    assert figures["bleu"] == pytest.approx(bleu, abs=1e-6)
    assert figures["chrf"] == pytest.approx(chrf, abs=1e-6)


def test_sentence_bleu_and_chrf_equal_sacrebleus_sentence_functions():
    for reference, answer in ENGLISH:
        row = text_row(answer, reference)
        bleu = sacrebleu.sentence_bleu(answer, [reference]).score / 100
        assert row["bleu"] == pytest.approx(bleu)
        chrf = sacrebleu.sentence_chrf(answer, [reference]).score / 100
        assert row["chrf"] == pytest.approx(chrf)
    reference, answer = JAPANESE[0]
    expected = sacrebleu.sentence_bleu(answer, [reference], tokenize="ja-mecab").score / 100
    assert text_row(answer, reference)["bleu"] == pytest.approx(expected)


def test_english_rouge_equals_rouge_scores_own_scorer():
    library = RougeScorer(["rouge1", "rouge2", "rougeL"])
    for reference, answer in ENGLISH:
        expected = library.score(reference, answer)
        row = text_row(answer, reference)
        for name in ("rouge1", "rouge2", "rougeL"):
            assert row[name] == pytest.approx(expected[name].fmeasure)


def test_japanese_rouge_counts_morphemes_where_the_library_alone_scores_zero():
    reference, answer = "東京は晴れです", "東京は雨です"
    assert morphemes(reference) == ["東京", "は", "晴れ", "です"]
    assert morphemes(answer) == ["東京", "は", "雨", "です"]
    assert RougeScorer(["rouge1"]).score(reference, answer)["rouge1"].fmeasure == 0.0
    row = text_row(answer, reference)
    assert row["rouge1"] == pytest.approx(3 / 4)  # 東京 は です of 4 each side
    assert row["rouge2"] == pytest.approx(1 / 3)  # 東京は of 3 bigrams each side
    assert row["rougeL"] == pytest.approx(3 / 4)  # longest common subsequence 東京 は です
    assert row["language"] == row["reference_language"] == "ja"


def test_exact_match_folds_width_case_and_spacing_but_not_punctuation_or_word_breaks():
    assert exact_match("Tokyo\n", "tokyo")
    assert exact_match("０１２０－３９６－５１２", "0120-396-512")
    assert exact_match("  the   RED kettle ", "The red kettle")
    assert exact_match("ﾃｽﾄ", "テスト")
    assert not exact_match("a bc", "ab c")
    assert not exact_match("Tokyo.", "Tokyo")
    assert normalize_answer("Ａ\t B\n") == "a b"


def test_confidence_is_the_softmax_of_mean_logprob_per_token():
    # means per token: -1, -1, -3 (the second choice is long, not unlikely)
    confidence = choice_confidence([-2.0, -4.0, -3.0], [2, 4, 1], 0)
    assert confidence == pytest.approx(1 / (2 + math.exp(-2)))


def _schema(tmp_path, schema, name="schema.json"):
    path = tmp_path / name
    path.write_text(json.dumps(schema), encoding="utf-8")
    return str(path)


def test_json_answers_alone_or_in_one_fence():
    answers = [
        '{"name": "kettle", "price": 4980}',
        '```json\n{"name": "kettle"}\n```',
        "```\n[1, 2]\n```\n",
        '  "a string is JSON too"  ',
        'Here you are: {"name": "kettle"}',
        '```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```',
        "NaN",
        "{'name': 'kettle'}",
    ]
    assert format_validity(answers, "json") == [True] * 4 + [False] * 4
    assert format_valid(answers, "json") == 0.5
    assert format_validity(answers, "text") == [True] * len(answers)


def test_schema_file_validates_the_parsed_answer(tmp_path):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "price": {"type": "integer"}},
        "required": ["name"],
    }
    path = _schema(tmp_path, schema)
    answers = ['{"name": "kettle", "price": 4980}', '```json\n{"name": "k"}\n```', '{"price": 1}']
    answers += ['{"name": 3}', "not json"]
    assert format_validity(answers, path) == [True, True, False, False, False]


def test_the_schemas_own_draft_is_used(tmp_path):
    # draft 4's boolean exclusiveMinimum is not a valid draft 2020-12 schema
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "minimum": 5}
    draft4["exclusiveMinimum"] = True
    assert format_validity(["5", "6"], _schema(tmp_path, draft4)) == [False, True]
    del draft4["$schema"]
    with pytest.raises(UserError, match="Draft202012Validator"):
        answer_validator(_schema(tmp_path, draft4, "no_draft.json"))


def test_a_bad_schema_file_is_a_user_error_naming_it(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(UserError, match=r"missing\.json \(eval\.format\): no such"):
        format_validity(["{}"], missing)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.json .*not JSON"):
        answer_validator(str(tmp_path / "broken.json"))
    with pytest.raises(UserError, match=r"bad\.json .*not a valid .* at type"):
        answer_validator(_schema(tmp_path, {"type": 5}, "bad.json"))


def _row(question: str, reference: str, **meta) -> Example:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reference}]
    return Example("t.jsonl", 1, messages, meta=meta)


MIXED = [
    _row("値段は？", "電気ケトルは税込で4980円です。", facts=["4980"]),
    _row("保証は？", "保証期間は1年間です。"),
    _row("Price?", "The kettle costs 4,980 yen with tax.", facts=["4,980"]),
]
MIXED_ANSWERS = [
    ('{"answer": "税込4980円です"}', True),
    ("The warranty is one year.", False),
    ('```json\n{"answer": "4,980 yen"}\n```', True),
]


def test_mixed_languages_give_per_language_figures_beside_pooled_ones():
    metrics = answer_metrics(MIXED, MIXED_ANSWERS, "json")
    figures = ("exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "language_match")
    figures += ("char_f1", "stopped", "format_valid")
    for name in figures:
        assert {name, f"{name}_ja", f"{name}_en"} <= metrics.keys()
    assert metrics["rows_ja"] == 2 and metrics["rows_en"] == 1
    assert metrics["language_match"] == pytest.approx(2 / 3)  # one English answer to Japanese
    assert metrics["language_match_ja"] == 0.5 and metrics["language_match_en"] == 1.0
    assert metrics["format_valid"] == pytest.approx(2 / 3) and metrics["format_valid_ja"] == 0.5
    english = text_figures([MIXED_ANSWERS[2][0]], [MIXED[2].reference])
    assert metrics["bleu_en"] == pytest.approx(english["bleu"])
    assert "format_valid" not in answer_metrics(MIXED, MIXED_ANSWERS)


def test_row_scores_hold_each_rows_figures():
    rows = row_scores(MIXED, MIXED_ANSWERS, "json")
    assert list(rows[0]) == [
        "exact_match",
        "char_f1",
        "bleu",
        "chrf",
        "rouge1",
        "rouge2",
        "rougeL",
        "facts",
        "stopped",
        "language",
        "reference_language",
        "format_ok",
    ]
    assert [row["facts"] for row in rows] == [True, None, True]
    assert [row["language"] for row in rows] == ["ja", "en", "en"]
    assert [row["format_ok"] for row in rows] == [True, False, True]
    assert "format_ok" not in row_scores(MIXED, MIXED_ANSWERS)[0]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return replace(load_for_inference(tiny_model), precision="fp32")


def test_score_system_rows_gives_every_row_its_figures(loaded):
    choice = _row("Which colour?", "red", choices=["blue", "red", "green"], answer=1)
    rows = [MIXED[2], choice]
    metrics, answers, per_row = score_system_rows(loaded, rows, True, 4)
    assert {"choice_accuracy", "bleu", "chrf", "rougeL", "exact_match"} <= metrics.keys()
    assert per_row[0]["kind"] == "generation" and "format_ok" not in per_row[0]
    assert per_row[0]["char_f1"] == pytest.approx(metrics["char_f1"])
    picked = per_row[1]
    assert picked["kind"] == "choice" and picked["answer"] == 1
    assert picked["correct"] == (picked["pick"] == 1) == bool(metrics["choice_accuracy"])
    scores = score_choices(loaded, [choice])
    expected = choice_confidence(scores.logprobs[0], scores.tokens[0], scores.picks[0])
    assert picked["pick"] == scores.picks[0] and picked["confidence"] == pytest.approx(expected)
    assert answers[1] == choice.meta["choices"][picked["pick"]]
    assert score_system(loaded, rows, False, 4)[1] == {1: answers[1]}


def test_a_missing_schema_is_named_before_anything_runs(loaded, tmp_path):
    recipe = build_recipe(
        {
            "model": {"base": "tiny"},
            "data": {"train": "train.jsonl"},
            "eval": {"format": str(tmp_path / "answer_schema.json")},
        }
    )
    # a model that fails if called: the error must come before any forward pass
    broken = replace(loaded, recipe=recipe, model=None)
    with pytest.raises(UserError, match=r"answer_schema\.json \(eval\.format\)"):
        score_system_rows(broken, [MIXED[2]], True, 4)

"""Multiple-choice rows: the `choice` format, and scoring each choice by its log-likelihood."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import write_jsonl, write_recipe

from migaki.cli import main
from migaki.config import CleanConfig, DataConfig, MethodConfig
from migaki.data import read_records, to_examples
from migaki.data.batches import collate
from migaki.data.clean import clean_records
from migaki.data.formats import choice_prompt, convert, detect_format, text_paths
from migaki.data.load import Record
from migaki.data.prepare import prepare_data
from migaki.data.split import write_split
from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example
from migaki.data.validate import validate_file
from migaki.errors import DataError
from migaki.evaluate.choices import (
    ChoiceScores,
    answer_logprobs,
    choice_logprobs,
    is_choice_example,
    score_choices,
    tokenize_choices,
)
from migaki.methods import apply_method
from migaki.models.inference import load_for_inference

NUMBERED = {
    "q_id": 7,
    "question": "主に子ども向けのものはどれ？",
    "choice0": "世界",
    "choice1": "写真集",
    "choice2": "絵本",
    "choice3": "論文",
    "choice4": "図鑑",
    "label": 2,
}
LISTED = {"question": "Which one is a fruit?", "choices": ["kettle", " apple ", "fan"], "label": 1}


def choice_rows(count: int) -> list[dict]:
    """Questions of both layouts, half Japanese, with labels as index, digit string and text."""
    rows = []
    for i in range(count):
        if i % 2:
            rows.append(NUMBERED | {"q_id": i, "question": f"製品{i}はどれ？", "label": i % 5})
        else:
            choices = [f"product {i}", f"kettle {i}", "support"]
            label = [i % 3, str(i % 3), choices[i % 3]][i % 3]
            rows.append({"question": f"Which is {i}?", "choices": choices, "label": label})
    return rows


def record(fields: dict, line: int = 1) -> Record:
    return Record("mc.jsonl", line, fields)


# ---------------------------------------------------------------- the format


def test_numbered_fields_become_a_question_with_the_right_choice_as_answer():
    example = convert(record(NUMBERED), "choice")
    assert example.messages == [
        {
            "role": "user",
            "content": "主に子ども向けのものはどれ？\n\n- 世界\n- 写真集\n- 絵本\n- 論文\n- 図鑑",
        },
        {"role": "assistant", "content": "絵本"},
    ]
    assert example.meta == {
        "q_id": 7,
        "choices": ["世界", "写真集", "絵本", "論文", "図鑑"],
        "answer": 2,
    }


@pytest.mark.parametrize("label", [1, 1.0, "1", " 1 ", "apple", "ａｐｐｌｅ"])
def test_a_choices_list_takes_the_label_as_index_digits_or_text(label):
    example = convert(record(LISTED | {"label": label}), "choice")
    assert example.meta == {"choices": ["kettle", "apple", "fan"], "answer": 1}
    assert example.reference == "apple"
    assert example.prompt_messages[0]["content"] == choice_prompt(
        "Which one is a fruit?", ["kettle", "apple", "fan"]
    )


def test_choice_prompt_question_keeps_the_choices_out_of_the_user_turn():
    example = convert(record(NUMBERED), "choice", choice_prompt="question")
    assert example.messages == [
        {"role": "user", "content": "主に子ども向けのものはどれ？"},
        {"role": "assistant", "content": "絵本"},
    ]
    assert example.meta == convert(record(NUMBERED), "choice").meta  # still scorable


def test_prepare_renders_choice_rows_as_the_recipe_asks(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", choice_rows(10))
    for style in ("listed", "question"):
        data = DataConfig(train=str(path), choice_prompt=style, split={"val": 0.0, "test": 0.0})
        examples = prepare_data(data, seed=0).examples["train"]
        listed = [
            f"\n- {e.meta['choices'][0]}" in e.prompt_messages[-1]["content"] for e in examples
        ]
        assert all(listed) if style == "listed" else not any(listed)


def test_detection_finds_choice_rows_and_leaves_other_formats_alone():
    assert detect_format(NUMBERED) == "choice"
    assert detect_format(LISTED) == "choice"
    assert (
        detect_format({"question": "Q", "choices": ["a", "b"], "answer": 0}, "answer") == "choice"
    )
    assert detect_format({"question": "Q", "choices": ["a", "b"]}) is None  # no label
    assert detect_format({"text": "great", "label": "pos"}) == "classification"
    assert detect_format({"question": "Q", "text": "t", "label": 1}) == "classification"
    # the split files `migaki train` writes keep choices and answer beside the messages
    written = {"messages": [], "choices": ["a", "b"], "answer": 1}
    assert detect_format(written) == "messages"


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ({"question": None}, "missing_field", "missing field 'question'"),
        ({"question": "  "}, "empty_field", "field 'question' is empty"),
        ({"choices": None}, "missing_field", "missing 'choices'"),
        ({"choices": "a, b"}, "wrong_type", "'choices' must be a list of texts"),
        ({"choices": ["only"]}, "too_few_choices", "at least 2 choices, this one has 1"),
        ({"choices": ["a", " "]}, "empty_field", "choices[1] is empty"),
        ({"choices": ["a", 3]}, "wrong_type", "choices[1] must be text, got int"),
        ({"label": None}, "missing_field", "missing label 'label'"),
        ({"label": 3}, "label_not_in_set", "label 3 is out of range: 3 choices, so 0 to 2"),
        ({"label": -1}, "label_not_in_set", "out of range"),
        ({"label": "pear"}, "label_not_in_set", "'pear' is not one of the choices"),
        ({"label": True}, "wrong_type", "must be an index or a text"),
        ({"choices": ["a", "b", "a"], "label": "a"}, "ambiguous_label", "matches choices [0, 2]"),
    ],
)
def test_each_problem_is_a_data_error_with_its_kind(change, kind, message):
    fields = {k: v for k, v in (LISTED | change).items() if v is not None}
    with pytest.raises(DataError) as error:
        convert(record(fields, 3), "choice")
    assert error.value.kind == kind
    assert str(error.value).startswith("mc.jsonl:3: ") and message in str(error.value)


def test_numbered_choices_must_count_up_from_zero():
    fields = {k: v for k, v in NUMBERED.items() if k != "choice2"}
    with pytest.raises(DataError, match="'choice2' is missing") as error:
        convert(record(fields), "choice")
    assert error.value.kind == "missing_field"
    single = {"question": "Q", "choice0": "a", "label": 0}
    with pytest.raises(DataError, match="at least 2 choices"):
        convert(record(single), "choice")


def test_validate_counts_every_problem_of_a_choice_file(tmp_path):
    rows = [*choice_rows(4), LISTED | {"label": 7}, {"question": "Q", "choices": ["x"], "label": 0}]
    check = validate_file(write_jsonl(tmp_path / "mc.jsonl", rows))
    assert check.fmt == "choice" and len(check.examples) == 4
    assert check.by_kind() == {"label_not_in_set": 1, "too_few_choices": 1}
    assert [p.line for p in check.problems] == [5, 6]


def test_cleaning_reaches_question_and_choices_and_a_text_label_still_matches():
    fields = {"question": "Ｗｈｉｃｈ？", "choices": ["ＡＢＣ", "def"], "label": "ＡＢＣ"}
    assert text_paths(fields, "choice") == [("question",), ("choices", 0), ("choices", 1)]
    config = CleanConfig(pii=None, filter=None, dedup=None)
    (cleaned,), _ = clean_records([record(fields)], "choice", config)
    example = convert(cleaned, "choice")
    assert example.meta["choices"] == ["ABC", "def"] and example.meta["answer"] == 0
    assert example.prompt_messages[0]["content"].startswith("Which?")


def test_prepare_splits_choice_rows_and_the_written_split_keeps_them_scorable(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", choice_rows(40))
    data = DataConfig(train=str(path), split={"val": 0.1, "test": 0.1})
    prepared = prepare_data(data, seed=0)
    assert {name: len(rows) for name, rows in prepared.parts.items()} == {
        "train": 32,
        "val": 4,
        "test": 4,
    }
    assert prepared.formats["test"] == "choice"
    write_split(prepared.examples["test"], tmp_path / "test.jsonl")
    again = to_examples(read_records(tmp_path / "test.jsonl"))
    assert all(is_choice_example(e) for e in again)
    assert [e.messages for e in again] == [e.messages for e in prepared.examples["test"]]
    assert [e.meta["answer"] for e in again] == [
        e.meta["answer"] for e in prepared.examples["test"]
    ]


# ---------------------------------------------------------------- scoring


def test_the_right_choice_is_rendered_exactly_as_training_renders_the_row(tokenizer):
    example = convert(record(NUMBERED), "choice")
    for system_prompt in (None, "You answer quizzes."):
        rows = tokenize_choices(example, tokenizer, system_prompt)
        trained = tokenize_example(example, tokenizer, system_prompt=system_prompt)
        assert (rows[2].input_ids, rows[2].labels) == (trained.input_ids, trained.labels)
        prompt_length = len(rows[0].input_ids) - rows[0].trainable_tokens
        for row, choice in zip(rows, example.meta["choices"], strict=True):
            answer = [t for t in row.labels if t != IGNORE_INDEX]
            assert tokenizer.decode(answer) == choice + "<|im_end|>"
            assert len(row.input_ids) - row.trainable_tokens == prompt_length


@pytest.fixture(scope="module")
def loaded(tiny_model):
    # fp32 whatever this CPU's `auto` picks: the references below are fp32 full-logit sums
    return replace(load_for_inference(tiny_model), precision="fp32")


def plain_logprob(model, row) -> float:
    """The reference: full logits of one unpadded row, log-softmax, summed over answer tokens."""
    ids = torch.tensor([row.input_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    return sum(
        logps[position - 1, token].item()
        for position, token in enumerate(row.labels)
        if position > 0 and token != IGNORE_INDEX
    )


def test_choice_logprobs_equal_a_plain_full_logits_computation(loaded):
    examples = [convert(record(fields, i), "choice") for i, fields in enumerate(choice_rows(3))]
    rows = [row for e in examples for row in tokenize_choices(e, loaded.tokenizer)]
    assert len({len(row.input_ids) for row in rows}) > 1  # the batch is really padded
    batch = collate(rows, loaded.tokenizer.pad_token_id)
    sums, counts = answer_logprobs(loaded.model, batch, chunk_rows=7)  # chunks cut across rows
    expected = [plain_logprob(loaded.model, row) for row in rows]
    assert sums.tolist() == pytest.approx(expected, abs=1e-4)
    assert counts.tolist() == [row.trainable_tokens for row in rows]
    # many questions per pass, each prompt run once and its choices packed after it
    scores = score_choices(loaded, examples)
    assert [lp for row in scores.logprobs for lp in row] == pytest.approx(expected, abs=1e-4)
    assert [n for row in scores.tokens for n in row] == counts.tolist()


def test_choices_that_start_alike_share_answer_tokens_in_the_prefix_and_still_match(loaded):
    fields = {"question": "Which kettle?", "choices": ["kettle costs", "kettle"], "label": 0}
    example = convert(record(fields), "choice")
    rows = tokenize_choices(example, loaded.tokenizer)
    first = next(i for i, label in enumerate(rows[1].labels) if label != IGNORE_INDEX)
    assert rows[0].input_ids[: first + 1] == rows[1].input_ids[: first + 1]  # "kettle" shared
    expected = [plain_logprob(loaded.model, row) for row in rows]
    assert score_choices(loaded, [example]).logprobs[0] == pytest.approx(expected, abs=1e-4)


def test_a_row_counts_as_correct_when_its_answer_is_the_most_likely_choice(loaded):
    example = convert(record(NUMBERED), "choice")
    likelihoods = score_choices(loaded, [example]).logprobs[0]
    best = max(range(5), key=likelihoods.__getitem__)
    example.meta["answer"] = best
    assert score_choices(loaded, [example]).metrics()["choice_accuracy"] == 1.0
    example.meta["answer"] = (best + 1) % 5
    assert score_choices(loaded, [example]).metrics()["choice_accuracy"] == 0.0


def one_row_at_a_time(model, examples, tokenizer, system_prompt=None):
    """The reference: each choice row alone through `answer_logprobs`, no padding, no packing."""
    logprobs, tokens = [], []
    for example in examples:
        rows = tokenize_choices(example, tokenizer, system_prompt)
        alone = [answer_logprobs(model, collate([row], tokenizer.pad_token_id)) for row in rows]
        logprobs.append([sums.item() for sums, _ in alone])
        tokens.append([counts.item() for _, counts in alone])
    return logprobs, tokens


def assert_same_scores(scores, logprobs, tokens):
    assert len(scores.logprobs) == len(logprobs)
    for got, expected in zip(scores.logprobs, logprobs, strict=True):
        assert got == pytest.approx(expected, abs=1e-4)
    assert scores.tokens == tokens
    assert scores.picks == [max(range(len(r)), key=lambda i: (r[i], -i)) for r in logprobs]


def many_questions(count: int = 9):
    """Questions of 3 and 5 choices, English and Japanese, of different lengths."""
    rows = choice_rows(count)
    rows[4] = rows[4] | {"question": "Which one of these many things is it, then? " * 4}
    rows[3] = rows[3] | {"choice1": "写真集と絵本と図鑑" * 3}  # one long choice
    return [convert(record(fields, i), "choice") for i, fields in enumerate(rows)]


@pytest.mark.parametrize("batch_size", [1, 5, 8, 1000])
def test_batched_choice_scores_equal_each_row_scored_alone(loaded, batch_size):
    examples = many_questions()
    with torch.no_grad():
        logprobs, tokens = one_row_at_a_time(loaded.model, examples, loaded.tokenizer)
    scores = score_choices(loaded, examples, batch_size=batch_size)
    assert_same_scores(scores, logprobs, tokens)
    assert scores.answers == [e.meta["answer"] for e in examples]


def test_batched_choice_scores_hold_with_a_system_prompt_and_eager_attention(tiny_model):
    loaded = load_for_inference(tiny_model)
    loaded.model.set_attn_implementation("eager")  # takes the additive form of the packed mask
    recipe = SimpleNamespace(
        data=SimpleNamespace(system_prompt="You answer quizzes."),
        eval=SimpleNamespace(batch_size=7),  # eval.batch_size: choice rows per pass
    )
    loaded = replace(loaded, recipe=recipe, precision="fp32")
    examples = many_questions()
    with torch.no_grad():
        logprobs, tokens = one_row_at_a_time(
            loaded.model, examples, loaded.tokenizer, "You answer quizzes."
        )
    assert_same_scores(score_choices(loaded, examples), logprobs, tokens)


def test_rows_without_a_common_start_or_beyond_a_window_are_still_scored_alone(loaded, monkeypatch):
    tokenizer, model = loaded.tokenizer, loaded.model
    rows = tokenize_choices(many_questions()[1], tokenizer)
    # a question whose rows share nothing with the other's: no common start is cached
    other = [TokenizedExample(row.input_ids[1:], row.labels[1:]) for row in rows[:2]]
    questions = [rows, other]
    with torch.no_grad():
        expected = [
            [answer_logprobs(model, collate([row], tokenizer.pad_token_id))[0].item() for row in q]
            for q in questions
        ]
        scored = choice_logprobs(model, questions, tokenizer.pad_token_id, batch_size=4)
        assert [sums.tolist() for sums, _ in scored] == [
            pytest.approx(e, abs=1e-4) for e in expected
        ]
        # rows longer than a sliding attention window run as plain padded rows
        monkeypatch.setattr(model.config, "sliding_window", 8, raising=False)
        scored = choice_logprobs(model, questions, tokenizer.pad_token_id, batch_size=3)
    assert [sums.tolist() for sums, _ in scored] == [pytest.approx(e, abs=1e-4) for e in expected]
    assert [counts.tolist() for _, counts in scored] == [
        [row.trainable_tokens for row in q] for q in questions
    ]


@pytest.mark.parametrize("name", ["prompt", "prefix"])
def test_prompt_learning_models_are_scored_like_each_row_alone(tiny_model, name):
    base = load_for_inference(tiny_model)
    torch.manual_seed(0)
    model = apply_method(base.model, MethodConfig(name=name, num_virtual_tokens=4)).eval()
    loaded = replace(base, model=model, precision="fp32")
    examples = many_questions(5)
    with torch.no_grad():
        logprobs, tokens = one_row_at_a_time(model, examples, loaded.tokenizer)
    assert_same_scores(score_choices(loaded, examples, batch_size=6), logprobs, tokens)


def test_metrics_by_sum_and_by_mean_per_token():
    scores = ChoiceScores(
        logprobs=[[-1.0, -2.0], [-5.0, -3.0, -4.0]], tokens=[[1, 4], [5, 1, 1]], answers=[0, 0]
    )
    assert scores.picks == [0, 1] and scores.picks_norm == [1, 0]
    assert scores.metrics() == {
        "choice_accuracy": 0.5,
        "choice_accuracy_norm": 0.5,
        "choice_chance": pytest.approx((1 / 2 + 1 / 3) / 2),
        "choice_rows": 2,
    }


# ---------------------------------------------------------------- migaki eval


def test_eval_of_a_bare_model_on_choice_data(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "mc.jsonl", choice_rows(6))
    code = main(["eval", str(tiny_model), "--data", str(data), "--limit", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "4 rows from" in out
    assert "choice_accuracy_norm" in out and "choice_chance" in out and "perplexity" in out
    assert "char_f1" not in out  # choice rows are scored, not generated
    assert main(["eval", str(tiny_model), "--data", str(data), "--choice-prompt", "question"]) == 0
    assert "6 rows from" in capsys.readouterr().out


def test_eval_of_a_bare_model_reads_the_label_field_it_is_told(tmp_path, tiny_model, capsys):
    rows = [
        {"question": f"Which is {i}?", "choices": ["x", "y z"], "gold": i % 2} for i in range(3)
    ]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    assert main(["eval", str(tiny_model), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert (
        "mc.jsonl" in err and "name it (data.label_column, or migaki eval's --label-column" in err
    )
    from migaki.evaluate import evaluate

    result = evaluate(tiny_model, data=data, generate=False, label_column="gold")
    assert [s["reference"] for s in result["samples"]] == ["x", "y z", "x"]
    assert main(["eval", str(tiny_model), "--data", str(data), "--label-column", "gold"]) == 0


def test_a_choice_prompt_on_data_without_choices_says_it_does_nothing(tmp_path, tiny_model, caplog):
    rows = [{"prompt": f"Say {i}.", "completion": f"{i}."} for i in range(2)]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    with caplog.at_level("WARNING", logger="migaki"):
        assert main(["eval", str(tiny_model), "--data", str(data), "--no-generate",
                     "--choice-prompt", "question"]) == 0  # fmt: skip
    assert "--choice-prompt has no effect" in caplog.text


def test_eval_of_a_run_trained_on_choice_data(tmp_path, tiny_model, capsys, caplog):
    data = write_jsonl(tmp_path / "mc.jsonl", choice_rows(20))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        data={"max_length": 256, "split": {"val": 0.2, "test": 0.2}},
        train={"max_steps": 2, "eval_every": 2},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    assert main(["eval", str(run), "--compare-base"]) == 0
    capsys.readouterr()
    result = json.loads((run / "eval.json").read_text())
    assert result["rows"] == 4 and set(result["systems"]) == {"tuned", "base"}
    for metrics in result["systems"].values():
        assert metrics["choice_rows"] == 4 and 0 <= metrics["choice_accuracy"] <= 1
        assert metrics["choice_chance"] == pytest.approx(
            sum(
                1 / len(json.loads(line)["choices"])
                for line in (run / "data" / "test.jsonl").read_text().splitlines()
            )
            / 4
        )
    for sample in result["samples"]:
        assert sample["tuned"] in sample["prompt"] and sample["base"] in sample["prompt"]
    # the run's own split was rendered when it was prepared: another rendering cannot apply
    with caplog.at_level("WARNING", logger="migaki"):
        assert main(["eval", str(run), "--choice-prompt", "question", "--label-column", "x"]) == 0
    assert "--label-column has no effect without --data" in caplog.text
    assert "no effect on the run's own test split, rendered as data.choice_prompt listed" in (
        caplog.text
    )
    again = json.loads((run / "eval.json").read_text())
    assert [s["prompt"] for s in again["samples"]] == [s["prompt"] for s in result["samples"]]


def test_eval_reads_raw_choice_data_as_the_run_trained_unless_told_otherwise(tmp_path, tiny_model):
    from migaki.evaluate import evaluate

    rows = [
        {"q": f"Which is {i}?", "choices": ["a b", "c d", "e"], "gold": i % 3} for i in range(8)
    ]
    rows = [{"question": r.pop("q"), **r} for r in rows]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        data={"choice_prompt": "question", "label_column": "gold", "split": {"val": 0.25}},
        train={"max_steps": 1, "eval_every": 1},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    trained = [json.loads(line) for line in (run / "data" / "train.jsonl").read_text().splitlines()]
    assert all(row["messages"][-2]["content"].startswith("Which is") for row in trained)
    assert not any("- a b" in row["messages"][-2]["content"] for row in trained)
    # the raw file: its label column and user turn as the recipe had them
    as_trained = evaluate(run, data=data, generate=False, write=False)
    assert as_trained["rows"] == 8
    assert [s["prompt"] for s in as_trained["samples"]] == [r["question"] for r in rows]
    assert [s["reference"] for s in as_trained["samples"]] == [
        r["choices"][r["gold"]] for r in rows
    ]
    listed = evaluate(run, data=data, generate=False, write=False, choice_prompt="listed")
    assert all("\n- a b\n- c d\n- e" in s["prompt"] for s in listed["samples"])
    assert listed["systems"]["tuned"]["choice_rows"] == 8


def test_a_bad_choice_prompt_is_refused_naming_the_key(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "mc.jsonl", choice_rows(4))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, data={"choice_prompt": "inline"})
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "data.choice_prompt" in capsys.readouterr().err

"""`migaki compare`: five systems on the same rows, their prompts, costs and the
recommendation that follows from the numbers."""

import json

import pytest
from conftest import qa_rows, run_cli, write_jsonl, write_recipe

from migaki.data import Example
from migaki.evaluate.prompting import prompt_tokens, question_of, with_passages, with_shots
from migaki.evaluate.recommend import System, paired_interval, recommend
from migaki.testing import build_tiny_encoder
from migaki.train import train


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "model")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, encoder):
    from migaki.config import load_recipe

    folder = tmp_path_factory.mktemp("compare")
    data = write_jsonl(folder / "qa.jsonl", qa_rows(40))
    docs = folder / "docs"
    docs.mkdir()
    (docs / "prices.txt").write_text(
        "Product 3 costs 1003 yen.\n\n製品5は1005円です。\n\nShipping is free.", "utf-8"
    )
    recipe = write_recipe(
        folder / "recipe.yaml",
        tiny_model,
        data,
        compare={"documents": [str(docs)], "k": 2, "encoder": str(encoder)},
        eval={"max_new_tokens": 8},
    )
    return train(load_recipe(recipe), out=folder / "run")


def _example(question: str, answer: str, **meta) -> Example:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example("t.jsonl", 1, messages=messages, meta=meta)


def test_few_shot_puts_solved_examples_before_the_question():
    row = _example("How much is B?", "B costs 2.")
    shots = [_example("How much is A?", "A costs 1."), _example("Price of C?", "C costs 3.")]
    prompted = with_shots(row, shots)
    assert [m["content"] for m in prompted.messages] == [
        "How much is A?",
        "A costs 1.",
        "Price of C?",
        "C costs 3.",
        "How much is B?",
        "B costs 2.",
    ]
    assert prompted.reference == row.reference and question_of(prompted) == "How much is B?"


def test_rag_prompt_lists_passages_in_the_questions_language():
    english = with_passages(_example("How much is B?", "2"), ["B costs 2.", "C costs 3."])
    assert english.prompt_messages[-1]["content"].splitlines() == [
        "Use the following reference information to answer the question.",
        "[1] B costs 2.",
        "[2] C costs 3.",
        "",
        "Question: How much is B?",
    ]
    japanese = with_passages(_example("Bの値段は？", "2円"), ["Bは2円です。"])
    assert japanese.prompt_messages[-1]["content"].startswith("次の参考情報")
    assert japanese.reference == "2円"


def test_prompt_tokens_count_the_rendered_prompt(tokenizer):
    row = _example("How much is B?", "B costs 2.")
    longer = with_shots(row, [_example("How much is A?", "A costs 1.")])
    assert prompt_tokens(tokenizer, [longer], None) > prompt_tokens(tokenizer, [row], None) > 0


def test_paired_interval_separates_a_real_gap_from_noise():
    better, worse = [1.0] * 30, [0.0] * 15 + [1.0] * 15
    low, high = paired_interval(better, worse)
    assert 0 < low <= 0.5 <= high
    same = [1.0, 0.0] * 15
    low, high = paired_interval(same, list(reversed(same)))
    assert low < 0 < high


def _system(name, score, rows, tokens):
    correct = round(score * rows)
    return System(name, score, [1.0] * correct + [0.0] * (rows - correct), tokens, 0.1)


def test_recommendation_says_the_numbers_and_picks_the_trained_model():
    text = recommend(
        [
            _system("base", 0.1, 40, 50),
            _system("few_shot", 0.3, 40, 300),
            _system("rag", 0.6, 40, 250),
            _system("tuned", 0.9, 40, 50),
        ],
        "fact_accuracy",
        8.2,
    )
    assert "The fine-tuned model beats RAG on the base model by 30.0 points of fact" in text
    assert "90.0% against 60.0% (95% interval" in text
    assert "with 1/5.0 of the prompt tokens (50 against 250 tokens per call)" in text
    assert "RAG alone reaches 67% of the fine-tuned model's fact accuracy" in text
    assert "Training cost 8.2 minutes, once." in text
    assert text.endswith("Pick the fine-tuned model.")


def test_recommendation_within_noise_picks_the_cheaper_call():
    text = recommend(
        [_system("few_shot", 0.5, 20, 400), _system("tuned", 0.55, 20, 60)], "char_f1", None
    )
    assert "is within noise of few-shot prompting (+5.0 points of character F1)" in text
    assert "pick the fine-tuned model (fewer prompt tokens per call)" in text
    worse = recommend([_system("base", 0.9, 40, 50), _system("tuned", 0.2, 40, 50)], "x", 1.0)
    assert "trails the base model zero-shot by 70.0 points of x" in worse
    assert "Do not fine-tune for this: pick the base model zero-shot." in worse


def test_compare_a_run_scores_five_systems_on_the_same_rows(run, capsys):
    code, out, err = run_cli(capsys, "compare", run)
    assert code == 0, err
    result = json.loads((run / "compare.json").read_text())
    systems = result["systems"]
    assert list(systems) == ["base", "few_shot", "rag", "tuned", "tuned_rag"]
    assert result["rows"] == 4 and result["primary"] == "fact_accuracy"
    for entry in systems.values():
        assert {"char_f1", "fact_accuracy", "loss"} <= set(entry["metrics"])
        assert entry["latency_s"] > 0 and entry["prompt_tokens"] > 0
    tokens = {name: entry["prompt_tokens"] for name, entry in systems.items()}
    assert tokens["base"] == tokens["tuned"] < tokens["rag"] == tokens["tuned_rag"]
    assert tokens["base"] < tokens["few_shot"]
    assert result["training"]["minutes"] >= 0 and result["training"]["steps"] == 6
    assert result["recommendation"] in out.replace("\n", " ")
    assert "fact_accuracy *" in out
    sample = result["samples"][0]
    assert {"prompt", "reference", "base", "few_shot", "rag", "tuned", "tuned_rag"} <= set(sample)
    assert "compare" in (run / "report.html").read_text(encoding="utf-8").lower()


def test_compare_a_recipe_runs_the_untrained_systems(run, capsys, caplog):
    recipe = run / "recipe.yaml"
    systems = ["--systems", "base", "tuned"]
    code, out, err = run_cli(capsys, "compare", recipe, *systems, "--limit", "2")
    assert code == 0, err
    assert "base" in out and "tuned " not in out
    assert "Only untrained systems ran" in out.replace("\n", " ")


def test_compare_refuses_what_it_cannot_score(run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "compare", tmp_path)
    assert code == 2 and "neither a run directory nor a recipe" in err
    code, _, err = run_cli(capsys, "compare", run, "train.lr=1")
    assert code == 2 and "overrides apply to a recipe" in err


def _sentiment_run(tmp_path, model, encoder, capsys):
    from test_classification import sentiment_rows

    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(120))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model,
        data,
        task="classification",
        method={"name": "full"},
        train={"max_steps": 30, "batch_size": 16, "lr": 5e-3, "eval_every": 30},
        compare={"encoder": str(encoder), "k": 3},
    )
    run = tmp_path / "run"
    assert run_cli(capsys, "train", recipe, "--out", run)[0] == 0
    return run


def test_compare_an_encoder_classifier_with_nearest_neighbour_labels(tmp_path, encoder, capsys):
    run = _sentiment_run(tmp_path, encoder, encoder, capsys)
    code, out, err = run_cli(capsys, "compare", run)
    assert code == 0, err
    result = json.loads((run / "compare.json").read_text())
    assert list(result["systems"]) == ["knn", "tuned"] and result["primary"] == "accuracy"
    assert result["systems"]["tuned"]["metrics"]["accuracy"] >= 0.9
    for entry in result["systems"].values():
        assert {"accuracy", "f1_macro"} <= set(entry["metrics"])
    # an encoder base cannot read labels in context; RAG does not apply to labels
    notes = " ".join(result["notes"])
    assert "base: the base model does not generate text" in notes
    assert "rag: retrieval does not apply to labels" in notes
    assert result["recommendation"] in out.replace("\n", " ")


def test_compare_a_decoder_classifier_reads_labels_in_context(
    tmp_path, tiny_model, encoder, capsys
):
    run = _sentiment_run(tmp_path, tiny_model, encoder, capsys)
    code, _, err = run_cli(capsys, "compare", run, "--systems", "base", "few_shot", "tuned")
    assert code == 0, err
    result = json.loads((run / "compare.json").read_text())
    assert list(result["systems"]) == ["knn", "base", "few_shot", "tuned"]
    tokens = {name: entry["prompt_tokens"] for name, entry in result["systems"].items()}
    assert tokens["few_shot"] > tokens["base"] > 0
    base = result["systems"]["base"]["metrics"]
    assert base["accuracy"] == base["choice_accuracy"] and 0 <= base["f1_macro"] <= 1

"""Error analysis, slices, counterfactual swaps and forgetting in `migaki eval`: hand-built
row records with their expected figures, swaps that must not touch other words, errors.csv
read back, per-row losses equal to the training loss of each row, the forgetting flag on
tiny models, and a classification run evaluated with slices and a counterfactual."""

import copy
import csv
import json
import math

import pytest
import torch
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.cli import main
from migaki.config import load_recipe
from migaki.data.batches import collate
from migaki.data.formats import Example, to_examples
from migaki.data.load import Record
from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample, render_prompt, tokenize_example
from migaki.evaluate.analysis import error_analysis, row_losses, write_error_csv
from migaki.evaluate.forgetting import forgetting_report, reference_rows, shipped_reference
from migaki.evaluate.slices import (
    counterfactual_report,
    counterfactual_rows,
    slice_metrics,
    term_swapper,
)
from migaki.models import ModelSource
from migaki.models.inference import LoadedModel
from migaki.models.load import load_causal_lm
from migaki.objectives import causal_lm_loss
from migaki.testing import build_tiny_encoder


def gen(index, prompt, reference, answer, language, f1, loss=None, confidence=None, **meta):
    return {
        "index": index,
        "kind": "generation",
        "prompt": prompt,
        "reference": reference,
        "answer": answer,
        "language": language,
        "char_f1": f1,
        "loss": loss,
        "confidence": confidence,
        "meta": meta,
    }


def picked(index, kind, prompt, reference, answer, confidence, loss=None):
    return {
        "index": index,
        "kind": kind,
        "prompt": prompt,
        "reference": reference,
        "answer": answer,
        "language": "en",
        "correct": reference == answer,
        "confidence": confidence,
        "loss": loss,
        "meta": {},
    }


RECORDS = [
    gen(0, "How much is the kettle?", "It costs 6,980 yen.", "It costs 6,980 yen.", "en", 1.0,
        0.5, 0.9, product="kettle"),
    gen(1, "ケトルの値段は？", "6,980円です。", "5,000円です。", "ja", 0.4, 2.0, 0.8,
        product="ケトル"),
    gen(2, "x" * 60, "Open 9:30.", "=1+1", "en", 0.1, 3.0, 0.2),
    gen(3, "営業時間は？", "9時30分からです。", "9時30分からです", "ja", 0.6, 1.0),
    picked(4, "choice", "Pick: A or B", "A", "B", 0.7, 1.5),
    picked(5, "choice", "Pick again", "A", "A", 0.6),
    picked(6, "classification", "noisy fan", "neg", "pos", 0.95, 2.5),
    {"index": 7, "kind": "generation", "prompt": "p", "reference": "r", "answer": "a",
     "language": "en", "meta": {}},
]  # fmt: skip


def indices(rows):
    return [row["index"] for row in rows]


def test_error_analysis_of_hand_built_rows():
    result = error_analysis(RECORDS, "char_f1")
    assert result["metric"] == "char_f1"
    summary = result["summary"]
    assert (summary["rows"], summary["scored"], summary["errors"]) == (8, 7, 4)
    assert summary["error_rate"] == 0.5714
    assert "char_f1 below 0.5" in summary["error_rule"]
    # equal scores (4 and 6 both 0): the higher loss first; no loss last
    assert indices(result["worst_by_metric"]) == [6, 4, 2, 1, 3, 0, 5]
    assert indices(result["worst_by_loss"]) == [2, 6, 1, 4, 3, 0]
    assert indices(result["worst_by_confidence"]) == [6, 1, 4, 2]  # confident mistakes
    assert result["worst_by_confidence"][1]["answer"] == "5,000円です。"
    assert result["by_label"] == [
        {"label": "A", "rows": 2, "errors": 1, "error_rate": 0.5, "char_f1": 0.5},
        {"label": "neg", "rows": 1, "errors": 1, "error_rate": 1.0, "char_f1": 0.0},
    ]
    assert result["by_length"] == [
        {"length": "0-49", "rows": 6, "errors": 3, "error_rate": 0.5, "char_f1": 0.5},
        {"length": "50-99", "rows": 1, "errors": 1, "error_rate": 1.0, "char_f1": 0.1},
    ]
    assert result["by_language"] == [
        {"language": "en", "rows": 5, "errors": 3, "error_rate": 0.6, "char_f1": 0.42},
        {"language": "ja", "rows": 2, "errors": 1, "error_rate": 0.5, "char_f1": 0.5},
    ]
    assert result["confused_pairs"] == [
        {"expected": "A", "predicted": "B", "count": 1},
        {"expected": "neg", "predicted": "pos", "count": 1},
    ]


def test_known_labels_are_listed_even_without_rows_and_worst_is_capped():
    result = error_analysis(RECORDS, "correct", labels=["neg", "pos"], worst=2)
    assert [group["label"] for group in result["by_label"]] == ["neg", "pos", "A"]
    assert result["by_label"][1] == {
        "label": "pos",
        "rows": 0,
        "errors": 0,
        "error_rate": None,
        "correct": None,
    }
    assert result["summary"]["scored"] == 3  # only choice and classification rows have it
    assert result["summary"]["error_rule"] == "correct is 0 (false)"
    assert indices(result["worst_by_metric"]) == [6, 4]


def test_errors_csv_reads_back_worst_first_with_japanese_intact(tmp_path):
    path = write_error_csv(tmp_path / "errors.csv", RECORDS, "char_f1")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM Excel needs
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["index"]) for row in rows] == [6, 4, 2, 1, 3, 0, 5, 7]
    by_index = {int(row["index"]): row for row in rows}
    assert by_index[1]["answer"] == "5,000円です。"
    assert by_index[1]["meta.product"] == "ケトル"
    assert by_index[1]["error"] == "1" and by_index[0]["error"] == "0"
    assert float(by_index[1]["char_f1"]) == 0.4 and float(by_index[1]["loss"]) == 2.0
    assert by_index[2]["answer"] == "'=1+1"  # shown as text, not run as a formula
    assert by_index[4]["correct"] == "0" and by_index[4]["char_f1"] == "0.0"
    assert by_index[7]["char_f1"] == ""  # unscored, last


def slice_rows(field, values_and_scores):
    rows = []
    for value, scores in values_and_scores:
        for score in scores:
            meta = {} if value is None else {field: value}
            rows.append({"index": len(rows), "kind": "choice", "correct": score, "meta": meta})
    return rows


def test_slice_metrics_flags_a_gap_larger_than_its_noise():
    records = slice_rows(
        "product",
        [("kettle", [1] * 9 + [0]), ("toaster", [1] * 4 + [0] * 6), ("fan", [0] * 3), (None, [1])],
    )
    result = slice_metrics(records, ["product", "channel"], ["correct"])
    product = result["product"]
    assert product["values"] == [
        {"value": "kettle", "rows": 10, "correct": 0.9},
        {"value": "toaster", "rows": 10, "correct": 0.4},
        {"value": "fan", "rows": 3, "correct": 0.0},
    ]
    assert (product["gap"], product["best"], product["worst"]) == (0.5, "kettle", "toaster")
    # two standard errors of the gap: 2 * sqrt(0.9*0.1/10 + 0.4*0.6/10)
    assert product["noise"] == round(2 * math.sqrt(0.009 + 0.024), 4) == 0.3633
    assert product["flagged"] is True
    assert product["too_few_rows"] == ["fan"] and product["missing"] == 1
    assert product["gaps"]["correct"]["flagged"] is True
    channel = result["channel"]
    assert channel["values"] == [] and channel["missing"] == 24 and channel["flagged"] is False
    assert "no row has the field 'channel'" in channel["note"]


def test_a_gap_within_noise_or_below_the_threshold_is_not_flagged():
    noisy = slice_rows("channel", [("mail", [1] * 9 + [0]), ("phone", [1] * 7 + [0] * 3)])
    part = slice_metrics(noisy, ["channel"], ["correct"])["channel"]
    assert part["gap"] == 0.2 and part["noise"] == 0.3464 and part["flagged"] is False
    many = slice_rows("channel", [("mail", [1] * 95 + [0] * 5), ("phone", [1] * 90 + [0] * 10)])
    part = slice_metrics(many, ["channel"], ["correct"])["channel"]
    assert part["gap"] == 0.05 and part["flagged"] is False  # below 0.1
    few = slice_rows("channel", [("mail", [1] * 10), ("phone", [0] * 9)])
    part = slice_metrics(few, ["channel"], ["correct"])["channel"]
    assert part["gap"] is None and "fewer than two values" in part["note"]


def test_latin_swaps_keep_to_whole_words_and_case():
    _, swap = term_swapper([["he", "she"], ["Tanaka", "Suzuki"]])
    text = "He said the shell was hers. She met HE there; tanaka met Suzuki-san."
    assert swap(text) == "She said the shell was hers. He met SHE there; suzuki met Tanaka-san."
    assert swap(swap(text)) == text


def test_japanese_swaps_take_the_longest_term_first_both_ways():
    _, swap = term_swapper([["彼", "彼女"]])
    assert swap("彼女は彼に本を渡した。彼の彼女") == "彼は彼女に本を渡した。彼女の彼"
    assert swap("彼らhe") == "彼女らhe"  # a plain substring in Japanese


def test_counterfactual_rows_and_report():
    examples = to_examples(
        [
            Record("d.jsonl", 1, {"text": "he likes the shell", "label": "pos"}),
            Record("d.jsonl", 2, {"text": "the weather is fine", "label": "pos"}),
            Record("d.jsonl", 3, {"text": "彼女は来ない", "label": "neg"}),
            Record("d.jsonl", 4, {"text": "she left", "label": "neg"}),
        ]
    )
    swaps = [["he", "she"], ["彼", "彼女"]]
    originals, swapped = counterfactual_rows(examples, swaps, max_rows=2)
    assert [e.line for e in originals] == [1, 3]  # line 2 holds no term; max_rows stops at 2
    assert [e.text for e in swapped] == ["she likes the shell", "彼は来ない"]
    assert swapped[0].label == "pos" and examples[0].text == "he likes the shell"
    report = counterfactual_report(["pos", "neg"], ["neg", "ＮＥＧ "], originals, swapped)
    assert (report["rows"], report["changed"], report["share_changed"]) == (2, 1, 0.5)
    assert report["flagged"] is True and report["threshold"] == 0.1
    assert report["examples"] == [
        {
            "line": 1,
            "input": "he likes the shell",
            "swapped_input": "she likes the shell",
            "answer": "pos",
            "swapped_answer": "neg",
        }
    ]
    # a generated answer that only mirrors the swap is the same answer
    mirrored = counterfactual_report(
        ["He is kind."], ["She is  kind."], originals[:1], swapped[:1], swaps
    )
    assert mirrored["changed"] == 0 and mirrored["flagged"] is False
    none = counterfactual_report([], [], *counterfactual_rows(examples[1:2], swaps, None))
    assert none["rows"] == 0 and none["share_changed"] is None and "note" in none


def test_a_choice_row_swaps_its_choices_and_keeps_its_answer_index():
    (example,) = to_examples(
        [Record("c.jsonl", 1, {"question": "Who came?", "choices": ["he", "they"], "label": 0})]
    )
    _, (swapped,) = counterfactual_rows([example], [["he", "she"]], None)
    assert swapped.meta["choices"] == ["she", "they"] and swapped.meta["answer"] == 0
    assert swapped.messages[0]["content"] == "Who came?\n\n- she\n- they"
    assert swapped.reference == "she"


@pytest.fixture(scope="module")
def tiny_lm(tiny_model, tokenizer):
    model = load_causal_lm(ModelSource("tiny", tiny_model, "local")).eval()
    return LoadedModel(model, tokenizer, None, "fp32")


def conversation_examples():
    examples = to_examples(
        [Record("qa.jsonl", i + 1, row) for i, row in enumerate(qa_rows(5))], "messages"
    )
    two_turns = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello, how can I help you today?"},
        {"role": "user", "content": "サポートの受付時間は？"},
        {"role": "assistant", "content": "9時30分から17時30分です。"},
    ]
    examples.append(Example("qa.jsonl", 6, messages=two_turns))
    examples.append(Example("t.jsonl", 1, text="The quick brown fox jumps over the lazy dog."))
    return examples


def one_row_loss(model, item: TokenizedExample) -> float:
    parts = causal_lm_loss(model, collate([item], 0))
    return float(parts.loss_sum) / parts.tokens


def last_turn(labels):
    end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    start = end
    while labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [label if start <= i <= end else IGNORE_INDEX for i, label in enumerate(labels)]


@torch.no_grad()
def test_row_losses_equal_each_rows_training_loss(tiny_lm):
    examples = conversation_examples()
    results = row_losses(tiny_lm, examples, batch_size=3)
    whole = row_losses(tiny_lm, examples, whole_row=True, batch_size=3)
    for example, result, result_whole in zip(examples, results, whole, strict=True):
        item = tokenize_example(example, tiny_lm.tokenizer)
        assert result_whole["loss"] == pytest.approx(one_row_loss(tiny_lm.model, item), abs=1e-4)
        if example.messages is not None:
            item = TokenizedExample(item.input_ids, last_turn(item.labels))
        assert result["loss"] == pytest.approx(one_row_loss(tiny_lm.model, item), abs=1e-4)
        assert result["tokens"] == item.trainable_tokens and "confidence" not in result
    assert results[5]["tokens"] < whole[5]["tokens"]  # two turns: the last one alone


@torch.no_grad()
def test_confidence_is_the_answers_mean_token_probability(tiny_lm):
    examples = conversation_examples()
    answers = {0: "Product 0 costs 1000 yen.", 1: "", 6: "not a conversation"}
    results = row_losses(tiny_lm, examples, answers)
    tokenizer, model = tiny_lm.tokenizer, tiny_lm.model
    for index in (0, 1):
        prompt = render_prompt(tokenizer, examples[index].prompt_messages, None)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = tokenizer(prompt + answers[index], add_special_tokens=False)["input_ids"]
        # the empty answer: the probability of ending the turn at once
        ids = ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")] * (not answers[index])
        logps = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        scored = [float(logps[p - 1, ids[p]]) for p in range(start, len(ids))]
        expected = math.exp(sum(scored) / len(scored))
        assert results[index]["confidence"] == pytest.approx(expected, rel=1e-4)
    assert [r["confidence"] for r in results[2:]] == [None] * 5  # no answer, or a text row


def test_forgetting_report_flags_a_rise_beyond_the_threshold(tiny_lm):
    rows = [e for e in shipped_reference() if e.line == 1]  # the first paragraph of each text
    assert [e.source for e in rows] == ["reference_text/ja.txt", "reference_text/en.txt"]
    same = forgetting_report(tiny_lm, tiny_lm, rows, 0.1, "shipped")
    assert same["increase"] == 0.0 and same["flagged"] is False and same["rows"] == 2
    assert set(same["per_language"]) == {"ja", "en"}
    worse = copy.deepcopy(tiny_lm.model)
    with torch.no_grad():
        worse.lm_head.weight.mul_(8.0)  # sharper random guesses: a higher loss
    tuned = LoadedModel(worse, tiny_lm.tokenizer, None, "fp32")
    report = forgetting_report(tiny_lm, tuned, rows, 0.1, "shipped")
    assert report["base_loss"] == same["base_loss"] and report["tuned_loss"] > report["base_loss"]
    rise = report["tuned_loss"] / report["base_loss"] - 1  # of the rounded losses
    assert report["increase"] == pytest.approx(rise, abs=1e-3)
    assert report["increase"] > 0.1 and report["flagged"] is True and report["threshold"] == 0.1
    assert all(part["flagged"] for part in report["per_language"].values())


def test_reference_rows_shipped_or_from_train_forgetting(tmp_path, tiny_model, qa_file):
    rows, source = reference_rows(None)
    assert len(rows) == 21 and "reference_text" in source
    assert {e.source for e in rows} == {"reference_text/ja.txt", "reference_text/en.txt"}
    general = write_jsonl(
        tmp_path / "general.jsonl", [{"text": f"Row {i} of text."} for i in range(9)]
    )
    recipe = load_recipe(
        write_recipe(
            tmp_path / "r.yaml",
            tiny_model,
            qa_file,
            train={"forgetting": {"data": str(general), "max_rows": 4}, "seed": 3},
        )
    )
    rows, source = reference_rows(recipe)
    assert source == str(general) and len(rows) == 4
    assert all(e.text.startswith("Row ") for e in rows)
    assert reference_rows(recipe) == (rows, source)  # the same seeded sample every time


def sentiment_rows(count):
    good = ["good kettle", "great toaster", "fine support", "lovely fan"]
    bad = ["broken kettle", "awful toaster", "slow support", "noisy fan"]
    rows = []
    for i in range(count):
        words = good if i % 2 else bad
        product = ["kettle", "toaster", "support", "fan"][i % 4]
        rows.append(
            {
                "sentence": f"{words[i % 4]} {i}",
                "label": "pos" if i % 2 else "neg",
                "product": product,
            }
        )
    return rows


def test_classification_eval_with_slices_counterfactual_and_errors_csv(tmp_path, capsys):
    encoder = build_tiny_encoder(tmp_path / "encoder")
    data = write_jsonl(tmp_path / "s.jsonl", sentiment_rows(160))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        encoder,
        data,
        task="classification",
        method={"name": "lora"},
        train={"max_steps": 40, "batch_size": 16, "lr": 5e-3, "eval_every": 40},
        eval={
            "slices": ["product", "channel"],
            # each phrase of one label for one of the other: the label should follow
            "counterfactual": {
                "swaps": [["broken kettle", "great toaster"], ["slow support", "lovely fan"]]
            },
        },
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    assert main(["eval", str(run)]) == 0, capsys.readouterr().err
    result = json.loads((run / "eval.json").read_text())
    assert {"systems", "per_label", "confusion", "mistakes", "skipped"} <= result.keys()
    rows = result["rows"]
    analysis = result["analysis"]
    assert analysis["csv"] == "errors.csv" and "worst_by_confidence" not in analysis
    assert analysis["summary"]["rows"] == rows
    wrong = round(rows * (1 - result["systems"]["tuned"]["accuracy"]))
    assert analysis["summary"]["errors"] == wrong == len(result["mistakes"])
    assert [g["label"] for g in analysis["by_label"]] == ["neg", "pos"]
    assert sum(g["rows"] for g in analysis["by_label"]) == rows
    product = result["slices"]["product"]
    assert sorted(v["value"] for v in product["values"]) == ["fan", "kettle", "support", "toaster"]
    assert sum(v["rows"] for v in product["values"]) == rows and product["metric"] == "correct"
    assert result["slices"]["channel"]["missing"] == rows
    counterfactual = result["counterfactual"]
    assert counterfactual["rows"] == rows  # every row holds one of the phrases
    assert counterfactual["share_changed"] > 0.5 and counterfactual["flagged"] is True
    with open(run / "errors.csv", encoding="utf-8-sig", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == rows and {"meta.product", "correct", "confidence"} <= set(table[0])
    page = (run / "report.html").read_text()
    assert "<h2>Slices</h2>" in page and "product" in page and "<h2>Counterfactual</h2>" in page

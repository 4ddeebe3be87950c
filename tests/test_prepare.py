"""Data preparation: validation of every row, cleaning steps that report what they did,
stratified and group-aware splits, the leakage check, augmentation, and the commands."""

import json
import re
from collections import Counter

import pytest
from conftest import qa_rows, run_cli, write_jsonl, write_recipe

from migaki.config import (
    AugmentConfig,
    CleanConfig,
    DataConfig,
    FilterConfig,
    NormalizeConfig,
    load_recipe,
)
from migaki.data.augment import augment_records, augment_text
from migaki.data.clean import clean_records, filter_step, normalize_step
from migaki.data.heuristics import language_of, repetition_ratio, symbol_ratio
from migaki.data.load import Record
from migaki.data.normalize import normalize_text
from migaki.data.prepare import load_splits, prepare_data
from migaki.data.split import split_indices
from migaki.data.validate import validate_file


def records(texts, label=None):
    return [
        Record("t.jsonl", i + 1, {"text": t} | ({"label": label} if label else {}))
        for i, t in enumerate(texts)
    ]


# --- validate -------------------------------------------------------------------------------


def test_validate_reports_every_problem_with_its_line_and_kind(tmp_path):
    good = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    lines = [
        json.dumps(good),
        '{"messages": [',  # 2 invalid JSON
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),  # 3
        json.dumps({"messages": [{"role": "assistant", "content": "A"}, good["messages"][0]]}),
        json.dumps({"messages": [{"role": "user", "content": ""}, good["messages"][1]]}),  # 5
        json.dumps({"prompt": "Q", "completion": "A"}),  # 6 mixed formats
        "[1, 2]",  # 7 not an object
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes("\n".join(lines).encode() + b'\n{"text": "\xff"}\n')  # 8 invalid UTF-8
    check = validate_file(path)
    found = {(p.line, p.kind) for p in check.problems}
    assert found == {
        (2, "invalid_json"),
        (3, "no_assistant"),
        (4, "role_order"),
        (5, "empty_field"),
        (6, "mixed_formats"),
        (7, "not_object"),
        (8, "invalid_utf8"),
    }
    assert all(str(p).startswith(f"{path}:{p.line}: ") for p in check.problems)
    assert len(check.records) == 1 and check.rows == 8


def test_validate_command_prints_file_line_problems_then_counts_and_exits_2(tmp_path, capsys):
    path = tmp_path / "c.tsv"
    path.write_text("text\tlabel\ngood film\tpositive\nbad film\tnegative\nmeh\tpostive\n")
    code, out, _ = run_cli(capsys, "data", "validate", path, "--labels", "positive,negative")
    assert code == 2
    assert f"{path}:4: label 'postive' is not one of ['negative', 'positive']" in out
    assert "(did you mean 'positive'?)" in out
    assert "3 rows, 2 valid, format classification; 1 problems: label_not_in_set 1" in out
    code, out, _ = run_cli(capsys, "data", "validate", path)
    assert code == 0 and "warning:" not in out  # 'postive' once in 3 rows is not rare enough


def test_validate_warns_of_a_rare_label_that_looks_like_a_typo(tmp_path):
    rows = [{"text": f"t{i}", "label": "positive" if i % 2 else "negative"} for i in range(40)]
    rows.append({"text": "x", "label": "postive"})
    check = validate_file(write_jsonl(tmp_path / "l.jsonl", rows))
    assert not check.problems
    assert [w.kind for w in check.warnings] == ["label_typo"]
    assert "typo of 'positive'" in str(check.warnings[0])


def test_a_byte_order_mark_at_the_start_is_accepted_and_noted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "hello"}).encode() + b"\n")
    check = validate_file(path)
    assert not check.problems and len(check.records) == 1
    assert "byte-order mark" in str(check.warnings[0])


def test_headerless_tsv_reads_with_named_columns(tmp_path):
    path = tmp_path / "news.tsv"
    path.write_text("Stocks rise\tBusiness\nTeam wins\tSports\n")
    check = validate_file(path, columns=["text", "label"])
    assert check.fmt == "classification" and [e.label for e in check.examples] == [
        "Business",
        "Sports",
    ]


def test_too_long_rows_are_flagged_with_the_recipe_tokenizer(tmp_path, tiny_model, capsys):
    rows = qa_rows(4)
    rows[2]["messages"][1]["content"] = "long answer " * 40
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data)
    code, out, _ = run_cli(capsys, "data", "validate", data, "--recipe", recipe)
    assert code == 0
    assert f"warning: {data}:3: " in out and "longer than max_length 64" in out


# --- normalize, filters, heuristics ---------------------------------------------------------


def test_normalize_nfkc_whitespace_control_and_html():
    config = NormalizeConfig(strip_html=True)
    text, changed = normalize_text("<p>ＡＢＣ１２３\u200b  です</p>&amp;\r\n\n\n\nend  ", config)
    assert text == "ABC123 です\n&\n\nend"
    assert set(changed) == {"html", "control_chars", "nfkc", "whitespace"}
    kept, _ = normalize_text("def f():\n    return 1", NormalizeConfig())
    assert kept == "def f():\n    return 1"  # indentation is meaning in code
    assert normalize_text("ＡＢＣ", NormalizeConfig(unicode="none"))[0] == "ＡＢＣ"


def test_normalize_step_reports_changes_and_drops_rows_left_empty():
    rows, report = normalize_step(
        records(["ＡＢＣ", "fine", "\u200b\u200b"]), "text", NormalizeConfig()
    )
    assert [r.fields["text"] for r in rows] == ["ABC", "fine"]
    assert report.changed == 2 and report.removed == 1
    assert report.reasons["nfkc"] == 1 and report.reasons["empty_after_normalize"] == 1
    assert {"line": 1, "reason": "nfkc", "before": "ＡＢＣ", "after": "ABC"} in report.examples


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("返品は30日以内に可能です。", "ja"),
        ("東京都港区", "ja"),
        ("The kettle boils water in two minutes.", "en"),
        ("Привет, как дела?", "other"),
        ("12345 !!!", "other"),
    ],
)
def test_language_by_script(text, language):
    assert language_of(text) == language


def test_quality_heuristics():
    assert repetition_ratio("buy now " * 20) > 0.8
    assert repetition_ratio("A normal sentence about kettles and toasters.") == 0.0
    assert symbol_ratio("$$$ ### @@@ ***") > 0.9
    assert symbol_ratio("普通の文です。") == 0.0


def test_filter_step_names_the_reason_for_each_removed_row(tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("# terms\nconfidential\n")
    config = FilterConfig(
        min_chars=3,
        max_chars=60,
        languages=["ja", "en"],
        blocklist=str(blocklist),
        max_repetition=0.5,
        max_symbol_ratio=0.5,
    )
    texts = [
        "ok",
        "x" * 61,
        "Привет, как дела?",
        "This is CONFIDENTIAL",
        "spam spam spam spam spam spam",
        "ok %%%% #### @@@@ $$$$",
        "A fine row.",
    ]
    kept, report = filter_step(records(texts), "text", config, None)
    assert [r.fields["text"] for r in kept] == ["A fine row."]
    assert report.reasons == Counter(
        too_short=1, too_long=1, language_other=1, blocklist=1, repetition=1, symbols=1
    )


# --- the pipeline, de-duplication and personal data -------------------------------------------


def test_clean_pipeline_masks_then_deduplicates_rows_that_differ_only_in_personal_data():
    texts = [
        "Contact taro@example.com about the refund for order 5521.",
        "Contact hanako@example.org about the refund for order 5521.",
        "ＴＨＥ KETTLE is broken",
        "the kettle is broken",
        "Something else entirely different here.",
    ]
    kept, reports = clean_records(records(texts), "text", CleanConfig())
    by_step = {r.step: r for r in reports}
    assert [r.fields["text"] for r in kept] == [
        "Contact <EMAIL> about the refund for order 5521.",
        "THE KETTLE is broken",
        "Something else entirely different here.",
    ]
    assert by_step["pii"].details["by_type"] == {"email": 2}
    assert by_step["dedup"].reasons == Counter(exact=2)
    assert sum(r.removed for r in reports) == len(texts) - len(kept)


def test_near_duplicates_are_removed_with_their_cluster_reported():
    base = (
        "返品は購入日から30日以内であれば可能です。レシートをお持ちのうえ店舗までお越しください。"
    )
    texts = [base, base[:-1] + "！", "配送料は全国一律500円です。"]
    kept, reports = clean_records(records(texts), "text", CleanConfig())
    dedup = reports[-1]
    assert len(kept) == 2 and dedup.reasons == Counter(near=1)
    (cluster,) = dedup.details["clusters"]
    assert cluster["lines"] == [1, 2] and cluster["similarity"] >= 0.8


def test_personal_data_can_be_dropped_or_only_reported():
    texts = ["call 090-1234-5678 please", "nothing personal here"]
    kept, reports = clean_records(
        records(texts), "text", CleanConfig.model_validate({"pii": {"action": "drop"}})
    )
    assert [r.fields["text"] for r in kept] == ["nothing personal here"]
    assert reports[1].removed == 1 and reports[1].reasons == Counter(phone=1)
    kept, reports = clean_records(
        records(texts), "text", CleanConfig.model_validate({"pii": {"action": "report"}})
    )
    assert kept[0].fields["text"] == "call 090-1234-5678 please"
    assert reports[1].details["rows_with_pii"] == 1 and reports[1].changed == 0


def test_conflicting_labels_among_exact_duplicates_are_counted():
    rows = [
        Record("t", 1, {"text": "great", "label": "pos"}),
        Record("t", 2, {"text": "Great", "label": "neg"}),
        Record("t", 3, {"text": "awful", "label": "neg"}),
    ]
    _, reports = clean_records(rows, "classification", CleanConfig())
    assert reports[-1].details["label_conflicts"] == 1


def test_steps_can_be_switched_off_in_the_recipe(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "ＡＢＣ"}, {"text": "ABC"}])
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        data={"clean": {"normalize": False, "pii": False, "filter": False}},
    )
    clean = load_recipe(recipe).data.clean
    assert clean.normalize is None and clean.pii is None and clean.dedup is not None


# --- split and leakage ----------------------------------------------------------------------


def test_stratified_split_keeps_each_label_share():
    labels = ["a"] * 80 + ["b"] * 20
    train, val, test = split_indices(100, 0.1, 0.1, seed=3, labels=labels)
    for part, size in ((train, 80), (val, 10), (test, 10)):
        assert len(part) == size
        assert Counter(labels[i] for i in part)["b"] == size // 5
    assert split_indices(100, 0.1, 0.1, 3, labels) == (train, val, test)


def test_group_aware_split_never_splits_a_group():
    groups = [f"customer{i // 4}" for i in range(100)]
    parts = split_indices(100, 0.2, 0.2, seed=1, groups=groups)
    owner = {}
    for name, part in zip("tvs", parts, strict=True):
        for i in part:
            assert owner.setdefault(groups[i], name) == name
    assert sorted(i for part in parts for i in part) == list(range(100))
    assert all(len(part) for part in parts)


def test_unlabelled_split_is_unchanged_by_the_new_options():
    # runs trained before stratification existed must get the same split
    import random

    order = list(range(50))
    random.Random(7).shuffle(order)
    _, val, test = split_indices(50, 0.1, 0.2, seed=7)
    assert test == sorted(order[:10]) and val == sorted(order[10:15])


def test_leakage_check_removes_repeats_of_test_rows_from_train(tmp_path):
    rows = [{"text": f"row number {i} about product {i * 7}", "group": i} for i in range(30)]
    train_path = write_jsonl(tmp_path / "train.jsonl", rows)
    test_path = write_jsonl(tmp_path / "test.jsonl", [rows[3], rows[4] | {"text": "new"}])
    data = DataConfig(train=str(train_path), test=str(test_path), split={"val": 0.0})
    prepared = prepare_data(data, seed=0)
    leakage = prepared.steps[-1]
    assert leakage.step == "leakage" and leakage.removed == 1
    assert leakage.examples[0] | {"similarity": 1.0} == {
        "reason": "train_repeats_test",
        "line": 4,
        "matches_line": 1,
        "similarity": 1.0,
    }
    assert len(prepared.parts["train"]) == 29


# --- augmentation ---------------------------------------------------------------------------


def test_augmented_rows_are_marked_and_only_in_train(tmp_path):
    rows = [
        {"text": f"the kettle number {i} works very well indeed", "label": "pos"} for i in range(20)
    ]
    rows += [{"text": f"ケトル{i}はとても良い製品です", "label": "pos"} for i in range(20)]
    data = DataConfig(
        train=str(write_jsonl(tmp_path / "c.jsonl", rows)),
        augment={"copies": 2, "operations": ["swap", "delete"]},
        split={"leakage": False},
    )
    prepared = prepare_data(data, seed=0)
    train = prepared.parts["train"]
    augmented = [r for r in train if r.fields.get("augmented")]
    assert len(augmented) > 40
    assert all(r.fields["augmented_from"] == r.line for r in augmented)
    assert not any(r.fields.get("augmented") for p in ("val", "test") for r in prepared.parts[p])
    japanese = [r.fields["text"] for r in augmented if "ケトル" in r.fields["text"]]
    assert japanese and all(" " not in text for text in japanese)  # edited per character


def test_synonym_replacement_uses_the_users_synonym_file(tmp_path):
    import random

    synonyms = tmp_path / "syn.txt"
    synonyms.write_text("good, great, fine\n返品, 返却\n")
    from migaki.data.augment import load_synonyms

    table = load_synonyms(str(synonyms))
    rng = random.Random(0)
    assert augment_text("a good kettle", "synonym", 0.5, table, rng) in {
        "a great kettle",
        "a fine kettle",
    }
    assert augment_text("返品できます", "synonym", 0.5, table, rng) == "返却できます"


def test_augmenting_conversations_is_refused():
    rows = [Record("t", 1, {"messages": []})]
    with pytest.raises(Exception, match="classification rows"):
        augment_records(rows, "messages", AugmentConfig(), seed=0)


# --- commands -------------------------------------------------------------------------------


def test_prepare_writes_splits_in_the_input_format_and_a_report(tmp_path, capsys):
    rows = [
        {"instruction": f"Price of item {i}?", "input": "", "output": f"{i * 100} yen"}
        for i in range(40)
    ]
    rows.append(dict(rows[0]))  # an exact duplicate
    rows.append({"instruction": "Mail me at a@b.co", "input": "", "output": "OK"})
    source = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    code, out, _ = run_cli(capsys, "data", "prepare", source, "-o", tmp_path / "out")
    assert code == 0
    written = {
        n: (tmp_path / "out" / f"{n}.jsonl").read_text().splitlines()
        for n in ("train", "val", "test")
    }
    total = sum(len(lines) for lines in written.values())
    assert total == 41
    first = json.loads(written["train"][0])
    assert set(first) == {"instruction", "input", "output"}
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["dedup"]["removed"] == 1 and steps["pii"]["by_type"] == {"email": 1}
    assert "dedup: 42 rows, removed 1 (exact 1)" in out
    all_rows = [json.loads(line) for lines in written.values() for line in lines]
    assert any(r["instruction"] == "Mail me at <EMAIL>" for r in all_rows)


def test_prepare_without_split_writes_one_file(tmp_path, capsys):
    source = write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(5)])
    code, _, _ = run_cli(capsys, "data", "prepare", source, "-o", tmp_path / "o", "--split", "none")
    assert code == 0
    assert len((tmp_path / "o" / "data.jsonl").read_text().splitlines()) == 5


def test_prepare_stops_on_invalid_rows_unless_told_to_skip_them(tmp_path, capsys):
    source = tmp_path / "t.jsonl"
    source.write_text('{"text": "a"}\n{"text": \n{"text": "b"}\n{"text": ""}\n')
    code, _, err = run_cli(capsys, "data", "prepare", source, "-o", tmp_path / "o")
    assert code == 2
    assert err.strip() == (
        f"error: {source}:2: invalid JSON (Expecting value at column 10) "
        f"(1 more problems; `migaki data validate {source}` lists them)"
    )
    code, out, _ = run_cli(
        capsys, "data", "prepare", source, "-o", tmp_path / "o", "--skip-invalid", "--split", "none"
    )
    assert code == 0 and "validate: 4 rows, removed 2 (invalid_json 1, empty_field 1)" in out


def test_training_uses_the_recipes_cleaning_and_records_it(tmp_path, tiny_model):
    rows = qa_rows(30) + qa_rows(30)  # every row twice
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, data={"clean": {}})
    splits = load_splits(load_recipe(recipe).data, seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30
    from migaki.train import train

    run = train(load_recipe(recipe), out=tmp_path / "run")
    report = json.loads((run / "data" / "prepare_report.json").read_text())
    assert {"step": "dedup", "removed": 30}.items() <= report["steps"][-2].items()


def test_doctor_renders_rows_with_loss_tokens_marked_and_says_go(tmp_path, tiny_model, capsys):
    rows = qa_rows(20)
    for row in rows[::2]:
        row["messages"][1]["content"] = "x " * 200  # longer than max_length 64
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data)
    figures = tmp_path / "doctor.json"
    code, out, _ = run_cli(
        capsys, "data", "doctor", recipe, "--samples", "2", "--json", figures, "--color", "never"
    )
    assert code == 0, out
    assert "⟦" in out and "<|im_end|>⟧" in out  # the answer and its end-of-turn carry loss
    assert "token lengths (train): p50" in out
    assert re.search(r"would truncate \d+ of \d+ rows longer than max_length 64", out)
    assert "tokens per epoch:" in out and out.rstrip().endswith("GO: the data is ready to train on")
    assert json.loads(figures.read_text())["tokens_per_epoch"] > 0


def test_doctor_says_no_go_with_exit_2_on_invalid_rows(tmp_path, tiny_model, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Q"}]}\n')
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data)
    code, out, _ = run_cli(capsys, "data", "doctor", recipe)
    assert code == 2
    assert f"{data}:1: messages: the conversation has no assistant turn" in out
    assert "NO-GO:" in out


def test_doctor_says_no_go_when_no_row_has_a_trainable_token(tmp_path, tiny_model, capsys):
    rows = qa_rows(10)
    for row in rows:
        row["messages"][0]["content"] = "long question " * 60
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, data={"split": {"val": 0.0, "test": 0.0}}
    )
    code, out, _ = run_cli(capsys, "data", "doctor", recipe, "--samples", "0")
    assert code == 2 and "NO-GO: no training row has a token to learn from" in out


def test_report_writes_html_and_its_json_twin(tmp_path, tiny_model, capsys):
    rows = [{"text": f"Good kettle {i}", "label": "pos"} for i in range(12)]
    rows += [
        {"text": f"悪いトースター{i} 連絡先 taro@example.com", "label": "neg"} for i in range(4)
    ]
    rows.append(dict(rows[0]))
    source = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "rep" / "report.html"
    code, _, _ = run_cli(capsys, "data", "report", source, "-o", out, "--model", tiny_model)
    assert code == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>") or "<html" in page
    twin = json.loads(out.with_suffix(".json").read_text())
    assert twin["rows"] == 17 and twin["labels"]["counts"] == {"pos": 13, "neg": 4}
    assert twin["labels"]["imbalance_ratio"] == 3.25
    assert twin["duplicates"]["exact_rows"] == 1
    assert twin["pii"]["by_type"] == {"email": 4}
    assert twin["languages"] == {"en": 13, "ja": 4}
    assert twin["token_lengths"]["total"] > 0
    assert "taro@example.com" not in json.dumps(twin["pii"])

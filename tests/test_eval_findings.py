"""`migaki eval` on a language-model run: the findings beyond the metric table (error
analysis and errors.csv, slices, counterfactual swaps, the judge, forgetting) in eval.json and
report.html, each only when the recipe asks for it."""

import csv
import json

from conftest import qa_rows, run_cli, write_jsonl, write_recipe

from migaki.cli import main


def _rows(count: int) -> list[dict]:
    rows = qa_rows(count)
    for index, row in enumerate(rows):
        row["channel"] = "mail" if index % 3 else "phone"
        if index % 2 == 0:
            row["messages"][0]["content"] += " He asked."
    return rows


def test_eval_writes_findings_the_recipe_asks_for(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", _rows(60))
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_model,
        data,
        data={"split": {"val": 0.1, "test": 0.3}},
        eval={
            "max_new_tokens": 6,
            "slices": ["channel", "absent_field"],
            "counterfactual": {"swaps": [["He", "She"]]},
            "judge": {"model": str(tiny_model), "max_rows": 3},
            "format": "json",
        },
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    capsys.readouterr()
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    tuned = result["systems"]["tuned"]
    assert {"exact_match", "bleu", "chrf", "rougeL", "format_valid", "char_f1"} <= set(tuned)
    assert tuned["format_valid"] == 0.0  # a random model writes no JSON
    analysis = result["analysis"]
    assert analysis["metric"] == "char_f1" and analysis["csv"] == "errors.csv"
    assert analysis["summary"]["rows"] == result["rows"]
    with open(run / "errors.csv", encoding="utf-8-sig", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == result["rows"] and {"meta.channel", "loss", "char_f1"} <= set(table[0])
    channel = result["slices"]["channel"]
    assert {value["value"] for value in channel["values"]} <= {"mail", "phone"}
    assert sum(value["rows"] for value in channel["values"]) == result["rows"]
    assert result["slices"]["absent_field"]["note"]
    counterfactual = result["counterfactual"]
    assert counterfactual["rows"] == sum("He asked" in row["prompt"] for row in result["samples"])
    judge = result["judge"]
    assert judge["rows"] == 3 and judge["left_out"] == result["rows"] - 3
    assert judge["parsed"] + judge["unparsable"] == 3
    assert "judge" not in json.dumps(tuned)  # reported apart, never in the metrics
    forgetting = result["forgetting"]
    assert forgetting["base_loss"] > 0 and forgetting["tuned_loss"] > 0
    assert forgetting["threshold"] == 0.1 and isinstance(forgetting["flagged"], bool)
    page = (run / "report.html").read_text(encoding="utf-8")
    for heading in ("Error analysis", "Slices", "Counterfactual", "Judge", "Forgetting"):
        assert f"<h2>{heading}</h2>" in page


def test_eval_without_findings_keys_has_none(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_model, data, eval={"forgetting": False, "max_new_tokens": 4}
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    capsys.readouterr()
    assert run_cli(capsys, "eval", run)[0] == 0
    result = json.loads((run / "eval.json").read_text())
    assert "analysis" in result
    assert not {"slices", "counterfactual", "judge", "forgetting"} & set(result)


def test_a_missing_schema_file_is_named_before_any_model_loads(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model, data)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    text = (run / "recipe.yaml").read_text().replace("format: text", "format: nowhere.json")
    (run / "recipe.yaml").write_text(text)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "nowhere.json" in err and len(err.strip().splitlines()) == 1

"""Direct preference optimization through the same recipe, loop and run directory: the
reference is the base with the adapter disabled; rewards and preference accuracy are logged
on training and validation rows."""

from conftest import write_jsonl, write_recipe
from peft import PeftModel
from transformers import AutoModelForCausalLM

from migaki.cli import main
from migaki.data.formats import to_examples
from migaki.data.load import Record
from migaki.train.tracking import read_metrics


def pairs(count):
    rows = []
    for i in range(count):
        rows.append(
            {
                "prompt": f"How much is product {i}?",
                "chosen": f"Product {i} costs {1000 + i} yen.",
                "rejected": "I do not know, sorry.",
            }
        )
    return rows


def test_hh_style_dialogues_split_into_prompt_and_answers():
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: Sure."
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: No."
    (example,) = to_examples([Record("hh", 1, {"chosen": chosen, "rejected": rejected})])
    assert [m["role"] for m in example.messages] == ["user", "assistant", "user", "assistant"]
    assert example.messages[-1]["content"] == "Sure." and example.meta["rejected"] == "No."


def test_dpo_learns_to_prefer_the_chosen_answers(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(48))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="dpo",
        data={"split": {"val": 0.25, "test": 0.0}, "max_length": 64},
        train={"max_steps": 30, "batch_size": 8, "lr": 2e-2, "eval_every": 30},
        preference={"beta": 0.5},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    metrics = read_metrics(run)
    val = [m for m in metrics if m.get("split") == "val"]
    train = [m for m in metrics if m.get("split") == "train"]
    assert [m["step"] for m in val] == [0, 30]
    assert val[0]["reward_margin"] == 0.0  # policy == reference before any update
    assert val[-1]["pref_accuracy"] >= 0.9 and val[-1]["reward_margin"] > 0
    assert {"reward_chosen", "reward_rejected", "reward_margin", "pref_accuracy"} <= train[
        -1
    ].keys()
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    PeftModel.from_pretrained(base, str(run / "final"))


def test_dpo_refuses_a_method_without_a_switchable_adapter(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(8))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, task="dpo", method={"name": "full"}
    )
    assert main(["train", str(recipe)]) == 2
    assert "task dpo uses the base without the adapter" in capsys.readouterr().err

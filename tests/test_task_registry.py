"""The task registry: every task's rules are checked before anything loads, and a task of
one's own (this file) trains end to end once registered, with no other module touched."""

import dataclasses
import json

import pytest
import torch
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.config import build_recipe, load_recipe
from migaki.errors import UserError
from migaki.objectives import LossParts, causal_lm_loss
from migaki.tasks import TASKS, Task, register, task_for
from migaki.tasks.rows import language_model_batches, language_model_rows
from migaki.train import train
from migaki.train.tracking import read_metrics

MINIMUM = {"model": {"base": "x"}, "data": {"train": "x.jsonl"}}


@pytest.mark.parametrize("task", ["sft", "pretrain", "dpo", "distill"])
def test_head_is_refused_for_a_task_without_a_task_head(task):
    with pytest.raises(UserError, match=f"method head .* which task {task} does not have"):
        task_for(build_recipe({**MINIMUM, "task": task, "method": {"name": "head"}}))


@pytest.mark.parametrize(
    ("task", "method", "message"),
    [
        ("kto", "full", "method.name: task kto uses the base without the adapter"),
        ("dpo", "prefix", "method.name: task dpo needs the untrained model as its reference"),
        ("orpo", "prompt", "method.name: task orpo scores answers through the decoder"),
        ("classification", "prefix", "method.name: prefix is not available for task classif"),
        ("reward", "ia3", "method.name: ia3 is not available for task reward"),
    ],
)
def test_a_method_the_task_does_not_allow_is_refused_naming_file_and_key(task, method, message):
    recipe = build_recipe({**MINIMUM, "task": task, "method": {"name": method}}, source="r.yaml")
    with pytest.raises(UserError) as err:
        task_for(recipe)
    assert str(err.value).startswith(f"r.yaml: {message}")


def test_keys_of_another_task_and_every_problem_are_listed_at_once():
    raw = {**MINIMUM, "task": "orpo", "method": {"name": "prefix"}}
    raw["preference"] = {"sft_weight": 0.5}
    with pytest.raises(UserError) as err:
        task_for(build_recipe(raw, source="r.yaml"))
    lines = str(err.value).splitlines()
    assert lines[0].startswith("r.yaml: method.name: task orpo scores answers")
    assert lines[1] == "r.yaml: preference.sft_weight applies to task dpo only (not orpo)"


def test_an_unknown_task_suggests_the_near_name():
    with pytest.raises(UserError, match=r"unknown task 'dpp' \(did you mean 'dpo'\?\)"):
        task_for(build_recipe({**MINIMUM, "task": "dpp"}))


def test_every_bundled_task_names_itself_and_allows_some_method():
    assert list(TASKS) == [
        "sft",
        "pretrain",
        "classification",
        "dpo",
        "orpo",
        "kto",
        "reward",
        "distill",
    ]
    for name, task in TASKS.items():
        assert task.name == name and task.methods and task.validation[0] == "loss"


class LastTokenLoss(torch.nn.Module):
    """A toy objective: the causal-LM loss on each row's last labelled token only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> LossParts:
        labels = batch["labels"].clone()
        labelled = (labels != -100).long()
        last = labelled.cumsum(dim=-1) == labelled.sum(dim=-1, keepdim=True)
        labels[~(last & (labelled == 1))] = -100
        return causal_lm_loss(self.model, {**batch, "labels": labels})


def last_token_rows(splits, tokenizer, recipe, labels):
    return language_model_rows(splits, tokenizer, recipe, "truncate")


LAST_TOKEN = Task(
    name="last_token",
    rows="conversations or text",
    methods=("lora", "full"),
    tokenize=last_token_rows,
    collate=language_model_batches,
    objective=lambda recipe, model, setup: LastTokenLoss(model),
    validation=("loss", "perplexity", "token_accuracy", "tokens"),
)


def test_a_task_registered_at_run_time_trains_end_to_end(tmp_path, tiny_model, qa_file):
    register(LAST_TOKEN)
    try:
        path = write_recipe(tmp_path / "r.yaml", tiny_model, qa_file, task="last_token")
        run = train(load_recipe(path), out=tmp_path / "run")
    finally:
        del TASKS["last_token"]
    records = read_metrics(run)
    validation = [r for r in records if r.get("split") == "val"]
    assert set(validation[-1]) == {"step", "epoch", "split", "time", *LAST_TOKEN.validation}
    # one labelled token per row: 6 of the 40 rows are validation rows (val 0.1 rounds up)
    assert validation[0]["tokens"] == len((run / "data" / "val.jsonl").read_text().splitlines())
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    assert (run / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["sft", "dpo", "classification", "reward"])
def test_validation_logs_what_the_task_says(tmp_path, tiny_model, name):
    task = TASKS[name]
    if task.head == "labels":
        rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(24)]
    elif name in ("dpo", "reward"):
        rows = [{"prompt": f"q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(24)]
    else:
        rows = qa_rows(24)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    method = {"name": "full"} if task.head else {"name": "lora", "lora_rank": 4}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, task=name, method=method)
    run = train(
        load_recipe(recipe, ["train.max_steps=2", "train.eval_every=2"]), out=tmp_path / "r"
    )
    last = [r for r in read_metrics(run) if r.get("split") == "val"][-1]
    assert set(last) - {"step", "epoch", "split", "time"} == set(task.validation)


def test_a_task_is_a_frozen_description():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["sft"].name = "other"  # type: ignore[misc]

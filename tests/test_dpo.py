"""Direct preference optimization through the same recipe, loop and run directory: the
reference is the base with the adapter disabled; rewards and preference accuracy are logged
on training and validation rows."""

import math

import pytest
import torch
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


def test_dpo_refuses_a_method_without_a_reference(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(8))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, task="dpo", method={"name": "prefix"}
    )
    assert main(["train", str(recipe)]) == 2
    assert "task dpo needs the untrained model as its reference" in capsys.readouterr().err


def _pair_batch(tokenizer, count=3):
    from migaki.data.pairs import collate_pairs, tokenize_pairs

    examples = to_examples([Record("p", i + 1, row) for i, row in enumerate(pairs(count))])
    rows, _ = tokenize_pairs(examples, tokenizer, max_length=64)
    return collate_pairs(rows, tokenizer.pad_token_id)


def test_labelled_logps_equal_full_logits_in_value_and_gradient(tiny_model, tokenizer):
    import torch

    from migaki.losses import sequence_logps
    from migaki.objectives import labelled_logps

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = _pair_batch(tokenizer)
    weights = torch.randn(len(batch["input_ids"]))
    logps, tokens = labelled_logps(model, batch, chunk_rows=7)  # several chunks
    (logps * weights).sum().backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = sequence_logps(logits, batch["labels"])
    (plain * weights).sum().backward()
    torch.testing.assert_close(logps, plain, atol=1e-5, rtol=1e-5)
    assert tokens.tolist() == (batch["labels"][:, 1:] != -100).sum(dim=-1).tolist()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(chunked[name], parameter.grad, atol=1e-5, rtol=1e-4)


def _uneven_pair_batch(tokenizer):
    """Pairs whose prompts differ in length and turns, and whose answers start alike."""
    from migaki.data.pairs import collate_pairs, tokenize_pairs

    rows = [
        {
            "prompt": "Hi?",
            "chosen": "Product 1 costs 1000 yen.",
            "rejected": "Product 1 is sold out.",
        },
        {
            "chosen": "\n\nHuman: Hello there\n\nAssistant: Hello!\n\nHuman: How much is "
            "the kettle KZ-K120 today?\n\nAssistant: It costs 4,980 yen.",
            "rejected": "\n\nHuman: Hello there\n\nAssistant: Hello!\n\nHuman: How much is "
            "the kettle KZ-K120 today?\n\nAssistant: No.",
        },
        {"prompt": "What is the warranty?", "chosen": "One year.", "rejected": "One year"},
    ]
    examples = to_examples([Record("p", i + 1, row) for i, row in enumerate(rows)])
    pair_rows, _ = tokenize_pairs(examples, tokenizer, max_length=64)
    return collate_pairs(pair_rows, tokenizer.pad_token_id)


def _unrelated_pair_batch(tokenizer):
    """Pairs that share nothing (their first tokens differ) or only a part of the answer, and
    one whose chosen row is all prompt of the rejected one: no prompt may be assumed."""
    from migaki.data.batches import collate
    from migaki.data.tokenize import IGNORE_INDEX, TokenizedExample

    def row(ids, scored_from):
        return TokenizedExample(ids, [IGNORE_INDEX] * scored_from + ids[scored_from:])

    chosen = [row([5, 6, 7, 8], 1), row([5, 6, 7, 8, 9], 2), row([3, 4, 5], 1)]
    rejected = [row([9, 6, 7, 10, 11], 1), row([5, 6, 7, 12], 2), row([3, 4, 5, 6, 7], 1)]
    return collate(chosen + rejected, tokenizer.pad_token_id)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pair_logps_run_each_prompt_once_and_equal_whole_rows_in_value_and_gradient(
    tiny_model, tokenizer, attention
):
    import torch

    from migaki.config import MethodConfig
    from migaki.methods import apply_method
    from migaki.objectives import labelled_logps, pair_logps

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model, dtype=torch.float32, attn_implementation=attention
    )
    model = apply_method(base, MethodConfig(name="lora", lora_dropout=0.0))
    for _, parameter in model.named_parameters():  # a trained adapter, not the zero one
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.05)
    uneven = _uneven_pair_batch(tokenizer)
    assert len(set(uneven["attention_mask"].sum(dim=-1).tolist())) > 2  # really uneven
    for batch in (uneven, _unrelated_pair_batch(tokenizer)):
        weights = torch.randn(len(batch["input_ids"]))
        shared, shared_tokens = pair_logps(model, batch, chunk_rows=5)
        (shared * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        whole, whole_tokens = labelled_logps(model, batch)
        (whole * weights).sum().backward()
        torch.testing.assert_close(shared, whole, atol=1e-4, rtol=1e-5)
        assert shared_tokens.tolist() == whole_tokens.tolist()
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                torch.testing.assert_close(grads[name], parameter.grad, atol=1e-5, rtol=1e-4)
        model.zero_grad()
        with torch.no_grad(), model.disable_adapter():  # the reference path takes it too
            torch.testing.assert_close(
                pair_logps(model, batch)[0], labelled_logps(model, batch)[0], atol=1e-4, rtol=1e-5
            )


def test_reference_log_probs_are_computed_once_per_sequence(tiny_model, tokenizer):
    import torch

    from migaki.config import MethodConfig
    from migaki.methods import apply_method
    from migaki.tasks.dpo import DPOLoss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = apply_method(base, MethodConfig(name="lora", lora_dropout=0.0))
    loss = DPOLoss(model, beta=0.1, loss_type="sigmoid")
    batch = _pair_batch(tokenizer)
    first = loss(**batch)
    assert len(loss.reference_logps) == len(batch["input_ids"])
    calls = []
    model.disable_adapter = lambda: calls.append(1)  # would fail if the reference ran again
    again = loss(**batch)
    assert not calls and again.loss_sum.item() == first.loss_sum.item()
    # the same pairs in another order and padding still hit the cache
    swapped = _pair_batch(tokenizer, count=2)
    loss(**swapped)
    assert not calls


def test_long_dialogues_lose_their_earliest_turns_before_any_answer_token(tokenizer):
    from migaki.data.pairs import tokenize_pairs

    history = "".join(
        f"\n\nHuman: question {i} {'word ' * 30}\n\nAssistant: answer {i}" for i in range(6)
    )
    chosen = f"{history}\n\nHuman: last question?\n\nAssistant: Yes."
    rejected = chosen.removesuffix("Yes.") + "No."
    (example,) = to_examples([Record("hh", 1, {"chosen": chosen, "rejected": rejected})])
    rows, report = tokenize_pairs([example], tokenizer, max_length=60)
    assert report.truncated == 1 and len(rows) == 1
    text = tokenizer.decode(rows[0].chosen.input_ids)
    assert "last question?" in text and "question 0" not in text
    answer = [
        t
        for t, label in zip(rows[0].chosen.input_ids, rows[0].chosen.labels, strict=True)
        if label >= 0
    ]
    assert "Yes." in tokenizer.decode(answer)


def test_dpo_with_full_fine_tuning_uses_references_computed_up_front(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(32))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="dpo",
        method={"name": "full"},
        data={"split": {"val": 0.25, "test": 0.0}, "max_length": 64},
        train={"max_steps": 12, "batch_size": 8, "lr": 1e-3, "eval_every": 12},
        preference={"beta": 0.5},
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
    val = [m for m in read_metrics(run) if m.get("split") == "val"]
    assert abs(val[0]["reward_margin"]) < 1e-6  # the references are the untrained model's
    assert val[0]["pref_accuracy"] == 0.0  # float noise between batchings is a tie
    assert val[-1]["reward_margin"] > 0 and val[-1]["pref_accuracy"] >= 0.75


def test_validation_references_are_computed_in_the_batches_validation_uses(tokenizer, tiny_model):
    # In bf16 a sequence's summed log-probability depends on the batch it is computed in (by
    # ~0.01 nats on SmolLM2), so references batched otherwise than validation batches its
    # rows made the step-0 pref_accuracy of a full-weight DPO run 0.24 instead of 0.
    from accelerate import Accelerator

    from migaki.config import Recipe
    from migaki.data.pairs import collate_pairs, tokenize_pairs
    from migaki.metrics import evaluation_groups
    from migaki.tasks.dpo import precompute_reference

    rows = pairs(20)
    for i, row in enumerate(rows):
        row["prompt"] += " Please answer." * (i % 5)
    examples = to_examples([Record("p", i + 1, row) for i, row in enumerate(rows)])
    tokenized, _ = tokenize_pairs(examples, tokenizer, max_length=128)
    split = {"train": tokenized[:8], "val": tokenized[8:]}

    class Recorder(torch.nn.Module):
        def precompute_reference(self, batches):
            self.batches = [batch["input_ids"].tolist() for batch in batches]

    recipe = Recipe.model_validate(
        {
            "model": {"base": str(tiny_model)},
            "task": "dpo",
            "data": {"train": "p.jsonl"},
            "train": {"batch_size": 4},
        }
    )
    recorder = Recorder()
    precompute_reference(Accelerator(cpu=True), recorder, split, recipe, tokenizer.pad_token_id)
    validation = [
        collate_pairs(group, tokenizer.pad_token_id)["input_ids"].tolist()
        for group in evaluation_groups(split["val"], 4)
    ]
    assert recorder.batches[-len(validation) :] == validation
    assert len(recorder.batches) == 2 + len(validation)  # and every train pair


def test_dropping_early_turns_never_leaves_an_answer_first():
    from migaki.data.pairs import _without_first_exchange

    def turn(role):
        return {"role": role, "content": role}

    prompt = [turn("user"), turn("assistant"), turn("assistant"), turn("user")]
    assert [m["role"] for m in _without_first_exchange(prompt)] == ["user"]
    prompt = [turn("system"), turn("user"), turn("user"), turn("assistant"), turn("user")]
    assert [m["role"] for m in _without_first_exchange(prompt)] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


def test_label_smoothing_with_another_loss_is_refused_before_training(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(8))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        task="dpo",
        preference={"loss_type": "ipo", "label_smoothing": 0.1},
    )
    assert main(["train", str(recipe)]) == 2
    assert "preference.label_smoothing applies to loss_type sigmoid only" in capsys.readouterr().err


def test_an_sft_term_adds_the_chosen_answers_nll_and_is_refused_outside_dpo(
    tmp_path, tiny_model, capsys
):
    data = write_jsonl(tmp_path / "p.jsonl", pairs(16))
    runs = {}
    for weight in (0.0, 1.0):
        recipe = write_recipe(
            tmp_path / f"r{weight}.yaml",
            tiny_model,
            data,
            task="dpo",
            data={"split": {"val": 0.25, "test": 0.0}, "max_length": 64},
            train={"max_steps": 2, "batch_size": 4, "eval_every": 2},
            preference={"sft_weight": weight},
        )
        runs[weight] = tmp_path / f"run{weight}"
        assert main(["train", str(recipe), "--out", str(runs[weight])]) == 0
    val = {w: [m for m in read_metrics(r) if m.get("split") == "val"] for w, r in runs.items()}
    before = {w: rows[0] for w, rows in val.items()}
    assert before[0.0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # the tiny random model gives its answers a per-token NLL of about log(vocab)
    assert before[1.0]["loss"] - math.log(2) > 3.0
    assert before[1.0]["pref_accuracy"] == before[0.0]["pref_accuracy"] == 0.0
    orpo = write_recipe(
        tmp_path / "o.yaml", tiny_model, data, task="orpo", preference={"sft_weight": 1.0}
    )
    assert main(["train", str(orpo)]) == 2
    assert "preference.sft_weight applies to task dpo only" in capsys.readouterr().err


def test_pair_rows_only_where_the_attention_takes_a_4d_mask(tiny_model):
    from migaki.objectives import _mask_kind, decoder

    kinds = {}
    for attention in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention)
        kinds[attention] = _mask_kind(model)
    decoder(model).config._attn_implementation = "flash_attention_2"  # takes no 4D mask
    kinds["flash_attention_2"] = _mask_kind(model)
    assert kinds == {"sdpa": "bool", "eager": "additive", "flash_attention_2": None}

"""Recipe mistakes that YAML and pydantic let through quietly or without a hint: a key given
twice (YAML keeps the last) and a misspelt choice (pydantic lists the choices, not the near one).
"""

import pytest

from migaki.config import load_recipe
from migaki.errors import UserError

BASE = "model:\n  base: tiny\ntask: sft\ndata:\n  train: train.jsonl\n"


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def refusal(path, overrides=()) -> str:
    with pytest.raises(UserError) as error:
        load_recipe(path, overrides)
    return str(error.value)


def test_a_top_level_key_given_twice_names_both_lines(tmp_path):
    path = write(tmp_path, BASE + "train:\n  lr: 0.001\ntask: pretrain\n")
    assert refusal(path) == f"{path}:8: duplicate key 'task' (first at line 3); keep one of them"


def test_a_section_given_twice_names_both_lines(tmp_path):
    path = write(
        tmp_path, BASE + "train:\n  lr: 0.001\nmethod:\n  name: lora\ntrain:\n  epochs: 1\n"
    )
    assert refusal(path).startswith(f"{path}:10: duplicate key 'train' (first at line 6)")


@pytest.mark.parametrize(
    ("text", "line", "first"),
    [
        ("train: {lr: 1, lr: 2}\n", 6, 6),
        ("train:\n  lr: 0.1\n  epochs: 1\n  lr: 0.2\n", 9, 7),
        ("  clean:\n    pii:\n      action: mask\n      action: drop\n", 9, 8),
    ],
    ids=["flow", "block", "nested"],
)
def test_a_nested_key_given_twice_is_refused(tmp_path, text, line, first):
    path = write(tmp_path, BASE + text)
    key = "action" if "action" in text else "lr"
    assert refusal(path).startswith(f"{path}:{line}: duplicate key '{key}' (first at line {first})")


def test_a_merge_key_may_still_be_overridden(tmp_path):
    sections = (
        "train:\n  replay: &general\n    data: general.jsonl\n    format: auto\n"
        "  forgetting:\n    <<: *general\n    data: reference.jsonl\n"
    )
    recipe = load_recipe(write(tmp_path, BASE + sections))
    assert (recipe.train.forgetting.data, recipe.train.forgetting.format) == (
        "reference.jsonl",
        "auto",
    )


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("method.name=lorra", "method.name", "lora"),
        ("train.precision=BF16", "train.precision", "bf16"),
        ("train.scheduler=cosin", "train.scheduler", "cosine"),
        ("data.format=alpacca", "data.format", "alpaca"),
        ("preference.loss_type=hnge", "preference.loss_type", "hinge"),
        ("data.clean.pii.action=msk", "data.clean.pii.action", "mask"),
        ("model.attn_implementation=spda", "model.attn_implementation", "sdpa"),
    ],
)
def test_a_misspelt_choice_gets_did_you_mean(tmp_path, override, key, suggestion):
    message = refusal(write(tmp_path, BASE), [override])
    assert message.startswith(f"{tmp_path / 'r.yaml'}: {key}: Input should be ")
    assert message.endswith(f" (did you mean '{suggestion}'?)")


def test_a_misspelt_choice_in_a_list_gets_did_you_mean(tmp_path):
    message = refusal(write(tmp_path, BASE + "  clean:\n    pii:\n      types: [email, phnoe]\n"))
    assert "data.clean.pii.types.1: " in message
    assert message.endswith("(got 'phnoe') (did you mean 'phone'?)")


def test_a_choice_far_from_every_allowed_one_gets_no_guess(tmp_path):
    message = refusal(write(tmp_path, BASE), ["method.name=xyzzy"])
    assert "(got 'xyzzy')" in message and "did you mean" not in message

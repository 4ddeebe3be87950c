import pytest

from migaki.config import apply_overrides, build_recipe, load_recipe
from migaki.errors import UserError

MINIMUM = {"model": {"base": "smollm2-135m-instruct"}, "data": {"train": "faq.jsonl"}}


def test_defaults_fill_the_minimum_recipe():
    recipe = build_recipe(dict(MINIMUM))
    assert recipe.task == "sft"
    assert recipe.method.name == "lora"
    assert recipe.train.scheduler == "cosine"
    assert recipe.data.split.val == 0.1
    assert recipe.train.early_stopping is None


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(UserError) as err:
        build_recipe({**MINIMUM, "train": {"max_stepz": 10}}, source="r.yaml")
    assert str(err.value) == "r.yaml: unknown key 'train.max_stepz' (did you mean 'max_steps'?)"


def test_every_problem_is_listed_at_once():
    with pytest.raises(UserError) as err:
        build_recipe({**MINIMUM, "train": {"lr": -1, "batch_size": 0}, "bogus": 1})
    message = str(err.value)
    assert "train.lr" in message and "train.batch_size" in message and "'bogus'" in message
    assert len(message.splitlines()) == 3


def test_out_of_range_and_bad_choice():
    with pytest.raises(UserError, match=r"train\.scheduler"):
        build_recipe({**MINIMUM, "train": {"scheduler": "step"}})
    with pytest.raises(UserError, match=r"data\.split\.val"):
        build_recipe({**MINIMUM, "data": {"train": "x", "split": {"val": 0.9}}})


def test_missing_section_is_named():
    with pytest.raises(UserError, match="missing key 'model'"):
        build_recipe({"data": {"train": "x"}})


def test_batch_must_divide_into_micro_batches():
    with pytest.raises(UserError, match=r"multiple of train\.grad_accum"):
        build_recipe({**MINIMUM, "train": {"batch_size": 6, "grad_accum": 4}})


def test_a_check_across_sections_names_its_key_after_the_file():
    with pytest.raises(UserError) as err:
        build_recipe({**MINIMUM, "train": {"batch_size": 6, "grad_accum": 4}}, source="r.yaml")
    assert str(err.value).startswith("r.yaml: train.batch_size (6) must be a multiple")


def test_overrides_parse_yaml_scalars_and_nest():
    raw = {"train": {"lr": 1.0}}
    apply_overrides(
        raw,
        [
            "train.lr=1e-4",
            "train.early_stopping=3",
            "method.name=full",
            "data.split.val=0.2",
            "train.max_grad_norm=null",
        ],
    )
    recipe = build_recipe({**MINIMUM, **raw, "data": {"train": "x", **raw["data"]}})
    assert recipe.train.lr == 1e-4
    assert recipe.train.early_stopping.patience == 3
    assert recipe.method.name == "full"
    assert recipe.data.split.val == 0.2
    assert recipe.train.max_grad_norm is None


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=1"])
def test_malformed_override(bad):
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        apply_overrides({}, [bad])


def test_load_recipe_resolves_data_relative_to_recipe(tmp_path):
    (tmp_path / "faq.jsonl").write_text("{}\n")
    path = tmp_path / "r.yaml"
    path.write_text("model: {base: x}\ndata: {train: faq.jsonl}\n")
    recipe = load_recipe(path, ["train.max_steps=5"])
    assert recipe.data.train == str(tmp_path / "faq.jsonl")
    assert recipe.train.max_steps == 5


def test_load_recipe_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {base: x\n")
    with pytest.raises(UserError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_recipe(bad)


def test_fingerprint_changes_with_the_recipe():
    a = build_recipe(dict(MINIMUM))
    b = build_recipe({**MINIMUM, "train": {"lr": 1e-5}})
    assert a.fingerprint() == build_recipe(dict(MINIMUM)).fingerprint()
    assert a.fingerprint() != b.fingerprint()

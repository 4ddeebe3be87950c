"""`model.chat_template`: a named template or a Jinja file for models that ship none (as the
pre-trained Gemma 3 does); its end-of-turn token carries loss and stops generation."""

import json

import pytest
from conftest import qa_rows, run_cli, write_jsonl, write_recipe

from migaki.config import load_recipe
from migaki.data.tokenize import IGNORE_INDEX
from migaki.evaluate import generate_answers
from migaki.models import ModelSource, load_tokenizer
from migaki.models.inference import load_for_inference
from migaki.models.templates import CHATML, GEMMA, end_of_turn_ids
from migaki.testing import build_tiny_model
from migaki.train import train
from migaki.train.tracking import read_metrics


@pytest.fixture(scope="module")
def gemma_like(tmp_path_factory):
    """A tiny model with Gemma's special tokens and no chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("gemma") / "model", gemma_like=True)


def with_template(recipe, template: str):
    """The recipe file with model.chat_template set (write_recipe names the model itself)."""
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    raw["model"]["chat_template"] = template
    recipe.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return recipe


def _ids(token_id: int):
    import torch

    return torch.tensor([token_id])


def gemma_tokenizer(path, template="gemma"):
    return load_tokenizer(ModelSource("tiny-gemma", path, "local"), chat_template=template)


def test_a_model_without_a_template_is_refused_naming_the_key(tmp_path, gemma_like, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(24))
    recipe = write_recipe(tmp_path / "r.yaml", gemma_like, data)
    code, _, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 2
    assert "the tokenizer has no chat template; set model.chat_template (chatml, gemma" in err


def test_the_gemma_template_renders_turns_and_ends_them_with_end_of_turn(gemma_like):
    tokenizer = gemma_tokenizer(gemma_like)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
    )
    end, eos = tokenizer.convert_tokens_to_ids(["<end_of_turn>", "<eos>"])
    assert end_of_turn_ids(tokenizer) == [end, eos]


def test_a_shipped_chatml_template_stops_at_its_eos_alone(tiny_model):
    tokenizer = load_tokenizer(ModelSource("tiny", tiny_model, "local"))
    assert end_of_turn_ids(tokenizer) == [tokenizer.eos_token_id]  # <|im_end|>


def test_training_labels_the_end_of_turn_token_and_generation_stops_there(tmp_path, gemma_like):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    settings = {"max_steps": 30, "lr": 1e-2, "eval_every": 30}
    recipe = with_template(
        write_recipe(tmp_path / "r.yaml", gemma_like, data, train=settings), "gemma"
    )
    run = train(load_recipe(recipe), out=tmp_path / "run")
    assert (run / "final" / "chat_template.jinja").read_text() == GEMMA
    tokenizer = gemma_tokenizer(gemma_like)
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    from migaki.data.formats import to_examples
    from migaki.data.load import Record
    from migaki.data.tokenize import tokenize_example

    [example] = to_examples([Record("qa", 1, qa_rows(1)[0])])
    row = tokenize_example(example, tokenizer)
    labelled = [
        t for t, label in zip(row.input_ids, row.labels, strict=True) if label != IGNORE_INDEX
    ]
    assert labelled[-1] == end  # the answer's last labelled token ends the turn
    loaded = load_for_inference(run)
    # A model that always says <end_of_turn> next: generation must stop at once, where it
    # would run to max_new_tokens if only EOS stopped it.
    head = loaded.model.get_output_embeddings()
    head.register_forward_hook(lambda module, inputs, logits: logits.index_fill(-1, _ids(end), 1e4))
    [(answer, stopped)] = generate_answers(
        loaded, [[{"role": "user", "content": "How much is product 2?"}]], max_new_tokens=40
    )
    assert stopped and answer == ""
    losses = [m["loss"] for m in read_metrics(run) if m.get("split") == "val"]
    assert losses[-1] < losses[0]


def test_a_template_file_is_read_and_relative_to_the_recipe(tmp_path, gemma_like):
    (tmp_path / "turns.jinja").write_text(CHATML.replace("im_", "start_of_turn_"))
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(8))
    recipe = with_template(write_recipe(tmp_path / "r.yaml", gemma_like, data), "turns.jinja")
    assert load_recipe(recipe).model.chat_template == str(tmp_path / "turns.jinja")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("gemmma", "model.chat_template: unknown template 'gemmma' (use one of chatml, gemma"),
        ("llama3", "its end-of-turn token <|eot_id|> is not in tiny-gemma's vocabulary"),
        ("chatml", "its end-of-turn token <|im_end|> is not in tiny-gemma's vocabulary"),
    ],
)
def test_a_template_that_cannot_serve_is_refused_in_one_line(gemma_like, template, message):
    from migaki.errors import UserError

    with pytest.raises(UserError) as err:
        gemma_tokenizer(gemma_like, template)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_template_without_an_assistant_marker_is_refused(tmp_path, gemma_like):
    from migaki.errors import UserError

    flat = tmp_path / "flat.jinja"
    flat.write_text("{% for message in messages %}{{ message['content'] }}\n{% endfor %}")
    with pytest.raises(UserError, match="the template has no assistant marker"):
        gemma_tokenizer(gemma_like, str(flat))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for message in messages %}")
    with pytest.raises(UserError, match="the template does not render"):
        gemma_tokenizer(gemma_like, str(broken))


def test_the_run_recipe_keeps_the_template_for_eval(tmp_path, gemma_like):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(24))
    settings = {"max_steps": 2, "eval_every": 2}
    recipe = with_template(
        write_recipe(tmp_path / "r.yaml", gemma_like, data, train=settings), "gemma"
    )
    run = train(load_recipe(recipe), out=tmp_path / "run")
    saved = json.dumps(load_recipe(run / "recipe.yaml").model.model_dump())
    assert '"chat_template": "gemma"' in saved
    assert load_for_inference(run).tokenizer.chat_template == GEMMA

"""`migaki export`: a whole Hugging Face folder that plain transformers loads, that renders
and stops as training did, carries a model card, and is refused or failed where it would not
be the model that was evaluated."""

import json
import sys

import pytest
import torch
from conftest import qa_rows, run_cli, write_jsonl, write_recipe
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from migaki.data.tokenize import render_prompt
from migaki.export import verify
from migaki.export.verify import Check, Verification
from migaki.models import ModelSource, load_tokenizer
from migaki.models.inference import load_for_inference
from migaki.testing import build_tiny_encoder

SYSTEM = "あなたは「クモカゼ」のサポート係です。"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("lora")
    data = write_jsonl(tmp / "qa.jsonl", qa_rows(40))
    recipe = write_recipe(tmp / "r.yaml", tiny_model, data, data={"system_prompt": SYSTEM})
    from migaki.cli import main

    assert main(["train", str(recipe), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_a_lora_run_exports_merged_weights_that_plain_transformers_runs(lora_run, tmp_path, capsys):
    out = tmp_path / "export"
    code, printed, err = run_cli(capsys, "export", lora_run, "--to", out)
    assert code == 0, err
    assert "agreement 100%" in printed
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(out.glob("*.bin")) and not list(out.glob("adapter_*"))
    # what the run computes, plain transformers computes from the folder
    original = load_for_inference(lora_run).model.float()
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, original(ids).logits, atol=1e-4, rtol=1e-4)
    record = json.loads((out / "migaki-export.json").read_text())
    [verification] = record["verifications"]
    assert verification["problems"] == [] and verification["same_as_base"] is False
    weights = out / "model.safetensors"
    assert record["files"]["model.safetensors"]["bytes"] == weights.stat().st_size


def test_the_chat_template_system_prompt_and_stop_token_travel(lora_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_cli(capsys, "export", lora_run, "--to", out, "--no-verify")[0] == 0
    training = load_tokenizer(ModelSource("run", lora_run / "final", "local"))
    exported = AutoTokenizer.from_pretrained(out)
    conversation = [{"role": "user", "content": "KZ-R300の値段は？"}]
    # a caller that sends no system message gets training's rendering, system prompt included
    assert exported.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    ) == render_prompt(training, conversation, SYSTEM)
    # a caller's own system message replaces it, as in training
    own = [{"role": "system", "content": "Be brief."}, *conversation]
    assert exported.apply_chat_template(own, tokenize=False) == training.apply_chat_template(
        own, tokenize=False
    )
    end_of_turn = exported.convert_tokens_to_ids("<|im_end|>")
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])


def test_the_model_card_names_base_method_data_and_verification(lora_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_cli(capsys, "export", lora_run, "--to", out)[0] == 0
    card = (out / "README.md").read_text()
    manifest = json.loads((lora_run / "manifest.json").read_text())
    [digest] = manifest["data"]["hashes"].values()
    assert "method `lora`" in card and "rank 4" in card and digest in card
    assert "## Export verification" in card and "agreement 100%" in card
    assert SYSTEM in card
    assert "No `migaki eval` result" in card


def test_an_export_that_lost_its_adapter_fails_with_exit_1(lora_run, tmp_path, capsys, monkeypatch):
    # what LLaMA-Factory #9051 shipped: the untrained base under the tuned model's name
    monkeypatch.setattr("migaki.export.hf.merged", lambda name, model: model.unload())
    code, _, err = run_cli(capsys, "export", lora_run, "--to", tmp_path / "export")
    assert code == 1
    assert "the exported weights equal the base model's" in err
    assert "FAILED" in (tmp_path / "export" / "README.md").read_text()


def test_answers_that_no_longer_stop_or_agree_fail_the_verification():
    checks = [Check("q1", "a", "a", True, False, 0.0), Check("q2", "b", "c", True, True, 2.5)]
    problems = Verification("fp32", checks=checks).problems()
    assert any("do not end their turn" in p for p in problems)
    assert any("agree on 50%" in p for p in problems)
    assert any("moved by 2.5" in p for p in problems)
    assert Verification("bf16", checks=[Check("q", "a", "a", max_delta=0.3)]).problems() == []
    rows = [Check("q", "a", "a", max_delta=1.5)] + [Check("q", "a", "b", max_delta=1.5)] * 3
    loose = Verification("q4_k_m", "llama.cpp", rows)
    assert loose.problems() == [] and "q4_k_m read by llama.cpp:" in loose.table()
    drifted = Verification("q8_0", "llama.cpp", [Check("q", "a", "a", same_top=0.6)])
    assert any("top next-token choice" in p and "60.0%" in p for p in drifted.problems())


def test_a_changed_chat_rendering_fails_the_verification(lora_run, tmp_path, monkeypatch):
    from migaki.export import export

    monkeypatch.setattr("migaki.export.hf.with_default_system", lambda template, _: template)
    result = export(lora_run, tmp_path / "export")
    assert any("renders a prompt differently" in p for p in result.problems)


@pytest.mark.parametrize("method", ["prefix", "adapter"])
def test_methods_that_cannot_be_merged_are_refused(method, tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, method={"name": method}, train={"max_steps": 2}
    )
    assert run_cli(capsys, "train", recipe, "--out", tmp_path / "run")[0] == 0
    code, _, err = run_cli(capsys, "export", tmp_path / "run", "--to", tmp_path / "out")
    assert code == 2
    assert f"method {method} cannot be exported" in err and "method.name=lora" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_replaced_only_with_force(lora_run, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", lora_run, "--to", out)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"
    assert run_cli(capsys, "export", lora_run, "--to", out, "--force", "--no-verify")[0] == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_an_interrupted_export_leaves_no_folder(lora_run, tmp_path, monkeypatch):
    from migaki.export import export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("migaki.export.verify_language_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(lora_run, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx"], "invalid choice"),
        (["--quant", "q8_0"], "hf exports take --dtype"),
        (["--format", "gguf", "--quant", "q3"], "invalid choice"),
        (["--format", "gguf", "--dtype", "bf16"], "a GGUF takes --quant"),
        (["--quant", "int8"], "--format gguf --quant q8_0"),
    ],
)
def test_bad_export_requests_are_one_line_with_exit_2(lora_run, tmp_path, capsys, args, message):
    try:
        code, _, err = run_cli(capsys, "export", lora_run, "--to", tmp_path / "out", *args)
    except SystemExit as exc:  # argparse refuses a value outside --format/--quant's choices
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_the_run_itself_is_never_the_export_folder(lora_run, capsys):
    for target in (lora_run, lora_run.parent):
        code, _, err = run_cli(capsys, "export", lora_run, "--to", target, "--force")
        assert code == 2 and "holds the run itself" in err
    assert (lora_run / "final").is_dir()


def test_gguf_without_the_extra_names_it(lora_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an import finds uninstalled
    code, _, err = run_cli(capsys, "export", lora_run, "--to", tmp_path / "g", "--format", "gguf")
    assert code == 2 and "pip install 'migaki[export]'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "g").exists()


def test_a_missing_run_is_named(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tmp_path / "nope", "--to", tmp_path / "out")
    assert code == 2 and "not a migaki run directory" in err


def test_a_classifier_exports_with_its_label_map(tmp_path, capsys):
    encoder = build_tiny_encoder(tmp_path / "encoder")
    rows = [
        {"sentence": f"{'good' if i % 2 else 'bad'} kettle {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(80)
    ]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        encoder,
        data,
        task="classification",
        method={"name": "lora"},
        train={"max_steps": 10, "batch_size": 16, "lr": 5e-3},
    )
    assert run_cli(capsys, "train", recipe, "--out", tmp_path / "run")[0] == 0
    out = tmp_path / "export"
    code, printed, err = run_cli(capsys, "export", tmp_path / "run", "--to", out)
    assert code == 0, err
    assert "agreement 100%" in printed
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert not (out / "generation_config.json").exists()


def test_golden_rows_come_from_a_prompts_file(lora_run, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "golden.jsonl", qa_rows(2))
    out = tmp_path / "export"
    code = run_cli(capsys, "export", lora_run, "--to", out, "--prompts", prompts)[0]
    assert code == 0
    [verification] = json.loads((out / "migaki-export.json").read_text())["verifications"]
    rows = verification["rows"]
    assert [r["prompt"] for r in rows] == [r["messages"][0]["content"] for r in qa_rows(2)]


def test_tolerances_are_stated_for_every_dtype_and_quantization():
    from migaki.export.hf import DTYPES
    from migaki.export.llama_cpp import QUANTS

    assert set(verify.TOLERANCE) == set(DTYPES) | set(QUANTS)


def test_a_named_llama_cpp_tree_without_the_converter_is_refused(tmp_path, monkeypatch):
    from migaki.errors import UserError
    from migaki.export.llama_cpp import converter_tree

    monkeypatch.setenv("MIGAKI_LLAMA_CPP", str(tmp_path))
    with pytest.raises(UserError, match=r"no convert_hf_to_gguf\.py there"):
        converter_tree()
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    assert converter_tree() == tmp_path

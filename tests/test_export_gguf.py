"""`migaki export --format gguf|ollama`: llama.cpp's own converter and quantizer write the
file, llama.cpp's runtime and transformers' GGUF loader both read it back against the run,
and the chat template agrees across the Hugging Face tokenizer, the GGUF's embedded template
and the Modelfile's Go template (rendered by Go's text/template, as Ollama does).

A tiny random Llama with SmolLM2's real tokenizer: llama.cpp's converter recognises only the
tokenizers of published models."""

import json

import pytest
from conftest import qa_rows, run_cli, write_jsonl, write_recipe
from gotemplate import go_render

from migaki.data.tokenize import render_prompt
from migaki.export.ollama import GO_TEMPLATES
from migaki.models import ModelSource, load_tokenizer, resolve
from migaki.testing import build_tiny_model

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: migaki[export]")

SYSTEM = "You are the support desk of Kumokaze. 雲風家電のサポートです。"
CONVERSATION = [
    {"role": "user", "content": "How much is the KZ-R300?"},
    {"role": "assistant", "content": "The KZ-R300 costs 12,800 yen."},
    {"role": "user", "content": "保証期間は？"},
]


@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf")
    model = build_tiny_model(
        tmp / "model", tokenizer_from=resolve("smollm2-135m-instruct").path, seed=1
    )
    data = write_jsonl(tmp / "qa.jsonl", qa_rows(24))
    recipe = write_recipe(
        tmp / "r.yaml",
        model,
        data,
        data={"system_prompt": SYSTEM, "split": {"val": 0.0, "test": 0.25}},
        train={"max_steps": 8, "eval_every": 8},
        eval={"max_new_tokens": 12},
    )
    from migaki.cli import main

    assert main(["train", str(recipe), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_a_gguf_export_is_read_back_by_llama_cpp_and_transformers(
    smol_run, tmp_path, capsys, quant
):
    out = tmp_path / "gguf"
    code, printed, err = run_cli(
        capsys, "export", smol_run, "--to", out, "--format", "gguf", "--quant", quant
    )
    assert code == 0, err
    assert f"{quant} read by llama.cpp:" in printed
    assert f"{quant} read by transformers (gguf_file):" in printed
    record = json.loads((out / "migaki-export.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "migaki-export.json",
        f"model-{quant}.gguf",
    ]
    assert record["type"] == quant and record["files"][f"model-{quant}.gguf"]["bytes"] > 0
    runtimes = {v["runtime"]: v for v in record["verifications"]}
    assert set(runtimes) == {"llama.cpp", "transformers (gguf_file)"}
    for verification in runtimes.values():
        assert verification["problems"] == []
        assert all(
            row["exported_stopped"] == row["original_stopped"] for row in verification["rows"]
        )
    assert runtimes["llama.cpp"]["same_as_base"] is False


def test_the_base_weights_guard_fires_on_a_gguf_that_lost_its_adapter(
    smol_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("migaki.export.hf.merged", lambda name, model: model.unload())
    code, _, err = run_cli(capsys, "export", smol_run, "--to", tmp_path / "g", "--format", "gguf")
    assert code == 1 and "the exported weights equal the base model's" in err


def test_the_chat_template_agrees_across_tokenizer_gguf_and_modelfile(smol_run, tmp_path, capsys):
    out = tmp_path / "ollama"
    code, printed, err = run_cli(capsys, "export", smol_run, "--to", out, "--format", "ollama")
    assert code == 0, err
    assert "ollama create run -f Modelfile" in printed
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf\n" in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile

    training = load_tokenizer(ModelSource("run", smol_run / "final", "local"))
    want = render_prompt(training, CONVERSATION, SYSTEM)
    # the GGUF's own template, as transformers reads it from the file
    from transformers import AutoTokenizer

    from_gguf = AutoTokenizer.from_pretrained(out, gguf_file="model-q8_0.gguf")
    assert (
        from_gguf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        == want
    )
    # the Modelfile's template, as Ollama renders it: SYSTEM first when a request has none
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == GO_TEMPLATES["chatml"]
    messages = [{"role": "system", "content": SYSTEM}, *CONVERSATION]
    assert go_render(template, messages, tmp_path) == want

"""A run exported to every artifact, side by side in one process: Hugging Face fp32, GGUF f16,
q8_0 and q4_k_m (llama.cpp), and torch's dynamic int8 on the fp32 folder's Linear layers.

    python benchmarks/export_quickstart.py RUN_DIR [--out DIR] [--rows N]

For each: size on disk, load time, seconds and tokens/s to answer the run's test questions
(transformers batched as `migaki eval` does; llama.cpp one question at a time, as its Python
API runs), the share of answers identical to the pre-export model's, and the share that state
the row's fact (fact_accuracy). Needs `pip install 'migaki[export]'`."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from migaki.data import read_records
from migaki.data.formats import convert_records
from migaki.data.tokenize import render_prompt
from migaki.evaluate import generate_answers
from migaki.evaluate.answers import answer_metrics
from migaki.export import export
from migaki.export.llama_cpp import load_runtime
from migaki.models import ModelSource, load_causal_lm, load_tokenizer
from migaki.models.inference import LoadedModel, load_for_inference


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--out", default=None, help="folder for the exports (default: a temp dir)")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="migaki-export-bench-"))

    original = load_for_inference(args.run)
    recipe = original.recipe
    examples, _, _ = convert_records(read_records(f"{args.run}/data/test.jsonl"), "auto")
    examples = examples[: args.rows]
    conversations = [e.prompt_messages for e in examples]
    tokens = recipe.eval.max_new_tokens
    print(
        f"{len(examples)} test questions, {tokens} new tokens at most, "
        f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    fp32 = LoadedModel(original.model.float().eval(), original.tokenizer, recipe, "fp32")
    reference, seconds = _timed(generate_answers, fp32, conversations, tokens)
    rows = [("pre-export (PEFT)", None, 0.0, seconds, reference)]
    del original, fp32

    hf_dir = out / "hf"
    export(args.run, hf_dir, verify=False, force=True)
    model, load = _timed(_load_hf, hf_dir)
    answers, seconds = _timed(generate_answers, model, conversations, tokens)
    rows.append(("hf fp32 (transformers)", hf_dir, load, seconds, answers))

    quantized = torch.ao.quantization.quantize_dynamic(
        model.model, {torch.nn.Linear}, dtype=torch.qint8
    )
    int8 = LoadedModel(quantized, model.tokenizer, None, "fp32")
    answers, seconds = _timed(generate_answers, int8, conversations, tokens)
    rows.append(("hf int8 dynamic (torch)", None, load, seconds, answers))
    del model, int8, quantized

    tokenizer = _export_tokenizer(hf_dir)
    prompts = [render_prompt(tokenizer, c, None) for c in conversations]
    for quant in ("f16", "q8_0", "q4_k_m"):
        folder = out / f"gguf-{quant}"
        export(args.run, folder, fmt="gguf", quant=quant, verify=False, force=True)
        llm, load = _timed(load_runtime, folder / f"model-{quant}.gguf", 1024, False)
        answers, seconds = _timed(_llama_cpp_answers, llm, prompts, tokens)
        rows.append((f"gguf {quant} (llama.cpp)", folder, load, seconds, answers))
        llm.close()

    print(
        f"{'artifact':<26}{'MB':>8}{'load s':>8}{'answer s':>10}{'tok/s':>8}"
        f"{'same as pre-export':>20}{'fact acc':>10}{'stopped':>9}"
    )
    for name, folder, load, seconds, answers in rows:
        produced = sum(len(tokenizer(text)["input_ids"]) + stop for text, stop in answers)
        same = sum(a[0] == r[0] for a, r in zip(answers, reference, strict=True)) / len(answers)
        metrics = answer_metrics(examples, answers)
        size = _megabytes(folder) if folder else float("nan")
        print(
            f"{name:<26}{size:>8.0f}{load:>8.1f}{seconds:>10.1f}{produced / seconds:>8.1f}"
            f"{same:>20.0%}{metrics.get('fact_accuracy', float('nan')):>10.1%}"
            f"{metrics['stopped']:>9.0%}"
        )


def _load_hf(folder: Path) -> LoadedModel:
    source = ModelSource("export", folder, "local")
    return LoadedModel(load_causal_lm(source).eval(), load_tokenizer(source), None, "fp32")


def _export_tokenizer(folder: Path):
    return load_tokenizer(ModelSource("export", folder, "local"))


def _llama_cpp_answers(llm, prompts: list[str], tokens: int) -> list[tuple[str, bool]]:
    answers = []
    for prompt in prompts:
        llm.reset()
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        out = llm.create_completion(ids, max_tokens=tokens, temperature=0.0, top_k=1)
        choice = out["choices"][0]
        answers.append((choice["text"].strip(), choice["finish_reason"] == "stop"))
    return answers


def _timed(work, *args):
    start = time.perf_counter()
    result = work(*args)
    return result, time.perf_counter() - start


def _megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

"""SFT throughput: migaki's training loop against TRL's SFTTrainer on the same LoRA job.

The job: LoRA r=16 (alpha 32, dropout 0, all-linear) on the bundled SmolLM2-135M-Instruct,
batch 8 examples per optimizer step, lr 2e-4 constant, no warm-up, max length 512, the first
steps*8 examples of JCommonsenseQA (question and five numbered choices -> the right choice's
text) rendered as chat. Three systems, each in its own child process so that peak RSS is per
system:

  migaki       migaki's own loop (`migaki.train.train`), precision `auto` (measures bf16 vs fp32).
  trl_default  TRL `SFTTrainer` + `SFTConfig` defaults except what must match the job; loss on
               every token of the `messages` rows, so its loss is NOT comparable to migaki's.
  trl_best     TRL tuned for this job where it stays correct on this CPU: prompt/completion rows
               with completion-only loss (the same tokens carry loss as in migaki), padding-free
               batches (examples kept apart), no gradient checkpointing, bf16 only if a bf16
               matmul is faster here.

tokens/s counts real (non-padding) tokens of steps 2..N over the wall time from the end of step 1
to the end of step N, the same definition for every system. The parent also measures this
machine's matmul peak (2048^3, best of several runs) for fp32 and bf16 and derives migaki's
model-FLOPs utilisation. Training losses of single steps differ between systems because each
draws batches in its own order; `held_out_loss` scores every system's final model on the same
64 held-out rows (assistant tokens, same rendering), which is what must agree.
Not a test: it prints a table (and writes JSON with --json).

    python benchmarks/sft_throughput.py --steps 20 --json out.json
    python benchmarks/sft_throughput.py --steps 2 --systems migaki,trl_best   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
HELD_OUT = 64  # rows after the training rows; every system's final model is scored on them
SYSTEMS = ("migaki", "trl_default", "trl_best")
BATCH = 8
MAX_LENGTH = 512
LR = 2e-4
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jcommonsenseqa" / "train.jsonl"


# ---------------------------------------------------------------- data


def render_jcqa(row: dict[str, Any]) -> list[dict[str, str]]:
    """A JCommonsenseQA row as chat: the question and numbered choices -> the right choice."""
    choices = "\n".join(f"{i}: {row[f'choice{i}']}" for i in range(5))
    return [
        {"role": "user", "content": f"{row['question']}\n{choices}"},
        {"role": "assistant", "content": row[f"choice{row['label']}"]},
    ]


def load_examples(path: Path, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The first `count` rows as {"messages": [...]}; falls back to migaki's sample data."""
    notes = []
    if not path.is_file():
        from importlib.resources import files

        fallback = Path(str(files("migaki") / "sample_data" / "support_faq.jsonl"))
        notes.append(f"{path} not found; using migaki's sample data {fallback.name} instead")
        path = fallback
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if len(rows) == count:
                break
            if line.strip():
                raw = json.loads(line)
                messages = raw["messages"] if "messages" in raw else render_jcqa(raw)
                rows.append({"messages": messages})
    if len(rows) < count:
        notes.append(f"only {len(rows)} rows in {path.name}; every system repeats them")
    return rows, [f"data: {path}", *notes]


def token_lengths(model_dir: Path, rows: list[dict[str, Any]]) -> list[int]:
    """Tokens per example as the chat template renders it (default system prompt included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


# ---------------------------------------------------------------- hardware and FLOPs


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` GFLOPS of an n x n @ n x n matmul in fp32 and bf16."""
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: kernel selection
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        peaks[name] = round(2 * n**3 / best / 1e9, 1)
    return peaks


def safetensors_params(model_dir: Path) -> int:
    """Parameters stored in the model's safetensors files (tied embeddings stored once)."""
    total = 0
    for file in model_dir.glob("*.safetensors"):
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for key, info in header.items():
            if key != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def flops_per_token(model_dir: Path, lora_params: int, lengths: list[int]) -> tuple[float, str]:
    """Training FLOPs per real token for LoRA: frozen weights need forward (2N) and the input
    gradient (2N) but no weight gradient; LoRA weights need all three (6 N_lora); attention adds
    QK^T and AV, forward + backward-input = 3 x forward, over the mean causal context."""
    config = json.loads((model_dir / "config.json").read_text())
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    base = safetensors_params(model_dir)
    context = sum(n * n for n in lengths) / sum(lengths)  # token-weighted example length
    attention = 6 * layers * hidden * context  # 3 x (2 matmuls x 2 FLOPs x hidden x context/2)
    formula = (
        f"4 x N_base ({base:,}: all parameters, the tied embedding counted once = non-embedding"
        f" + LM head) + 6 x N_lora ({lora_params:,}) + 6 x layers ({layers}) x hidden ({hidden})"
        f" x token-weighted example length ({context:.0f})"
    )
    return 4 * base + 6 * lora_params + attention, formula


# ---------------------------------------------------------------- child: one system


def throughput(marks: list[tuple[int, float, int]]) -> tuple[float, float]:
    """(tokens/s, seconds) of steps 2..N from (step, time at step end, cumulative tokens)."""
    (_, t_first, k_first), (_, t_last, k_last) = marks[0], marks[-1]
    seconds = t_last - t_first
    return (k_last - k_first) / max(seconds, 1e-9), seconds


def held_out_loss(model, tokenizer, workdir: Path) -> float:
    """Mean loss on the assistant tokens of the held-out rows (the same rows and the same
    rendering for every system): the comparable measure of what each system learnt."""
    import torch

    from migaki.data import Example, tokenize_example
    from migaki.data.batches import collate
    from migaki.objectives import causal_lm_loss

    lines = (workdir / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    items = [
        tokenize_example(Example("heldout", i, messages=json.loads(line)["messages"]), tokenizer)
        for i, line in enumerate(lines)
    ]
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 8):
            parts = causal_lm_loss(model, collate(items[start : start + 8], tokenizer.pad_token_id))
            loss_sum, tokens = loss_sum + parts.loss_sum.item(), tokens + parts.tokens
    return loss_sum / tokens


def run_migaki(rows_path: Path, steps: int, workdir: Path) -> dict[str, Any]:
    from migaki.config import build_recipe
    from migaki.train import train

    recipe = build_recipe(
        {
            "model": {"base": MODEL},
            "task": "sft",
            "data": {
                "train": str(rows_path),
                "max_length": MAX_LENGTH,
                "split": {"val": 0.0, "test": 0.0},
            },
            "method": {
                "name": "lora",
                "lora_rank": LORA["r"],
                "lora_alpha": LORA["alpha"],
                "lora_dropout": LORA["dropout"],
                "target_modules": LORA["targets"],
            },
            "train": {
                "max_steps": steps,
                "batch_size": BATCH,
                "lr": LR,
                "scheduler": "constant",
                "warmup": 0,
                "eval_every": 100000,
                "save_every": 100000,
                "precision": "auto",
                "seed": 0,
            },
        }
    )
    run_dir = train(recipe, out=workdir / "migaki-run")
    from migaki.models.inference import load_for_inference

    loaded = load_for_inference(run_dir)
    return migaki_result(run_dir) | {
        "held_out_loss": held_out_loss(loaded.model, loaded.tokenizer, workdir)
    }


def migaki_result(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [r for r in map(json.loads, filter(str.strip, lines)) if r.get("split") == "train"]
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    tokens_per_s, seconds = throughput([(r["step"], r["time"], r["tokens_seen"]) for r in rows])
    losses = [r["loss"] for r in rows]
    return {
        "tokens_per_s": tokens_per_s,
        "timed_s": seconds,
        "tokens_total": rows[-1]["tokens_seen"],
        "final_loss": losses[-1],
        "mean_loss": sum(losses) / len(losses),
        "precision": manifest["precision"],
        "trainable_params": manifest["trainable_params"],
        "loss_on": "assistant tokens",
        "notes": [
            f"precision auto -> {manifest['precision']}; packing auto (off on CPU);"
            " group_by_length on (migaki defaults)"
        ],
    }


def trl_dataset(rows_path: Path, system: str):
    """`messages` rows for trl_default; conversational prompt/completion rows for trl_best."""
    from datasets import Dataset

    rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines()]
    if system == "trl_default":
        return Dataset.from_list(rows)
    split = [
        {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
        for r in rows
        if r["messages"][-1]["role"] == "assistant"
    ]
    return Dataset.from_list(split)


def trl_config(system: str, steps: int, workdir: Path, bf16: bool):
    """SFTConfig: the shared job settings, plus trl_best's tuning (see the module docstring)."""
    from trl import SFTConfig

    common = {
        "output_dir": str(workdir / f"{system}-out"),
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1,
        "learning_rate": LR,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": 0,
        "use_cpu": True,
    }
    if system == "trl_default":
        return SFTConfig(**common, max_length=MAX_LENGTH)
    # padding_free without packing refuses a max_length (it would not be enforced); the parent
    # checks that no example is longer than MAX_LENGTH, so nothing is lost.
    return SFTConfig(
        **common,
        max_length=None,
        padding_free=True,
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=bf16,
    )


class StepMeter:
    """Counts real tokens per training forward and stamps (step, time, tokens) at step end."""

    def __init__(self) -> None:
        self.tokens = 0
        self.loss_tokens = 0
        self.marks: list[tuple[int, float, int]] = []
        self.batch_keys: list[str] = []

    def count(self, inputs: dict[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        # padding-free batches are one flattened row with no padding (pad_to_multiple_of None)
        self.tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self.loss_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        self.batch_keys = self.batch_keys or sorted(inputs)


def build_trainer(system: str, rows_path: Path, steps: int, workdir: Path, bf16: bool, meter):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    from migaki.models import resolve

    class Metered(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                meter.count(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.marks.append((state.global_step, time.time(), meter.tokens))

    path = str(resolve(MODEL).path)
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["targets"],
        task_type="CAUSAL_LM",
    )
    return Metered(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        args=trl_config(system, steps, workdir, bf16),
        train_dataset=trl_dataset(rows_path, system),
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=lora,
        callbacks=[StepEnd()],
    )


def run_trl(system: str, rows_path: Path, steps: int, workdir: Path, bf16: bool) -> dict:
    meter = StepMeter()
    trainer = build_trainer(system, rows_path, steps, workdir, bf16, meter)
    trainer.train()
    args = trainer.args
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens_per_s, seconds = throughput(meter.marks)
    trainable, _ = trainer.model.get_nb_trainable_parameters()
    tokenizer = trainer.processing_class
    return {
        "held_out_loss": held_out_loss(trainer.model, tokenizer, workdir),
        "tokens_per_s": tokens_per_s,
        "timed_s": seconds,
        "tokens_total": meter.tokens,
        "loss_tokens_total": meter.loss_tokens,
        "final_loss": losses[-1],
        "mean_loss": sum(losses) / len(losses),
        "precision": "bf16" if args.bf16 else "fp32",
        "trainable_params": trainable,
        "loss_on": "completion tokens" if system == "trl_best" else "all tokens",
        "batch_keys": meter.batch_keys,
        "notes": [
            f"bf16={args.bf16} gradient_checkpointing={args.gradient_checkpointing}"
            f" padding_free={args.padding_free} packing={args.packing}"
            f" completion_only_loss={args.completion_only_loss} loss_type={args.loss_type}"
            f" (fused LM head) optim={getattr(args.optim, 'value', args.optim)}"
        ],
    }


def child_main(args: argparse.Namespace) -> None:
    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    workdir, rows_path = Path(args.workdir), Path(args.rows)
    if args.child == "migaki":
        result = run_migaki(rows_path, args.steps, workdir)
    else:
        result = run_trl(args.child, rows_path, args.steps, workdir, args.bf16)
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------- parent


def launch(system: str, args: argparse.Namespace, workdir: Path, bf16: bool) -> dict[str, Any]:
    """Run one system in a child process; add its peak RSS (wait4) and wall time."""
    result_path, log_path = workdir / f"{system}.json", workdir / f"{system}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", system]
    command += ["--rows", str(workdir / "rows.jsonl"), "--steps", str(args.steps)]
    command += ["--threads", str(args.threads), "--workdir", str(workdir)]
    command += ["--result", str(result_path)] + (["--bf16"] if bf16 else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    print(f"running {system} ...", flush=True)
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        out, err = (None, None) if args.verbose else (log, subprocess.STDOUT)
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    if child.returncode != 0 or not result_path.is_file():
        tail = "\n".join(log_text.splitlines()[-30:])
        return {"error": f"exit {child.returncode}", "log_tail": tail, "wall_s": wall}
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result.update(peak_rss_mb=usage.ru_maxrss / 1024, wall_s=wall, warnings=warnings_in(log_text))
    return result


def warnings_in(log_text: str, limit: int = 12) -> list[str]:
    """Distinct warnings of a child's log (Python warnings and logging WARNINGs), shortened."""
    seen: list[str] = []
    for line in log_text.replace("\r", "\n").splitlines():
        match = re.search(r"(\w*Warning: .*|WARNING .*)", line)
        if match and match.group(1)[:200] not in seen:
            seen.append(match.group(1)[:200])
    return seen[:limit]


def add_mfu(results: dict[str, dict], peaks: dict[str, float], fpt: float) -> None:
    """`mfu` is counted against the bf16 matmul peak, the target's yardstick; where bf16 is the
    slower path (some CPUs), the share of the peak of the precision each system ran in is
    the honest figure, so both are kept."""
    for result in results.values():
        if "tokens_per_s" in result:
            achieved = result["tokens_per_s"] * fpt
            result["mfu"] = achieved / (peaks["bf16"] * 1e9)
            result["mfu_own_precision"] = achieved / (peaks[result["precision"]] * 1e9)


def print_table(results: dict[str, dict]) -> None:
    base = results.get("migaki", {})
    head = f"{'system':<12} {'tok/s':>7} {'peak RSS MB':>11} {'final loss':>10} {'mean loss':>9}"
    head += f" {'held-out':>8}"
    head += f" {'wall s':>7} {'prec':>5} {'migaki/x tok/s':>14} {'x/migaki RSS':>12}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<12} FAILED ({r['error']})")
            continue
        speed = base["tokens_per_s"] / r["tokens_per_s"] if "tokens_per_s" in base else None
        memory = r["peak_rss_mb"] / base["peak_rss_mb"] if "peak_rss_mb" in base else None
        line = f"{name:<12} {r['tokens_per_s']:>7.1f} {r['peak_rss_mb']:>11.0f}"
        line += f" {r['final_loss']:>10.4f} {r['mean_loss']:>9.4f} {r['held_out_loss']:>8.4f}"
        line += f" {r['wall_s']:>7.1f}"
        line += f" {r['precision']:>5} {_ratio(speed):>14} {_ratio(memory):>12}"
        print(line)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_notes(results: dict[str, dict], notes: list[str], expected_tokens: int) -> None:
    for note in notes:
        print(f"note: {note}")
    for name, r in results.items():
        if "error" in r:
            print(f"\n[{name}] FAILED; log tail:\n{r['log_tail']}")
            continue
        print(f"\n[{name}] loss on {r['loss_on']}; steps 2..N took {r['timed_s']:.1f} s")
        print(f"  real tokens counted {r['tokens_total']:,} (expected {expected_tokens:,})")
        print(
            f"  MFU {100 * r['mfu']:.1f}% of the bf16 matmul peak, "
            f"{100 * r['mfu_own_precision']:.1f}% of the {r['precision']} peak it ran in"
        )
        if "batch_keys" in r:
            print(f"  batch keys: {', '.join(r['batch_keys'])}")
        for note in r["notes"]:
            print(f"  {note}")
        for warning in r.get("warnings", []):
            print(f"  warning: {warning}")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from migaki.models import resolve

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    rows, notes = load_examples(Path(args.data), args.steps * BATCH + HELD_OUT)
    rows, held_out = rows[: args.steps * BATCH], rows[args.steps * BATCH :]
    model_dir = Path(resolve(MODEL).path)
    lengths = token_lengths(model_dir, rows)
    overlong = sum(n > MAX_LENGTH for n in lengths)
    notes.append(f"{len(rows)} examples, {min(lengths)}-{max(lengths)} tokens, {overlong} overlong")
    peaks = matmul_peak_gflops(args.threads)
    bf16 = peaks["bf16"] > 1.2 * peaks["fp32"]  # migaki's `auto` uses the same 1.2x margin
    notes.append(
        f"matmul peak GFLOPS (2048^3, {args.threads} threads): fp32 {peaks['fp32']}, bf16 "
        f"{peaks['bf16']} -> trl_best runs {'bf16 autocast' if bf16 else 'fp32'}"
    )
    notes.append("trl_default loss covers all tokens (system + user too): not comparable")
    with tempfile.TemporaryDirectory(prefix="sft-throughput-") as tmp:
        workdir = Path(tmp)
        with open(workdir / "rows.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        with open(workdir / "heldout.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in held_out)
        results = {system: launch(system, args, workdir, bf16) for system in systems}
    lora = next((r["trainable_params"] for r in results.values() if "trainable_params" in r), 0)
    fpt, formula = flops_per_token(model_dir, lora, lengths)
    add_mfu(results, peaks, fpt)
    notes.append(f"FLOPs/token {fpt / 1e6:.1f}M = {formula}")
    print()
    print_table(results)
    print()
    print_notes(results, notes, sum(lengths))
    mfu = results.get("migaki", {}).get("mfu")
    return {"systems": results, "mfu": mfu, "matmul_peak_gflops": peaks, "flops_per_token": fpt}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per system (>= 2)")
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="JCommonsenseQA or messages jsonl"
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--json", help="write all figures to this JSON file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads everywhere")
    parser.add_argument("--verbose", action="store_true", help="show the children's output")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    for hidden in ("--rows", "--workdir", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is the untimed warm-up)")
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args)
        return
    report = run_all(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

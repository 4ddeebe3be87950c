"""Where does a training step spend its time? Profiles a few steps of migaki's loss on the
bundled model (LoRA, packed rows, as the quickstart trains) and prints the operators that take
the most CPU time, and the share spent in matrix multiplications.

    python benchmarks/profile_step.py --steps 3
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from migaki.config import MethodConfig
from migaki.data.packing import collate_packed
from migaki.data.tokenize import TokenizedExample
from migaki.methods import apply_method
from migaki.models import load_causal_lm, resolve
from migaki.objectives import CausalLMLoss

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def batch(tokens_per_example: int, examples: int, answer: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(examples):
        ids = torch.randint(0, 49000, (tokens_per_example,), generator=generator).tolist()
        labels = [-100] * (tokens_per_example - answer) + ids[-answer:]
        items.append(TokenizedExample(ids, labels))
    return collate_packed(items, capacity=256, pad_token_id=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    model = apply_method(
        load_causal_lm(resolve("smollm2-135m-instruct")), MethodConfig(lora_dropout=0.0)
    )
    objective = CausalLMLoss(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = batch(tokens_per_example=90, examples=8, answer=38)  # like the quickstart's rows

    def step() -> None:
        parts = objective(**data)
        (parts.loss_sum / parts.tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"matrix multiplications: {100 * matmul / total:.1f}% of self CPU time")


if __name__ == "__main__":
    main()

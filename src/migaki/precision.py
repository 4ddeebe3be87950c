"""Precision policy: bf16 autocast where the hardware does bf16 fast, fp16 with a loss scaler
on older GPUs, fp32 otherwise. Trainable weights and optimizer state always stay fp32.

On CPUs the bf16 flag alone does not tell: on one machine with avx512_bf16 a bf16 matmul ran 3x
faster than fp32, on another (same flags) 2x slower. So `auto` measures once per machine and
caches the answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from migaki.errors import UserError
from migaki.models.bundled import cache_root

log = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(requested: str, device: torch.device) -> str:
    """Resolve `train.precision` to one of "bf16", "fp16", "fp32" for this device."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return "bf16" if bf16 else "fp16"
        if requested == "bf16" and not bf16:
            raise UserError("train.precision: bf16 is not supported by this GPU; use fp16 or auto")
        return requested
    if requested == "fp16":
        raise UserError("train.precision: fp16 needs a CUDA GPU; use bf16, fp32 or auto on CPU")
    if requested == "auto":
        return "bf16" if cpu_has_fast_bf16() and cpu_bf16_is_faster() else "fp32"
    if requested == "bf16" and not cpu_has_fast_bf16():
        log.warning("this CPU has no fast bf16 instructions; bf16 may be slower than fp32")
    return requested


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision ("bf16", "fp16" or "fp32") on `device`:
    for inference and scoring outside accelerate (training uses `accelerator.autocast()`)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def inference_device() -> torch.device:
    """The device inference runs on: the first GPU where there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_bf16_is_faster() -> bool:
    """Whether a bf16 matmul beats fp32 by a clear margin on this CPU (measured, cached)."""
    # the instruction sets torch and oneDNN may use are part of the key: capped ones
    # (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) make another machine of the same CPU
    isa = f"{torch.backends.cpu.get_cpu_capability()} {os.environ.get('ONEDNN_MAX_CPU_ISA', '')}"
    key = (
        f"{_cpu_model()}|{isa.strip()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    )
    path = cache_root() / "hardware.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = {"bf16_speedup": round(_bf16_speedup(), 3)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
        log.info("measured bf16 vs fp32 matmul on this CPU: %.2fx", known[key]["bf16_speedup"])
    return known[key]["bf16_speedup"] > 1.2


def _bf16_speedup() -> float:
    def seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(256, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        a @ b  # warm-up: the first call picks kernels
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(torch.float32) / seconds(torch.bfloat16)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

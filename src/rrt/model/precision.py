"""Compute precision, one rule for training and evaluation (`train.precision`,
`eval.precision`).

- `auto`: bf16 mixed precision on a GPU, fp32 on a CPU (the GPU's bf16 is native; many
  CPUs emulate it, tens of times slower than fp32).
- `bf16`: bf16 mixed precision on any device. A CPU runs it natively only with AVX512-BF16
  or AMX-BF16 (x86) or the BF16 extension (Arm); measured on a 2-core AMD EPYC with
  AVX512-BF16, SmolLM2-135M at 256 tokens, one thread: a training step 1.7x and a forward
  pass 1.8x faster than fp32 (docs/first-run.md). Without one it falls back to fp32 with a
  warning, rather than run ~30x slower.
- `fp32`: fp32 everywhere.
Mixed precision keeps fp32 weights and runs the matmuls in bf16 (torch.autocast); only a
GPU evaluation casts the weights themselves to bf16, as before.
"""
from __future__ import annotations

import contextlib
import functools
import platform
import warnings
from pathlib import Path

import torch

from ..settings import PRECISIONS


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Linux: /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    if platform.machine() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(precision: str, device: str) -> bool:
    """Whether a run on `device` ("cpu", "cuda", ...) computes in bf16 under `precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return False
    if device.startswith("cuda"):
        return True
    if precision == "auto":
        return False
    if not cpu_has_native_bf16():
        warnings.warn("precision bf16: this CPU has no native bf16 matmul (AVX512-BF16, AMX or Arm BF16); "
                      "running in fp32", stacklevel=2)
        return False
    return True


def autocast(enabled: bool, device: str = "cpu"):
    """bf16 mixed precision on `device` when enabled, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)

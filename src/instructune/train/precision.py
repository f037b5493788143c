"""What `train.precision: auto` trains in: bf16 autocast where bf16 matmuls pay on this machine, else fp32.

Having bf16 instructions is not the same as bf16 paying. On the CPU kinds this project has met
(bench/RESULTS.md, `bench/roofline.py`): an Intel Xeon with AMX runs bf16 matmuls ~6.5x as fast as
fp32; on an AMD EPYC with AVX512-BF16 training ran 1.5-1.7x faster in bf16; an Intel Xeon with
AVX512-BF16 but no AMX runs bf16 matmuls at ~0.55x fp32 (146 against 279 GFLOP/s: oneDNN's
avx512_core_bf16 kernels lose to its fp32 ones there), and a full fine-tune there ran ~0.65x as fast in
bf16 as in fp32, in autocast (TRL) and in bf16-true (instructune) alike. So on a CPU `auto` times one
training-shaped matmul in each dtype (~0.3 s, once per process) and takes bf16 only when it is
clearly faster (`BF16_MARGIN`); a GPU takes bf16 when it supports it. What this file leaves out:
`bf16-true` (asked for by name, for its memory: half the training state), and the engines' precision
at generation (`--compute-type`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import torch

# bf16 must beat fp32 by this factor: a measurement on a busy machine moves ~10-20%, and the kinds
# measured so far sit far on either side of 1 (0.55x, ~1.5x, ~7x).
BF16_MARGIN = 1.2
# (rows, inner, columns) of the timed matmul: a 2 x 512-token micro-batch through a 576 -> 1,536 MLP projection.
SHAPE = (1024, 576, 1536)


@dataclass(frozen=True)
class Choice:
    """What `auto` chose and why, in one line for the run's log."""

    mixed_precision: str  # accelerate's name: "bf16" or "no"
    reason: str


def native_bf16() -> bool:
    """bf16 matmuls in hardware: a GPU that has them, or a CPU with AVX512-BF16/AMX (oneDNN's check)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_rate(dtype: torch.dtype, seconds: float = 0.15, shape: tuple[int, int, int] = SHAPE) -> float:
    """FLOP/s of repeated `shape` matmuls in `dtype` on this process's CPU threads (best of the timed calls)."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    a @ b  # oneDNN picks and caches its kernel on the first call
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
        if start > deadline:
            return 2 * m * k * n / best


def auto_precision() -> Choice:
    """bf16 autocast where this machine's bf16 matmuls beat fp32's by `BF16_MARGIN`, else fp32.

    Example:
        >>> auto_precision()   # an Intel Xeon with AVX512-BF16, no AMX
        Choice(mixed_precision='no', reason='bf16 matmuls 146 GFLOP/s against fp32 279 on this CPU')
    """
    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
        return Choice("bf16" if ok else "no", f"this GPU {'supports' if ok else 'lacks'} bf16")
    if not native_bf16():
        return Choice("no", "this CPU has no bf16 matmul instructions")
    fp32, bf16 = _cpu_rates(torch.get_num_threads())
    why = f"bf16 matmuls {bf16 / 1e9:,.0f} GFLOP/s against fp32 {fp32 / 1e9:,.0f} on this CPU"
    return Choice("bf16" if bf16 >= BF16_MARGIN * fp32 else "no", why)


@cache
def _cpu_rates(threads: int) -> tuple[float, float]:
    """(fp32, bf16) matmul FLOP/s on `threads` threads, timed once per process: the machine does not change."""
    return matmul_rate(torch.float32), matmul_rate(torch.bfloat16)

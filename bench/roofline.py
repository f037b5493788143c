"""This machine's matmul limit, and any figure as a share of it (issue 33).

A CPU figure means little without the machine's own ceiling beside it: the 2-core AMD EPYC machines
(avx512_bf16, no AMX) ran bf16 matmuls at ~0.4 TFLOP/s, the Intel Xeon ones with AMX at ~2 TFLOP/s,
so the same tokens/s is 90% of one and 17% of the other. `measure()` times torch matmuls in fp32 and
bf16 (a square 2048 one and a training-shaped one; the best call, with the timer that `train.precision:
auto` uses), `cpu_kind()` names the machine, and
`share(flops_per_s, precision, limits)` turns a figure into its share of the measured limit. The
benchmarks (train.py, repeat_train.py, eval.py) print their figures with it.

FLOPs counted (matmuls only, 2 per multiply-add; attention and element-wise work are left out, so
the share is a lower bound on how busy the matrix units are):
- a full fine-tune token: 6 x the non-embedding weights, plus 6 x hidden x vocabulary for each
  labelled position (the LM head, computed on labelled positions only);
- a LoRA token: 4 x the frozen weights (forward, and the backward to the activations), plus the head;
- a generated token or a scored token: 2 x the non-embedding weights, plus 2 x hidden x vocabulary
  where logits are computed (every generated token; the continuation of a multiple-choice item).

    .venv/bin/python bench/roofline.py            # prints the machine's limits as JSON
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

SHAPES = {"square": (2048, 2048, 2048), "training": (1024, 576, 1536)}  # (m, k, n)


def cpu_kind() -> str:
    """ "Intel Xeon with AMX", "AMD EPYC without AMX", ...: the model name and whether AMX is there."""
    flags, name = "", platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), name)
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    short = "Intel Xeon" if "Xeon" in name else "AMD EPYC" if "EPYC" in name else name
    return f"{short} {'with' if 'amx_bf16' in flags else 'without'} AMX"


def measure(seconds: float = 1.0) -> dict:
    """The best of the shapes in fp32 and bf16, in FLOP/s, on torch's threads; with the CPU kind and load."""
    import torch

    from instructune.train.precision import matmul_rate

    rates = {f"{precision}_{shape}": matmul_rate(dtype, seconds, dims)
             for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
             for shape, dims in SHAPES.items()}
    return {"cpu": cpu_kind(), "threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0],
            "fp32": max(rates["fp32_square"], rates["fp32_training"]),
            "bf16": max(rates["bf16_square"], rates["bf16_training"]), **rates}


def share(flops_per_s: float, precision: str, limits: dict) -> float:
    """`flops_per_s` as a share of the machine's matmul limit in `precision` ("fp32" or "bf16")."""
    return flops_per_s / limits["fp32" if precision in ("fp32", "float32") else "bf16"]


def attention_dims(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a decoder config; grouped heads and Gemma's head_dim included."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def model_flops(config) -> dict:
    """Per-token matmul FLOPs of a decoder-only model (see the module docstring), from its config."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads, head_dim = attention_dims(config)
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v projections
    mlp = 3 * hidden * config.intermediate_size                 # gate, up, down
    body = layers * (attention + mlp)                           # multiply-adds per token
    head = hidden * config.vocab_size
    return {"body": body, "head": head}


def training_flops_per_token(config, *, lora: bool, labelled_share: float = 1.0) -> float:
    """Matmul FLOPs a training step spends per token (labelled_share: the share of tokens with a label)."""
    weights = model_flops(config)
    per_weight = 4 if lora else 6
    return per_weight * weights["body"] + per_weight * weights["head"] * labelled_share


def forward_flops_per_token(config, *, logits: bool = True) -> float:
    """Matmul FLOPs of one token through the model (generation, scoring), with or without the LM head."""
    weights = model_flops(config)
    return 2 * weights["body"] + (2 * weights["head"] if logits else 0)


def format_limits(limits: dict) -> str:
    return (f"{limits['cpu']}, {limits['threads']} threads: matmul fp32 {limits['fp32'] / 1e9:.0f} GFLOP/s, "
            f"bf16 {limits['bf16'] / 1e9:.0f} GFLOP/s (1-min load {limits['load_1min']:.2f})")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    result = measure()
    print(format_limits(result))
    print(json.dumps(result, indent=1))

"""The training step's floor on this CPU: its matmuls and attention timed alone, at the step's shapes (issue 33).

A training step is matmuls, attention and everything else (norms, RoPE, activations, residual adds,
the loss, the optimizer). This script times the first two in isolation, in bf16, at the shapes one
micro-batch of a packed run gives them, and adds them up: the time a step could not go below with
torch's CPU kernels even if everything else cost nothing. Its inverse is a ceiling on tokens/s; a
speed target above it needs faster kernels, not a better step.

For each linear layer of a decoder block: the forward (`F.linear`), the backward to its input
(`grad @ W`) and, for a full fine-tune, the weight gradient (`grad.T @ x`); attention, causal, grouped
heads, forward and backward, as the step runs it (compiled blocks: transformers' matmul-mask-softmax-matmul,
compiled; `--eager`: torch's flash SDPA kernel), the other kernel timed beside it; the LM head on the labelled share of the tokens (three matmuls, or two for
LoRA). LoRA's own adapters are left out (rank 32: under 2% of the FLOPs).

    .venv/bin/python bench/step_floor.py --model gemma3-270m --method full --measured 480
    .venv/bin/python bench/step_floor.py                      # SmolLM2-135M-Instruct, full, 2 x 512

Run it on a quiet machine: it is a timing, and 2 cores shared with anything else halve it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from roofline import attention_dims, cpu_kind, format_limits, measure  # noqa: E402


def _time(fn, seconds: float) -> float:
    """Best-of-runs seconds of one call (warm: three calls first)."""
    for _ in range(3):
        fn()
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def linear_shapes(config) -> dict[str, tuple[int, int, int]]:
    """name -> (in_features, out_features, count per block) of one decoder block's linear layers."""
    hidden = config.hidden_size
    heads, kv_heads, head_dim = attention_dims(config)
    return {"q_proj": (hidden, heads * head_dim, 1), "k_proj / v_proj": (hidden, kv_heads * head_dim, 2),
            "o_proj": (heads * head_dim, hidden, 1), "gate_proj / up_proj": (hidden, config.intermediate_size, 2),
            "down_proj": (config.intermediate_size, hidden, 1)}


def floor(config, *, rows: int, width: int, lora: bool, labelled_share: float, seconds: float,
          compiled: bool = True, memory_budget: float = 0.8) -> list[dict]:
    """One row per part: its seconds per micro-batch (all blocks), FLOPs, rate, and whether the floor counts it
    (of the two attention kernels, the one the step runs: compiled blocks' or the eager step's)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    bf16, tokens, layers = torch.bfloat16, rows * width, config.num_hidden_layers
    parts = []
    for name, (fan_in, fan_out, count) in linear_shapes(config).items():
        x, w = torch.randn(tokens, fan_in, dtype=bf16), torch.randn(fan_out, fan_in, dtype=bf16)
        grad = torch.randn(tokens, fan_out, dtype=bf16)
        kinds = {"forward": lambda: F.linear(x, w), "backward to the input": lambda: torch.mm(grad, w)}
        if not lora:
            kinds["weight gradient"] = lambda: torch.mm(grad.t(), x)
        for kind, fn in kinds.items():
            flops = 2 * tokens * fan_in * fan_out
            one = _time(fn, seconds)
            parts.append({"part": f"{name}: {kind}", "seconds": one * count * layers,
                          "flops": flops * count * layers, "rate": flops / one, "in_floor": True})

    heads, kv_heads, head_dim = attention_dims(config)
    q = torch.randn(rows, heads, width, head_dim, dtype=bf16, requires_grad=True)
    k = torch.randn(rows, kv_heads, width, head_dim, dtype=bf16, requires_grad=True)
    v = torch.randn(rows, kv_heads, width, head_dim, dtype=bf16, requires_grad=True)
    out_grad = torch.randn(rows, heads, width, head_dim, dtype=bf16)
    mask = torch.full((width, width), float("-inf")).triu(1).to(bf16).expand(rows, 1, width, width)
    causal_flops = 2 * rows * heads * width * width * head_dim  # q @ k.T and p @ v over the lower triangle

    def matmul_softmax(q, k, v):
        """transformers' eager attention (what compiled blocks run on CPU): matmul, mask, softmax, matmul."""
        group = heads // kv_heads
        k = k[:, :, None].expand(rows, kv_heads, group, width, head_dim).reshape(rows, heads, width, head_dim)
        v = v[:, :, None].expand(rows, kv_heads, group, width, head_dim).reshape(rows, heads, width, head_dim)
        weights = torch.matmul(q, k.transpose(2, 3)) * head_dim ** -0.5 + mask
        return torch.matmul(torch.softmax(weights, dim=-1, dtype=torch.float32).to(bf16), v)

    def flash(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != heads)

    import torch._functorch.config

    torch._functorch.config.activation_memory_budget = memory_budget  # as train.compile_memory_budget sets it
    kernels = {"matmul-softmax, compiled (the compiled step's)": (torch.compile(matmul_softmax), compiled),
               "SDPA flash, causal (the eager step's)": (flash, not compiled)}
    for label, (attend, in_floor) in kernels.items():
        forward = _time(lambda: attend(q, k, v), seconds)
        backward = _time(lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), out_grad), seconds) - forward
        parts.append({"part": f"attention, {label}: forward", "seconds": forward * layers,
                      "flops": causal_flops * layers, "rate": causal_flops / forward, "in_floor": in_floor})
        parts.append({"part": f"attention, {label}: backward", "seconds": backward * layers,
                      "flops": 2.5 * causal_flops * layers, "rate": 2.5 * causal_flops / backward,
                      "in_floor": in_floor})

    labelled = max(1, round(tokens * labelled_share))
    x = torch.randn(labelled, config.hidden_size, dtype=bf16)
    w = torch.randn(config.vocab_size, config.hidden_size, dtype=bf16)
    logits_grad = torch.randn(labelled, config.vocab_size, dtype=bf16)
    head = {"forward": lambda: F.linear(x, w), "backward to the input": lambda: torch.mm(logits_grad, w)}
    if not lora:  # a frozen head (LoRA) needs no weight gradient; a tied one adds it to the embedding
        head["weight gradient"] = lambda: torch.mm(logits_grad.t(), x)
    for kind, fn in head.items():
        flops = 2 * labelled * config.hidden_size * config.vocab_size
        one = _time(fn, seconds)
        parts.append({"part": f"LM head ({labelled_share:.0%} of tokens labelled): {kind}", "seconds": one,
                      "flops": flops, "rate": flops / one, "in_floor": True})
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="built-in name or local folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--rows", type=int, default=2, help="packed rows per micro-batch (the bench pair's 2)")
    parser.add_argument("--width", type=int, default=512, help="tokens per packed row (data.max_length)")
    parser.add_argument("--labelled-share", type=float, default=0.3,
                        help="share of tokens with a label (the LM head runs on those only); DialogSum ~0.2-0.3")
    parser.add_argument("--seconds", type=float, default=0.3, help="timing window per part")
    parser.add_argument("--eager", action="store_true",
                        help="the floor of an eager step (SDPA flash attention) instead of compiled blocks' (train.compile)")
    parser.add_argument("--memory-budget", type=float, default=0.8, help="train.compile_memory_budget for the compiled attention")
    parser.add_argument("--measured", type=float, default=None, help="a measured training rate in tokens/s to set beside the floor")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    from instructune.models import load_model_config, resolve_model_path

    config = load_model_config(resolve_model_path(args.model))
    limits = measure()
    parts = floor(config, rows=args.rows, width=args.width, lora=args.method == "lora",
                  labelled_share=args.labelled_share, seconds=args.seconds, compiled=not args.eager,
                  memory_budget=args.memory_budget)
    tokens = args.rows * args.width
    total = sum(p["seconds"] for p in parts if p["in_floor"])
    name = getattr(config, "_name_or_path", None) or args.model or "SmolLM2-135M-Instruct"
    print(f"{cpu_kind()}: {format_limits(limits)}")
    print(f"{Path(str(name)).name}, {args.method}, {'eager' if args.eager else 'compiled blocks'}, micro-batch {args.rows} x {args.width} = {tokens} tokens, "
          f"{config.num_hidden_layers} blocks, bf16\n")
    print("| part (all blocks, one micro-batch) | ms | GFLOP | GFLOP/s | share of the floor |")
    print("|---|---:|---:|---:|---:|")
    for p in parts:
        print(f"| {p['part']} | {p['seconds'] * 1e3:.1f} | {p['flops'] / 1e9:.1f} | {p['rate'] / 1e9:.0f} | "
              + (f"{p['seconds'] / total:.1%} |" if p["in_floor"] else "not counted (the other step's kernel) |"))
    matmuls = sum(p["seconds"] for p in parts if p["in_floor"] and not p["part"].startswith("attention"))
    print(f"\nfloor: {total * 1e3:.0f} ms per micro-batch (matmuls {matmuls * 1e3:.0f}, attention "
          f"{(total - matmuls) * 1e3:.0f}): a ceiling of **{tokens / total:.0f} tokens/s** with everything else free")
    summary = {"cpu": cpu_kind(), "model": str(name), "method": args.method, "compiled": not args.eager, "rows": args.rows, "width": args.width,
               "floor_s": total, "ceiling_tokens_per_s": tokens / total, "limits": limits, "parts": parts}
    if args.measured:
        step = tokens / args.measured
        print(f"measured {args.measured:.0f} tokens/s = {step * 1e3:.0f} ms per micro-batch: the floor is "
              f"{total / step:.0%} of it; the rest ({(step - total) * 1e3:.0f} ms) is everything else and the "
              "kernels' slowdown inside the step")
        summary["measured_tokens_per_s"] = args.measured
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Where one optimizer step's time goes: a per-part profile of instructune's training step (issue 14).

Builds the same run as bench/train.py's instructune side (first N DialogSum training dialogues, full
fine-tune, bf16 autocast, packing, micro-batch 2 x 4 accumulation = 8 rows a step), runs one warm-up
step, times K steps by the wall clock, then runs K more under torch.profiler with each part of the
step labelled: data (batches from the packed rows), forward + loss (the model, the LM head over the
labelled positions only, cross-entropy), backward, clip (gradient norm) and optimizer (fused AdamW +
schedule + zero_grad). It prints two tables: the parts' share of the step, and the operators' share
by kind (matmuls, autocast casts, attention, cross-entropy, the AdamW kernel, the rest). The shares
come from the profiled steps; the seconds per step from the unprofiled ones.

    .venv/bin/python bench/profile_step.py --dialogues 64 --steps 3
    .venv/bin/python bench/profile_step.py --precision fp32 --append bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import BATCH, MAX_LENGTH, load_examples  # noqa: E402  (bench/train.py: the same run)

PARTS = ("data", "forward+loss", "backward", "clip", "optimizer")
# Operator kinds, matched on aten names; the first match wins.
KINDS = (
    ("attention's batched matmuls (compiled blocks' matmul-softmax attention)", ("aten::bmm",)),
    ("matmul (linear layers, LM head)", ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear")),
    ("autocast casts and copies", ("aten::_to_copy", "aten::copy_", "aten::to")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("cross-entropy", ("log_softmax", "nll_loss", "cross_entropy")),
    ("AdamW", ("adam",)),
    ("inductor's fused kernels (--compile)", ("compiledfxgraph",)),
)


def build_trainer(dialogues: int, precision: str, micro_batch: int, lora: bool, packed_attention: bool = True,
                  model_name: str | None = None, compile: bool = False, memory_budget: float | None = None):
    from instructune.config import load_config
    from instructune.models import load_model
    from instructune.train.trainer import Trainer

    model, tokenizer = load_model(model_name)
    config = load_config(overrides=[
        "run_name=profile", f"train.compile={compile}",
        *([f"train.compile_memory_budget={memory_budget}"] if memory_budget is not None else []), f"output_dir=/tmp/instructune-profile-{os.getpid()}", f"lora.enabled={lora}",
        f"train.lr={2e-4 if lora else 2e-5}", f"train.batch_size={micro_batch}",
        f"train.grad_accum_steps={BATCH // micro_batch}", f"data.max_length={MAX_LENGTH}", "data.packing=true",
        f"train.precision={precision}", "model.chat_template=false", "train.warmup_ratio=0", "train.schedule=constant",
        f"train.packed_attention={packed_attention}",
    ])
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_examples=load_examples(dialogues), progress=False)
    trainer.setup()
    return trainer


def label_parts(trainer) -> None:
    """Wrap each part of `Trainer._optimizer_step` in a profiler label (the trainer's own code runs)."""
    from torch.profiler import record_function

    def labelled(name, function):
        def run(*args, **kwargs):
            with record_function(name):
                return function(*args, **kwargs)
        return run

    trainer.step_batches = labelled("data", trainer.step_batches)
    trainer._loss_sum = labelled("forward+loss", trainer._loss_sum)
    trainer.accelerator.backward = labelled("backward", trainer.accelerator.backward)
    trainer.accelerator.clip_grad_norm_ = labelled("clip", trainer.accelerator.clip_grad_norm_)
    for name in ("step", "zero_grad"):
        setattr(trainer.optimizer, name, labelled("optimizer", getattr(trainer.optimizer, name)))
    trainer.scheduler.step = labelled("optimizer", trainer.scheduler.step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="steps timed, then as many profiled")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "bf16-true", "fp32"),
                        help="train.precision: bf16 autocast, bf16-true (the bench pair's), fp32")
    parser.add_argument("--model", default=None, help="built-in name or local folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--attn", default="trainer", choices=("trainer", "packed", "sdpa", "eager"),
                        help="attention: trainer = as the trainer sets it (SDPA eager, matmul-softmax inside compiled "
                             "blocks on CPU), packed = one causal SDPA block per example (train.packed_attention), "
                             "sdpa = transformers' masked SDPA over the row, eager")
    parser.add_argument("--compile", action="store_true",
                        help="train.compile=true: compiled decoder blocks, at train.compile_memory_budget's default")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="train.compile_memory_budget (default: the config's): the share of activations compiled blocks keep")
    parser.add_argument("--append", default=None, help="append the tables to this markdown file")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    trainer = build_trainer(args.dialogues, args.precision, args.micro_batch, args.lora, args.attn == "packed",
                            model_name=args.model, compile=args.compile, memory_budget=args.memory_budget)
    if args.attn in ("sdpa", "eager"):
        trainer.accelerator.unwrap_model(trainer.model).set_attn_implementation(args.attn)
    first_loss = trainer._optimizer_step(0)[0]  # warm-up: first-call allocations and kernel choices
    trainer._optimizer_step(0)  # a second shape: dynamic-shape compilation (with --compile) happens here
    started = time.perf_counter()
    tokens = sum(trainer._optimizer_step(step)[2] for step in range(1, 1 + args.steps))
    step_seconds = (time.perf_counter() - started) / args.steps
    label_parts(trainer)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(1 + args.steps, 1 + 2 * args.steps):
            trainer._optimizer_step(step)
    events = prof.key_averages()
    parts = {e.key: e.cpu_time_total for e in events if e.key in PARTS}
    total_parts = sum(parts.values())
    kinds = defaultdict(float)
    for event in events:
        if not event.key.startswith("aten::") and "adam" not in event.key.lower() and "CompiledFxGraph" not in event.key:
            continue
        kind = next((label for label, names in KINDS if any(n in event.key.lower() for n in names)), "other operators")
        kinds[kind] += event.self_cpu_time_total
    total_ops = sum(kinds.values())

    mode = "LoRA r16" if args.lora else "full"
    lines = [
        f"## Where the training step's time goes: instructune, {mode}, {args.precision}, micro-batch "
        f"{args.micro_batch} x {BATCH // args.micro_batch} (issue 14)",
        "",
        f"- command: `python bench/profile_step.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; 1-min load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        f"- {args.steps} unprofiled steps: {step_seconds:.2f} s per optimizer step, "
        f"{tokens / args.steps / step_seconds:.0f} tokens/s ({tokens // args.steps} tokens a step); shares below "
        f"from {args.steps} profiled steps; attention {args.attn}; first step's loss {first_loss:.4f}",
        "",
        "| part of the step | share | ~seconds per step |",
        "|---|---:|---:|",
    ]
    for name in PARTS:
        share = parts.get(name, 0.0) / total_parts
        lines.append(f"| {name} | {share:.1%} | {share * step_seconds:.2f} |")
    lines += ["", "| operator kind (self time) | share |", "|---|---:|"]
    for kind, value in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {value / total_ops:.1%} |")
    report = "\n".join(lines) + "\n"
    print(report)
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

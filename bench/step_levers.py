"""Steady-state training steps under one setting: compiled blocks or not, attention kind, allocator.

Builds bench/profile_step.py's run (the first N DialogSum training dialogues, full fine-tune, bf16,
packed, micro-batch 2 x 4 = 8 rows a step), runs two warm-up steps (compilation, first allocations),
then times K steps by the wall clock and prints tokens/s (non-padding tokens), the losses and the
process's peak RSS. The allocator is the process's own: run it under `LD_PRELOAD=libtcmalloc_minimal.so.4`
(or jemalloc) to measure that. Used for the lever table of issue 14 in bench/RESULTS.md, one fresh
process per setting, settings alternated:

    for a in sdpa eager; do .venv/bin/python bench/step_levers.py --compile --attn $a; done
    LD_PRELOAD=libtcmalloc_minimal.so.4 .venv/bin/python bench/step_levers.py --compile --attn eager
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import build_trainer  # noqa: E402  (the same run as bench/train.py's instructune side)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps, after 2 warm-up steps")
    parser.add_argument("--compile", action="store_true", help="train.compile's compiled decoder blocks")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    args = parser.parse_args()

    from instructune.train.compiling import compile_blocks

    trainer = build_trainer(args.dialogues, "bf16", 2, False, False)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if args.compile:
        compile_blocks(model)  # on CPU this also switches attention to eager; --attn sdpa switches it back
    model.set_attn_implementation(args.attn)
    started = time.perf_counter()
    for step in range(2):
        trainer._optimizer_step(step)
    warm = time.perf_counter() - started
    started, tokens, losses = time.perf_counter(), 0, []
    for step in range(2, 2 + args.steps):
        loss, _, n = trainer._optimizer_step(step)
        tokens, losses = tokens + n, losses + [round(loss, 4)]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"compile={args.compile} attn={args.attn}: warm-up {warm:.1f} s; {args.steps} steps {seconds:.1f} s, "
          f"{tokens / seconds:.1f} tokens/s; losses {losses}; peak RSS {peak:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

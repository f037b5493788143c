"""Repeat chosen bench/train.py configurations, alternating, to show the run-to-run spread of a ratio.

One run of each configuration gives one sample; on a shared 2-core machine the same run varies by
10-20%. This script runs the given configurations in turn, `--rounds` times over (A B C, A B C, ...),
each a fresh process as in bench/train.py, appends every run to `--out`, and prints each
configuration's tokens/s and peak RSS as median and range, and the ratio of the first configuration's
speed to the second's, per round.

    .venv/bin/python bench/repeat_train.py --dialogues 64 --rounds 3 \\
        --config instructune,full,bf16,pack,2 --config trl,full,bf16,pack,1
    # the same allocator for both, instructune's compiled blocks, TRL's torch_compile:
    .venv/bin/python bench/repeat_train.py --config instructune,full,bf16,pack,2,compile,tcmalloc \
        --config trl,full,bf16,pack,1,tcmalloc --config trl,full,bf16,pack,1,compile,tcmalloc
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402
from train import MODEL_ENV, run_subprocess  # noqa: E402


def parse(text: str) -> tuple:
    """engine,mode,precision,pack|nopack,micro-batch[,compile][,tcmalloc][,checkpointing] -> run_subprocess's
    arguments (checkpointing: gradient checkpointing on, TRL's SFTConfig default)."""
    engine, mode, precision, packing, micro_batch, *flags = text.split(",")
    unknown = set(flags) - {"compile", "tcmalloc", "checkpointing"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown flag(s) {sorted(unknown)}: compile, tcmalloc, checkpointing")
    return (engine, mode, precision, packing == "pack", int(micro_batch), "checkpointing" in flags, "compile" in flags,
            "tcmalloc" in flags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, type=parse,
                        help="engine,mode,precision,pack|nopack,micro-batch (repeatable; the first two give the ratio)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dialogues", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "train-repeats.jsonl")
    parser.add_argument("--model", default=None, help="built-in name (gemma3-270m) or model folder; default: the default model")
    args = parser.parse_args()
    if args.model:
        os.environ[MODEL_ENV] = args.model  # run_subprocess's children read it
    limits = roofline.measure()  # before the runs, on the same machine state: the share-of-limit column
    print(roofline.format_limits(limits), flush=True)
    runs: dict[tuple, list[dict]] = {config: [] for config in args.config}
    for round_ in range(args.rounds):
        for config in args.config:
            *shape, compile, tcmalloc = config
            row = run_subprocess(*shape, dialogues=args.dialogues, compile=compile, tcmalloc=tcmalloc)
            if row is None:
                return 1
            row["round"] = round_
            runs[config].append(row)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"round {round_}: {config} {row['tokens_per_s']:.1f} tokens/s, {row['peak_rss_gb']:.2f} GB", flush=True)
    config_of_model = _model_config(args.model)
    for config, rows in runs.items():
        speeds, peaks = [r["tokens_per_s"] for r in rows], [r["peak_rss_gb"] for r in rows]
        engine, mode, precision = config[:3]
        # Matmul FLOPs of the decoder body only (the LM head on labelled positions left out): a lower bound.
        flops = roofline.training_flops_per_token(config_of_model, lora=mode == "lora", labelled_share=0.0)
        limit = "fp32" if precision == "fp32" else "bf16"
        print(f"- {' '.join(map(str, config))}: tokens/s median {statistics.median(speeds):.1f} "
              f"(range {min(speeds):.1f}-{max(speeds):.1f}), peak RSS median {statistics.median(peaks):.2f} GB "
              f"(range {min(peaks):.2f}-{max(peaks):.2f}); "
              f"{roofline.share(statistics.median(speeds) * flops, limit, limits):.0%} of this {limits['cpu']}'s "
              f"{limit} matmul limit (decoder matmuls only)")
    first, second = (runs[c] for c in args.config[:2])
    for clock in ("tokens_per_s", "steps_tokens_per_s", "steady_tokens_per_s"):
        if not all(clock in r for r in first + second):
            continue
        ratios = [a[clock] / b[clock] for a, b in zip(first, second)]
        print(f"- {clock} ratio, first / second, per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.3f}")
    return 0


def _model_config(model: str | None):
    from instructune.models import load_model_config, resolve_model_path

    return load_model_config(resolve_model_path(model))


if __name__ == "__main__":
    sys.exit(main())

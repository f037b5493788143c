"""Generation speed and ROUGE: Hugging Face `generate` (fp32, bf16 autocast) vs instructune's fast engine.

Issue 13 asks for >= 3x the new tokens/s of Hugging Face `generate` at its faster precision on the
same prompts (greedy, batch 8, 64 new tokens, DialogSum test, template 0, default model), with answers
equal to its fp32 greedy ones, and any lower precision within 0.005 ROUGE of the fp32 reference on 200
dialogues. This script runs every engine on the same prompts in ONE process, interleaved batch by
batch (the engine order rotates per batch), so a busy machine slows them alike, and prints one table:
new tokens/s, seconds, ROUGE-1/2/L (best of the 3 references) and how many answers equal HF fp32's.
Engine setup (CTranslate2 conversion or its cache, loading) is timed apart and printed below it.
HellaSwag / multiple-choice timing lives in bench/choice.py.

Run from the project root:
    .venv/bin/python bench/eval.py --n 48                          # speed (issue 13's prompts)
    .venv/bin/python bench/eval.py --n 200                         # ROUGE equivalence of int8
    .venv/bin/python bench/eval.py --n 48 --append bench/RESULTS.md # record it
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# name -> (generate() keywords, bf16 autocast around the call)
ENGINES = {
    "hf-fp32": ({"engine": "hf"}, False),
    "hf-bf16": ({"engine": "hf"}, True),
    "ct2-fp32": ({"engine": "ct2", "compute_type": "float32"}, False),
    "ct2-int8": ({"engine": "ct2", "compute_type": "int8"}, False),
}
LABELS = {
    "hf-fp32": "HF generate, fp32", "hf-bf16": "HF generate, bf16 autocast",
    "ct2-fp32": "instructune fast (CTranslate2), fp32", "ct2-int8": "instructune fast (CTranslate2), int8",
}


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="first N DialogSum test dialogues (48 for speed, 200 for ROUGE)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="summary length cap")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--append", default=None, help="append a results section to this markdown file")
    args = parser.parse_args()
    engines = args.engines.split(",")
    if unknown := [e for e in engines if e not in ENGINES]:
        parser.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")

    import torch

    from instructune.data.render import extra_references, render_records
    from instructune.data.sources import load_records
    from instructune.data.templates import load_task
    from instructune.evaluate import fast
    from instructune.evaluate.generate import encode_prompt, generate
    from instructune.evaluate.metrics import generation_metrics
    from instructune.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model()
    load_seconds = time.perf_counter() - started
    task = load_task("dialogsum")
    records = load_records(DATA / "dialogsum" / "test.jsonl").to_list()[: args.n]
    examples = render_records(task, records, template=0)
    prompts = [example["prompt"] for example in examples]
    references = [extra_references(task, record, 0) or [example["completion"]]
                  for example, record in zip(examples, records)]

    # Engine setup apart from decoding: conversion on the first run, then the weight-keyed cache.
    setup_seconds = {}
    for name in engines:
        if ENGINES[name][0]["engine"] == "ct2":
            started = time.perf_counter()
            fast.load_engine(model, tokenizer, compute_type=ENGINES[name][0]["compute_type"])
            setup_seconds[name] = time.perf_counter() - started

    # The same batches generate() would form (longest first), each run by every engine in turn.
    lengths = [len(encode_prompt(model, tokenizer, prompt)) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    seconds = dict.fromkeys(engines, 0.0)
    answers = {name: [""] * len(prompts) for name in engines}
    for number, batch in enumerate(batches):
        rotated = engines[number % len(engines):] + engines[: number % len(engines)]
        for name in rotated:
            keywords, bf16 = ENGINES[name]
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
            started = time.perf_counter()
            with autocast:
                out = generate(model, tokenizer, [prompts[i] for i in batch], max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, progress=False, **keywords)
            seconds[name] += time.perf_counter() - started
            for index, answer in zip(batch, out):
                answers[name][index] = answer
        print(f"batch {number + 1}/{len(batches)}: " + ", ".join(f"{n} {seconds[n]:.1f}s" for n in engines), flush=True)

    rows = {}
    for name in engines:
        new_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers[name])
        metrics = generation_metrics(answers[name], references)
        rows[name] = {"new_tokens": new_tokens, "seconds": seconds[name], "tokens_per_s": new_tokens / seconds[name],
                      **{k: metrics[k] for k in ("rouge1", "rouge2", "rougeL")}}
    hf_best = max((rows[n]["tokens_per_s"] for n in rows if n.startswith("hf-")), default=None)
    reference = answers.get("hf-fp32")

    command = "python bench/eval.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Generation: HF generate vs instructune's fast engine, {args.n} DialogSum test dialogues (issue 13)",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {_cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"5-min load average at the end {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; model load {load_seconds:.1f} s",
        f"- settings: default model, template 0, greedy, batch {args.batch_size}, max {args.max_new_tokens} new "
        "tokens; engines interleaved batch by batch in one process; ROUGE best of the 3 references",
        "",
        "| engine | new tokens | seconds | new tokens/s | x HF best | ROUGE-1 | ROUGE-2 | ROUGE-L | answers = HF fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        ratio = f"{row['tokens_per_s'] / hf_best:.2f}" if hf_best else "-"
        same = f"{sum(a == b for a, b in zip(answers[name], reference))}/{len(prompts)}" if reference else "-"
        lines.append(
            f"| {LABELS[name]} | {row['new_tokens']} | {row['seconds']:.1f} | {row['tokens_per_s']:.1f} | {ratio} | "
            f"{row['rouge1']:.4f} | {row['rouge2']:.4f} | {row['rougeL']:.4f} | {same} |"
        )
    if setup_seconds:
        lines += ["", "Fast-engine setup, not in the table (conversion on first use, then the weight-keyed cache): "
                  + ", ".join(f"{name} {value:.1f} s" for name, value in setup_seconds.items())]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

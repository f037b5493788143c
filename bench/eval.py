"""Time evaluation on the default model: DialogSum test generation and HellaSwag multiple choice.

Issue 6 asks that 200 DialogSum test dialogues (greedy summaries, multi-reference ROUGE) and 1,000
HellaSwag validation items (log-likelihood of 4 endings, acc/acc_norm) evaluate within minutes on
this CPU. This script renders both with the built-in tasks (template 0, zero-shot), times each
stage apart from model loading, and can append a section to bench/RESULTS.md.

Run from the project root:
    .venv/bin/python bench/eval.py                                   # full: 200 + 1,000
    .venv/bin/python bench/eval.py --n-dialogsum 16 --n-hellaswag 50 # quick look
    .venv/bin/python bench/eval.py --append bench/RESULTS.md         # record it
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-dialogsum", type=int, default=200, help="DialogSum test dialogues to summarize")
    parser.add_argument("--n-hellaswag", type=int, default=1000, help="HellaSwag validation items to score")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward / generate call")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="summary length cap")
    parser.add_argument("--append", default=None, help="append a results section to this markdown file")
    args = parser.parse_args()

    import torch

    from instructune.data.sources import load_records
    from instructune.data.render import render_records
    from instructune.data.templates import load_task
    from instructune.data.render import extra_references
    from instructune.evaluate.score import evaluate_examples
    from instructune.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model()
    load_seconds = time.perf_counter() - started

    timings = {}
    dialogsum = load_task("dialogsum")
    records = load_records(DATA / "dialogsum" / "test.jsonl").to_list()[: args.n_dialogsum]
    examples = render_records(dialogsum, records, template=0)
    for example, record in zip(examples, records):
        example["references"] = extra_references(dialogsum, record, 0)
    started = time.perf_counter()
    generation_metrics, rows = evaluate_examples(
        model, tokenizer, examples, kind="generation", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
    )
    timings["dialogsum"] = time.perf_counter() - started
    new_tokens = sum(len(tokenizer(row["prediction"], add_special_tokens=False)["input_ids"]) for row in rows)

    hellaswag = load_task("hellaswag")
    records = load_records(DATA / "hellaswag" / "validation.jsonl").to_list()[: args.n_hellaswag]
    examples = render_records(hellaswag, records, template=0)
    started = time.perf_counter()
    choice_metrics, _ = evaluate_examples(model, tokenizer, examples, kind="multiple_choice", batch_size=args.batch_size)
    timings["hellaswag"] = time.perf_counter() - started

    load_average = os.getloadavg()[1]  # 5-minute: other jobs on the same cores slow every stage
    command = "python bench/eval.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Evaluation speed: {args.n_dialogsum} DialogSum test + {args.n_hellaswag} HellaSwag validation",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {_cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; model load {load_seconds:.1f} s; "
        f"5-min load average at the end {load_average:.2f} on {os.cpu_count()} cores",
        "",
        "| stage | items | seconds | items/s | result |",
        "|---|---|---|---|---|",
        f"| DialogSum generation (greedy, batch {args.batch_size}, max {args.max_new_tokens} new tokens) | "
        f"{args.n_dialogsum} | {timings['dialogsum']:.1f} | {args.n_dialogsum / timings['dialogsum']:.2f} | "
        f"ROUGE-1 {generation_metrics['rouge1']:.4f} (best of 3 refs), "
        f"{generation_metrics.get('rouge1_first_ref', generation_metrics['rouge1']):.4f} (first ref); "
        f"{new_tokens / timings['dialogsum']:.1f} new tokens/s |",
        f"| HellaSwag log-likelihood (4 endings, batch {args.batch_size}) | {args.n_hellaswag} | "
        f"{timings['hellaswag']:.1f} | {args.n_hellaswag / timings['hellaswag']:.2f} | "
        f"acc {choice_metrics['acc']:.4f}, acc_norm {choice_metrics['acc_norm']:.4f} |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

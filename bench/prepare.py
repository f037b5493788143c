"""Benchmark: render 50,000 Alpaca records with the built-in `alpaca` task (issue 4: "a few seconds").

The shared Alpaca file has 5,000 records; they are cycled 10 times. Measures loading, rendering with
seeded template choice, rendering with 3-shot exemplars, and the whole `prepare` command (render +
write JSONL + summary). Prints records/s; `--append` adds a section to bench/RESULTS.md.

Run from the project root:
    .venv/bin/python bench/prepare.py --append
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from instructune.data.prepare import prepare
from instructune.data.sources import load_records
from instructune.data.render import render_records
from instructune.data.templates import load_task

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "train.jsonl"


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="records to render (Alpaca cycled)")
    parser.add_argument("--append", action="store_true", help="append a section to bench/RESULTS.md")
    args = parser.parse_args()

    task = load_task("alpaca")
    dataset, load_s = _timed(lambda: load_records(ALPACA))
    base = dataset.to_list()
    records = (base * (args.records // len(base) + 1))[: args.records]

    rows = []
    for label, kwargs in [("zero-shot, seeded template", {}), ("3-shot, seeded template", {"num_fewshot": 3})]:
        best = min(_timed(lambda: render_records(task, records, seed=0, **kwargs))[1] for _ in range(3))
        rows.append((label, best))

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "alpaca50k.jsonl"
        big.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        _, prepare_s = _timed(lambda: prepare(Path(tmp) / "out.jsonl", data=big, task="alpaca"))
    rows.append(("`prepare` end to end (load + render + write JSONL + summary)", prepare_s))

    cpu = _cpu_model()
    lines = [f"load {len(base)} Alpaca records: {load_s:.2f} s"]
    lines += [f"{label}: {len(records)} records in {seconds:.2f} s = {len(records) / seconds:,.0f} records/s"
              for label, seconds in rows]
    print("\n".join(lines))

    if args.append:
        section = [
            "", f"## Data preparation: rendering {len(records):,} Alpaca records (issue 4)", "",
            f"Command: `.venv/bin/python bench/prepare.py --append`  ",
            f"Machine: 2 CPU cores, {cpu}; Python {platform.python_version()}  ",
            f"Date: {datetime.date.today().isoformat()}", "",
            "| what | seconds | records/s |", "|---|---:|---:|",
            *[f"| {label} | {seconds:.2f} | {len(records) / seconds:,.0f} |" for label, seconds in rows],
            "",
            f"The shared Alpaca file (5,000 records) cycled to {len(records):,}; best of 3 for rendering. "
            "Target from the issue: a few seconds.",
        ]
        results = ROOT / "bench" / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n", encoding="utf-8")
        with open(results, "a", encoding="utf-8") as handle:
            handle.write("\n".join(section) + "\n")
        print(f"appended to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MBR on OpenVINO: sampled groups admitted as the KV cache allows, against all prompts at once.

`instructune eval --mbr 16` over 300 DialogSum dialogues ran past 32 minutes where 64 took under 5
(bench/RESULTS.md, 2026-12-07). This times `instructune eval --mbr N` on the same dialogues two ways,
each in a fresh process: `windowed` (openvino_engine's `_admitted`: a group is added while the
unfinished groups' worst case fits the cache) and `all` (every prompt added at once, the engine
before). Seconds per prompt that grow with the number of prompts mean the cache is overcommitted.

Run from the project root (no tcmalloc: OpenVINO aborts beside it):
    .venv/bin/python bench/mbr_admission.py --n 32,96 --modes windowed,all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roofline import cpu_kind

CHILD = """
import sys
from instructune.evaluate import run
from instructune.generation import openvino_engine
if sys.argv[1] == "all":
    openvino_engine._admitted = lambda prompts, start, *rest: range(start, len(prompts))
sys.exit(run.main(sys.argv[2:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="32,96", help="prompt counts, comma-separated")
    parser.add_argument("--modes", default="windowed,all")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--data", default="../shared/data/dialogsum/validation.jsonl")
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds before a run is stopped and reported")
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    print(f"{cpu_kind()}, {os.cpu_count()} CPUs; MBR {args.samples} samples, temperature {args.temperature}")
    print("| prompts | admission | seconds | seconds per prompt | ROUGE-1 |\n|---:|---|---:|---:|---:|")
    for n in (int(value) for value in args.n.split(",")):
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "m.json"
                command = [sys.executable, "-c", CHILD, mode, "--task", "dialogsum", "--data", args.data,
                           "--start", str(args.start), "--limit", str(n), "--template", "0", "--max-new-tokens", "96",
                           "--engine", "openvino", "--mbr", str(args.samples), "--mbr-temperature",
                           str(args.temperature), "--no-progress", "-o", str(out)]
                started = time.perf_counter()
                try:
                    subprocess.run(command, env=env, check=True, timeout=args.timeout, capture_output=True)
                except subprocess.TimeoutExpired:
                    print(f"| {n} | {mode} | > {args.timeout} (stopped) | > {args.timeout / n:.2f} | |", flush=True)
                    continue
                wall = time.perf_counter() - started
                task = json.loads(out.read_text())["tasks"]["dialogsum"]
                rouge1 = task["metrics"]["rouge1"]
                print(f"| {n} | {mode} | {wall:.0f} | {wall / n:.2f} | {rouge1:.4f} |", flush=True)


if __name__ == "__main__":
    main()

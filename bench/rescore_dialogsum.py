"""Rescore DialogSum test predictions under the three reference protocols, with rouge-score.

DialogSum test has three human summaries per dialogue, and published tables score against them
differently: the official baseline against summary1, the common FLAN-T5 lab on the Hugging Face copy
(one row per reference, i.e. the mean over the three), some papers best of three. This script prints
all three for any predictions, so every number in docs/dialogsum.md can be checked by anyone:

    .venv/bin/python bench/rescore_dialogsum.py docs/dialogsum/full.predictions.jsonl
    .venv/bin/python bench/rescore_dialogsum.py baseline_outputs.txt --test ../shared/data/dialogsum/test.jsonl

Input: the `<name>.predictions.jsonl` that `instructune eval` writes (prediction + references per
row), or a plain text file with one prediction per line in test-file order (the official baseline's
output format), paired with --test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from instructune.evaluate.metrics import PROTOCOLS, generation_metrics  # noqa: E402

DEFAULT_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum" / "test.jsonl"


def read_pairs(path: Path, test: Path) -> tuple[list[str], list[list[str]]]:
    """(predictions, references) from an eval predictions JSONL or a text file aligned with `test`."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [row for row in rows if row.get("task", "dialogsum").startswith("dialogsum")]
        return [row["prediction"] for row in rows], [row["references"] for row in rows]
    predictions = path.read_text().splitlines()
    records = [json.loads(line) for line in test.read_text().splitlines() if line.strip()]
    if len(predictions) != len(records):
        raise SystemExit(f"{path}: {len(predictions)} lines but {test} has {len(records)} dialogues")
    references = [[record[f"summary{k}"] for k in (1, 2, 3)] for record in records]
    return predictions, references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="predictions JSONL or text files")
    parser.add_argument("--test", type=Path, default=DEFAULT_TEST, help="DialogSum test.jsonl (for text files)")
    args = parser.parse_args()
    print("| predictions | n | protocol | ROUGE-1 | ROUGE-2 | ROUGE-L |")
    print("|---|---:|---|---:|---:|---:|")
    for path in args.predictions:
        predictions, references = read_pairs(path, args.test)
        metrics = generation_metrics(predictions, references)
        for suffix in ("_first_ref", "_mean_ref", ""):
            scores = [metrics[f"rouge{k}{suffix}"] for k in ("1", "2", "L")]
            print(f"| {path.name} | {len(predictions)} | {PROTOCOLS[suffix]} | " + " | ".join(f"{v:.4f}" for v in scores) + " |")


if __name__ == "__main__":
    main()

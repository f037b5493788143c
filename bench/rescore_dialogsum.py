"""Rescore DialogSum test predictions under the three reference protocols, with rouge-score.

DialogSum test has three human summaries per dialogue, and published tables score against them
differently: the official baseline against summary1, the common FLAN-T5 lab on the Hugging Face copy
(one row per reference, i.e. the mean over the three), some papers best of three. This script prints
all three for any predictions, with ROUGE-1's 95% interval (percentile bootstrap over the dialogues,
1,000 resamples, seed 0), so every number in docs/dialogsum.md can be checked by anyone:

    .venv/bin/python bench/rescore_dialogsum.py docs/dialogsum/full.predictions.jsonl
    .venv/bin/python bench/rescore_dialogsum.py baseline_outputs.txt --test ../shared/data/dialogsum/test.jsonl

Input: the `<name>.predictions.jsonl` that `instructune eval` writes (prediction + references per
row), or a plain text file with one prediction per line in test-file order (the official baseline's
output format), paired with --test.

--update rewrites eval files written before issue 28, when a summary repeated in the test file
(10 of the 500 dialogues) was kept once: it rebuilds each DialogSum row's references from the data
file the eval JSON names (one per column), rescores those rows and writes the rows' references and
scores and the eval JSON's metrics back, then prints each metric that changed (only the mean over the
references can). Then rerun `instructune compare` on the eval JSONs (Makefile) for the tables:

    .venv/bin/python bench/rescore_dialogsum.py --update docs/dialogsum/*.predictions.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instructune.data.render import extra_references, render_example  # noqa: E402
from instructune.data.sources import load_records  # noqa: E402
from instructune.data.templates import load_task  # noqa: E402
from instructune.evaluate.metrics import PROTOCOLS, generation_item_scores, mean_scores  # noqa: E402

DEFAULT_TEST = ROOT.parent / "shared" / "data" / "dialogsum" / "test.jsonl"


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


def bootstrap_interval(values: list[float], *, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values`: items drawn with replacement by
    Python's `random.Random(seed)`, the 2.5% and 97.5% quantiles of the resampled means interpolated
    as numpy's default does."""
    rng, n = random.Random(seed), len(values)
    means = [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples)]
    cuts = statistics.quantiles(means, n=40, method="inclusive")  # every 2.5%
    return cuts[0], cuts[-1]


def _once_each(references: list[str]) -> list[str]:
    """The references as eval kept them before issue 28: a repeated one once."""
    return list(dict.fromkeys(references))


def update_eval(predictions_path: Path) -> list[tuple[str, str, float, float]]:
    """Rebuild, rescore and write back the DialogSum rows of one eval (see the module docstring).

    Returns:
        (task, metric, old, new) for each metric that changed; [] when no row's references changed.
    """
    metrics_path = predictions_path.with_name(predictions_path.name.removesuffix(".predictions.jsonl") + ".json")
    result = json.loads(metrics_path.read_text())
    if result.get("predictions") != predictions_path.name:
        raise SystemExit(f"{metrics_path}: its predictions are {result.get('predictions')!r}, not {predictions_path.name}")
    rows = [json.loads(line) for line in predictions_path.read_text().splitlines() if line.strip()]
    changes = []
    for name, summary in result["tasks"].items():
        if not name.startswith("dialogsum") or summary["kind"] != "generation":
            continue
        if not isinstance(summary["template"], int) or summary["num_fewshot"]:
            raise SystemExit(f"{metrics_path}: {name} used template {summary['template']!r} and "
                             f"{summary['num_fewshot']} shots; only one fixed template and no shots are rebuilt here")
        task = load_task(summary["task"])
        records = load_records(ROOT / summary["data"], split=summary["split"]).to_list()
        records = records[summary["start"]::summary["every"]][:summary["limit"]]
        task_rows = [row for row in rows if row["task"] == name]
        if len(task_rows) != len(records):
            raise SystemExit(f"{predictions_path}: {len(task_rows)} {name} rows but {len(records)} records")
        references = []
        for row, record in zip(task_rows, records):
            example = render_example(task, record, row["template"])
            rebuilt = extra_references(task, record, row["template"]) or [example["completion"]]
            # The same record: same prompt, and the references are the new ones, with or without repeats.
            if row["prompt"] != example["prompt"] or row["references"] not in (rebuilt, _once_each(rebuilt)):
                raise SystemExit(f"{predictions_path}: a {name} row does not match its record in {summary['data']}")
            references.append(rebuilt)
        if all(row["references"] == refs for row, refs in zip(task_rows, references)):
            continue
        items = generation_item_scores([row["prediction"] for row in task_rows], references)
        for row, refs, scores in zip(task_rows, references, items):
            row["references"], row["scores"] = refs, scores
        metrics = mean_scores(items)
        changes += [(name, key, summary["metrics"][key], value) for key, value in metrics.items()
                    if value != summary["metrics"][key]]
        summary["metrics"] = metrics
    if changes:
        predictions_path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        metrics_path.write_text(json.dumps(result, indent=2) + "\n")
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="predictions JSONL or text files")
    parser.add_argument("--test", type=Path, default=DEFAULT_TEST, help="DialogSum test.jsonl (for text files)")
    parser.add_argument("--update", action="store_true",
                        help="rebuild the references of eval predictions JSONL files (one per column) and rewrite "
                             "their scores and their eval JSON's metrics")
    args = parser.parse_args()
    if args.update:
        print("| eval | task | metric | old | new | change |")
        print("|---|---|---|---:|---:|---:|")
        for path in args.predictions:
            for name, key, old, new in update_eval(path):
                print(f"| {str(path).removesuffix('.predictions.jsonl')} | {name} | {key} | {old:.6f} | {new:.6f} | {new - old:+.6f} |")
        return
    print("| predictions | n | protocol | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-1 95% interval |")
    print("|---|---:|---|---:|---:|---:|---|")
    for path in args.predictions:
        predictions, references = read_pairs(path, args.test)
        items = generation_item_scores(predictions, references)
        metrics = mean_scores(items)
        for suffix in ("_first_ref", "_mean_ref", ""):
            scores = [metrics[f"rouge{k}{suffix}"] for k in ("1", "2", "L")]
            low, high = bootstrap_interval([item[f"rouge1{suffix}"] for item in items])
            print(f"| {path.name} | {len(predictions)} | {PROTOCOLS[suffix]} | " + " | ".join(f"{v:.4f}" for v in scores)
                  + f" | {low:.4f}-{high:.4f} |")


if __name__ == "__main__":
    main()

"""Multiple choice, side by side: lm-evaluation-harness 0.4.13 and instructune's "lm-eval" mode.

Both score the first N validation items of PIQA and HellaSwag from ../shared/data with the default
model (fp32, the same threads, one process): lm-eval through a task YAML written here that reads the
local JSONL (PIQA: its own prompt; HellaSwag: its own `preprocess` applied to
"{activity_label}: {ctx}", since the shared file has `ctx` but not ctx_a / ctx_b), instructune
through the built-in tasks piqa_lmeval and hellaswag_lmeval. The script prints requests/s, acc and
acc_norm of each, compares every item's log-likelihoods and predictions, explains each differing
prediction (a tie within --tie-tolerance, or not), and can write the test fixture: lm-eval's per-item
log-likelihoods, metrics and a hash of each (context, continuation) token split.

Needs lm-eval, so run it from a venv with the bench extra, offline:
    python3 -m venv /work/lmevalvenv && /work/lmevalvenv/bin/pip install torch==2.13.0
    /work/lmevalvenv/bin/pip install -e '.[bench]'
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 /work/lmevalvenv/bin/python bench/choice.py \\
        --limit 500 --fixture tests/fixtures/lmeval_choice.json
    ... bench/choice.py --tasks hellaswag --limit 500 --append bench/RESULTS.md   # the speed table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# lm-eval task name -> (instructune task, data file, lm-eval task YAML body)
TASKS = {
    "piqa": ("piqa_lmeval", "piqa/validation.jsonl", """\
doc_to_text: "Question: {{goal}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{[sol1, sol2]}}"
"""),
    "hellaswag": ("hellaswag_lmeval", "hellaswag/validation.jsonl", """\
process_docs: !function local_utils.process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{gold}}"
doc_to_choice: "choices"
"""),
}
# The harness's own HellaSwag clean-up, imported (not restated), on the fields the shared file has.
LOCAL_UTILS = """\
from lm_eval.tasks.hellaswag.utils import preprocess


def process_docs(dataset):
    def _process(doc):
        return {"query": preprocess(doc["activity_label"] + ": " + doc["ctx"]),
                "choices": [preprocess(ending) for ending in doc["endings"]], "gold": int(doc["label"])}
    return dataset.map(_process)
"""


def split_hash(context_ids: list[int], continuation_ids: list[int]) -> str:
    """A short fingerprint of one (context, continuation) token split, for the fixture."""
    text = json.dumps([context_ids, continuation_ids])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _write_lm_eval_tasks(folder: Path, names: list[str]) -> None:
    (folder / "local_utils.py").write_text(LOCAL_UTILS)
    for name in names:
        _, data_file, body = TASKS[name]
        (folder / f"{name}_local.yaml").write_text(
            f"task: {name}_local\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {DATA / data_file}\n"
            "output_type: multiple_choice\nvalidation_split: validation\n" + body
            + "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        )


def run_lm_eval(lm, names: list[str], limit: int) -> dict:
    """{name: {"seconds", "requests", "acc", "acc_norm", "items": [{doc_id, logprobs, label, splits}]}}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        _write_lm_eval_tasks(Path(folder), names)
        manager = TaskManager(include_path=folder)
        for name in names:
            # Time the harness's log-likelihood call alone (tokenizing + scoring), as for instructune.
            timing = {"seconds": 0.0, "requests": 0}
            original = lm.loglikelihood

            def timed(requests, *args, **kwargs):
                started = time.perf_counter()
                result = original(requests, *args, **kwargs)
                timing["seconds"] += time.perf_counter() - started
                timing["requests"] += len(requests)
                return result

            lm.loglikelihood = timed
            try:
                results = lm_eval.simple_evaluate(model=lm, tasks=[f"{name}_local"], task_manager=manager,
                                                  limit=limit, log_samples=True, num_fewshot=0)
            finally:
                lm.loglikelihood = original
            metrics = results["results"][f"{name}_local"]
            items, tokens, continuation_tokens, shared_tokens = [], 0, 0, 0
            for sample in sorted(results["samples"][f"{name}_local"], key=lambda s: s["doc_id"]):
                encoded = [lm._encode_pair(*request) for request in sample["arguments"]]
                tokens += sum(len(context) + len(continuation) for context, continuation in encoded)
                continuation_tokens += sum(len(continuation) for _, continuation in encoded)
                shared_tokens += max(len(context) for context, _ in encoded) + sum(len(c) for _, c in encoded)
                items.append({
                    "doc_id": sample["doc_id"], "label": int(sample["target"]),
                    "logprobs": [float(resp[0]) for resp in sample["filtered_resps"]],
                    "splits": [split_hash(*pair) for pair in encoded],
                })
            # tokens: what the harness's requests pass through the model (each option with its whole context);
            # shared_tokens: the same items with each context once (instructune's lm-eval mode scores so).
            out[name] = {**timing, "acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"], "items": items,
                         "tokens": tokens, "continuation_tokens": continuation_tokens, "shared_tokens": shared_tokens}
    return out


def run_instructune(model, tokenizer, names: list[str], limit: int, batch_size: int) -> dict:
    from instructune.data.render import render_records
    from instructune.data.sources import load_records
    from instructune.data.templates import load_task
    from instructune.evaluate.choice import score_choices

    out = {}
    for name in names:
        task_name, data_file, _ = TASKS[name]
        records = load_records(DATA / data_file).to_list()[:limit]
        examples = render_records(load_task(task_name), records, template=0)
        started = time.perf_counter()
        metrics, rows = score_choices(model, tokenizer, examples, batch_size=batch_size, mode="lm-eval")
        seconds = time.perf_counter() - started
        out[name] = {"seconds": seconds, "requests": sum(len(e["options"]) for e in examples), **metrics,
                     "items": [{"logprobs": row["logprobs"], "label": row["label"]} for row in rows],
                     "examples": examples}
    return out


def _argmaxes(logprobs: list[float], lengths: list[int]) -> tuple[int, int]:
    pred = max(range(len(logprobs)), key=lambda k: logprobs[k])
    return pred, max(range(len(logprobs)), key=lambda k: logprobs[k] / lengths[k])


def compare(name: str, reference: dict, ours: dict, tie_tolerance: float) -> list[str]:
    """Per-item comparison lines: largest log-likelihood gap, and every prediction that differs."""
    lines, worst = [], 0.0
    for index, (ref, mine, example) in enumerate(zip(reference["items"], ours["items"], ours["examples"])):
        worst = max(worst, max(abs(a - b) for a, b in zip(ref["logprobs"], mine["logprobs"])))
        lengths = [len(option) for option in example["options"]]
        for metric, ref_pred, my_pred, scores in zip(
            ("acc", "acc_norm"), _argmaxes(ref["logprobs"], lengths), _argmaxes(mine["logprobs"], lengths),
            ([x for x in ref["logprobs"]], [x / n for x, n in zip(ref["logprobs"], lengths)]),
        ):
            if ref_pred != my_pred:
                gap = abs(scores[ref_pred] - scores[my_pred])
                verdict = "tie" if gap <= tie_tolerance else "NOT a tie"
                lines.append(f"  {name} item {index} {metric}: lm-eval picks {ref_pred}, instructune {my_pred}; "
                             f"lm-eval's gap between them {gap:.2e} ({verdict})")
    lines.insert(0, f"  {name}: largest per-option log-likelihood difference {worst:.2e} over {len(ours['items'])} items")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--model", default=None,
                        help="built-in name (gemma3-270m) or model folder; default: the default model")
    parser.add_argument("--limit", type=int, default=500, help="first N validation items of each task")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval requests / instructune items per forward")
    parser.add_argument("--threads", type=int, default=torch_threads_default(), help="torch threads for both")
    parser.add_argument("--tie-tolerance", type=float, default=1e-4, help="score gap below which a flip is a tie")
    parser.add_argument("--fixture", default=None, help="write lm-eval's per-item results to this JSON")
    parser.add_argument("--append", default=None, help="append a results section to this markdown file")
    args = parser.parse_args()

    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM

    from instructune.models import load_model, resolve_model_path

    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    lm = HFLM(pretrained=str(path), dtype="float32", device="cpu", batch_size=args.batch_size)
    model, tokenizer = load_model(args.model)
    reference = run_lm_eval(lm, args.tasks, args.limit)
    ours = run_instructune(model, tokenizer, args.tasks, args.limit, args.batch_size)

    load_average = os.getloadavg()[1]
    lines = [
        f"## Multiple choice, lm-eval mode vs lm-evaluation-harness {lm_eval.__version__}: first {args.limit} items",
        "",
        f"- command: `python bench/choice.py {' '.join(sys.argv[1:])}`",
        f"- model: {args.model or 'default (SmolLM2-135M-Instruct)'}; {torch.get_num_threads()} torch threads, float32, batch {args.batch_size} (lm-eval: requests; "
        f"instructune: items, all their options together); torch {torch.__version__}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; 5-min load average at the end "
        f"{load_average:.2f} on {os.cpu_count()} cores",
        "",
        "| task | engine | requests | seconds | requests/s | acc | acc_norm |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.tasks:
        for engine, result in (("lm-eval", reference[name]), ("instructune --mode lm-eval", ours[name])):
            lines.append(f"| {name} | {engine} | {result['requests']} | {result['seconds']:.1f} | "
                         f"{result['requests'] / result['seconds']:.2f} | {result['acc']:.4f} | {result['acc_norm']:.4f} |")
    lines.append("")
    for name in args.tasks:
        speedup = (ours[name]["requests"] / ours[name]["seconds"]) / (reference[name]["requests"] / reference[name]["seconds"])
        lines.append(f"- {name}: instructune {speedup:.2f}x lm-eval's requests/s")
        lines.extend(compare(name, reference[name], ours[name], args.tie_tolerance))
    report = "\n".join(lines) + "\n"
    print(report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    if args.fixture:
        fixture = {
            "made_by": f"bench/choice.py --limit {args.limit}", "lm_eval": lm_eval.__version__,
            "model": f"{path.name}, float32", "tasks": {
                name: {"data": TASKS[name][1], "instructune_task": TASKS[name][0], "limit": args.limit,
                       "acc": reference[name]["acc"], "acc_norm": reference[name]["acc_norm"],
                       "items": [{k: item[k] for k in ("doc_id", "label", "logprobs", "splits")}
                                 for item in reference[name]["items"]]}
                for name in args.tasks},
        }
        Path(args.fixture).parent.mkdir(parents=True, exist_ok=True)
        Path(args.fixture).write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
        print(f"wrote {args.fixture}")
    return 0


def torch_threads_default() -> int:
    return min(os.cpu_count() or 1, 2)


if __name__ == "__main__":
    sys.exit(main())

"""`instructune compare`: what fine-tuning bought and what it cost, run against run.

Takes the metrics JSON of a baseline (usually the untouched model) and of one or more tuned runs,
lines up every task and metric, computes the change, and flags held-out tasks (ones the run was
not tuned for) whose score fell by more than a threshold as forgetting. Writes a markdown table, a
PNG bar chart and an HTML page (report.py draws them). Significance testing is left out: with a
few hundred examples per task, read deltas under a point or two as noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError
from instructune.evaluate import report


def task_metrics(result: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from an eval JSON, a {task: metrics} dict or one flat metrics dict.

    Example:
        >>> task_metrics({"rouge1": 0.4})
        {'': {'rouge1': 0.4}}
        >>> task_metrics({"tasks": {"piqa": {"metrics": {"acc": 0.6}}}})
        {'piqa': {'acc': 0.6}}
    """
    if "tasks" in result and isinstance(result["tasks"], dict):
        return {name: dict(summary["metrics"]) for name, summary in result["tasks"].items()}
    if result and all(isinstance(value, dict) for value in result.values()):
        return {name: dict(value.get("metrics", value)) for name, value in result.items()}
    if all(isinstance(value, (int, float)) for value in result.values()):
        return {"": dict(result)}
    raise InstructuneError("compare: expected an eval metrics JSON ({'tasks': ...}), {task: metrics} or {metric: value}")


def compare(
    before: dict,
    after: dict,
    *,
    held_out: set[str] | frozenset[str] = frozenset(),
    threshold: float = 0.01,
) -> list[dict[str, Any]]:
    """One row per task and metric of either run, with the change and the forgetting flag.

    Args:
        before: the baseline run (eval JSON, {task: metrics} or flat metrics).
        after: the run to judge, in the same shape.
        held_out: tasks the run was not tuned on; a drop there is forgetting.
        threshold: how far (absolute, in the metric's own units: 0.01 = one point of accuracy)
            a held-out score may fall before it is flagged.

    Returns:
        Rows {"task", "metric", "before", "after", "delta", "held_out", "forgetting"}, in the order
        tasks and metrics first appear; "before"/"after"/"delta" are None where a run lacks the metric.

    Example:
        >>> compare({"piqa": {"acc": 0.62}}, {"piqa": {"acc": 0.58}}, held_out={"piqa"})
        [{'task': 'piqa', 'metric': 'acc', 'before': 0.62, 'after': 0.58, 'delta': -0.04, 'held_out': True, 'forgetting': True}]
    """
    if threshold < 0:
        raise InstructuneError(f"compare: threshold {threshold}; expected a non-negative number")
    before_tasks, after_tasks = task_metrics(before), task_metrics(after)
    rows = []
    for task in dict.fromkeys([*before_tasks, *after_tasks]):
        old, new = before_tasks.get(task, {}), after_tasks.get(task, {})
        for metric in dict.fromkeys([*old, *new]):
            value_before, value_after = old.get(metric), new.get(metric)
            both = value_before is not None and value_after is not None
            delta = round(value_after - value_before, 10) if both else None
            rows.append({
                "task": task, "metric": metric, "before": value_before, "after": value_after, "delta": delta,
                "held_out": task in held_out,
                "forgetting": task in held_out and delta is not None and delta < -threshold,
            })
    return rows


def _load_result(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise InstructuneError(f"{file}: no such metrics JSON (write one with `instructune eval -o`)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise InstructuneError(f"{file}:{error.lineno}: not valid JSON ({error.msg})") from None


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune compare",
        description="Compare eval runs against a baseline: deltas, forgetting flags, chart and HTML report.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN.json",
                        help="metrics JSON files from `instructune eval`; the first is the baseline")
    parser.add_argument("--names", nargs="+", default=None, help="display names of the runs (default: file names)")
    parser.add_argument("--held-out", nargs="+", default=[], metavar="TASK",
                        help="tasks the runs were not tuned on; drops there are flagged as forgetting")
    parser.add_argument("--threshold", type=float, default=0.01,
                        help="absolute drop on a held-out task that counts as forgetting (default 0.01)")
    parser.add_argument("--loss-png", default=None, help="training loss plot to put on the HTML page")
    parser.add_argument("--examples", type=int, default=5, help="example predictions per generation task on the page")
    parser.add_argument("-o", "--output", required=True, help="output folder for comparison.md/.json/.png and report.html")
    return parser


def scoring_modes(results: list[dict], names: list[str]) -> dict[str, str]:
    """{task: the mode its scores came from}, or "<mode> (<run>), ..." where runs used different modes.

    Example:
        >>> scoring_modes([{"tasks": {"piqa": {"mode": "lm-eval"}}}] * 2, ["base", "tuned"])
        {'piqa': 'lm-eval'}
    """
    seen: dict[str, dict[str, str]] = {}
    for name, result in zip(names, results):
        for task, summary in (result.get("tasks") or {}).items():
            if isinstance(summary, dict) and summary.get("mode"):
                seen.setdefault(task, {})[name] = summary["mode"]
    return {task: (next(iter(by_run.values())) if len(set(by_run.values())) == 1 else
                   "MIXED, not comparable: " + ", ".join(f"{mode} ({run})" for run, mode in by_run.items()))
            for task, by_run in seen.items()}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if len(args.runs) < 2:
        raise InstructuneError("compare: give at least two metrics JSON files (baseline first, then tuned runs)")
    names = args.names or [Path(path).stem for path in args.runs]
    if len(names) != len(args.runs):
        raise InstructuneError(f"compare: {len(names)} --names for {len(args.runs)} runs; give one name per run")
    if len(set(names)) != len(names):
        raise InstructuneError(f"compare: run names {names} repeat; pass distinct --names")
    results = [_load_result(path) for path in args.runs]
    held_out = set(args.held_out)
    known = {task for result in results for task in task_metrics(result)}
    if held_out - known:
        raise InstructuneError(
            f"compare: --held-out {', '.join(sorted(held_out - known))} not in any run (tasks: {', '.join(sorted(known))})"
        )
    comparisons = {
        name: compare(results[0], result, held_out=held_out, threshold=args.threshold)
        for name, result in zip(names[1:], results[1:])
    }
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = report.comparison_markdown(names[0], comparisons, threshold=args.threshold)
    modes = scoring_modes(results, names)
    if modes:
        markdown += "\nScoring mode (`instructune eval --mode`): " + "; ".join(
            f"{task} {mode}" for task, mode in modes.items()) + ".\n"
    print(markdown)
    (out_dir / "comparison.md").write_text(markdown)
    (out_dir / "comparison.json").write_text(json.dumps(
        {"baseline": names[0], "runs": dict(zip(names, args.runs)), "held_out": sorted(held_out),
         "threshold": args.threshold, "modes": modes, "comparisons": comparisons}, indent=2) + "\n")
    chart = report.plot_comparison(names, [task_metrics(result) for result in results], out_dir / "comparison.png")
    examples = report.example_predictions(args.runs, names, per_task=args.examples)
    page = report.write_html_report(
        out_dir / "report.html", baseline=names[0], comparisons=comparisons,
        chart=chart, loss_png=args.loss_png, examples=examples, threshold=args.threshold,
    )
    print(f"wrote {out_dir / 'comparison.md'}, {chart}, {page}")
    return 0

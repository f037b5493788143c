"""`instructune compare`: what fine-tuning bought and what it cost, run against run.

Takes the metrics JSON of a baseline (usually the untouched model) and of one or more tuned runs,
lines up every task and metric and computes the change. Where both runs kept per-item scores (the
"scores" of each row of `<run>.predictions.jsonl`, written by `instructune eval`) and scored the same
items, each change gets a 95% confidence interval from a paired bootstrap over items, and 0/1 metrics
(acc, acc_norm, exact_match) an exact McNemar p-value (stats.py). A held-out task (one the run was not
tuned for) whose score fell significantly is flagged as forgetting; a change the statistics cannot
tell from zero is called within noise. The table names each task's scoring mode, and its decoding
where a run left greedy (beam search etc.). Writes a markdown table, a PNG chart and an HTML page
(report.py draws them). With `--matrix`, also a run x task table of one score per task: runs named
after a task are its single-task runs (the diagonal), and every other tuned run (a mixture) is also
compared with each of them, item by item (multi-task gains, issue 16). Left out: runs on different
items (no pairing, so no interval) and corrections for testing many metrics at once.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError
from instructune.fileio.jsonio import read_jsonl
from instructune.evaluate import report, wellformed
from instructune.evaluate.provenance import decoding_settings, scoring_modes, scoring_protocols
from instructune.evaluate.stats import paired_difference

NO_SCORES = "no per-item scores"
DIFFERENT_ITEMS = "runs scored different items"
_UNTESTED = dict.fromkeys(("ci_low", "ci_high", "n", "p_value", "significant", "test", "note"))


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


def read_predictions(metrics_path: str | Path) -> list[dict]:
    """The prediction rows beside an eval metrics JSON (its "predictions" file); [] when there are none."""
    metrics_path = Path(metrics_path)
    name = json.loads(metrics_path.read_text()).get("predictions")
    file = metrics_path.parent / name if name else None
    if file is None or not file.is_file():
        return []
    return read_jsonl(file)


def _rows_by_task(rows: list[dict]) -> dict[str, list[dict]]:
    """{task: its rows in order}: the k-th row of a task is the same item in every run of the same eval."""
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row.get("task", ""), []).append(row)
    return by_task


def _paired_scores(before_items: list[dict], after_items: list[dict]) -> dict[str, tuple[list, list] | str]:
    """{task: (before score dicts, after score dicts), item by item} or why that task's items do not pair.

    Items pair by (task, position, prompt): both runs must have scored the same prompts in the same order.
    """
    before_by_task, after_by_task = _rows_by_task(before_items), _rows_by_task(after_items)
    paired: dict[str, tuple[list, list] | str] = {}
    for task in before_by_task.keys() & after_by_task.keys():
        old, new = before_by_task[task], after_by_task[task]
        if not all("scores" in row for row in old + new):
            paired[task] = NO_SCORES
        elif len(old) != len(new) or any(a["prompt"] != b["prompt"] for a, b in zip(old, new)):
            paired[task] = DIFFERENT_ITEMS
        else:
            paired[task] = ([row["scores"] for row in old], [row["scores"] for row in new])
    return paired


def _statistics(pair: tuple[list, list] | str | None, metric: str, before: float, after: float,
                **settings: Any) -> dict[str, Any]:
    """The statistics fields of one row: paired_difference's, or None everywhere and a note saying why."""
    if pair is None or isinstance(pair, str):
        return {**_UNTESTED, "note": pair or NO_SCORES}
    if not all(metric in scores for scores in pair[0] + pair[1]):
        return {**_UNTESTED, "note": NO_SCORES}
    old = [scores[metric] for scores in pair[0]]
    new = [scores[metric] for scores in pair[1]]
    # The interval must be of the very delta in the table: per-item scores have to average to the metric.
    if not (math.isclose(sum(old) / len(old), before, abs_tol=1e-6)
            and math.isclose(sum(new) / len(new), after, abs_tol=1e-6)):
        return {**_UNTESTED, "note": "per-item scores do not average to the reported metric"}
    result = paired_difference(old, new, **settings)
    note = None
    if result["significant"] is None:
        note = f"too few items for a bootstrap verdict (n={result['n']})"
    return {"ci_low": result["ci_low"], "ci_high": result["ci_high"], "n": result["n"],
            "p_value": result["p_value"], "significant": result["significant"], "test": result["test"], "note": note}


def compare(
    before: dict,
    after: dict,
    *,
    held_out: set[str] | frozenset[str] = frozenset(),
    threshold: float = 0.0,
    before_items: list[dict] | None = None,
    after_items: list[dict] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per task and metric of either run: the change, its confidence interval and the forgetting flag.

    Args:
        before: the baseline run (eval JSON, {task: metrics} or flat metrics).
        after: the run to judge, in the same shape.
        held_out: tasks the run was not tuned on; a significant drop there is forgetting.
        threshold: the smallest drop (absolute, in the metric's units: 0.01 = one point of accuracy)
            that counts as forgetting even when significant; 0 = any significant drop.
        before_items, after_items: the runs' prediction rows (`<run>.predictions.jsonl`, or the rows
            `evaluate_examples` returns, with "task" set), each with "prompt" and a "scores" dict of
            per-item metric values. Without them no row gets an interval.
        confidence: interval coverage and 1 - the test level (0.95: 95% intervals, p < 0.05).
        n_resamples, seed: the paired bootstrap's resamples and seed (stats.paired_bootstrap_ci).

    Returns:
        Flat rows, in the order tasks and metrics first appear, with keys
        "task", "metric", "before", "after", "delta" (after - before; None where a run lacks the metric),
        "ci_low", "ci_high" (the interval of delta), "n" (paired items),
        "p_value" (exact McNemar, for 0/1 metrics only), "significant" (True/False; None = not tested),
        "test" ("exact McNemar" or "paired bootstrap": what decided "significant"),
        "note" (why there is no interval or no verdict, e.g. "no per-item scores"; else None),
        "held_out", and "forgetting" (held out, significant, and a drop larger than threshold).

    Example:
        >>> base = [{"task": "piqa", "prompt": f"q{i}", "scores": {"acc": float(i < 60)}} for i in range(100)]
        >>> tuned = [{**row, "scores": {"acc": float(i < 48)}} for i, row in enumerate(base)]
        >>> compare({"piqa": {"acc": 0.6}}, {"piqa": {"acc": 0.48}}, held_out={"piqa"},
        ...         before_items=base, after_items=tuned)
        [{'task': 'piqa', 'metric': 'acc', 'before': 0.6, 'after': 0.48, 'delta': -0.12, 'ci_low': -0.19, 'ci_high': -0.06, 'n': 100, 'p_value': 0.00048828125, 'significant': True, 'test': 'exact McNemar', 'note': None, 'held_out': True, 'forgetting': True}]
    """
    if threshold < 0:
        raise InstructuneError(f"compare: threshold {threshold}; expected a non-negative number")
    settings = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    paired = _paired_scores(before_items or [], after_items or [])
    before_tasks, after_tasks = task_metrics(before), task_metrics(after)
    rows = []
    for task in dict.fromkeys([*before_tasks, *after_tasks]):
        old, new = before_tasks.get(task, {}), after_tasks.get(task, {})
        for metric in dict.fromkeys([*old, *new]):
            value_before, value_after = old.get(metric), new.get(metric)
            both = value_before is not None and value_after is not None
            delta = round(value_after - value_before, 10) if both else None
            stats = _statistics(paired.get(task), metric, value_before, value_after, **settings) if both else _UNTESTED
            rows.append({
                "task": task, "metric": metric, "before": value_before, "after": value_after, "delta": delta,
                **stats, "held_out": task in held_out,
                "forgetting": task in held_out and stats["significant"] is True and delta < -threshold,
            })
    return rows


def example_predictions(runs: list[list[dict]], names: list[str], *, per_task: int = 5) -> list[dict[str, Any]]:
    """The first few generation examples of each task, with every run's answer to the same prompt.

    Args:
        runs: each run's prediction rows (`read_predictions`), baseline first.
        names: the runs' names.
        per_task: examples per task.

    Returns:
        [{"task", "prompt", "references", "outputs": {run name: prediction}}]; empty when the runs
        have no predictions files. Multiple-choice rows are left out (their answer is an option).
    """
    if not runs or not runs[0]:
        return []
    by_task = [_rows_by_task(rows) for rows in runs]
    examples = []
    for task, rows in by_task[0].items():
        generation = [(position, row) for position, row in enumerate(rows) if "options" not in row]
        for position, row in generation[:per_task]:
            outputs = {}
            for name, other_rows in zip(names, by_task):
                other = other_rows.get(task, [])
                if position < len(other) and other[position]["prompt"] == row["prompt"]:
                    outputs[name] = other[position]["prediction"]
            examples.append({"task": task, "prompt": row["prompt"], "references": row["references"],
                             "outputs": outputs})
    return examples


def matrix_metrics(specs: list[str], results: list[dict]) -> dict[str, str]:
    """{task: metric} from `--matrix TASK=METRIC ...`, each task and metric checked against the runs.

    Example:
        >>> matrix_metrics(["piqa=acc"], [{"tasks": {"piqa": {"metrics": {"acc": 0.6}}}}])
        {'piqa': 'acc'}
    """
    chosen: dict[str, str] = {}
    for spec in specs:
        task, _, metric = spec.partition("=")
        if not task or not metric:
            raise InstructuneError(f"compare: --matrix {spec!r}; expected TASK=METRIC, e.g. piqa=acc")
        chosen[task] = metric
    for result in results:
        scores = task_metrics(result)
        for task, metric in chosen.items():
            if metric not in scores.get(task, {}):
                known = ", ".join(sorted(scores.get(task, {}))) or f"no task {task!r}; tasks: {', '.join(scores)}"
                raise InstructuneError(f"compare: --matrix {task}={metric}: a run lacks it ({known})")
    return chosen


def versus_single_task(results: list[dict], items: list[list[dict]], names: list[str], metrics: dict[str, str],
                       **settings: Any) -> dict[str, list[dict[str, Any]]]:
    """Every tuned run that is no task's single-task run, against each task's single-task run, on that task.

    A run named like a task (a key of `metrics`) is that task's single-task run; the baseline (first)
    and those runs are the references, every other run (a mixture) is judged against them.

    Args:
        results: the runs' eval JSONs, baseline first.
        items: the runs' prediction rows (`read_predictions`), in the same order.
        names: the runs' names.
        metrics: {task: the metric to compare}.
        settings: `compare`'s confidence, n_resamples and seed.

    Returns:
        {run: one `compare` row per task with a single-task run, "before" = the single-task run's score,
        "after" = this run's}.

    Example:
        >>> single = [{"task": "piqa", "prompt": f"q{i}", "scores": {"acc": float(i < 60)}} for i in range(100)]
        >>> mixed = [{**row, "scores": {"acc": float(i < 58)}} for i, row in enumerate(single)]
        >>> rows = versus_single_task([{"piqa": {"acc": 0.5}}, {"piqa": {"acc": 0.6}}, {"piqa": {"acc": 0.58}}],
        ...                           [[], single, mixed], ["base", "piqa", "mix"], {"piqa": "acc"})
        >>> [(row["before"], row["after"], row["delta"], row["p_value"]) for row in rows["mix"]]
        [(0.6, 0.58, -0.02, 0.5)]
    """
    position = {name: i for i, name in enumerate(names)}
    judged = [name for name in names[1:] if name not in metrics]
    versus: dict[str, list[dict[str, Any]]] = {}
    for name in judged:
        rows = []
        for task, metric in metrics.items():
            if task not in position:
                continue
            single, run = position[task], position[name]
            # Only this task's metric: compare() pairs the items of the tasks both sides name.
            before, after = ({task: {metric: task_metrics(results[i])[task][metric]}} for i in (single, run))
            rows += compare(before, after, before_items=items[single], after_items=items[run], **settings)
        versus[name] = rows
    return versus


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
        description="Compare eval runs against a baseline: deltas with confidence intervals, forgetting flags, "
                    "chart and HTML report.",
        epilog="Statistics: each change gets a confidence interval (95%% by default) from a paired bootstrap over "
               "the items both runs scored, read from the per-item \"scores\" in each run's predictions JSONL "
               "(`instructune eval` writes them). For 0/1 metrics (acc, acc_norm, exact_match) the exact McNemar "
               "test decides significance and its p-value is shown; for the others, whether the interval excludes "
               "0. A change that is not significant is marked \"within noise\"; forgetting = a significant drop "
               "on a --held-out task (larger than --threshold). Runs without per-item scores (older eval files) "
               "or scored on different items get \"no CI\" and no verdict.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN.json",
                        help="metrics JSON files from `instructune eval`; the first is the baseline")
    parser.add_argument("--names", nargs="+", default=None, help="display names of the runs (default: file names)")
    parser.add_argument("--held-out", nargs="+", default=[], metavar="TASK",
                        help="tasks the runs were not tuned on; significant drops there are flagged as forgetting")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="smallest absolute drop on a held-out task that counts as forgetting even when "
                             "significant (default 0: any significant drop)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="confidence level of the intervals; the tests run at 1 - this (default 0.95)")
    parser.add_argument("--bootstrap-samples", type=int, default=2000,
                        help="paired bootstrap resamples per interval (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed; the same inputs give the same intervals")
    parser.add_argument("--loss-png", default=None, help="training loss plot to put on the HTML page")
    parser.add_argument("--examples", type=int, default=5, help="example predictions per generation task on the page")
    parser.add_argument("--matrix", nargs="+", default=None, metavar="TASK=METRIC",
                        help="also write matrix.md and matrix.png: one row per run, one column per TASK (its METRIC, "
                             "with the change from the baseline); a run named like a TASK (--names) is that task's "
                             "single-task run (the diagonal), and each other run (a mixture) gets one more row, its "
                             "difference from every single-task run, item by item (e.g. --matrix piqa=acc "
                             "dialogsum=rouge1_mean_ref)")
    parser.add_argument("-o", "--output", required=True, help="output folder for comparison.md/.json/.png and report.html")
    return parser


def compare_runs(runs: list[str | Path], out_dir: str | Path, *, names: list[str] | None = None,
                 held_out: list[str] | tuple[str, ...] = (), threshold: float = 0.0, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0, loss_png: str | None = None, examples: int = 5,
                 matrix: list[str] | None = None) -> Path:
    """Compare eval result files against the first and write the tables, charts and HTML report.

    What `instructune compare` runs, and the board's Evaluate tab: comparison.md/.json/.png and
    report.html in `out_dir` (and matrix.md/.json/.png with `matrix`, TASK=METRIC specs).

    Returns:
        `out_dir`.

    Example:
        >>> compare_runs(["runs/eval/base.json", "runs/eval/tuned.json"], "runs/eval/compare", names=["base", "tuned"])
        PosixPath('runs/eval/compare')
    """
    if len(runs) < 2:
        raise InstructuneError("compare: give at least two metrics JSON files (baseline first, then tuned runs)")
    names = names or [Path(path).stem for path in runs]
    if len(names) != len(runs):
        raise InstructuneError(f"compare: {len(names)} --names for {len(runs)} runs; give one name per run")
    if len(set(names)) != len(names):
        raise InstructuneError(f"compare: run names {names} repeat; pass distinct --names")
    results = [_load_result(str(path)) for path in runs]
    predictions = [read_predictions(path) for path in runs]
    held_out = set(held_out)
    known = {task for result in results for task in task_metrics(result)}
    if held_out - known:
        raise InstructuneError(
            f"compare: --held-out {', '.join(sorted(held_out - known))} not in any run (tasks: {', '.join(sorted(known))})"
        )
    settings = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    comparisons = {
        name: compare(results[0], result, held_out=held_out, threshold=threshold,
                      before_items=predictions[0], after_items=items, **settings)
        for name, result, items in zip(names[1:], results[1:], predictions[1:])
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = report.comparison_markdown(names[0], comparisons, threshold=threshold, confidence=confidence)
    modes = scoring_modes(results, names)
    if modes:
        markdown += "\nScoring mode (`instructune eval --mode`): " + "; ".join(
            f"{task} {mode}" for task, mode in modes.items()) + ".\n"
    decodings = decoding_settings(results, names)
    if decodings:
        markdown += "\nDecoding (`instructune eval --num-beams` and the other decoding flags): " + "; ".join(
            f"{task} {how}" for task, how in decodings.items()) + ".\n"
    shares = wellformed.shares_markdown(names, results)
    if shares:
        markdown += ("\nWell-formed answers (an option where options were given, a stop before the new-token cap, no "
                     "continuation of the prompt; evaluate/wellformed.py), each run's share with its 95% Wilson "
                     "interval; the change and its paired test are the `well_formed` rows above:\n\n" + shares + "\n")
    print(markdown)
    (out_dir / "comparison.md").write_text(markdown)
    (out_dir / "comparison.json").write_text(json.dumps(
        {"baseline": names[0], "runs": dict(zip(names, [str(path) for path in runs])), "held_out": sorted(held_out),
         "threshold": threshold, "confidence": confidence, "bootstrap_samples": n_resamples,
         "seed": seed, "modes": modes, "decoding": decodings,
         "comparisons": comparisons}, indent=2) + "\n")
    chart = report.plot_comparison(names, [task_metrics(result) for result in results], out_dir / "comparison.png",
                                   comparisons=comparisons, confidence=confidence)
    if matrix:
        metrics = matrix_metrics(matrix, results)
        versus = versus_single_task(results, predictions, names, metrics, **settings)
        table = report.matrix_markdown(names, comparisons, metrics, versus=versus,
                                       protocols=scoring_protocols(results[0], metrics), confidence=confidence)
        print(table)
        (out_dir / "matrix.md").write_text(table)
        (out_dir / "matrix.json").write_text(json.dumps(
            {"baseline": names[0], "metrics": metrics, "confidence": confidence, "versus_single_task": versus},
            indent=2) + "\n")
        report.plot_comparison(names, [task_metrics(result) for result in results], out_dir / "matrix.png",
                               comparisons=comparisons, confidence=confidence, metrics=metrics)
    page = report.write_html_report(
        out_dir / "report.html", baseline=names[0], comparisons=comparisons, chart=chart, loss_png=loss_png,
        examples=example_predictions(predictions, names, per_task=examples), threshold=threshold,
        confidence=confidence,
    )
    print(f"wrote {out_dir / 'comparison.md'}, {chart}, {page}")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    compare_runs(args.runs, args.output, names=args.names, held_out=args.held_out, threshold=args.threshold,
                 confidence=args.confidence, n_resamples=args.bootstrap_samples, seed=args.seed,
                 loss_png=args.loss_png, examples=args.examples, matrix=args.matrix)
    return 0

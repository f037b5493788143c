"""Render comparisons for people: markdown tables, a PNG bar chart and a one-page HTML report.

compare.py decides what changed; this file only draws it. The HTML page is static and needs no
server or JavaScript: tables, the bar chart, an optional training loss plot and a handful of
example predictions (prompt, reference, each run's answer) side by side. Interactive dashboards
are left out.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError

# Metrics drawn in the chart when a task has them; the rest stay in the tables.
CHART_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "acc", "acc_norm")
_PROMPT_CHARS_SHOWN = 1200


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _delta(row: dict) -> str:
    if row["delta"] is None:
        return "–"
    text = f"{row['delta']:+.4f}"
    return f"**{text} forgetting**" if row["forgetting"] else text


def _task_label(task: str, held_out: bool) -> str:
    return f"{task} (held out)" if held_out else task


def _comparison_cells(baseline: str, comparisons: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells: task, metric, baseline, then each run's value and change."""
    names = list(comparisons)
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for name, rows in comparisons.items():
        for row in rows:
            by_key.setdefault((row["task"], row["metric"]), {})[name] = row
    header = ["task", "metric", baseline] + [column for name in names for column in (name, f"Δ {name}")]
    body = []
    for (task, metric), rows in by_key.items():
        first = next(iter(rows.values()))
        cells = [_task_label(task, first["held_out"]), metric, _number(first["before"])]
        for name in names:
            row = rows.get(name)
            cells += [_number(row["after"]), _delta(row)] if row else ["–", "–"]
        body.append(cells)
    return header, body


def _footnote(comparisons: dict[str, list[dict]], threshold: float) -> str:
    held_out = sorted({row["task"] for rows in comparisons.values() for row in rows if row["held_out"]})
    flagged = sorted({f"{row['task']} {row['metric']} ({name})" for name, rows in comparisons.items()
                      for row in rows if row["forgetting"]})
    if not held_out:
        return "No held-out tasks given (--held-out), so nothing is checked for forgetting."
    verdict = f"Flagged: {'; '.join(flagged)}." if flagged else "None flagged."
    return f"Held-out tasks: {', '.join(held_out)}. Forgetting: a held-out score fell by more than {threshold:g}. {verdict}"


def comparison_markdown(baseline: str, comparisons: dict[str, list[dict]], *, threshold: float = 0.01) -> str:
    """A markdown table: each task and metric, the baseline, and every run with its change.

    Args:
        baseline: the baseline run's name.
        comparisons: {run name: rows from `compare(baseline, run)`}.
        threshold: the forgetting threshold the rows were flagged with (for the footnote).

    Returns:
        The table and a footnote naming the held-out tasks and any forgetting.

    Example:
        >>> print(comparison_markdown("base", {"tuned": compare({"piqa": {"acc": 0.62}}, {"piqa": {"acc": 0.58}},
        ...                                                     held_out={"piqa"})}))
        | task | metric | base | tuned | Δ tuned |
        |---|---|---|---|---|
        | piqa (held out) | acc | 0.6200 | 0.5800 | **-0.0400 forgetting** |
        <BLANKLINE>
        Held-out tasks: piqa. Forgetting: a held-out score fell by more than 0.01. Flagged: piqa acc (tuned).
    """
    header, body = _comparison_cells(baseline, comparisons)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines + ["", _footnote(comparisons, threshold)]) + "\n"


def before_after_markdown(rows: list[dict]) -> str:
    """A before/after markdown table of the rows `compare(before, after)` returns.

    Example:
        >>> print(before_after_markdown(compare({"rouge1": 0.21}, {"rouge1": 0.43})))
        | metric | before | after | Δ |
        |---|---|---|---|
        | rouge1 | 0.2100 | 0.4300 | +0.2200 |
    """
    with_task = any(row["task"] for row in rows)
    header = (["task"] if with_task else []) + ["metric", "before", "after", "Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ([row["task"]] if with_task else []) + [row["metric"], _number(row["before"]),
                                                         _number(row["after"]), _delta(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(names: list[str], runs: list[dict[str, dict[str, float]]], path: str | Path) -> Path:
    """Grouped bar chart: one group per task and headline metric, one bar per run.

    Args:
        names: run names, baseline first.
        runs: per run, {task: {metric: value}} (see `compare.task_metrics`).
        path: the PNG to write.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: list[tuple[str, str]] = []
    for run in runs:
        for task, metrics in run.items():
            headline = [m for m in CHART_METRICS if m in metrics] or list(metrics)
            groups.extend((task, metric) for metric in headline if (task, metric) not in groups)
    width = 0.8 / max(len(runs), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(groups)), 4.2))
    for i, (name, run) in enumerate(zip(names, runs)):
        values = [run.get(task, {}).get(metric, 0.0) for task, metric in groups]
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(xs, values, width=width, label=name)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{task}\n{metric}" if task else metric for task, metric in groups], fontsize=8)
    axes.set_ylabel("score")
    axes.set_ylim(0, 1)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Scores by task and metric")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _read_predictions(metrics_path: Path) -> list[dict]:
    result = json.loads(metrics_path.read_text())
    name = result.get("predictions")
    file = metrics_path.parent / name if name else None
    if file is None or not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def example_predictions(run_paths: list[str | Path], names: list[str], *, per_task: int = 5) -> list[dict[str, Any]]:
    """The first few generation examples of each task, with every run's answer to the same prompt.

    Returns:
        [{"task", "prompt", "references", "outputs": {run name: prediction}}]; empty when the runs
        have no predictions files. Multiple-choice rows are left out (their answer is an option).
    """
    per_run = [_read_predictions(Path(path)) for path in run_paths]
    if not per_run or not per_run[0]:
        return []
    indexed = [_keyed_by_task_position(rows) for rows in per_run]
    examples, shown = [], {}
    for (task, position), row in indexed[0].items():
        if "options" in row or shown.get(task, 0) >= per_task:
            continue
        outputs = {}
        for name, rows in zip(names, indexed):
            other = rows.get((task, position))
            if other is not None and other["prompt"] == row["prompt"]:
                outputs[name] = other["prediction"]
        shown[task] = shown.get(task, 0) + 1
        examples.append({"task": task, "prompt": row["prompt"], "references": row["references"], "outputs": outputs})
    return examples


def _keyed_by_task_position(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """{(task, k): the k-th row of that task}, so that the same example lines up across runs."""
    counters: dict[str, int] = {}
    keyed = {}
    for row in rows:
        position = counters.get(row["task"], 0)
        counters[row["task"]] = position + 1
        keyed[(row["task"], position)] = row
    return keyed


def _html_table(baseline: str, comparisons: dict[str, list[dict]], threshold: float) -> str:
    header, body = _comparison_cells(baseline, comparisons)
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    rows = []
    for cells in body:
        tds = [f'<td class="flag">{html.escape(c.replace("**", ""))}</td>' if "forgetting" in c
               else f"<td>{html.escape(c)}</td>" for c in cells]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table><p>{html.escape(_footnote(comparisons, threshold))}</p>"


def write_html_report(
    path: str | Path,
    *,
    baseline: str,
    comparisons: dict[str, list[dict]],
    chart: str | Path | None = None,
    loss_png: str | Path | None = None,
    examples: list[dict] | None = None,
    threshold: float = 0.01,
    title: str = "instructune: before / after",
) -> Path:
    """One static HTML page: comparison table, bar chart, loss curve and example predictions.

    Images are copied next to the page and linked by file name, so the folder can be moved whole.

    Returns:
        The HTML path.
    """
    path = Path(path)
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Scores</h2>", _html_table(baseline, comparisons, threshold)]
    for label, image in (("Scores chart", chart), ("Training loss", loss_png)):
        if image is None:
            continue
        image = Path(image)
        if not image.is_file():
            raise InstructuneError(f"{image}: image for the report not found")
        if image.resolve().parent != path.resolve().parent:
            shutil.copy(image, path.parent / image.name)
        parts.append(f'<h2>{label}</h2><img src="{html.escape(image.name)}" alt="{label}">')
    if examples:
        parts.append("<h2>Example predictions</h2>")
        for example in examples:
            prompt = example["prompt"]
            if len(prompt) > _PROMPT_CHARS_SHOWN:
                prompt = prompt[:_PROMPT_CHARS_SHOWN] + " …"
            rows = [("reference", " / ".join(example["references"]))] + list(example["outputs"].items())
            cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
            parts.append(f"<h3>{html.escape(example['task'])}</h3><pre>{html.escape(prompt)}</pre><table>{cells}</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
             "vertical-align:top}td.flag{background:#fdd;font-weight:bold}pre{white-space:pre-wrap;background:#f6f6f6;"
             "padding:8px}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    path.write_text(page)
    return path

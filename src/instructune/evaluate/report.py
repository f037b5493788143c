"""Render comparisons for people: markdown tables, a PNG bar chart and a one-page HTML report.

compare.py decides what changed and whether it is more than noise; this file only draws it. Each
change is shown with its confidence interval and verdict ("within noise", "forgetting", or why it
was not tested). The HTML page is static and needs no server or JavaScript: tables, the bar chart
(scores, and changes with their intervals as error bars), an optional training loss plot and a
handful of example predictions (prompt, reference, each run's answer) side by side. Interactive
dashboards are left out.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from instructune.errors import InstructuneError

# Metrics drawn in the chart when a task has them; the rest stay in the tables.
CHART_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "acc", "acc_norm")
_PROMPT_CHARS_SHOWN = 1200


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _change(row: dict) -> str | None:
    """The change and its interval, no verdict: "-0.0400 [-0.090, +0.010] p=0.23"; None without an interval."""
    if row["ci_low"] is None:
        return None
    text = f"{row['delta']:+.4f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
    return text + (f" p={row['p_value']:.2g}" if row["p_value"] is not None else "")


def _delta(row: dict) -> str:
    """The change, its interval and verdict: "-0.0400 [-0.090, +0.010] p=0.23 within noise"."""
    if row["delta"] is None:
        return "–"
    text = _change(row)
    if text is None:
        return f"{row['delta']:+.4f} no CI ({row['note']})"
    if row["forgetting"]:
        return f"**{text} forgetting**"
    if row["significant"] is None:
        return f"{text} untested ({row['note']})"
    return text if row["significant"] else f"{text} within noise"


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


def _statistics_note(rows: list[dict], confidence: float) -> str:
    """What the intervals and verdicts mean, and over how many items; or why there are none."""
    tested = [row for row in rows if row["ci_low"] is not None]
    if not tested:
        reasons = sorted({row["note"] for row in rows if row["delta"] is not None and row["note"]})
        return f"No confidence intervals ({'; '.join(reasons) or 'no changes'}), so no change is tested."
    items = ", ".join(f"{task or 'all'} {n}" for task, n in dict.fromkeys((r["task"], r["n"]) for r in tested))
    return (f"Δ [low, high]: the {confidence:.0%} confidence interval of the change, paired bootstrap over the "
            f"items both runs scored (items: {items}). p: exact McNemar test, for 0/1 metrics, which decides their "
            f"verdict; the other metrics are significant when the interval excludes 0. "
            f"Within noise: not significant at the {1 - confidence:.0%} level.")


def _footnote(comparisons: dict[str, list[dict]], threshold: float, confidence: float) -> str:
    rows = [row for rows in comparisons.values() for row in rows]
    held_out = sorted({row["task"] for row in rows if row["held_out"]})
    flagged = sorted({f"{row['task']} {row['metric']} ({name})" for name, rows in comparisons.items()
                      for row in rows if row["forgetting"]})
    untested = sorted({f"{row['task']} {row['metric']} ({name}: {row['note']})" for name, rows in comparisons.items()
                       for row in rows if row["held_out"] and row["delta"] is not None and row["delta"] < 0
                       and row["significant"] is None})
    statistics = _statistics_note(rows, confidence)
    if not held_out:
        return f"{statistics} No held-out tasks given (--held-out), so nothing is checked for forgetting."
    size = f" larger than {threshold:g}" if threshold > 0 else ""
    verdict = f"Flagged: {'; '.join(flagged)}." if flagged else "None flagged."
    if untested:
        verdict += f" Drops not tested: {'; '.join(untested)}."
    return (f"{statistics} Held-out tasks: {', '.join(held_out)}. Forgetting: a significant drop{size} "
            f"on a held-out task. {verdict}")


def comparison_markdown(baseline: str, comparisons: dict[str, list[dict]], *, threshold: float = 0.0,
                        confidence: float = 0.95) -> str:
    """A markdown table: each task and metric, the baseline, and every run with its change and interval.

    Args:
        baseline: the baseline run's name.
        comparisons: {run name: rows from `compare(baseline, run)`}.
        threshold: the forgetting threshold the rows were flagged with (for the footnote).
        confidence: the confidence level the rows' intervals were computed at (for the footnote).

    Returns:
        The table and a footnote: what the intervals mean, the held-out tasks and any forgetting.

    Example:
        >>> base = [{"task": "piqa", "prompt": f"q{i}", "scores": {"acc": float(i < 60)}} for i in range(100)]
        >>> tuned = [{**row, "scores": {"acc": float(i < 48)}} for i, row in enumerate(base)]
        >>> rows = compare({"piqa": {"acc": 0.6}}, {"piqa": {"acc": 0.48}}, held_out={"piqa"},
        ...                before_items=base, after_items=tuned)
        >>> print(comparison_markdown("base", {"tuned": rows}))
        | task | metric | base | tuned | Δ tuned |
        |---|---|---|---|---|
        | piqa (held out) | acc | 0.6000 | 0.4800 | **-0.1200 [-0.190, -0.060] p=0.00049 forgetting** |
        <BLANKLINE>
        Δ [low, high]: the 95% confidence interval of the change, paired bootstrap over the items both runs scored (items: piqa 100). p: exact McNemar test, for 0/1 metrics, which decides their verdict; the other metrics are significant when the interval excludes 0. Within noise: not significant at the 5% level. Held-out tasks: piqa. Forgetting: a significant drop on a held-out task. Flagged: piqa acc (tuned).
    """
    header, body = _comparison_cells(baseline, comparisons)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines + ["", _footnote(comparisons, threshold, confidence)]) + "\n"


def before_after_markdown(rows: list[dict], *, confidence: float = 0.95) -> str:
    """A before/after markdown table of the rows `compare(before, after)` returns.

    Example:
        >>> print(before_after_markdown(compare({"rouge1": 0.21}, {"rouge1": 0.43})))
        | metric | before | after | Δ |
        |---|---|---|---|
        | rouge1 | 0.2100 | 0.4300 | +0.2200 no CI (no per-item scores) |
        <BLANKLINE>
        No confidence intervals (no per-item scores), so no change is tested.
    """
    with_task = any(row["task"] for row in rows)
    header = (["task"] if with_task else []) + ["metric", "before", "after", "Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ([row["task"]] if with_task else []) + [row["metric"], _number(row["before"]),
                                                         _number(row["after"]), _delta(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", _statistics_note(rows, confidence)]) + "\n"


def _versus_cell(row: dict, own_gain: float | None, single_gain: float | None) -> str:
    """A run against a task's single-task run: the difference, its interval, the verdict and the share of the gain."""
    if row["delta"] is None:
        return "–"
    text = _change(row)
    if text is None:
        return f"{row['delta']:+.4f} no CI ({row['note']})"
    if row["significant"] is None:
        verdict = f"untested ({row['note']})"
    elif row["significant"]:
        verdict = "**beats**" if row["delta"] > 0 else "below"
    else:
        verdict = "matches (within noise)"
    if own_gain is not None and single_gain is not None and single_gain > 0:
        verdict += f"; {own_gain / single_gain:.0%} of its gain"
    return f"{text} {verdict}"


def matrix_markdown(names: list[str], comparisons: dict[str, list[dict]], metrics: dict[str, str], *,
                    versus: dict[str, list[dict]] | None = None, protocols: dict[str, str] | None = None,
                    confidence: float = 0.95) -> str:
    """A run x task table of one score per task: single-task runs on the diagonal, a mixture against them.

    A run named like a task is that task's single-task run; its cell in that task's column is bold.

    Args:
        names: run names, baseline first.
        comparisons: {run name: rows from `compare(baseline, run)`}, every run but the baseline.
        metrics: {task: the metric shown for it}, in column order.
        versus: {run name: rows from `compare(single-task run, run)`} (`compare.versus_single_task`):
            each such run gets one more table row, its difference from every task's single-task run.
        protocols: {task: how it was scored} for the footnote (`provenance.scoring_protocols`).
        confidence: the level of the rows' intervals (for the footnote).

    Returns:
        The table and a footnote.

    Example:
        >>> items = {name: [{"task": "piqa", "prompt": f"q{i}", "scores": {"acc": float(i < right)}} for i in range(100)]
        ...          for name, right in (("base", 50), ("piqa", 62), ("mix", 60))}
        >>> runs = {name: {"piqa": {"acc": right / 100}} for name, right in (("base", 50), ("piqa", 62), ("mix", 60))}
        >>> rows = {name: compare(runs["base"], runs[name], before_items=items["base"], after_items=items[name])
        ...         for name in ("piqa", "mix")}
        >>> versus = {"mix": compare(runs["piqa"], runs["mix"], before_items=items["piqa"], after_items=items["mix"])}
        >>> print(matrix_markdown(["base", "piqa", "mix"], rows, {"piqa": "acc"}, versus=versus).split("\\n\\n")[0])
        | run | piqa: acc |
        |---|---|
        | base | 0.5000 |
        | piqa | **0.6200** (+0.1200 [+0.060, +0.180] p=0.00049) |
        | mix | 0.6000 (+0.1000 [+0.050, +0.160] p=0.002) |
        | mix vs single-task | -0.0200 [-0.050, +0.000] p=0.5 matches (within noise); 83% of its gain |
    """
    by_run = {name: {(row["task"], row["metric"]): row for row in rows} for name, rows in comparisons.items()}
    lines = ["| run | " + " | ".join(f"{task}: {metric}" for task, metric in metrics.items()) + " |",
             "|" + "---|" * (len(metrics) + 1)]
    first = {key: row for rows in by_run.values() for key, row in rows.items()}
    lines.append(f"| {names[0]} | " + " | ".join(_number(first[key]["before"]) if key in first else "–"
                                                 for key in metrics.items()) + " |")
    for name in names[1:]:
        cells = []
        for task, metric in metrics.items():
            row = by_run.get(name, {}).get((task, metric))
            if row is None or row["after"] is None:
                cells.append("–")
                continue
            score = f"**{_number(row['after'])}**" if name == task else _number(row["after"])
            cells.append(f"{score} ({_delta(row)})" if row["delta"] is not None else score)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, rows in (versus or {}).items():
        against = {(row["task"], row["metric"]): row for row in rows}
        cells = []
        for key in metrics.items():
            row, own, single = against.get(key), by_run.get(name, {}).get(key), by_run.get(key[0], {}).get(key)
            gains = [r["delta"] if r else None for r in (own, single)]
            cells.append(_versus_cell(row, *gains) if row else "–")
        lines.append(f"| {name} vs single-task | " + " | ".join(cells) + " |")
    footnote = (f"Rows: runs; columns: one score per task. **Bold**: the diagonal, each task's single-task run. "
                f"In parentheses: the change from {names[0]}. Δ [low, high]: the {confidence:.0%} confidence interval "
                "of a change, paired bootstrap over the items both runs scored; p: exact McNemar test for 0/1 "
                "metrics, which decides their verdict; the other metrics are significant when the interval "
                f"excludes 0; within noise: not significant at the {1 - confidence:.0%} level.")
    if versus:
        footnote += (" \"vs single-task\": the run's score minus the single-task run's on the same items: beats or "
                     "below when significant, else matches (within noise: no difference these items can show, "
                     "not proof of equality); \"of its gain\": the run's change from "
                     f"{names[0]} as a share of the single-task run's (point estimates).")
    if protocols:
        footnote += " Scores: " + "; ".join(f"{task}: {text}" for task, text in protocols.items()) + "."
    return "\n".join(lines + ["", footnote]) + "\n"


def plot_comparison(names: list[str], runs: list[dict[str, dict[str, float]]], path: str | Path, *,
                    comparisons: dict[str, list[dict]] | None = None, confidence: float = 0.95,
                    metrics: dict[str, str] | None = None) -> Path:
    """Grouped bar chart: one group per task and headline metric, one bar per run; below it, the changes.

    The lower panel (drawn when `comparisons` carry intervals) shows each run's change from the
    baseline with error bars = the confidence interval of that change (paired over items), which is
    what decides significance; bars of changes within noise or untested are faded.

    Args:
        names: run names, baseline first.
        runs: per run, {task: {metric: value}} (see `compare.task_metrics`).
        path: the PNG to write.
        comparisons: {run name: rows from `compare(baseline, run)`} for the lower panel.
        confidence: the level of the rows' intervals (for the label).
        metrics: {task: metric}: one group per task, that metric only (the run x task matrix);
            default: every task's CHART_METRICS.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    groups: list[tuple[str, str]] = list(metrics.items()) if metrics else []
    for run in runs if not metrics else []:
        for task, values in run.items():
            headline = [m for m in CHART_METRICS if m in values] or list(values)
            groups.extend((task, metric) for metric in headline if (task, metric) not in groups)
    with_changes = bool(comparisons) and any(row["ci_low"] is not None for rows in comparisons.values() for row in rows)
    width = 0.8 / max(len(runs), 1)
    figure, panels = plt.subplots(2 if with_changes else 1, 1, squeeze=False, sharex=True,
                                  figsize=(max(6.0, 1.0 + 0.9 * len(groups)), 7.4 if with_changes else 4.2))
    axes = panels[0, 0]
    for i, (name, run) in enumerate(zip(names, runs)):
        values = [run.get(task, {}).get(metric, 0.0) for task, metric in groups]
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        # The matrix's diagonal (a run named like the task: its single-task run) gets a black edge.
        diagonal = [bool(metrics) and name == task for task, _ in groups]
        axes.bar(xs, values, width=width, label=name, color=f"C{i}", edgecolor=["black" if d else "none" for d in diagonal],
                 linewidth=[1.5 if d else 0 for d in diagonal])
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{task}\n{metric}" if task else metric for task, metric in groups], fontsize=8)
    axes.tick_params(labelbottom=True)
    axes.set_ylabel("score")
    axes.set_ylim(0, 1)
    axes.grid(axis="y", alpha=0.3)
    # Plain patches: the first bar's black edge must not stand for its whole run.
    axes.legend(handles=[Patch(color=f"C{i}", label=name) for i, name in enumerate(names)], fontsize=8)
    axes.set_title("Scores by task; black edge: the task's single-task run" if metrics else "Scores by task and metric")
    if with_changes:
        _plot_changes(panels[1, 0], names, groups, comparisons, width, confidence)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_changes(axes, names: list[str], groups: list[tuple[str, str]], comparisons: dict[str, list[dict]],
                  width: float, confidence: float) -> None:
    """Each run's change from the baseline per group, error bars = the change's interval."""
    for i, name in enumerate(names[1:], start=1):
        by_key = {(row["task"], row["metric"]): row for row in comparisons.get(name, [])}
        for g, key in enumerate(groups):
            row = by_key.get(key)
            if row is None or row["delta"] is None:
                continue
            x = g + (i - (len(names) - 1) / 2) * width
            error = None
            if row["ci_low"] is not None:
                error = [[max(0.0, row["delta"] - row["ci_low"])], [max(0.0, row["ci_high"] - row["delta"])]]
            axes.bar(x, row["delta"], width=width, color=f"C{i}", alpha=1.0 if row["significant"] else 0.35,
                     yerr=error, capsize=3, edgecolor="red" if row["forgetting"] else None)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylabel("change from " + names[0])
    axes.grid(axis="y", alpha=0.3)
    axes.tick_params(axis="x", labelsize=8)
    axes.set_title(f"Change from {names[0]}; error bars: {confidence:.0%} CI of the change (paired over items)\n"
                   "faded: within noise or untested; red edge: forgetting", fontsize=9)


def _cell_class(cell: str) -> str:
    if "forgetting" in cell:
        return ' class="flag"'
    return ' class="noise"' if "within noise" in cell or "no CI" in cell or "untested" in cell else ""


def _html_table(baseline: str, comparisons: dict[str, list[dict]], threshold: float, confidence: float) -> str:
    header, body = _comparison_cells(baseline, comparisons)
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    rows = []
    for cells in body:
        tds = [f"<td{_cell_class(c)}>{html.escape(c.replace('**', ''))}</td>" for c in cells]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    footnote = html.escape(_footnote(comparisons, threshold, confidence))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table><p>{footnote}</p>"


def write_html_report(
    path: str | Path,
    *,
    baseline: str,
    comparisons: dict[str, list[dict]],
    chart: str | Path | None = None,
    loss_png: str | Path | None = None,
    examples: list[dict] | None = None,
    threshold: float = 0.0,
    confidence: float = 0.95,
    title: str = "instructune: before / after",
) -> Path:
    """One static HTML page: comparison table, bar chart, loss curve and example predictions.

    Images are copied next to the page and linked by file name, so the folder can be moved whole.

    Returns:
        The HTML path.
    """
    path = Path(path)
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Scores</h2>",
             _html_table(baseline, comparisons, threshold, confidence)]
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
             "vertical-align:top}td.flag{background:#fdd;font-weight:bold}td.noise{color:#777}"
             "pre{white-space:pre-wrap;background:#f6f6f6;"
             "padding:8px}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    path.write_text(page)
    return path

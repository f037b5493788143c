"""The Evaluate tab: the base and tuned runs on tasks with ground truth, then the before/after comparison.

One `evaluate_to_file` per model (evaluate/run.py, the files `instructune eval` writes) and one
`compare_runs` over them (evaluate/compare.py, `instructune compare`'s), all under `.board/eval/<time>/`. The page shows
the comparison rows with whatever columns they carry (confidence intervals included when compare
adds them), the chart compare drew, and example predictions beside their references.
Leaves out: scoring and comparing (evaluate/), and any table logic of its own.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from instructune.board.form import task_data_rows, whole_number_or_none
from instructune.board.state import Board, guarded
from instructune.errors import InstructuneError
from instructune.evaluate.compare import compare_runs, example_predictions, read_predictions
from instructune.evaluate.run import TaskData, evaluate_to_file
from instructune.generation.generate import GenerateOptions

TASK_COLUMNS = ["task", "data"]


def eval_settings(board: Board, table: Any, limit: Any, max_new_tokens: Any) -> tuple[list[TaskData], GenerateOptions]:
    """What every model is scored on: the tasks with their data (and the example limit), and the answer cap.

    Task YAML and data paths must lie in the working folder.
    """
    cap = whole_number_or_none(limit, "evaluation: --limit")
    tasks = [TaskData(task, data, limit=cap) for _, _, task, data in task_data_rows(board, table, TASK_COLUMNS,
                                                                                     "evaluation")]
    if not tasks:
        raise InstructuneError("evaluation: no task rows; add a task and its data file")
    max_new = whole_number_or_none(max_new_tokens, "evaluation: --max-new-tokens")
    return tasks, GenerateOptions(**({"max_new_tokens": max_new} if max_new is not None else {}))


def evaluate(board: Board, base: str, runs: list[str], settings: tuple[list[TaskData], GenerateOptions], held_out: str,
             progress: Any = None) -> Path:
    """Evaluate the base and each run, compare them; returns the folder with every file written."""
    if not runs:
        raise InstructuneError("evaluation: pick at least one run to compare with the base")
    models = [("base", board.model_path(base), None)]
    for run in runs:
        model, adapter = board.run_model(run)
        models.append((Path(run).name, model, adapter))
    names = [name for name, _, _ in models]
    if len(set(names)) != len(names):
        raise InstructuneError(f"evaluation: run names {names} repeat; pick runs with distinct folder names")
    out = board.work.board_dir("eval", time.strftime("%Y%m%d-%H%M%S"))
    tasks, options = settings
    results = []
    for index, (name, model, adapter) in enumerate(models):
        if progress is not None:
            progress((index, len(models)), desc=f"evaluating {name}")
        results.append(evaluate_to_file(model, adapter, tasks, out / f"{name}.json", options=options))
    held = [task.strip() for task in (held_out or "").split(",") if task.strip()]
    compare_runs(results, out / "compare", names=names, held_out=held)
    return out


def comparison_table(out: Path) -> pd.DataFrame:
    """The comparison rows compare wrote, one per run, task and metric, every column they carry."""
    comparisons = json.loads((out / "compare" / "comparison.json").read_text())["comparisons"]
    rows = [{"run": name, **row} for name, rows in comparisons.items() for row in rows]
    frame = pd.DataFrame(rows)
    numeric = frame.select_dtypes("number").columns
    frame[numeric] = frame[numeric].round(4)
    return frame


def examples_html(out: Path, names: list[str], per_task: int = 3) -> str:
    """Example predictions side by side: the prompt, the reference and each model's answer."""
    paths = [out / f"{name}.json" for name in names]
    examples = example_predictions([read_predictions(path) for path in paths], names, per_task=per_task)
    if not examples:
        return "<p>No generation examples (multiple-choice tasks answer with an option).</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["task", "prompt", "reference", *names])
    rows = []
    for example in examples:
        prompt = example["prompt"] if len(example["prompt"]) < 600 else example["prompt"][:600] + " …"
        cells = [example["task"], prompt, " / ".join(example["references"])]
        cells += [example["outputs"].get(name, "–") for name in names]
        rows.append("<tr>" + "".join(f"<td><pre>{html.escape(c)}</pre></td>" for c in cells) + "</tr>")
    return (f'<table class="board-examples"><tr>{head}</tr>{"".join(rows)}</table>'
            "<style>.board-examples pre{white-space:pre-wrap;margin:0;font-size:12px}"
            ".board-examples td{vertical-align:top;border:1px solid #ddd;padding:4px}</style>")


def build(board: Board) -> dict[str, Any]:
    """The tab's widgets and events; returns the widgets other tabs update (keyed by name)."""
    import gradio as gr

    with gr.Row():
        base = gr.Textbox("", label="Base model folder (empty: the default model)", elem_id="eval-base", scale=2)
        runs = gr.Dropdown(board.runs(finished=True), multiselect=True, label="Tuned runs",
                           allow_custom_value=True, elem_id="eval-runs", scale=3)
        refresh = gr.Button("Refresh runs", size="sm", scale=1)
    tasks = gr.Dataframe(pd.DataFrame(columns=TASK_COLUMNS), headers=TASK_COLUMNS, interactive=True,
                         label="Tasks and their data (raw records with ground truth)", elem_id="eval-tasks",
                         column_count=2, datatype="str")
    with gr.Row():
        limit = gr.Textbox("20", label="Examples per task (--limit)", elem_id="eval-limit")
        max_new = gr.Textbox("64", label="Answer length cap (--max-new-tokens)", elem_id="eval-max-new")
        held_out = gr.Textbox("", label="Held-out tasks, comma-separated (checked for forgetting)",
                              elem_id="eval-held-out")
    go = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
    status = gr.Textbox(label="Status", elem_id="eval-status", interactive=False)
    table = gr.Dataframe(label="Before / after", elem_id="eval-table", interactive=False, wrap=True)
    chart = gr.Image(label="Scores", elem_id="eval-chart", type="filepath", interactive=False)
    examples = gr.HTML(elem_id="eval-examples")

    @guarded(status)
    def on_eval(base_text, picked, task_rows, lim, max_tokens, held, progress=gr.Progress(track_tqdm=True)):
        picked = [picked] if isinstance(picked, str) else list(picked or [])
        settings = eval_settings(board, task_rows, lim, max_tokens)
        started = time.perf_counter()
        out = evaluate(board, base_text, picked, settings, held, progress)
        names = ["base", *(Path(run).name for run in picked)]
        return {status: f"done in {time.perf_counter() - started:.0f} s; files in {board.work.show(out)}",
                table: comparison_table(out), chart: str(out / "compare" / "comparison.png"),
                examples: examples_html(out, names)}

    refresh.click(lambda: gr.update(choices=board.runs(finished=True)), None, [runs])
    go.click(on_eval, [base, runs, tasks, limit, max_new, held_out], [status, table, chart, examples])
    return {"tasks": tasks, "runs": runs, "base": base}

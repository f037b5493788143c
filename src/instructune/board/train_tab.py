"""The Train tab: the run config as a form, start / stop / resume, and the run followed live.

The form is `form.form_fields()` (the config model's keys, defaults and descriptions); Start checks
the config in-process with `config.load_config` (so bad input is the CLI's one line, at once), then
runs `instructune train CONFIG key=value ...` as its own process (process.py). A timer re-reads the
run's metrics.jsonl (metrics.py) for the progress bar, the curves and the run folder's files.
Leaves out: training itself, and any config logic beyond building overrides.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from instructune.board.form import form_fields, form_overrides, form_values
from instructune.board.metrics import curve_points, format_progress, read_run
from instructune.board.state import Board, guarded
from instructune.config import RunConfig, load_config
from instructune.errors import InstructuneError
from instructune.config import default_config_path

BUILTIN_CONFIG = "quickstart (built-in)"
SECTIONS = {"": "Run", "model": "Model", "data": "Data", "lora": "LoRA", "train": "Training"}
_TICK_S = 1.5
_PER_ROW = 5


def config_path(board: Board, choice: str | None) -> Path:
    """The YAML the form starts from: the packaged quickstart config, or a file in the working folder."""
    if not choice or choice == BUILTIN_CONFIG:
        return default_config_path()
    return board.work.path(choice, must_exist=True, what="run config")


def checked_config(board: Board, choice: str | None, values: list[Any]) -> tuple[Path, list[str], RunConfig]:
    """The YAML, the overrides the form adds to it, and the validated config they make.

    Every path in the config must lie in the working folder, like every path typed in the page.
    """
    path = config_path(board, choice)
    fields = form_fields()
    overrides = form_overrides(fields, values, load_config(path))
    config = load_config(path, overrides)
    board.work.path(config.run_dir, what="run folder (output_dir/run_name)")
    if not config.data.train:
        raise InstructuneError("config key 'data.train': a training file is required (write one on the Data tab)")
    for key, value in (("data.train", config.data.train), ("data.validation", config.data.validation),
                       ("model.name", config.model.name)):
        if value:
            board.work.path(value, must_exist=True, what=key)
    return path, overrides, config


def run_files(board: Board, run_dir: Path) -> str:
    """Markdown list of a run folder's entries: files with sizes, folders with their file counts."""
    if not run_dir.is_dir():
        return "_no run folder yet_"
    lines = [f"`{board.work.show(run_dir)}/`"]
    for entry in sorted(run_dir.iterdir()):
        if entry.is_dir():
            count = sum(1 for path in entry.rglob("*") if path.is_file())
            lines.append(f"- `{entry.name}/` ({count} files)")
        else:
            lines.append(f"- `{entry.name}` ({_size(entry.stat().st_size)})")
    return "\n".join(lines)


def progress_html(progress: dict[str, Any]) -> str:
    """A progress bar with the step, rate, ETA and last loss under it."""
    fraction = progress["fraction"] or 0.0
    return (f'<div class="board-progress"><progress value="{fraction:.4f}" max="1" style="width:100%"></progress>'
            f'<div>{html.escape(format_progress(progress))}</div></div>')


def _widget(gr, field: dict[str, Any], value: Any):
    """The widget of one config key, labelled with the key and described by the config model."""
    common = dict(label=field["key"], info=field["description"],
                  elem_id="cfg-" + field["key"].replace(".", "-").replace("_", "-"), min_width=200)
    if field["widget"] == "checkbox":
        return gr.Checkbox(value=value, **common)
    if field["widget"] == "dropdown":
        return gr.Dropdown([str(choice) for choice in field["choices"]], value=value, **common)
    return gr.Textbox(value=value, **common)


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def build(board: Board) -> dict[str, Any]:
    """The tab's widgets and events; returns the widgets other tabs update (keyed by name)."""
    import gradio as gr

    fields = form_fields()
    yaml_files = [BUILTIN_CONFIG] + [board.work.show(path) for path in board.work.files("*.y*ml")]
    with gr.Row():
        choice = gr.Dropdown(yaml_files, value=BUILTIN_CONFIG, label="Start from a run config",
                             allow_custom_value=True, elem_id="train-config", scale=3)
        load = gr.Button("Load into the form", elem_id="train-load", scale=1)
    widgets = []
    start_values = form_values(load_config(config_path(board, BUILTIN_CONFIG)), fields)
    for section, title in SECTIONS.items():
        with gr.Accordion(title, open=section != "lora"):
            shown = [(f, v) for f, v in zip(fields, start_values) if f["section"] == section]
            for start_at in range(0, len(shown), _PER_ROW):
                with gr.Row(equal_height=False):
                    for field, value in shown[start_at:start_at + _PER_ROW]:
                        widgets.append(_widget(gr, field, value))
    with gr.Row():
        overwrite = gr.Checkbox(False, label="Overwrite an earlier run's checkpoints (--overwrite)",
                                elem_id="train-overwrite")
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume", elem_id="train-resume")
    status = gr.Textbox(label="Status", elem_id="train-status", interactive=False)
    with gr.Row():
        run = gr.Dropdown(board.runs(), value=None, label="Run folder shown", allow_custom_value=True,
                          elem_id="train-run", scale=3)
        refresh = gr.Button("Refresh list", size="sm", scale=1)
    progress = gr.HTML(progress_html(read_run(Path("/nonexistent"))[1]), elem_id="train-progress")
    with gr.Row():
        loss_chart = gr.LinePlot(None, x="step", y="value", color="series", label="Loss",
                                 elem_id="train-loss-chart", y_title="loss (response tokens)")
        rouge_chart = gr.LinePlot(None, x="step", y="value", color="series", label="In-training generation scores",
                                  elem_id="train-rouge-chart", y_lim=[0, 1])
    with gr.Row():
        files = gr.Markdown(elem_id="train-files")
        log = gr.Textbox(label="Output of the training process", lines=10, max_lines=10, elem_id="train-log",
                         interactive=False, autoscroll=True)
    seen = gr.State(None)
    timer = gr.Timer(_TICK_S)

    @guarded(status)
    def on_load(path_choice):
        values = form_values(load_config(config_path(board, path_choice)), fields)
        return {**dict(zip(widgets, values)), status: f"loaded {path_choice}"}

    def _start(path_choice, over, values, resume_run):
        path, overrides, config = checked_config(board, path_choice, list(values))
        run_dir = board.work.path(config.run_dir)
        board.training.start(str(path), overrides, run_dir, resume=resume_run, overwrite=over)
        shown = board.work.show(run_dir)
        return {status: f"started: {board.training.state()}", run: gr.update(choices=board.runs() + [shown], value=shown)}

    @guarded(status)
    def on_start(path_choice, over, *values):
        return _start(path_choice, over, values, False)

    @guarded(status)
    def on_resume(path_choice, over, *values):
        return _start(path_choice, over, values, True)

    @guarded(status)
    def on_stop():
        if not board.training.stop():
            return {status: "no run is going"}
        return {status: "stopping: the run saves a checkpoint, then exits"}

    def on_tick(run_shown, last):
        updates: dict = {seen: last}  # never empty: Gradio reads {} as one value, not as "no updates"
        if board.training.process is not None and board.training.run_dir is not None \
                and board.work.show(board.training.run_dir) == run_shown:
            updates[status] = board.training.state()
            updates[log] = board.training.log_tail()
        if not run_shown:
            return updates
        try:
            run_dir = board.work.path(run_shown, what="run folder")
        except InstructuneError as error:
            return {status: f"error: {error}"}
        records, state = read_run(run_dir)
        listing = run_files(board, run_dir)
        key = (run_shown, len(records), listing)
        if key == last:
            return updates
        updates.update({progress: progress_html(state), files: listing, seen: key})
        for chart, name in ((loss_chart, "loss"), (rouge_chart, "rouge")):
            points = curve_points(records, name)
            if points:  # an empty frame would type the columns as numbers for good (see data_tab.py)
                updates[chart] = pd.DataFrame(points)
        return updates

    form_inputs = [choice, overwrite, *widgets]
    load.click(on_load, [choice], [*widgets, status])
    start.click(on_start, form_inputs, [status, run])
    resume.click(on_resume, form_inputs, [status, run])
    stop.click(on_stop, None, [status])
    refresh.click(lambda: gr.update(choices=board.runs()), None, [run])
    timer.tick(on_tick, [run, seen], [status, log, progress, loss_chart, rouge_chart, files, seen],
               show_progress="hidden")
    by_key = {field["key"]: widget for field, widget in zip(fields, widgets)}
    return {"data.train": by_key["data.train"], "data.validation": by_key["data.validation"],
            "model.name": by_key["model.name"], "run": run}

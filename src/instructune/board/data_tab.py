"""The Data tab: a raw file and a task, templates previewed on real rows, a mixture, the instruction JSONL.

Each button is one call into the data API: `data.support.build_support_instructions` (the built-in
data), `templates.load_task` (the task YAML, edited in the page), `render.render_records` (the
preview), `prepare.build_mixture_examples` (the realised proportions) and `prepare.prepare` (the same
files `instructune prepare` writes). Leaves out: any rendering or mixing of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from instructune.board.form import task_data_rows, whole_number_or_none
from instructune.board.state import Board, guarded
from instructune.data.mixture import STRATEGIES, MixtureConfig
from instructune.data.prepare import build_mixture_examples, format_summary, prepare
from instructune.data.render import parse_template_choice, render_records
from instructune.data.sources import load_records
from instructune.data.templates import TASKS_DIR, list_tasks, load_task
from instructune.errors import InstructuneError
from instructune.data.support import build_support_instructions
from instructune.fileio.yaml_io import validation_message

MIX_COLUMNS = ["task", "data", "limit", "weight"]
QUICKSTART_TASKS = ("support_response", "support_intent")


def builtin_task_text(name: str) -> str:
    """The YAML of a built-in task, as the editor first shows it ("" for an unknown name)."""
    path = TASKS_DIR / f"{name}.yaml"
    return path.read_text() if name in list_tasks() else ""


def task_reference(board: Board, name: str, text: str) -> str:
    """What to pass as `task`: the built-in name when the editor holds it unchanged, else the edited YAML.

    An edited task is saved as `.board/tasks/<name>.yaml` and validated; its errors name that file.
    """
    name = (name or "").strip() or "custom"
    if name in list_tasks() and text.strip() == builtin_task_text(name).strip():
        return name
    if not text.strip():
        raise InstructuneError("task YAML: empty; pick a built-in task or write one")
    path = board.work.board_dir("tasks") / f"{Path(name).stem}.yaml"
    path.write_text(text)
    try:
        load_task(path)
    except InstructuneError as error:
        raise InstructuneError(str(error).replace(str(path), board.work.show(path))) from None
    return str(path)


def check_task(board: Board, name: str, text: str) -> str:
    """One line on the task in the editor: what it is, or the validation error."""
    task = load_task(task_reference(board, name, text))
    return (f"task {task.name!r}: {task.kind}, metric {task.metric}, {len(task.templates)} templates, "
            f"fields {', '.join(task.fields)}")


def template_preview(board: Board, raw: str, name: str, text: str, rows: int = 20) -> str:
    """Markdown: each template rendered on the first of the first `rows` records it applies to."""
    path = board.work.path(raw, must_exist=True, what="data file")
    task = load_task(task_reference(board, name, text))
    records = load_records(path)
    records = records.select(range(min(int(rows or 20), len(records)))).to_list()
    examples = render_records(task, records, template="all", source=path)
    first: dict[int, dict] = {}
    for example in examples:
        first.setdefault(example["template"], example)
    parts = [f"**{task.name}** on `{board.work.show(path)}`: {len(task.templates)} templates, "
             f"{len(records)} rows read"]
    for index in range(len(task.templates)):
        example = first.get(index)
        if example is None:
            parts.append(f"#### template {index}\n_no row of the first {len(records)} fits its `when:` conditions_")
            continue
        parts.append(f"#### template {index}\n**prompt**\n```text\n{example['prompt']}\n```\n"
                     f"**completion**\n```text\n{example['completion']}\n```")
    return "\n\n".join(parts)


def write_task_jsonl(board: Board, raw: str, name: str, text: str, output: str, limit: Any, seed: Any,
                     template: str) -> str:
    """`instructune prepare RAW --task TASK -o OUTPUT`; returns its summary lines."""
    summary = prepare(
        board.work.path(output, what="output file"), data=board.work.path(raw, must_exist=True, what="data file"),
        task=task_reference(board, name, text), limit=whole_number_or_none(limit, "limit"),
        seed=whole_number_or_none(seed, "seed") or 0,
        template=parse_template_choice(str(template or "sample").strip()),
    )
    summary["output"] = board.work.show(summary["output"])
    return format_summary(summary)


def mixture_config(board: Board, table: pd.DataFrame, strategy: str, cap: Any, temperature: Any, total: Any,
                   seed: Any) -> MixtureConfig:
    """The mixture the table and the knobs describe, validated as a mixture YAML would be."""
    tasks, weights = [], {}
    for number, row, task, data in task_data_rows(board, table, MIX_COLUMNS, "mixture"):
        entry = {"task": task, "data": data}
        if whole_number_or_none(row.get("limit"), f"mixture row {number}: limit") is not None:
            entry["limit"] = whole_number_or_none(row.get("limit"), "limit")
        if str(row.get("weight") or "").strip():
            weights[Path(task).stem] = _number(row["weight"], f"mixture row {number}: weight")
        tasks.append(entry)
    raw = {"tasks": tasks, "strategy": strategy, "seed": whole_number_or_none(seed, "seed") or 0,
           "temperature": _number(temperature or 1.0, "temperature")}
    for key, value in (("cap", cap), ("total", total)):
        if whole_number_or_none(value, key) is not None:
            raw[key] = whole_number_or_none(value, key)
    if strategy == "weights":
        raw["weights"] = weights
    try:
        return MixtureConfig.model_validate(raw)
    except ValidationError as error:
        raise InstructuneError(validation_message(error, "mixture", key_label=None)) from None


def mixture_shares(config: MixtureConfig) -> pd.DataFrame:
    """The realised mixture: per task, examples available, taken, share and passes over the data."""
    _, report = build_mixture_examples(config)
    return pd.DataFrame([{"task": name, "available": info["available"], "examples": info["examples"],
                          "proportion": info["proportion"], "passes": info["passes"]}
                         for name, info in report.to_dict()["tasks"].items()])


def write_mixture(board: Board, config: MixtureConfig, output: str) -> str:
    """`instructune prepare --mixture ... -o OUTPUT`; returns its summary lines."""
    summary = prepare(board.work.path(output, what="output file"), mixture=config)
    summary["output"] = board.work.show(summary["output"])
    return format_summary(summary)


def quickstart_data(board: Board) -> dict[str, str]:
    """The quickstart's data step in the working folder: raw support splits and their instruction JSONL."""
    paths = build_support_instructions(board.work.root)
    return {split: board.work.show(path) for split, path in paths.items()}


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InstructuneError(f"{what}: {value!r} is not a number") from None


def build(board: Board) -> dict[str, Any]:
    """The tab's widgets and events; returns the widgets other tabs update (keyed by name)."""
    import gradio as gr

    first_task = QUICKSTART_TASKS[0]
    with gr.Row():
        raw = gr.Textbox(label="Raw data file (in the working folder)", placeholder="data/raw/train.jsonl",
                         elem_id="data-raw", scale=3)
        upload = gr.File(label="or upload one", file_types=[".jsonl", ".json", ".csv", ".parquet"],
                         elem_id="data-upload", scale=1, height=90)
        quick = gr.Button("Write the built-in quickstart data", elem_id="data-quickstart", scale=1)
    with gr.Row():
        with gr.Column(scale=1):
            task_name = gr.Dropdown(list_tasks(), value=first_task, label="Task", allow_custom_value=True,
                                    elem_id="data-task")
            task_text = gr.Code(builtin_task_text(first_task), language="yaml", label="Task YAML (editable)",
                                elem_id="data-task-yaml", lines=14, max_lines=30)
            check = gr.Button("Check task", elem_id="data-task-check", size="sm")
            task_status = gr.Markdown(elem_id="data-task-status")
        with gr.Column(scale=1):
            rows = gr.Number(20, label="Rows to look through", precision=0, minimum=1)
            preview_button = gr.Button("Preview templates on real rows", elem_id="data-preview-button")
            preview = gr.Markdown(elem_id="data-preview", max_height=520)
    with gr.Accordion("Write this task's instruction JSONL (instructune prepare)", open=False):
        with gr.Row():
            output = gr.Textbox("data/task.jsonl", label="Output .jsonl", elem_id="data-output")
            limit = gr.Textbox("", label="Limit (raw records)")
            seed = gr.Textbox("0", label="Seed")
            template = gr.Textbox("sample", label="Template: sample, all or an index")
        write_task = gr.Button("Write JSONL", elem_id="data-write")
    gr.Markdown("### Mixture")
    table = gr.Dataframe(pd.DataFrame(columns=MIX_COLUMNS), headers=MIX_COLUMNS, interactive=True,
                         label="Tasks to mix (task: built-in name or task YAML; limit and weight optional)",
                         elem_id="mix-table", column_count=4, datatype="str")
    with gr.Row():
        strategy = gr.Dropdown(list(STRATEGIES), value="proportional", label="Strategy", elem_id="mix-strategy")
        cap = gr.Textbox("", label="Cap per task")
        temperature = gr.Textbox("1.0", label="Temperature")
        total = gr.Textbox("", label="Total examples")
        mix_seed = gr.Textbox("0", label="Seed")
    build_mix = gr.Button("Build mixture", elem_id="mix-build")
    with gr.Row():
        # No initial frame: an empty one types its columns as numbers, and the chart then draws no bars.
        chart = gr.BarPlot(None, x="task", y="proportion",
                           label="Realised proportions", elem_id="mix-chart", y_lim=[0, 1])
        shares = gr.Dataframe(label="Mixture", elem_id="mix-shares", interactive=False)
    with gr.Row():
        mix_output = gr.Textbox("data/train.jsonl", label="Output .jsonl", elem_id="mix-output")
        write_mix = gr.Button("Write mixture JSONL", elem_id="mix-write")
    status = gr.Textbox(label="Status", elem_id="data-status", interactive=False, lines=3)

    @guarded(status)
    def on_upload(file):
        if not file:
            return {status: ""}
        target = board.work.board_dir("uploads") / Path(file).name
        target.write_bytes(Path(file).read_bytes())
        return {raw: board.work.show(target), status: f"uploaded to {board.work.show(target)}"}

    @guarded(status)
    def on_quick():
        paths = quickstart_data(board)
        rows_ = [[task, "data/raw/train.jsonl", "", ""] for task in QUICKSTART_TASKS]
        return {raw: "data/raw/train.jsonl", table: pd.DataFrame(rows_, columns=MIX_COLUMNS),
                status: "wrote the built-in support data: " + ", ".join(f"{k} {v}" for k, v in paths.items())
                + " (raw records in data/raw/)"}

    @guarded(task_status)
    def on_task(name):
        return {task_text: builtin_task_text(name) if name in list_tasks() else
                board.work.path(name, must_exist=True, what="task YAML").read_text(), task_status: ""}

    @guarded(task_status)
    def on_check(name, text):
        return {task_status: check_task(board, name, text)}

    @guarded(status)
    def on_preview(path, name, text, count):
        return {preview: template_preview(board, path, name, text, count), status: ""}

    @guarded(status)
    def on_write(path, name, text, out, lim, sd, tmpl):
        return {status: write_task_jsonl(board, path, name, text, out, lim, sd, tmpl)}

    knobs = [table, strategy, cap, temperature, total, mix_seed]

    @guarded(status)
    def on_build(*values):
        frame = mixture_shares(mixture_config(board, *values))
        return {chart: frame, shares: frame.round(4), status: f"mixture of {int(frame['examples'].sum())} examples"}

    @guarded(status)
    def on_write_mix(out, *values):
        return {status: write_mixture(board, mixture_config(board, *values), out)}

    upload.upload(on_upload, [upload], [raw, status])
    quick.click(on_quick, None, [raw, table, status])
    task_name.change(on_task, [task_name], [task_text, task_status])
    check.click(on_check, [task_name, task_text], [task_status])
    preview_button.click(on_preview, [raw, task_name, task_text, rows], [preview, status])
    write_task.click(on_write, [raw, task_name, task_text, output, limit, seed, template], [status])
    build_mix.click(on_build, knobs, [chart, shares, status])
    write_mix.click(on_write_mix, [mix_output, *knobs], [status])
    return {"quick": quick, "status": status}

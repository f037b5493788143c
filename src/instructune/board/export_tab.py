"""The Export tab: a finished LoRA run merged into a plain model folder, and a GGUF file if asked.

It calls the export API (export/merge.py's `export_merged`, export/gguf.py's `export_gguf`) with the
run's adapter and base, as `instructune export` does. Leaves out: merging and conversion themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructune.board.state import Board, guarded
from instructune.errors import InstructuneError
from instructune.export.gguf import GGUF_TYPES, export_gguf
from instructune.export.merge import export_merged

NO_GGUF = "no GGUF"


def gguf_types() -> list[str]:
    """The GGUF types `instructune export --gguf TYPE` takes."""
    return list(GGUF_TYPES)


def export_run(board: Board, run: str, output: str, gguf: str | None = None) -> str:
    """Export a finished run into `output` (inside the working folder); returns what was written."""
    if not (run or "").strip():
        raise InstructuneError("export: pick a finished run")
    model, adapter = board.run_model(run)
    if adapter is None:
        return f"{run} is a full fine-tune: {board.work.show(model)} is already a plain model folder"
    out = board.work.path(output, what="output folder")
    if gguf and gguf != NO_GGUF:
        export_gguf(out.with_name(f"{out.name}.{gguf}.gguf"), gguf, adapter=adapter, model=model)
    else:
        export_merged(adapter, out, model=model)
    written = [board.work.show(out)] + [board.work.show(path) for path in sorted(Path(out).rglob("*.gguf"))]
    written += [board.work.show(path) for path in sorted(out.parent.glob(f"{out.name}*.gguf"))]
    return "exported: " + ", ".join(dict.fromkeys(written))


def build(board: Board) -> dict[str, Any]:
    """The tab's widgets and events; returns the widgets other tabs update (keyed by name)."""
    import gradio as gr

    types = gguf_types()
    with gr.Row():
        run = gr.Dropdown(board.runs(finished=True), label="Finished run", allow_custom_value=True,
                          elem_id="export-run", scale=3)
        refresh = gr.Button("Refresh runs", size="sm", scale=1)
    with gr.Row():
        output = gr.Textbox("exported/model", label="Output folder (new, in the working folder)",
                            elem_id="export-output", scale=3)
        gguf = gr.Dropdown([NO_GGUF, *types], value=NO_GGUF, label="GGUF file too", elem_id="export-gguf",
                           visible=bool(types), scale=1)
    go = gr.Button("Export", variant="primary", elem_id="export-go")
    result = gr.Textbox(label="Result", elem_id="export-result", interactive=False)

    @guarded(result)
    def on_export(run_choice, out, gguf_type):
        return {result: export_run(board, run_choice, out, gguf_type)}

    def on_run(run_choice):
        return gr.update(value=f"exported/{Path(run_choice).name}") if run_choice else gr.update()

    refresh.click(lambda: gr.update(choices=board.runs(finished=True)), None, [run])
    run.change(on_run, [run], [output])
    go.click(on_export, [run, output, gguf], [result])
    return {"run": run}

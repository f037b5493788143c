"""`instructune board`: a local web page over the whole pipeline, one tab per stage (Gradio).

The page is a thin layer over the Python API: Data (data_tab.py), Train (train_tab.py), Evaluate
(eval_tab.py), Chat (chat_tab.py) and Export (export_tab.py). It listens on 127.0.0.1 unless told
otherwise, never makes a share link, sends no analytics, and keeps everything it writes (uploads,
Gradio's cache, evaluation files) inside the working folder it was started in. Long work runs in
Gradio's worker threads or, for training, in its own process, so the page stays responsive.
Leaves out: any pipeline logic; the API modules own it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from instructune.board import chat_tab, data_tab, eval_tab, export_tab, train_tab
from instructune.board.paths import BOARD_DIR
from instructune.board.state import Board
from instructune.errors import InstructuneError

TITLE = "instructune board"
_CSS = ".board-progress progress{height:14px} #data-preview pre{white-space:pre-wrap}"


def _quiet_environment(workdir: Path) -> None:
    """No analytics or version checks, and Gradio's uploads and cache inside the working folder.

    Must run before gradio is imported: it reads some of these at import time.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / BOARD_DIR / "gradio")
    (workdir / BOARD_DIR / "gradio").mkdir(parents=True, exist_ok=True)


def build_app(board: Board):
    """The page: a tab per stage, wired to `board`; returns the gradio Blocks (not launched)."""
    import gradio as gr

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\nWorking folder: `{board.work.root}`. Every path below is relative to it.")
        with gr.Tabs():
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                data = data_tab.build(board)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = train_tab.build(board)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate") as evaluate_tab:
                evaluate = eval_tab.build(board)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab_block:
                chat = chat_tab.build(board)
            with gr.Tab("Export", id="export", elem_id="tab-export") as export_tab_block:
                export = export_tab.build(board)

        def quickstart_everywhere():
            # After the built-in data is written, the other tabs point at it: a new user only clicks on.
            tasks = [[task, "data/raw/test.jsonl"] for task in data_tab.QUICKSTART_TASKS]
            import pandas as pd

            return {train["data.train"]: "data/train.jsonl", train["data.validation"]: "data/validation.jsonl",
                    evaluate["tasks"]: pd.DataFrame(tasks, columns=eval_tab.TASK_COLUMNS)}

        data["quick"].click(quickstart_everywhere, None,
                            [train["data.train"], train["data.validation"], evaluate["tasks"]])

        def newest_finished(current):
            # Opening a tab lists the runs finished since, and picks the newest when none is chosen.
            runs = board.runs(finished=True)
            newest = max(runs, key=lambda run: (board.work.root / run).stat().st_mtime, default=None)
            if isinstance(current, list):
                return gr.update(choices=runs, value=current or ([newest] if newest else []))
            return gr.update(choices=runs, value=current or newest)

        for tab, widget in ((evaluate_tab, evaluate["runs"]), (chat_tab_block, chat["run"]),
                            (export_tab_block, export["run"])):
            tab.select(newest_finished, [widget], [widget])
    return app


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune board",
        description="A local web page over the pipeline: data, training, evaluation, chat and export.",
        epilog="Needs the board extra: pip install 'instructune[board]'. Example: instructune board --port 7860",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--workdir", default=".",
                        help="working folder: every path in the page is inside it (default: the current folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Start the board and serve it until Ctrl-C."""
    args = make_parser().parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        raise InstructuneError(f"board: --port {args.port}; expected a port number from 1 to 65535")
    board = Board(args.workdir)
    _quiet_environment(board.work.root)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InstructuneError("board: gradio is not installed; pip install 'instructune[board]'") from None
    app = build_app(board)
    try:
        _, url, _ = app.launch(
            server_name=args.host, server_port=args.port, share=False, inbrowser=False, quiet=True,
            prevent_thread_lock=True, ssr_mode=False, show_error=True, allowed_paths=[str(board.work.root)],
            css=_CSS, footer_links=[],
        )
    except OSError as error:
        raise InstructuneError(f"board: cannot listen on {args.host}:{args.port or 'any free port'}: "
                               f"{str(error).splitlines()[0]}") from None
    print(f"instructune board: {url} (working folder {board.work.root}); Ctrl-C stops it", flush=True)
    app.block_thread()
    return 0

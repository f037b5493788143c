"""What the board's tabs share: the working folder, the training process, loaded models, error display.

Bad input in the page is shown as the CLI shows it: one line, `error: <message>`, in the tab's
status box (`guarded`). Models loaded for chat are kept (a few) so each message does not reload them.
Leaves out: the tabs' widgets and handlers (data_tab.py ... export_tab.py).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from instructune.board.paths import Workdir
from instructune.board.process import TrainingProcess
from instructune.train.checkpoint import run_weights
from instructune.errors import InstructuneError
from instructune.models import BUILTIN_MODELS, load_model

logger = logging.getLogger("instructune.board")
_MODELS_KEPT = 3  # base + tuned for chat, and one more, in memory at once


class Board:
    """The state behind one board: shared by every browser tab that opens it.

    Args:
        workdir: the working folder; every path typed in the page stays inside it.
    """

    def __init__(self, workdir: str) -> None:
        self.work = Workdir(workdir)
        self.training = TrainingProcess(self.work.root, self.work.board_dir("logs"))
        self._models: OrderedDict[tuple[str | None, str | None], tuple[Any, Any]] = OrderedDict()
        self._models_lock = threading.Lock()

    def runs(self, *, finished: bool = False) -> list[str]:
        """Run folders in the working folder (any folder holding a config.yaml and metrics or weights)."""
        found = []
        for config in self.work.files("config.yaml"):
            folder = config.parent
            if not ((folder / "metrics.jsonl").exists() or (folder / "checkpoints").exists()):
                continue
            if finished and not ((folder / "adapter").is_dir() or (folder / "model").is_dir()):
                continue
            found.append(self.work.show(folder))
        return sorted(found)

    def model_path(self, text: str | None) -> str | None:
        """A model typed in the page: a built-in name (gemma3-270m), a folder inside the working folder, or
        None for the default model."""
        text = (text or "").strip()
        if not text or text == "default":
            return None
        if text in BUILTIN_MODELS:
            return text
        return str(self.work.path(text, must_exist=True, what="model folder"))

    def run_model(self, run: str) -> tuple[str | None, str | None]:
        """(model folder, adapter folder) of a finished run folder inside the working folder."""
        model, adapter = run_weights(self.work.path(run, must_exist=True, what="run folder"))
        # A relative model.name was relative to the working folder, where the run was started; a built-in
        # name (gemma3-270m) stays a name.
        if model and model not in BUILTIN_MODELS and not Path(model).is_absolute():
            model = str(self.work.root / model)
        return model, adapter

    def load_model(self, model: str | None, adapter: str | None = None) -> tuple[Any, Any]:
        """Load (or reuse) a model and tokenizer; the oldest of more than a few is dropped."""
        key = (model, adapter)
        with self._models_lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = load_model(model, adapter)
            self._models[key] = loaded
            while len(self._models) > _MODELS_KEPT:
                self._models.popitem(last=False)
            return loaded


def error_line(error: BaseException) -> str:
    """The page's form of an error: the CLI's one line for bad input, the exception's first line otherwise."""
    if isinstance(error, InstructuneError):
        return f"error: {error}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"error: {type(error).__name__}: {first}" if first else f"error: {type(error).__name__}"


def guarded(status: Any) -> Callable:
    """Decorate a handler that returns (or yields) {component: value}: errors go to `status` as one line.

    Works for plain handlers and generators (streamed output); the page never shows a traceback.
    """

    def decorate(handler: Callable) -> Callable:
        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def stream(*args, **kwargs):
                try:
                    yield from handler(*args, **kwargs)
                except Exception as error:  # shown in the page; the traceback goes to the board's log
                    if not isinstance(error, InstructuneError):
                        logger.exception("board handler failed")
                    yield {status: error_line(error)}
            return stream

        @functools.wraps(handler)
        def call(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as error:
                if not isinstance(error, InstructuneError):
                    logger.exception("board handler failed")
                return {status: error_line(error)}
        return call

    return decorate

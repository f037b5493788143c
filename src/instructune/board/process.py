"""The training run the board starts: `instructune train` as its own process, stopped with SIGTERM.

The page never trains in its own process: it runs `python -m instructune.cli train CONFIG key=value
...` in the working folder, the same command a terminal would, with its output in a log file. Stop
sends SIGTERM, which the trainer turns into "save a checkpoint and exit" (train/trainer.py); resume is the
same command with `--resume`. Leaves out: reading the run's metrics (metrics.py) and the widgets.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import instructune
from instructune.errors import EXIT_BAD_INPUT, InstructuneError

_LOG_TAIL_BYTES = 20_000


class TrainingProcess:
    """At most one `instructune train` process at a time, and what became of the last one.

    Args:
        workdir: the working folder: the process runs there, so relative config paths mean the same
            as in a terminal opened there.
        log_dir: where each run's output goes, as `<run_name>.log`.
    """

    def __init__(self, workdir: Path, log_dir: Path) -> None:
        self.workdir, self.log_dir = Path(workdir), Path(log_dir)
        self.process: subprocess.Popen | None = None
        self.command: list[str] = []
        self.run_dir: Path | None = None
        self.log_path: Path | None = None
        self._lock = threading.Lock()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, config: str | None, overrides: list[str], run_dir: Path, *, resume: bool = False,
              overwrite: bool = False) -> list[str]:
        """Start `instructune train`; returns the command as a list.

        Raises:
            InstructuneError: a run is already going.
        """
        with self._lock:
            if self.running():
                raise InstructuneError(f"a training run is already going ({self.run_dir.name}); stop it first")
            command = [sys.executable, "-m", "instructune.cli", "train", *([config] if config else []), *overrides]
            command += ["--resume"] if resume else []
            command += ["--overwrite"] if overwrite else []
            self.log_path = self.log_dir / f"{run_dir.name}.log"
            env = dict(os.environ)
            # The child imports the same instructune as the board, wherever the board was started from.
            source = str(Path(instructune.__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            with open(self.log_path, "w") as log:
                log.write("$ " + shlex.join(["instructune", *command[3:]]) + "\n")
                log.flush()
                self.process = subprocess.Popen(command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env)
            self.command, self.run_dir = command, run_dir
            return command

    def stop(self) -> bool:
        """Ask the run to save a checkpoint and exit (SIGTERM); False when nothing runs."""
        if not self.running():
            return False
        self.process.send_signal(signal.SIGTERM)
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to end; its exit code (None when there is no process)."""
        return None if self.process is None else self.process.wait(timeout)

    def log_tail(self, max_lines: int = 30) -> str:
        """The last lines of the run's output, progress-bar redraws folded to their last state."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(max(0, self.log_path.stat().st_size - _LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
        lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
        return "\n".join([line for line in lines if line.strip()][-max_lines:])

    def state(self) -> str:
        """One line: running, finished, stopped, or the error line the command printed."""
        if self.process is None:
            return "no run started from this page"
        code = self.process.poll()
        name = self.run_dir.name if self.run_dir else "run"
        if code is None:
            return f"{name}: running (pid {self.process.pid})"
        if code == 0:
            return f"{name}: finished"
        if code == EXIT_BAD_INPUT:
            errors = [line for line in self.log_tail(200).splitlines() if ": error: " in line]
            return errors[-1] if errors else f"{name}: bad input (exit code 2)"
        if code in (130, -signal.SIGTERM, -signal.SIGINT):
            return f"{name}: stopped; resume continues from its last checkpoint"
        return f"{name}: failed with exit code {code}; see the log below"

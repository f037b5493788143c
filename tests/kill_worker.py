"""Worker for the kill test of test_train.py: `instructune train` launched again and again, each launch
SIGKILLed at one chosen moment and the next one resuming, until a launch runs to the end.

The imports are paid once: each launch is a child forked from this process, so a handful of kills cost
seconds, not a fresh interpreter each. KILL_SCHEDULE lists the moments, `kind:n` each, comma-separated;
a launch dies at the n-th event of that kind: `step` (start of an optimizer step), `metrics` (half of a
metrics line written, then killed), or, inside a checkpoint save, `torch.save`, `fsync`, `replace` (a
rename) and `rmtree`. The last line printed is the JSON list of [kill moment, exit status] per launch.
"""

import json
import os
import shutil
import signal
import sys
import traceback

import torch

from instructune.train import runlog
from instructune.train import trainer as train

# What a launch would otherwise import lazily, in every child again (peft alone takes seconds).
import matplotlib.pyplot  # noqa: E402,F401  (the loss plot)
import peft  # noqa: E402,F401
import torch.utils.tensorboard  # noqa: E402,F401
from instructune import models  # noqa: E402,F401
from transformers.models.llama import modeling_llama  # noqa: E402,F401


def instrument(kind: str, nth: int) -> None:
    """Make this process SIGKILL itself at the nth event of `kind`."""
    seen = {}

    def tick(event: str) -> bool:
        seen[event] = seen.get(event, 0) + 1
        return event == kind and seen[event] == nth

    def kill_before(owner, name: str, event: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if tick(event):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    log = runlog.MetricsLog.log

    def torn_log(self, record):
        if tick("metrics"):
            line = json.dumps(record) + "\n"
            with self.path.open("a") as handle:
                handle.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return log(self, record)

    runlog.MetricsLog.log = torn_log
    kill_before(train.Trainer, "_optimizer_step", "step")
    kill_before(torch, "save", "torch.save")
    kill_before(os, "fsync", "fsync")
    kill_before(os, "replace", "replace")
    kill_before(shutil, "rmtree", "rmtree")


def launch(argv: list[str], kill_at: str | None) -> int:
    """Run `instructune train argv` in a forked child; its exit status (-9 when killed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if kill_at:
                kind, _, nth = kill_at.partition(":")
                instrument(kind, int(nth))
            code = train.main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    torch.set_num_threads(1)
    schedule = [k for k in os.environ.get("KILL_SCHEDULE", "").split(",") if k]
    results, resume = [], []
    for kill_at in [*schedule, None]:
        status = launch(sys.argv[1:] + resume, kill_at)
        results.append([kill_at, status])
        if status != -signal.SIGKILL:
            break
        resume = ["--resume"]
    print(json.dumps(results))

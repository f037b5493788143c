"""tcmalloc under the heavy commands (train, eval, quickstart) when the machine has it.

glibc's malloc returns every tensor larger than 32 MiB to the kernel when it is freed, so each
micro-batch page-faults its big buffers in again: the tied embedding's 113 MB gradient, the LM head's
gradient and casts, the activations. On a 2-core CPU that was ~10% of a training step, and glibc's
heap kept freed activations resident on top of the live ones. tcmalloc keeps freed memory for reuse:
~1.2x the eager training step's tokens/s and ~0.75 GB less peak memory on SmolLM2-135M, ~1.8x for
TRL's step (bench/RESULTS.md).
It is the allocator PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`) and Intel's tuning
guide preload; numbers are unchanged, only where the bytes live.

An allocator must be in place before the process starts, so the CLI re-executes itself once with
`LD_PRELOAD` set. Which commands want it is said in one place, the CLI's COMMANDS table
(cli/__init__.py): `train` and `quickstart` always, `eval` unless OpenVINO may decode (it aborts beside
a preloaded tcmalloc; generation/openvino_engine.py). Nothing happens when the library is missing
(Debian: `libtcmalloc-minimal4`, which `make install` adds where apt is available), when
`INSTRUCTUNE_ALLOCATOR=system`, off Linux, or when instructune runs inside another program (a notebook
keeps the allocator it started with). Generation reads the allocator it runs beside from the process
(`generation.engines.Where.here`) and says on stderr when that keeps an engine out.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

from instructune.generation.engines import preloaded_allocator

ENV = "INSTRUCTUNE_ALLOCATOR"


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library the dynamic loader would load, or None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def reexec_with_tcmalloc() -> None:
    """Replace this process by the same command under tcmalloc, once; return when that does not apply."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV):
        return  # set: already re-executed ("tcmalloc"), or the user chose ("system")
    preload = os.environ.get("LD_PRELOAD", "")
    if preloaded_allocator():  # the user preloads an allocator of their own (jemalloc, tcmalloc)
        return
    library = find_tcmalloc()
    if library is None:
        return
    env = dict(os.environ, **{ENV: "tcmalloc", "LD_PRELOAD": f"{library} {preload}".strip()})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # could not re-execute: go on with glibc's allocator

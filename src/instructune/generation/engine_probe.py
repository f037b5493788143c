"""Native engines tried in a child process first, so that a crash of theirs cannot end the command.

OpenVINO (openvino_engine.py) compiles and runs the model in C++: a bug there is a fatal signal
(SIGFPE, SIGSEGV, SIGABRT), not an exception, and it ends the whole Python process with every answer
and score of the run. So before a process loads such an engine in a configuration this machine has not
proven, `probe` runs the engine's own probe command (load the exported model, generate two tokens) in
a child process and waits. A child that dies by a signal or exits with an error gives a verdict, one
line such as "crashed with SIGFPE", and the caller falls back to the next engine (generate.py) or, when
that engine was asked for by name, raises it.

Verdicts are kept per machine in `cache_dir()/engine-probes.json`, keyed by what steers the engine's
native code onto another path: the model's shape, the compute type, the thread count, the engine's
version and the CPU flags that pick kernels (AMX, AVX-512 BF16/FP16), so a configuration pays its probe
once per machine: a child that starts Python and OpenVINO (~0.4 s), compiles and runs two tokens, 0.5-1 s
in all for the tests' tiny model, 2.5-3.3 s for SmolLM2-135M on a 2-core Xeon (openvino_engine.py).
The file is replaced in one rename, never half-written; two processes probing at once may each write
it, and a verdict lost that way only costs one more probe. Only what the child's own code did is kept:
a child killed from outside (SIGKILL from the kernel's out-of-memory killer, SIGTERM, Ctrl-C) or past
`TIMEOUT_S` decides nothing on disk, and only this process falls back. Delete the file to probe again.

What this file leaves out: what a probe runs and which configurations are refused without one (each
engine's module), and which engine comes next (generate.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError
from instructune.fileio.atomic import write_text_atomic
from instructune.models import cache_dir

PROBES_FILE = "engine-probes.json"
# CPU features that choose which kernels a native engine compiles (oneDNN's AMX and AVX-512 paths).
CPU_FLAGS = ("amx_bf16", "amx_fp16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni",
             "avx512f", "avx_vnni", "avx2")
# Seconds before a probe counts as hung: SmolLM2-135M's takes ~3; a larger model compiles for longer.
TIMEOUT_S = 900
# Signals that come from outside the child (memory pressure, a kill, Ctrl-C): not the engine's verdict.
_EXTERNAL = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

# Verdicts this process has reached, by (file, key): they hold even when the file cannot be written.
_SEEN: dict[tuple[str, str], dict[str, Any]] = {}


def cpu_flags() -> list[str]:
    """The flags of `CPU_FLAGS` this CPU has (Linux's /proc/cpuinfo), sorted; [] where it cannot tell.

    Example:
        >>> cpu_flags()  # a Xeon with AMX
        ['amx_bf16', 'amx_int8', 'amx_tile', 'avx2', 'avx512_bf16', 'avx512_fp16', 'avx512_vnni', 'avx512f', 'avx_vnni']
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(set(flags) & set(CPU_FLAGS))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def probes_path() -> Path:
    """The verdict file: `cache_dir()/engine-probes.json`."""
    return cache_dir() / PROBES_FILE


def machine_key(**fields: Any) -> dict[str, Any]:
    """`fields` (engine, version, model shape, compute type, threads) plus this machine's CPU: a probe's key.

    The CPU is its architecture, its `cpu_flags` and the cap oneDNN puts on them (ONEDNN_MAX_CPU_ISA,
    e.g. AVX512_CORE_BF16 keeps AMX kernels out).

    Example:
        >>> machine_key(engine="openvino", compute_type="bfloat16")["cpu_flags"][:2]
        ['amx_bf16', 'amx_int8']
    """
    return {**fields, "machine": platform.machine(), "cpu_flags": cpu_flags(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def known_failure(key: dict[str, Any]) -> str | None:
    """The kept reason why the probe of `key` failed on this machine, or None (it passed, or never ran)."""
    record = _recall(key)
    return None if record is None or record["ok"] else record["outcome"]


def probe(key: dict[str, Any], command: list[str], *, timeout_s: float = TIMEOUT_S) -> str | None:
    """Run `command` in a child process unless `key` already has a verdict; the failure, or None.

    Args:
        key: what the verdict depends on (`machine_key`); JSON-serialisable.
        command: the child's argv, e.g. [sys.executable, "-c", script, folder]: exit code 0 = passed.
        timeout_s: the child is killed past this many seconds (a verdict for this process only).

    Returns:
        None when the engine ran (now or in an earlier probe), else a few words: "crashed with SIGFPE",
        "failed (exit 1: RuntimeError: ...)", "was killed by SIGKILL (...)" or "hung for 900 s (...)".

    Example:
        >>> probe(key, [sys.executable, "-c", "import os; os.abort()"])
        'crashed with SIGABRT'
    """
    record = _recall(key)
    if record is not None:
        return None if record["ok"] else record["outcome"]
    started = time.perf_counter()
    try:
        child = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                               timeout=timeout_s)
    except subprocess.TimeoutExpired:
        outcome, keep = f"hung for {timeout_s:g} s (not kept: this process only)", False
    else:
        outcome, keep = _outcome(child.returncode, child.stderr)
    record = {"ok": outcome is None, "outcome": outcome, "seconds": round(time.perf_counter() - started, 2),
              "probed": time.strftime("%Y-%m-%dT%H:%M:%S"), "key": key}
    _SEEN[(str(probes_path()), _digest(key))] = record
    if keep:
        _keep(key, record)
    return outcome


def _outcome(returncode: int, stderr: str) -> tuple[str | None, bool]:
    """(None or the failure in a few words, whether it is the engine's own verdict) for a finished child."""
    if returncode == 0:
        return None, True
    if returncode < 0:
        try:
            number = signal.Signals(-returncode)
        except ValueError:
            return f"crashed with signal {-returncode}", True
        if number in _EXTERNAL:
            return f"was killed by {number.name} (from outside the engine: not kept, this process only)", False
        return f"crashed with {number.name}", True
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no message")
    return f"failed (exit {returncode}: {last[:200]})", True


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _recall(key: dict[str, Any]) -> dict[str, Any] | None:
    path = probes_path()
    seen = _SEEN.get((str(path), _digest(key)))
    return seen if seen is not None else _read(path).get(_digest(key))


def _read(path: Path) -> dict[str, Any]:
    """The verdicts in `path`; {} when it is missing or unreadable (then every configuration probes again)."""
    try:
        verdicts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def _keep(key: dict[str, Any], record: dict[str, Any]) -> None:
    """Add `record` to the verdict file, replacing it in one rename; a cache that cannot be written is skipped."""
    path = probes_path()
    try:
        write_text_atomic(path, json.dumps({**_read(path), _digest(key): record}, indent=1, sort_keys=True),
                          what="the engine probe's verdict")
    except InstructuneError as error:
        print(f"instructune: could not keep the engine probe's verdict ({error}); it holds for this process only",
              file=sys.stderr)

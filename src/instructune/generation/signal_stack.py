"""This thread's alternate signal stack, kept across a native library's set-up (openvino_engine.py's pipeline).

Python installs its signal handlers to run on the thread's alternate signal stack when there is one
(SA_ONSTACK). A native library that swaps in a stack of its own and later unmaps it without putting
the old one back leaves the next handled signal (Ctrl-C, SIGTERM) no place to run: the process dies
with SIGSEGV inside kill(). OpenVINO 2026.4's CPU plugin does so when released from another thread
(openvino_engine.py's docstring). `signal_stack_kept` puts the previous stack back after the block.

Example:
    >>> with signal_stack_kept():
    ...     engine = openvino_genai.ContinuousBatchingPipeline(folder, scheduler, "CPU", properties)
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager
from typing import Any


@contextmanager
def signal_stack_kept():
    """Keep this thread's alternate signal stack across the block, whatever a native library sets.

    The stack there before is put back when it serves at least as well as the library's: none at all
    (handlers then run on the thread's own stack), or one as large. A smaller one (AMX frames might not
    fit it) is replaced by one of this module's, kept for the life of the process. Linux only.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    before = _sigaltstack()
    try:
        yield
    finally:
        now = _sigaltstack()
        if now is not None and before is not None and now.ss_sp != before.ss_sp:
            if before.ss_flags & _SS_DISABLE or before.ss_size >= now.ss_size:
                _sigaltstack(before)
            else:
                _OWN_SIGNAL_STACKS.append(ctypes.create_string_buffer(now.ss_size))
                _sigaltstack(_StackT(ctypes.addressof(_OWN_SIGNAL_STACKS[-1]), 0, now.ss_size))


_SS_DISABLE = 2
_OWN_SIGNAL_STACKS: list[Any] = []  # never freed: the kernel may write a signal frame there at any time


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack(new: _StackT | None = None) -> _StackT | None:
    """sigaltstack(2) for this thread: set `new` when given; returns the stack before (None if the call failed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    old = _StackT()
    if libc.sigaltstack(ctypes.byref(new) if new is not None else None, ctypes.byref(old)) != 0:
        return None
    return old

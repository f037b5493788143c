"""User-facing errors: one clear line and exit code 2, never a bare traceback.

Every stage raises `InstructuneError` for bad input (a missing file, a malformed row, an unknown
config key, an empty dataset); the CLI prints its message and exits with `EXIT_BAD_INPUT`.
"""

EXIT_BAD_INPUT = 2


class InstructuneError(Exception):
    """Bad input the user can fix. The message is one line: where (file:line or key) and what was expected."""


class UnreadableFile(InstructuneError):
    """A weights, state or config file that cannot be read: truncated, corrupt, or not the format its name says."""


class OutOfMemory(InstructuneError):
    """An allocation failed (training, scoring); the message names the step or batch shape and the settings to lower."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a failed allocation: torch's (CUDA, MPS, XPU, the CPU allocator) or Python's.

    Example:
        >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 53687091200 bytes."))
        True
    """
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)

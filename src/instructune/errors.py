"""User-facing errors: one clear line and exit code 2, never a bare traceback.

Every stage raises `InstructuneError` for bad input (a missing file, a malformed row, an unknown
config key, an empty dataset); the CLI prints its message and exits with `EXIT_BAD_INPUT`.
"""

EXIT_BAD_INPUT = 2


class InstructuneError(Exception):
    """Bad input the user can fix. The message is one line: where (file:line or key) and what was expected."""

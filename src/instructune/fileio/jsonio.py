"""JSON and JSON Lines read the one way every stage wants: a file that is not what its name says is one line
naming it (file:line, and the byte offset of bytes that are not UTF-8)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

from instructune.errors import InstructuneError, UnreadableFile


def read_json_object(path: str | Path) -> dict:
    """A JSON object read from `path`; anything else is one line naming the file (and line and column).

    Example:
        >>> read_json_object(Path("adapter/adapter_config.json"))
        Traceback (most recent call last):
        instructune.errors.UnreadableFile: adapter/adapter_config.json:3: not valid JSON (Expecting ',' delimiter, column 5)
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except json.JSONDecodeError as error:
        raise UnreadableFile(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from None
    except UnicodeDecodeError as error:
        raise UnreadableFile(f"{path}: not UTF-8 text (byte offset {error.start}); expected JSON") from None
    except OSError as error:
        raise UnreadableFile(f"{path}: cannot read it ({error.strerror or error})") from None
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_jsonl(path: str | Path, *, torn_tail: str = "error") -> list[dict]:
    """Parse a JSON Lines file, one object per non-blank line: the one JSONL reader (data, metrics, predictions).

    Args:
        path: the `.jsonl` file.
        torn_tail: "error", or "skip" to pass over (with a warning) a last line that is not JSON: a file
            cut by a kill mid-write, or one a live reader (the board) catches mid-write.

    Returns:
        The records, in file order.

    Raises:
        InstructuneError: `path:LINE: not valid JSON (...)`, `path:LINE: expected a JSON object` or
            `path:LINE: not UTF-8 text (...)`.

    Example:
        >>> read_jsonl("../shared/data/piqa/validation.jsonl")[0]["label"]
        0
    """
    lines = [(number, line) for number, line in decoded_lines(path) if line.strip()]
    rows = []
    for index, (line_number, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if torn_tail == "skip" and index == len(lines) - 1:
                warnings.warn(f"{path}:{line_number}: skipping a half-written last line (cut by a kill, or still "
                              "being written)", stacklevel=2)
                break
            raise InstructuneError(f"{path}:{line_number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise InstructuneError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def decoded_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file; a byte that is not UTF-8 is a one-line error.

    Decoding line by line (instead of letting `open` decode) is what lets the error name the line and
    the byte offset in the file; a byte-order mark on the first line is dropped.
    """
    offset = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InstructuneError(
                    f"{path}:{line_number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at byte offset "
                    f"{offset + error.start}); save the file as UTF-8"
                ) from None
            offset += len(raw)

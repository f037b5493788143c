"""JSON files read the one way every stage wants: a file that is not what its name says is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

from instructune.errors import UnreadableFile


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

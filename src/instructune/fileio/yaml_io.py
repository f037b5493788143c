"""Read a YAML file into a mapping, and turn a pydantic validation error into one line naming the key.

The run config (config.py), mixtures (data/prepare.py) and task files (data/templates.py) all read YAML
this way, so a missing file, broken YAML (with file:line) or a list where a mapping belongs reads the
same everywhere.

Leaves out: the models being validated and any key=value overrides (each caller's own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from instructune.errors import InstructuneError


def read_yaml_mapping(path: str | Path, expected: str, *, kind: str = "file", empty_ok: bool = False) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping.

    Args:
        path: the file.
        expected: what the top level should be, for the error, e.g. "a mapping with a `tasks:` list".
        kind: what the file is, for the not-found error, e.g. "mixture file".
        empty_ok: an empty file is an empty mapping (else it is an error like any non-mapping).

    Returns:
        The parsed mapping.

    Raises:
        InstructuneError: one line, `{path}: {kind} not found`, `{path}:{line}: not valid YAML (...)`
            or `{path}: expected {expected}`.

    Example:
        >>> read_yaml_mapping("src/instructune/data/tasks/piqa.yaml", "a task mapping")["kind"]
        'multiple_choice'
    """
    path = Path(path)
    if not path.is_file():
        raise InstructuneError(f"{path}: {kind} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise InstructuneError(f"{where}: not valid YAML ({problem})") from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise InstructuneError(f"{path}: expected {expected}")
    return data


def validation_message(error: ValidationError, source: str, *, key_label: str | None = "key") -> str:
    """One line for the first error of a pydantic validation: where it came from, the dotted key, what is wrong.

    Args:
        error: the validation error.
        source: where the data came from (a file path, or "config").
        key_label: how to name the key: "unknown {key_label} 'a.b'" / "{key_label} 'a.b': msg";
            None writes the bare dotted key first: "a.b: unknown key" / "a.b: msg".

    Returns:
        The message; pydantic's "Value error, " prefix on validator messages is dropped.

    Example:
        >>> validation_message(error, "run.yaml", key_label="config key")
        "run.yaml: unknown config key 'train.lrr'"
        >>> validation_message(error, "mix.yaml", key_label=None)
        'mix.yaml: tasks.1.limt: unknown key'
    """
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    unknown = first["type"] == "extra_forbidden"
    problem = first["msg"].removeprefix("Value error, ")
    if key_label is None:
        return f"{source}: {key + ': ' if key else ''}{'unknown key' if unknown else problem}"
    key = key or "(top level)"
    if unknown:
        return f"{source}: unknown {key_label} '{key}'"
    return f"{source}: {key_label} '{key}': {problem}"

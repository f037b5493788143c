"""The Train tab's form, read off the run config model: one widget per key, values <-> overrides.

`config_fields()` (config.py) is the only source of keys, defaults and descriptions, so the form
cannot drift from `instructune train --help`. A key with a fixed set of values becomes a dropdown,
a plain boolean a checkbox, and every other key a text box holding a YAML scalar, exactly what
`key=value` takes on the command line. Also the page's other typed values every tab reads the same
way: (task, data) tables and whole numbers. Leaves out: the widgets themselves (the tabs).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import yaml

from instructune.board.state import Board
from instructune.config import RunConfig, config_fields
from instructune.errors import InstructuneError


def form_fields() -> list[dict[str, Any]]:
    """The config keys with the widget each gets: "checkbox", "dropdown" or "text".

    Example:
        >>> [(f["key"], f["widget"]) for f in form_fields()][:2]
        [('run_name', 'text'), ('output_dir', 'text')]
    """
    fields = []
    for field in config_fields():
        widget = "dropdown" if field["choices"] else "checkbox" if field["annotation"] == "bool" else "text"
        fields.append({**field, "widget": widget, "section": field["key"].split(".")[0] if "." in field["key"] else ""})
    return fields


def yaml_text(value: Any) -> str:
    """A value as it is written after `key=` on the command line: 0.0002, null, true, [q_proj, v_proj].

    Example:
        >>> yaml_text(None), yaml_text(2e-4), yaml_text(["q_proj", "v_proj"])
        ('null', '0.0002', '[q_proj, v_proj]')
    """
    if value is None:
        return "null"
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def _flatten(config: RunConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.model_dump().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            flat[key] = value
    return flat


def form_values(config: RunConfig, fields: list[dict[str, Any]]) -> list[Any]:
    """The value each widget shows for `config`: bools for checkboxes, text for the rest.

    Example:
        >>> form_values(RunConfig(), form_fields())[:2]
        ['run', 'runs']
    """
    flat = _flatten(config)
    return [flat[f["key"]] if f["widget"] == "checkbox" else yaml_text(flat[f["key"]]) for f in fields]


def form_overrides(fields: list[dict[str, Any]], values: list[Any], base: RunConfig) -> list[str]:
    """`key=value` overrides for the widgets whose value differs from the base config.

    Args:
        fields: `form_fields()`.
        values: the widgets' values, in the same order.
        base: the config the form was filled from (the chosen YAML, or the defaults).

    Returns:
        Overrides for `instructune train CONFIG key=value ...`, in form order.

    Example:
        >>> fields = form_fields()
        >>> values = form_values(RunConfig(), fields)
        >>> values[[f["key"] for f in fields].index("train.lr")] = "1e-4"
        >>> form_overrides(fields, values, RunConfig())
        ['train.lr=1e-4']
    """
    current = form_values(base, fields)
    overrides = []
    for field, value, was in zip(fields, values, current):
        text = yaml_text(bool(value)) if field["widget"] == "checkbox" else str(value if value is not None else "").strip()
        if text != (yaml_text(was) if field["widget"] == "checkbox" else was):
            overrides.append(f"{field['key']}={text}")
    return overrides


def task_data_rows(board: Board, table: Any, columns: list[str], where: str) -> list[tuple[int, dict, str, str]]:
    """The filled rows of a (task, data, ...) table: (row number, row, task reference, data path).

    Empty rows are skipped; a task YAML and the data must lie in the working folder.
    """
    if table is None:
        rows = []
    elif isinstance(table, pd.DataFrame):
        rows = table.to_dict("records")
    else:
        rows = [dict(zip(columns, row)) for row in table]
    filled = []
    for number, row in enumerate(rows, start=1):
        task, data = str(row.get("task") or "").strip(), str(row.get("data") or "").strip()
        if not task and not data:
            continue
        if not task or not data:
            raise InstructuneError(f"{where} row {number}: give both a task and a data file")
        if task.endswith((".yaml", ".yml")):
            task = str(board.work.path(task, must_exist=True, what="task YAML"))
        filled.append((number, row, task, str(board.work.path(data, must_exist=True, what="data file"))))
    return filled


def whole_number_or_none(value: Any, what: str) -> int | None:
    """A number typed in the page: None when blank, else a whole number or a one-line error naming `what`."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise InstructuneError(f"{what}: {value!r} is not a whole number") from None
    if number != int(number):
        raise InstructuneError(f"{what}: {value!r} is not a whole number")
    return int(number)

"""Define FLAN-style tasks: named fields, (input, target) templates, options, loaded from YAML and validated.

A `Task` names its fields, maps raw column names onto them, lists its templates and (for multiple
choice or fixed-label classification) where its options and gold label live. Tasks are written in
YAML (the built-in ones live in `tasks/`) and validated when loaded: an unknown placeholder, an
empty target or a duplicated template is an error naming the task and template index.

Leaves out: rendering records with a task (render.py), reading data files (sources.py), mixing tasks
(mixture.py), tokenization and chat templates (tokenize.py).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from instructune.errors import InstructuneError
from instructune.fileio.yaml_io import read_yaml_mapping, validation_message

KINDS = ("generation", "multiple_choice", "classification")
METRICS = ("rouge", "exact_match", "accuracy")
OPTION_STYLES = ("dash", "letters", "numbers")
# How `instructune eval` scores a task: "instruct" = the prompt as training renders it (chat template,
# options listed, option after a newline); "lm-eval" = lm-evaluation-harness 0.4's plain-text rules.
EVAL_MODES = ("instruct", "lm-eval")
# Named text clean-ups a task may apply to its rendered prompt and options (render.py holds them).
PREPROCESSORS = ("hellaswag",)
SPECIAL_PLACEHOLDERS = ("options_", "answer")
TASKS_DIR = Path(__file__).parent / "tasks"


@dataclass(frozen=True)
class Template:
    """One (input, target) pair of format strings, e.g. ("Summarize:\\n\\n{dialogue}", "{summary}").

    Args:
        input: the prompt format string; `{field}` placeholders, `{options_}`, `{answer}`.
        target: the completion format string.
        show_options: render `{options_}` (False: drop it and its line break, for a no-options variant).
        when: conditions for this template to be chosen by "sample" / "all": field -> "empty",
            "nonempty" or a list of allowed values (e.g. Alpaca templates with and without an input).
    """

    input: str
    target: str
    show_options: bool = True
    when: Mapping[str, Any] = field(default_factory=dict)

    def placeholders(self) -> set[str]:
        """The placeholder names used in input and target."""
        return _placeholders(self.input) | _placeholders(self.target)

    def applies_to(self, values: Mapping[str, Any]) -> bool:
        """Whether the `when` conditions hold for these field values (a missing field counts as empty)."""
        for name, condition in self.when.items():
            value = values.get(name)
            if condition == "empty":
                if value not in (None, ""):
                    return False
            elif condition == "nonempty":
                if value in (None, ""):
                    return False
            elif value not in condition:
                return False
        return True


@dataclass(frozen=True)
class Options:
    """Where a record's options and gold label live (exactly one of field / fields / choices).

    Args:
        field: a list-valued field holding the options (HellaSwag's endings).
        fields: one field per option (PIQA's sol1, sol2).
        choices: fixed option texts shared by every record (["no", "yes"]).
        label: the field with the gold option: its index, a bool (False=0, True=1) or its text.
        style: "dash" (`- a`), "letters" (`(A) a`) or "numbers" (`1. a`).
        header: the line above the options.
    """

    field: str | None = None
    fields: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    label: str = "label"
    style: str = "dash"
    header: str = "OPTIONS:"


@dataclass
class Task:
    """A named set of templates over declared fields; validated on construction.

    Args:
        name: the task name written into every example.
        kind: "generation", "multiple_choice" or "classification".
        fields: the field names templates may use.
        templates: the templates, in index order.
        metric: "rouge", "exact_match" or "accuracy" (used by evaluation).
        mapping: raw column -> field, for datasets whose columns have other names; when several
            columns map to one field, the first present wins, then the field's own name.
        optional: fields that render as "" when a record lacks them.
        options: where options and gold label live (required for multiple_choice).
        description: one line for `list_tasks` and docs.
        eval_mode: how `instructune eval` scores it by default: "instruct" or "lm-eval" (EVAL_MODES).
        preprocess: a named clean-up of the rendered prompt and options (PREPROCESSORS), or None.
    """

    name: str
    kind: str
    fields: Sequence[str]
    templates: Sequence[Template]
    metric: str
    mapping: Mapping[str, str] = field(default_factory=dict)
    optional: Sequence[str] = ()
    options: Options | None = None
    description: str = ""
    eval_mode: str = "instruct"
    preprocess: str | None = None
    # Lookups that render.py builds on first use, so rendering a record stays a few dict reads.
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.fields = tuple(self.fields)
        self.templates = tuple(self.templates)
        self.optional = tuple(self.optional)
        self.mapping = dict(self.mapping)
        _validate_task(self)


# --- loading -----------------------------------------------------------------------------------


class _TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field(description="prompt format string")
    target: str = Field(description="completion format string")
    show_options: bool = Field(True, description="render {options_}")
    when: dict[str, Literal["empty", "nonempty"] | list[Any]] = Field(default_factory=dict)


class _OptionsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str | None = None
    fields: list[str] = Field(default_factory=list)
    choices: list[str] = Field(default_factory=list)
    label: str = "label"
    style: Literal["dash", "letters", "numbers"] = "dash"
    header: str = "OPTIONS:"


class _TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str = ""
    kind: Literal["generation", "multiple_choice", "classification"]
    fields: list[str]
    optional: list[str] = Field(default_factory=list)
    mapping: dict[str, str] = Field(default_factory=dict)
    options: _OptionsSpec | None = None
    metric: Literal["rouge", "exact_match", "accuracy"]
    eval_mode: Literal["instruct", "lm-eval"] = Field("instruct", description="default scoring mode of `instructune eval`")
    preprocess: Literal["hellaswag"] | None = Field(None, description="named clean-up of prompt and options")
    templates: list[_TemplateSpec]


def list_tasks() -> list[str]:
    """The names of the built-in tasks.

    Example:
        >>> list_tasks()[:3]
        ['alpaca', 'boolq', 'dialogsum']
    """
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path) -> Task:
    """Load a built-in task by name, or a user's task YAML by path.

    Args:
        name_or_path: e.g. "hellaswag", or "my_tasks/reviews.yaml".

    Returns:
        The validated task.

    Raises:
        InstructuneError: unknown name, unreadable YAML, an unknown key, or a template problem.

    Example:
        >>> task = load_task("hellaswag")
        >>> task.kind, len(task.templates), task.metric
        ('multiple_choice', 10, 'accuracy')
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        path = Path(text).resolve()
    elif text in list_tasks():
        path = TASKS_DIR / f"{text}.yaml"
    else:
        raise InstructuneError(f"unknown task {text!r}; built-in tasks: {', '.join(list_tasks())} (or a path to a task .yaml)")
    if not path.is_file():
        raise InstructuneError(f"{path}: task file not found")
    # Keyed by modification time too, so a task edited in a notebook is reloaded.
    return _load_task_file(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _load_task_file(path: Path, mtime_ns: int) -> Task:
    data = read_yaml_mapping(path, "a mapping with kind, fields, metric and templates", kind="task file")
    try:
        spec = _TaskSpec.model_validate(data)
    except ValidationError as error:
        raise InstructuneError(validation_message(error, str(path), key_label=None)) from None
    options = None
    if spec.options is not None:
        options = Options(**{**spec.options.model_dump(), "fields": tuple(spec.options.fields),
                             "choices": tuple(spec.options.choices)})
    templates = [Template(t.input, t.target, t.show_options, t.when) for t in spec.templates]
    return Task(
        name=spec.name or path.stem, kind=spec.kind, fields=spec.fields, templates=templates,
        metric=spec.metric, mapping=spec.mapping, optional=spec.optional, options=options,
        description=spec.description, eval_mode=spec.eval_mode, preprocess=spec.preprocess,
    )


# --- validation --------------------------------------------------------------------------------


def _placeholders(format_string: str) -> set[str]:
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(format_string):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} has a conversion or format spec (not supported)")
        names.add(name)
    return names


def _validate_task(task: Task) -> None:
    where = f"task {task.name!r}"
    if task.kind not in KINDS:
        raise InstructuneError(f"{where}: kind {task.kind!r} is not one of {', '.join(KINDS)}")
    if task.metric not in METRICS:
        raise InstructuneError(f"{where}: metric {task.metric!r} is not one of {', '.join(METRICS)}")
    if task.eval_mode not in EVAL_MODES:
        raise InstructuneError(f"{where}: eval_mode {task.eval_mode!r} is not one of {', '.join(EVAL_MODES)}")
    if task.preprocess is not None and task.preprocess not in PREPROCESSORS:
        raise InstructuneError(f"{where}: preprocess {task.preprocess!r} is not one of {', '.join(PREPROCESSORS)}")
    if not task.fields or len(set(task.fields)) != len(task.fields):
        raise InstructuneError(f"{where}: fields must be a non-empty list of distinct names")
    if not task.templates:
        raise InstructuneError(f"{where}: needs at least one template")
    for name in task.optional:
        if name not in task.fields:
            raise InstructuneError(f"{where}: optional field {name!r} is not in fields ({', '.join(task.fields)})")
    for column, name in task.mapping.items():
        if name not in task.fields:
            raise InstructuneError(f"{where}: mapping {column!r} -> {name!r}: {name!r} is not in fields")
    _validate_options(task, where)
    allowed = set(task.fields) | (set(SPECIAL_PLACEHOLDERS) if task.options else set())
    seen: dict[tuple[str, str], int] = {}
    for index, template in enumerate(task.templates):
        here = f"{where} template {index}"
        if not template.target.strip():
            raise InstructuneError(f"{here}: empty target")
        if not template.input.strip():
            raise InstructuneError(f"{here}: empty input")
        try:
            used = template.placeholders()
        except ValueError as error:
            raise InstructuneError(f"{here}: {error}") from None
        for name in sorted(used - allowed):
            raise InstructuneError(
                f"{here}: unknown placeholder {{{name}}}; known: {', '.join('{' + n + '}' for n in sorted(allowed))}"
            )
        for name, condition in template.when.items():
            if name not in task.fields:
                raise InstructuneError(f"{here}: when: {name!r} is not in fields")
            if not (condition in ("empty", "nonempty") or isinstance(condition, (list, tuple))):
                raise InstructuneError(f"{here}: when {name!r}: expected 'empty', 'nonempty' or a list of values")
        key = (template.input, template.target)
        if key in seen:
            raise InstructuneError(f"{here}: duplicates template {seen[key]}")
        seen[key] = index


def _validate_options(task: Task, where: str) -> None:
    options = task.options
    if options is None:
        if task.kind == "multiple_choice":
            raise InstructuneError(f"{where}: a multiple_choice task needs options (field, fields or choices)")
        return
    given = [bool(options.field), bool(options.fields), bool(options.choices)]
    if sum(given) != 1:
        raise InstructuneError(f"{where}: options need exactly one of field, fields or choices")
    if options.style not in OPTION_STYLES:
        raise InstructuneError(f"{where}: options style {options.style!r} is not one of {', '.join(OPTION_STYLES)}")
    for name in [options.label, *([options.field] if options.field else []), *options.fields]:
        if name not in task.fields:
            raise InstructuneError(f"{where}: options refer to {name!r}, which is not in fields ({', '.join(task.fields)})")

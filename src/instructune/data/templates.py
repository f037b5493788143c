"""Turn raw records into instruction examples with FLAN-style (input, target) templates.

A `Task` names its fields, maps raw column names onto them, lists its templates and (for multiple
choice or fixed-label classification) where its options and gold label live. Tasks are written in
YAML (the built-in ones live in `tasks/`) and validated when loaded: an unknown placeholder, an
empty target or a duplicated template is an error naming the task and template index.

Rendering is plain `str.format_map` on precompiled strings, so field values containing braces come
out literally and 50,000 records take well under a second. Template choice is a hash of the seed and
the example's content, never a shared random stream: the same example gets the same template
whatever the order of the records or the number of workers.

Leaves out: reading files (sources.py), mixing tasks (mixture.py), tokenization and chat templates
(tokenize.py).
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from instructune.errors import InstructuneError

KINDS = ("generation", "multiple_choice", "classification")
METRICS = ("rouge", "exact_match", "accuracy")
OPTION_STYLES = ("dash", "letters", "numbers")
TEMPLATE_CHOICES = ("sample", "all")
SPECIAL_PLACEHOLDERS = ("options_", "answer")
TASKS_DIR = Path(__file__).parent / "tasks"

# `{options_}` together with the line break that joins it to the text, so a template renders cleanly
# without its options: "...{context}\n{options_}\nA:" -> "...{context}\nA:".
_OPTIONS_SLOT = re.compile(r"\n\{options_\}|\{options_\}\n?")


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

    def __post_init__(self) -> None:
        self.fields = tuple(self.fields)
        self.templates = tuple(self.templates)
        self.optional = tuple(self.optional)
        self.mapping = dict(self.mapping)
        _validate_task(self)
        self._compiled = _CompiledTask(self)


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
        raise InstructuneError(f"{path}: no such task file")
    # Keyed by modification time too, so a task edited in a notebook is reloaded.
    return _load_task_file(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _load_task_file(path: Path, mtime_ns: int) -> Task:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InstructuneError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise InstructuneError(f"{path}: expected a mapping with kind, fields, metric and templates")
    try:
        spec = _TaskSpec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InstructuneError(f"{path}: {where}: {first['msg']}") from None
    options = None
    if spec.options is not None:
        options = Options(**{**spec.options.model_dump(), "fields": tuple(spec.options.fields),
                             "choices": tuple(spec.options.choices)})
    templates = [Template(t.input, t.target, t.show_options, t.when) for t in spec.templates]
    return Task(
        name=spec.name or path.stem, kind=spec.kind, fields=spec.fields, templates=templates,
        metric=spec.metric, mapping=spec.mapping, optional=spec.optional, options=options,
        description=spec.description,
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


# --- rendering ---------------------------------------------------------------------------------


def format_options(options: Sequence[str], style: str = "dash", header: str = "OPTIONS:") -> str:
    """Render options as the `{options_}` block.

    Args:
        options: the option texts.
        style: "dash", "letters" or "numbers".
        header: the first line ("" for none).

    Example:
        >>> format_options(["yes", "no"])
        'OPTIONS:\\n- yes\\n- no'
        >>> format_options(["yes", "no"], style="letters")
        'OPTIONS:\\n(A) yes\\n(B) no'
    """
    if style == "dash":
        lines = [f"- {option}" for option in options]
    elif style == "letters":
        lines = [f"({string.ascii_uppercase[i % 26]}) {option}" for i, option in enumerate(options)]
    elif style == "numbers":
        lines = [f"{i + 1}. {option}" for i, option in enumerate(options)]
    else:
        raise InstructuneError(f"options style {style!r} is not one of {', '.join(OPTION_STYLES)}")
    return "\n".join([header, *lines] if header else lines)


def example_key(values: Mapping[str, Any], seed: int) -> int:
    """A stable 64-bit hash of (seed, the example's field values): the same example gets the same number
    in any process, order or worker (Python's own `hash` is salted per process)."""
    text = f"{seed}\x1f{list(values.values())!r}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class _CompiledTask:
    """Per-task lookups built once, so rendering a record is a few dict reads and two format calls."""

    def __init__(self, task: Task) -> None:
        self.task = task
        # field -> raw columns to try, explicit mapping first, then the field's own name.
        self.sources = {name: tuple([c for c, f in task.mapping.items() if f == name] + [name]) for name in task.fields}
        self.optional = frozenset(task.optional)
        self.inputs = [t.input for t in task.templates]
        self.inputs_without_options = [_OPTIONS_SLOT.sub("", t.input) for t in task.templates]
        self.targets = [t.target for t in task.templates]
        self.show_options = [t.show_options for t in task.templates]
        self.used = [t.placeholders() for t in task.templates]
        self.conditional = [i for i, t in enumerate(task.templates) if t.when]
        self.unconditional = [i for i, t in enumerate(task.templates) if not t.when]

    def field_values(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """The record's values by field name, and the names of required fields it lacks."""
        values: dict[str, Any] = {}
        missing = set()
        for name, columns in self.sources.items():
            value = None
            for column in columns:
                value = record.get(column)
                if value is not None:
                    break
            if value is None:
                if name in self.optional:
                    value = ""
                else:
                    missing.add(name)
            values[name] = value
        return values, missing

    def applicable(self, values: Mapping[str, Any]) -> list[int]:
        if not self.conditional:
            return self.unconditional
        templates = self.task.templates
        return sorted(self.unconditional + [i for i in self.conditional if templates[i].applies_to(values)])

    def options_and_label(self, values: dict[str, Any], error_where: str) -> tuple[list[str], int]:
        options_spec = self.task.options
        if options_spec.field:
            options = values[options_spec.field]
            if not isinstance(options, (list, tuple)) or not options:
                raise InstructuneError(f"{error_where}: field {options_spec.field!r} must be a non-empty list of options")
            options = [str(option) for option in options]
        elif options_spec.fields:
            options = [str(values[name]) for name in options_spec.fields]
        else:
            options = list(options_spec.choices)
        return options, _label_index(values[options_spec.label], options, error_where)

    def render(
        self, values: dict[str, Any], missing: set[str], index: int, *, with_options: bool,
        options_style: str | None, where: str,
    ) -> dict[str, Any]:
        task = self.task
        needed = set(self.used[index])
        if task.options is not None:
            options_spec = task.options
            needed |= {options_spec.label, *([options_spec.field] if options_spec.field else []), *options_spec.fields}
        for name in sorted(missing & needed):
            column = self.sources[name][0]
            named = f"field {name!r}" + (f" (raw column {column!r})" if column != name else "")
            raise InstructuneError(f"task {task.name!r} template {index}: record lacks {named}{where}")
        example_values = values
        options = label = None
        if task.options is not None:
            options, label = self.options_and_label(values, f"task {task.name!r} template {index}{where}")
            spec = task.options
            example_values = dict(values)
            example_values["options_"] = format_options(options, options_style or spec.style, spec.header)
            example_values["answer"] = options[label]
        show = with_options and self.show_options[index]
        prompt_format = self.inputs[index] if show else self.inputs_without_options[index]
        example = {
            "prompt": prompt_format.format_map(example_values),
            "completion": self.targets[index].format_map(example_values),
            "task": task.name,
            "template": index,
        }
        if options is not None:
            example["options"] = options
            example["label"] = label
        return example


def _label_index(value: Any, options: Sequence[str], where: str) -> int:
    """The gold option's index from an index, a bool (False=0, True=1), a digit string or the option text."""
    if isinstance(value, bool):
        index = int(value)
    elif isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        index = int(value.strip())
    elif isinstance(value, str):
        lowered = [option.strip().lower() for option in options]
        if value.strip().lower() not in lowered:
            raise InstructuneError(f"{where}: label {value!r} is not one of the options ({', '.join(options)})")
        index = lowered.index(value.strip().lower())
    else:
        raise InstructuneError(f"{where}: label {value!r} is not an option index or option text")
    if not 0 <= index < len(options):
        raise InstructuneError(f"{where}: label {index} is out of range for {len(options)} options")
    return index


def render_example(
    task: Task,
    record: Mapping[str, Any],
    template_index: int,
    *,
    with_options: bool = True,
    options_style: str | None = None,
    location: str | None = None,
) -> dict[str, Any]:
    """Render one record with one template (its `when` conditions are not checked: you chose it).

    Args:
        task: the task.
        record: a raw record (raw column names; the task's mapping applies).
        template_index: which template.
        with_options: render `{options_}` (False: drop it, for a no-options variant).
        options_style: override the task's options style ("dash", "letters", "numbers").
        location: where the record came from (e.g. "data.jsonl:17"), for error messages.

    Returns:
        {"prompt", "completion", "task", "template"}, plus "options" and "label" (gold index) when the
        task has options.

    Example:
        >>> render_example(load_task("piqa"), {"goal": "Open a jar", "sol1": "Twist the lid",
        ...                "sol2": "Bite the lid", "label": 0}, 0)
        {'prompt': 'Goal: Open a jar\\n\\nWhich solution works better?\\nOPTIONS:\\n- Twist the lid\\n- Bite the lid',
         'completion': 'Twist the lid', 'task': 'piqa', 'template': 0,
         'options': ['Twist the lid', 'Bite the lid'], 'label': 0}
    """
    compiled = task._compiled
    _check_template_index(task, template_index)
    values, missing = compiled.field_values(record)
    where = f" at {location}" if location else ""
    return compiled.render(values, missing, template_index, with_options=with_options,
                           options_style=options_style, where=where)


def render_records(
    task: Task,
    records: Iterable[Mapping[str, Any]],
    *,
    seed: int = 0,
    template: str | int = "sample",
    num_fewshot: int = 0,
    fewshot_separator: str = "\n\n",
    max_fewshot_tokens: int | None = None,
    tokenizer: Any = None,
    with_options: bool = True,
    options_style: str | None = None,
    source: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Render many records: one template each (seeded), every applicable template, or a fixed one.

    Args:
        task: the task.
        records: raw records (a list of dicts or a `datasets.Dataset`).
        seed: seeds template choice and few-shot draws; same seed + same example -> same result.
        template: "sample" (one applicable template per record, chosen by a hash of seed and content),
            "all" (one example per applicable template) or an index (that template for every record).
        num_fewshot: k exemplars drawn from the same records (never the example itself), rendered with
            the same template and placed before the prompt.
        fewshot_separator: joins exemplars and the prompt.
        max_fewshot_tokens: budget for the exemplars, in tokens with `tokenizer`, else characters;
            exemplars that do not fit are skipped.
        tokenizer: a transformers tokenizer to measure the budget (optional).
        with_options: render `{options_}`.
        options_style: override the task's options style.
        source: the file the records came from, so row errors say `file:line`.

    Returns:
        Examples in record order (for "all": each record's templates in index order).

    Example:
        >>> examples = render_records(load_task("alpaca"), [{"instruction": "Say hi", "input": "", "output": "Hi"}])
        >>> examples[0]["completion"], examples[0]["task"]
        ('Hi', 'alpaca')
    """
    compiled = task._compiled
    if isinstance(template, str) and template not in TEMPLATE_CHOICES:
        if not template.isdigit():
            raise InstructuneError(f"template {template!r}: expected one of {', '.join(TEMPLATE_CHOICES)} or an index")
        template = int(template)
    if isinstance(template, int):
        _check_template_index(task, template)
    if hasattr(records, "to_list"):  # datasets.Dataset: one conversion beats per-row access
        records = records.to_list()
    records = list(records)

    mapped = [compiled.field_values(record) for record in records]
    keys = [example_key(values, seed) for values, _ in mapped]
    fewshot = _FewShot(compiled, mapped, keys, num_fewshot, fewshot_separator, max_fewshot_tokens, tokenizer,
                       with_options, options_style) if num_fewshot > 0 else None

    examples = []
    for position, ((values, missing), key) in enumerate(zip(mapped, keys)):
        if isinstance(template, int):
            chosen = [template]
        else:
            applicable = compiled.applicable(values)
            if not applicable:
                where = _where(source, position)
                raise InstructuneError(f"task {task.name!r}: no template applies to this record{where}")
            chosen = applicable if template == "all" else [applicable[key % len(applicable)]]
        for index in chosen:
            try:
                example = compiled.render(values, missing, index, with_options=with_options,
                                          options_style=options_style, where="")
            except InstructuneError as error:
                raise InstructuneError(f"{error}{_where(source, position)}") from None
            if fewshot is not None:
                example["prompt"] = fewshot.prefix(position, index) + example["prompt"]
            examples.append(example)
    return examples


def _where(source: str | Path | None, position: int) -> str:
    if source is None:
        return f" (record {position})"
    from instructune.data.sources import record_location

    return f" at {record_location(source, position)}"


def _check_template_index(task: Task, index: int) -> None:
    if not 0 <= index < len(task.templates):
        raise InstructuneError(f"task {task.name!r}: template {index} does not exist (0..{len(task.templates) - 1})")


class _FewShot:
    """Draws k exemplars per example from the same records, seeded by the example's own key.

    The pool is ordered by key, not by position, so the draw does not change when records are reordered.
    """

    def __init__(self, compiled, mapped, keys, k, separator, budget, tokenizer, with_options, options_style):
        self.compiled, self.mapped, self.keys, self.k = compiled, mapped, keys, k
        self.separator, self.budget, self.tokenizer = separator, budget, tokenizer
        self.with_options, self.options_style = with_options, options_style
        self.pool = sorted(range(len(keys)), key=lambda position: keys[position])
        self.texts: dict[tuple[int, int], str | None] = {}

    def _length(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _exemplar(self, position: int, index: int) -> str | None:
        """The exemplar text (prompt + answer) of a record under a template; None if it cannot render."""
        cache_key = (position, index)
        if cache_key not in self.texts:
            values, missing = self.mapped[position]
            if index not in self.compiled.applicable(values):
                # Same template as the example where it applies (as FLAN does), else the exemplar's own.
                applicable = self.compiled.applicable(values)
                index = applicable[self.keys[position] % len(applicable)] if applicable else index
            try:
                example = self.compiled.render(values, missing, index, with_options=self.with_options,
                                               options_style=self.options_style, where="")
                prompt = example["prompt"]
                self.texts[cache_key] = prompt + ("" if prompt.endswith(("\n", " ")) else "\n") + example["completion"]
            except InstructuneError:
                self.texts[cache_key] = None
        return self.texts[cache_key]

    def prefix(self, position: int, index: int) -> str:
        key = self.keys[position]
        rng = random.Random(key ^ 0x5EED_F3E5)
        # Draw a few spares: candidates equal to the example itself or over budget are skipped.
        candidates = rng.sample(self.pool, min(len(self.pool), 2 * self.k + 1))
        chosen, used = [], 0
        for candidate in candidates:
            if len(chosen) == self.k:
                break
            if candidate == position or self.keys[candidate] == key:
                continue
            text = self._exemplar(candidate, index)
            if text is None:
                continue
            cost = self._length(text + self.separator)
            if self.budget is not None and used + cost > self.budget:
                continue
            chosen.append(text)
            used += cost
        return "".join(text + self.separator for text in chosen)

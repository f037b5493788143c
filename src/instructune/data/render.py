"""Render raw records with a task's templates: one example, many records, few-shot prefixes, options blocks.

Rendering is plain `str.format_map` on precompiled strings, so field values containing braces come
out literally and 50,000 records take well under a second. Template choice is a hash of the seed and
the example's content, never a shared random stream: the same example gets the same template
whatever the order of the records or the number of workers.

Leaves out: defining, loading and validating tasks (templates.py), reading data files (sources.py),
mixing tasks (mixture.py), tokenization and chat templates (tokenize.py).
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from instructune.data.sources import record_location
from instructune.data.templates import OPTION_STYLES, Task
from instructune.errors import InstructuneError

TEMPLATE_CHOICES = ("sample", "all")
# Target columns numbered 1..N (DialogSum test's summary1..summary3): several references per record.
_NUMBERED_COLUMN = re.compile(r"^(.*?)(\d+)$")

# `{options_}` together with the line break that joins it to the text, so a template renders cleanly
# without its options: "...{context}\n{options_}\nA:" -> "...{context}\nA:".
_OPTIONS_SLOT = re.compile(r"\n\{options_\}|\{options_\}\n?")
_BRACKETED = re.compile(r"\[.*?\]")


def clean_hellaswag_text(text: str) -> str:
    """HellaSwag's clean-up as lm-evaluation-harness 0.4 applies it to the query and to every ending.

    Strips the ends, turns WikiHow's " [title]" into ". ", drops other bracketed tags ("[header]",
    "[step]", ...) and folds double spaces once (one pass, as the harness does).

    Example:
        >>> clean_hellaswag_text("Wash hands [title] Use soap. [step] Rub  well. ")
        'Wash hands. Use soap. Rub well.'
    """
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


# One function per name in templates.PREPROCESSORS (tests/test_templates.py checks they match).
_CLEANUPS = {"hellaswag": clean_hellaswag_text}


def parse_template_choice(value: str | int) -> str | int:
    """A template choice as given on a command line or in YAML: "sample", "all" or an index.

    Example:
        >>> parse_template_choice("3"), parse_template_choice("all")
        (3, 'all')
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value in TEMPLATE_CHOICES:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InstructuneError(f"template {value!r}: expected one of {', '.join(TEMPLATE_CHOICES)} or a template index")


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


def _compiled(task: Task) -> _CompiledTask:
    """The task's lookups, built on first use and kept on the task."""
    if task._compiled is None:
        task._compiled = _CompiledTask(task)
    return task._compiled


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
        # Raw columns each target reads (extra_references varies only these).
        self.target_columns = [
            frozenset(column for _, name, _, _ in string.Formatter().parse(t.target) if name
                      for column in self.sources.get(name, (name,)))
            for t in task.templates
        ]
        self.show_options = [t.show_options for t in task.templates]
        self.used = [t.placeholders() for t in task.templates]
        self.conditional = [i for i, t in enumerate(task.templates) if t.when]
        self.unconditional = [i for i, t in enumerate(task.templates) if not t.when]
        self.cleanup = _CLEANUPS[task.preprocess] if task.preprocess else None

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
            if self.cleanup is not None:
                options = [self.cleanup(option) for option in options]
            spec = task.options
            example_values = dict(values)
            example_values["options_"] = format_options(options, options_style or spec.style, spec.header)
            example_values["answer"] = options[label]
        show = with_options and self.show_options[index]
        prompt_format = self.inputs[index] if show else self.inputs_without_options[index]
        prompt = prompt_format.format_map(example_values)
        example = {
            "prompt": self.cleanup(prompt) if self.cleanup is not None else prompt,
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
    compiled = _compiled(task)
    _check_template_index(task, template_index)
    values, missing = compiled.field_values(record)
    where = f" at {location}" if location else ""
    return compiled.render(values, missing, template_index, with_options=with_options,
                           options_style=options_style, where=where)


@dataclass(frozen=True)
class RenderOptions:
    """How records become examples: which template, few-shot exemplars, options.

    Example:
        >>> RenderOptions(template=0, num_fewshot=2)
    """

    # Seeds template choice and few-shot draws; same seed + same example -> same result.
    seed: int = 0
    # "sample" (one applicable template per record, chosen by a hash of seed and content), "all" (one
    # example per applicable template) or an index (that template for every record).
    template: str | int = "sample"
    # k exemplars drawn from the same records (never the example itself), rendered with the same
    # template and placed before the prompt.
    num_fewshot: int = 0
    # Joins exemplars and the prompt.
    fewshot_separator: str = "\n\n"
    # Budget for the exemplars, in tokens with `tokenizer`, else characters; exemplars that do not fit are skipped.
    max_fewshot_tokens: int | None = None
    # A transformers tokenizer to measure the budget (optional).
    tokenizer: Any = None
    # Render `{options_}`.
    with_options: bool = True
    # Override the task's options style.
    options_style: str | None = None


@dataclass(frozen=True)
class RecordSource:
    """Where rendered records sit in their file, so row errors say `file:line` and skipped rows their position."""

    path: str | Path | None = None
    first_record: int = 0   # the position in `path` of the first record, when the records are a slice of it
    record_step: int = 1    # the records are every N-th of `path` from `first_record` on

    def location(self, index: int) -> str:
        """" at file:LINE" (or " (record N)") of the index-th record rendered."""
        position = self.first_record + index * self.record_step
        return f" (record {position})" if self.path is None else f" at {record_location(self.path, position)}"


def render_records(task: Task, records: Iterable[Mapping[str, Any]], options: RenderOptions | None = None, *,
                   source: RecordSource | str | Path | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Render many records: one template each (seeded), every applicable template, or a fixed one.

    Args:
        task: the task.
        records: raw records (a list of dicts or a `datasets.Dataset`).
        options: `RenderOptions`; None = the defaults.
        source: where the records came from (a path, or a `RecordSource` for a slice), so row errors
            say `file:line`.
        overrides: `RenderOptions` fields that replace those of `options` (template=0, num_fewshot=2, ...).

    Returns:
        Examples in record order (for "all": each record's templates in index order).

    Example:
        >>> examples = render_records(load_task("alpaca"), [{"instruction": "Say hi", "input": "", "output": "Hi"}])
        >>> examples[0]["completion"], examples[0]["task"]
        ('Hi', 'alpaca')
    """
    return _render(task, records, replace(options or RenderOptions(), **overrides), _source(source), False)[0]


def render_records_skipping_empty(task: Task, records: Iterable[Mapping[str, Any]],
                                  options: RenderOptions | None = None, *,
                                  source: RecordSource | str | Path | None = None) -> tuple[list[dict], list[int]]:
    """`render_records`, leaving out examples whose completion renders empty or as whitespace (training on
    them teaches the model to answer nothing): (examples, the record position of each one left out)."""
    return _render(task, records, options or RenderOptions(), _source(source), True)


def _source(source: RecordSource | str | Path | None) -> RecordSource:
    return source if isinstance(source, RecordSource) else RecordSource(source)


def _render(task: Task, records: Iterable[Mapping[str, Any]], options: RenderOptions, source: RecordSource,
            drop_empty: bool) -> tuple[list[dict[str, Any]], list[int]]:
    compiled = _compiled(task)
    template = parse_template_choice(options.template)
    if isinstance(template, int):
        _check_template_index(task, template)
    if hasattr(records, "to_list"):  # datasets.Dataset: one conversion beats per-row access
        records = records.to_list()
    records = list(records)

    mapped = [compiled.field_values(record) for record in records]
    keys = [example_key(values, options.seed) for values, _ in mapped]
    fewshot = _FewShot(compiled, mapped, keys, options.num_fewshot, options.fewshot_separator,
                       options.max_fewshot_tokens, options.tokenizer, options.with_options,
                       options.options_style) if options.num_fewshot > 0 else None

    examples, dropped = [], []
    for position, ((values, missing), key) in enumerate(zip(mapped, keys)):
        if isinstance(template, int):
            chosen = [template]
        else:
            applicable = compiled.applicable(values)
            if not applicable:
                raise InstructuneError(f"task {task.name!r}: no template applies to this record{source.location(position)}")
            chosen = applicable if template == "all" else [applicable[key % len(applicable)]]
        for index in chosen:
            try:
                example = compiled.render(values, missing, index, with_options=options.with_options,
                                          options_style=options.options_style, where="")
            except InstructuneError as error:
                raise InstructuneError(f"{error}{source.location(position)}") from None
            if drop_empty and not example["completion"].strip():
                dropped.append(source.first_record + position * source.record_step)
                continue
            if fewshot is not None:
                example["prompt"] = fewshot.prefix(position, index) + example["prompt"]
            examples.append(example)
    return examples, dropped


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


def extra_references(task: Any, record: dict, template_index: int) -> list[str]:
    """All references of a record whose target columns come numbered (summary1, summary2, summary3).

    Each numbered group (columns `<stem>1..<stem>N`, N >= 2) that the template's target reads is read N
    times, the k-th time with every column of the group holding the k-th value, and the target is
    rendered each time. Equal references are kept, one per column: the mean over the references counts
    each human row, as the one-row-per-reference tables do (10 of DialogSum's 500 test dialogues repeat
    a summary; issue 28). Empty renders are left out. Records without numbered columns that the target
    reads give [] (the example's completion is then the only reference).

    Example:
        >>> extra_references(load_task("dialogsum"), {"dialogue": "...", "summary1": "A", "summary2": "B",
        ...                  "summary3": "B"}, 0)
        ['A', 'B', 'B']
    """
    groups: dict[str, list[str]] = {}
    for column in record:
        match = _NUMBERED_COLUMN.match(column)
        if match and match.group(1):
            groups.setdefault(match.group(1), []).append(column)
    # Groups the target does not read (topic1..3 under a summary target) would only repeat one reference.
    read = _compiled(task).target_columns[template_index]
    groups = {stem: sorted(cols, key=lambda c: int(_NUMBERED_COLUMN.match(c).group(2)))
              for stem, cols in groups.items() if len(cols) >= 2 and read & {stem, *cols}}
    if not groups:
        return []
    references = []
    for k in range(max(len(cols) for cols in groups.values())):
        variant = dict(record)
        for stem, cols in groups.items():
            value = record[cols[min(k, len(cols) - 1)]]
            variant.update({col: value for col in cols} | {stem: value})
        completion = render_example(task, variant, template_index)["completion"]
        if completion.strip():
            references.append(completion)
    return references

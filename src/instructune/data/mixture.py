"""Mix the rendered examples of several tasks into one training set, and say what came out.

Three strategies, as in T5 and FLAN:
- "proportional": each task in proportion to its size, sizes first clipped at `cap`, so a huge task
  cannot drown the small ones (examples-proportional mixing with a cap);
- "temperature": rates proportional to clipped size ** (1 / temperature); temperature 1 equals
  "proportional", larger values flatten the mixture toward equal shares;
- "weights": explicit relative weights per task.

`total` sets the size of the mixture (default: the sum of the clipped sizes). A task asked for more
examples than it has is repeated in whole reshuffled passes; the report says how many passes. Every
draw is seeded per task, so the result depends only on the inputs and the seed.

Leaves out: rendering (templates.py) and reading the mixture YAML (`MixtureConfig` here, used by
prepare.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from instructune.errors import InstructuneError

STRATEGIES = ("proportional", "temperature", "weights")


class MixtureTask(BaseModel):
    """One task in a mixture YAML: which task, which data, how much of it."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="built-in task name or path to a task YAML")
    data: str = Field(description="raw records: a file or folder (relative paths: to the mixture file, then the cwd)")
    name: str | None = Field(None, description="name in the mixture (default: the task name); must be unique")
    split: str | None = Field(None, description="split to read from a saved DatasetDict or a folder of split files")
    start: int = Field(0, ge=0, description="skip this many raw records first (e.g. the ones kept for evaluation)")
    every: int = Field(1, ge=1, description="take every N-th raw record from start on, before limit (spreads a sample "
                                            "over a file sorted by topic; as `instructune eval --every`)")
    limit: int | None = Field(None, ge=1, description="read at most this many raw records (the first ones from start on)")
    template: str | int | None = Field(None, description="override the mixture's template choice for this task")
    num_fewshot: int | None = Field(None, ge=0, description="override the mixture's few-shot count for this task")
    drop_columns: list[str] = Field(default_factory=list,
                                    description="raw columns removed before rendering, so no template can show "
                                                "them (a held-out task's label: DialogSum's topic, Bitext's category)")


class MixtureConfig(BaseModel):
    """A mixture of tasks: what to read, and how to mix it. Every key is optional except `tasks`."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[MixtureTask] = Field(description="the tasks to mix, each with its data file")
    strategy: str = Field("proportional", description=f"one of {', '.join(STRATEGIES)}")
    cap: int | None = Field(None, ge=1, description="clip each task's size at this many examples before computing rates")
    temperature: float = Field(1.0, gt=0, description="strategy=temperature: >1 flattens toward equal shares")
    weights: dict[str, float] | None = Field(None, description="strategy=weights: task name -> relative weight")
    total: int | None = Field(None, ge=1, description="examples in the mixture (default: sum of clipped sizes)")
    seed: int = Field(0, description="seeds template choice, few-shot draws and mixing")
    template: str | int = Field("sample", description='"sample", "all" or a template index, for every task')
    num_fewshot: int = Field(0, ge=0, description="few-shot exemplars per example, for every task")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; allowed: {', '.join(STRATEGIES)}")
        return value

    @model_validator(mode="after")
    def _weights_match_tasks(self) -> "MixtureConfig":
        names = [entry.name or entry.task for entry in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("two tasks share a name; give one of them `name:`")
        if self.strategy == "weights" and not self.weights:
            raise ValueError("strategy 'weights' needs `weights:` (task name -> weight)")
        return self


@dataclass
class MixtureReport:
    """What `mix` produced: per task, how many were available, asked for and taken."""

    strategy: str
    seed: int
    total: int
    available: dict[str, int]
    rates: dict[str, float]
    counts: dict[str, int]
    passes: dict[str, float] = field(default_factory=dict)

    @property
    def proportions(self) -> dict[str, float]:
        """The share of each task in the mixture actually produced."""
        return {name: count / self.total if self.total else 0.0 for name, count in self.counts.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "seed": self.seed, "total": self.total,
            "tasks": {
                name: {"available": self.available[name], "rate": round(self.rates[name], 6),
                       "examples": self.counts[name], "proportion": round(self.proportions[name], 6),
                       "passes": round(self.passes[name], 3)}
                for name in self.counts
            },
        }

    def format(self) -> str:
        """A small table: task, available, examples, proportion, passes."""
        lines = [f"mixture: {self.strategy}, seed {self.seed}, {self.total} examples",
                 f"  {'task':<24}{'available':>10}{'examples':>10}{'share':>8}{'passes':>8}"]
        for name, count in self.counts.items():
            lines.append(f"  {name:<24}{self.available[name]:>10}{count:>10}"
                         f"{self.proportions[name]:>8.1%}{self.passes[name]:>8.2f}")
        return "\n".join(lines)


def mixing_rates(
    sizes: dict[str, int],
    *,
    strategy: str = "proportional",
    cap: int | None = None,
    temperature: float = 1.0,
    weights: dict[str, float] | None = None,
) -> dict[str, float]:
    """The share of the mixture each task should get (sums to 1).

    Args:
        sizes: task name -> number of examples available.
        strategy: "proportional", "temperature" or "weights".
        cap: clip sizes at this many before computing rates.
        temperature: for "temperature"; 1 equals "proportional".
        weights: for "weights": task name -> relative weight (every task, no others).

    Example:
        >>> mixing_rates({"a": 900, "b": 100}, cap=300)
        {'a': 0.75, 'b': 0.25}
        >>> mixing_rates({"a": 900, "b": 100}, strategy="temperature", temperature=2)  # sqrt(900) : sqrt(100)
        {'a': 0.75, 'b': 0.25}
    """
    if strategy not in STRATEGIES:
        raise InstructuneError(f"unknown mixing strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    clipped = {name: min(size, cap) if cap else size for name, size in sizes.items()}
    if strategy == "proportional":
        raw = {name: float(size) for name, size in clipped.items()}
    elif strategy == "temperature":
        if temperature <= 0:
            raise InstructuneError(f"temperature must be > 0, got {temperature}")
        raw = {name: float(size) ** (1.0 / temperature) if size else 0.0 for name, size in clipped.items()}
    else:
        raw = _checked_weights(sizes, weights)
    norm = sum(raw.values())
    if norm <= 0:
        raise InstructuneError("mixture is empty: every task has zero examples or zero weight")
    return {name: value / norm for name, value in raw.items()}


def _checked_weights(sizes: dict[str, int], weights: dict[str, float] | None) -> dict[str, float]:
    if not weights:
        raise InstructuneError("strategy 'weights' needs weights (task name -> weight)")
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise InstructuneError(f"weights: unknown task {unknown[0]!r}; tasks: {', '.join(sizes)}")
    missing = sorted(set(sizes) - set(weights))
    if missing:
        raise InstructuneError(f"weights: no weight for task {missing[0]!r}; give every task a weight")
    for name, weight in weights.items():
        if weight < 0:
            raise InstructuneError(f"weights: {name!r} is negative ({weight})")
    return {name: float(weights[name]) if sizes[name] else 0.0 for name in sizes}


def _allocate(rates: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts summing exactly to total (largest remainder; ties broken by task order)."""
    exact = {name: rate * total for name, rate in rates.items()}
    counts = {name: int(value) for name, value in exact.items()}
    short = total - sum(counts.values())
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - counts[name]), list(rates).index(name)))
    for name in by_remainder[:short]:
        counts[name] += 1
    return counts


def _draw(examples: list[dict], count: int, rng: random.Random) -> list[dict]:
    """`count` examples without repeats until all are used, then further reshuffled passes."""
    drawn: list[dict] = []
    while len(drawn) < count:
        order = list(range(len(examples)))
        rng.shuffle(order)
        drawn.extend(examples[i] for i in order[: count - len(drawn)])
    return drawn


def mix(
    task_datasets: dict[str, list[dict]],
    *,
    strategy: str = "proportional",
    cap: int | None = None,
    temperature: float = 1.0,
    weights: dict[str, float] | None = None,
    total: int | None = None,
    seed: int = 0,
) -> tuple[list[dict], MixtureReport]:
    """Mix tasks' examples into one shuffled list.

    Args:
        task_datasets: task name -> its rendered examples.
        strategy: "proportional", "temperature" or "weights" (see the module docstring).
        cap: clip each task's size at this many before computing rates; with the default total, no
            task contributes more than `cap`.
        temperature: for "temperature".
        weights: for "weights": task name -> relative weight.
        total: size of the mixture (default: sum of the clipped sizes).
        seed: seeds each task's draw and the final shuffle.

    Returns:
        (examples, report): the mixed examples and a `MixtureReport` of the proportions produced.

    Example:
        >>> mixed, report = mix({"a": [{"x": i} for i in range(900)], "b": [{"x": i} for i in range(100)]}, cap=300)
        >>> report.counts, len(mixed)
        ({'a': 300, 'b': 100}, 400)
    """
    if not task_datasets:
        raise InstructuneError("mixture has no tasks")
    sizes = {name: len(examples) for name, examples in task_datasets.items()}
    rates = mixing_rates(sizes, strategy=strategy, cap=cap, temperature=temperature, weights=weights)
    if total is None:
        total = sum(min(size, cap) if cap else size for size in sizes.values())
    if total < 0:
        raise InstructuneError(f"total must be >= 0, got {total}")
    counts = _allocate(rates, total)

    mixed: list[dict] = []
    for name, examples in task_datasets.items():
        # One generator per task, seeded by name: adding a task does not change another's draw.
        rng = random.Random(f"{seed}:{name}")
        mixed.extend(_draw(examples, counts[name], rng) if examples else [])
    random.Random(seed).shuffle(mixed)
    passes = {name: counts[name] / sizes[name] if sizes[name] else 0.0 for name in sizes}
    report = MixtureReport(strategy=strategy, seed=seed, total=len(mixed), available=sizes, rates=rates,
                           counts=counts, passes=passes)
    return mixed, report

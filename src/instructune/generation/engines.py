"""The one protocol every generation engine follows, and the values that cross it.

An engine is a module with these names (hf_engine.py, native.py, openvino_engine.py):

- `NAME`: what `engine=` calls it;
- `COMPUTE_TYPES`: the precisions it offers, the first its default (() runs the model's own dtype);
- `SEARCHES`: True when it runs `Decoding`'s settings (beam search, n-gram blocking, penalties);
- `SAMPLES`: True when it samples (`Sampling`), several answers per prompt when asked
  (`Request.num_return_sequences`);
- `NEEDS_EXPORT`: True when it converts the weights first (then weights that change between calls,
  as in in-training checks, go elsewhere);
- `BESIDE_ALLOCATOR`: False when it cannot run beside a preloaded malloc (OpenVINO aborts);
- `unsupported_reason(model, compute_type, where) -> str | None`: why it cannot run this model here;
- optionally `crash_reason(model, compute_type) -> str | None`: a configuration known to crash it here;
- `run(model, tokenizer, request, where, on_done) -> list[list[int]]`: the new token ids of every
  prompt, in the request's order (`num_return_sequences` rows per prompt, together), each cut before
  its first stop token; `on_done(index)` as prompt `index` has all its answers.

`generate.select_engine` chooses among them from visible inputs only: the model, the decoding asked
for, the precision, and `Where` the call runs (the allocator preloaded in the process, whether the
weights change between calls). An engine that crashes at load raises `EngineCrashed`, and `generate`
moves on to the next one that can answer. What this file leaves out: the engines themselves and the
choice (generate.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Protocol

from instructune.errors import InstructuneError


AUTO_ENGINES_ENV = "INSTRUCTUNE_AUTO_ENGINES"


def preloaded_allocator() -> str | None:
    """The malloc replacement named in LD_PRELOAD (tcmalloc, jemalloc), or None.

    Example:
        >>> os.environ["LD_PRELOAD"] = "/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"; preloaded_allocator()
        '/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'
    """
    return next((part for part in os.environ.get("LD_PRELOAD", "").split() if "malloc" in os.path.basename(part)), None)


@dataclass(frozen=True)
class Where:
    """What about the calling process decides which engines may run.

    Example:
        >>> Where.here(weights_change=True)   # an in-training check in `instructune train` (under tcmalloc)
        Where(allocator='/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4', weights_change=True, auto_engines=None)
    """

    # The malloc preloaded in this process (LD_PRELOAD; cli/allocator.py sets it for the heavy commands):
    # OpenVINO aborts beside one.
    allocator: str | None = None
    # The weights change between calls (in-training checks): engines that export the model pay that per call.
    weights_change: bool = False
    # The engines "auto" may take, by name; None = all. From $INSTRUCTUNE_AUTO_ENGINES (comma-separated),
    # e.g. "native,hf" to keep OpenVINO out without naming an engine per command (the test suite does:
    # each new tiny model would cost OpenVINO an export).
    auto_engines: tuple[str, ...] | None = None

    @classmethod
    def here(cls, *, weights_change: bool = False) -> "Where":
        """This process as it runs now."""
        names = os.environ.get(AUTO_ENGINES_ENV, "").replace(" ", "")
        return cls(allocator=preloaded_allocator(), weights_change=weights_change,
                   auto_engines=tuple(names.split(",")) if names else None)


@dataclass(frozen=True)
class Decoding:
    """How answers are searched for beyond plain greedy decoding: Hugging Face `generate` settings.

    The defaults are plain greedy decoding, which every engine runs. Any other value is Hugging Face
    `generate`'s own (beam search, n-gram blocking, repetition penalty), so `generate(engine="auto")`
    then runs Hugging Face, and a greedy-only engine asked for by name is an error.
    Left padding does not change the answers: Hugging Face leaves padding out of the repetition penalty,
    and an n-gram of 2 or more tokens that holds padding cannot match an answer still running while pad
    is a stop token (pad == eos in SmolLM2; no_repeat_ngram_size 1 also bans pad in padded rows).

    Example:
        >>> Decoding(num_beams=4, length_penalty=0.8).changed()
        {'num_beams': 4, 'length_penalty': 0.8}
        >>> Decoding().changed()
        {}
    """

    # Beams kept per prompt; 1 = no beam search. Each beam is one more row in every HF forward pass.
    num_beams: int = 1
    # Beam search ranks finished answers by log-probability / (new tokens ** length_penalty): > 1 favours
    # longer answers, < 1 shorter ones. Only acts with num_beams > 1.
    length_penalty: float = 1.0
    # No n-gram of this many tokens appears twice in prompt + answer (HF counts the prompt too); 0 = off.
    no_repeat_ngram_size: int = 0
    # Divides positive logits of tokens already in prompt or answer by this (multiplies negative ones); 1 = off.
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.num_beams < 1 or self.no_repeat_ngram_size < 0 or self.repetition_penalty <= 0:
            raise InstructuneError(f"decoding: num_beams {self.num_beams}, no_repeat_ngram_size "
                                   f"{self.no_repeat_ngram_size}, repetition_penalty {self.repetition_penalty}; "
                                   "expected num_beams >= 1, no_repeat_ngram_size >= 0 and repetition_penalty > 0")
        if self.length_penalty != 1.0 and self.num_beams == 1:
            raise InstructuneError(f"decoding: length_penalty {self.length_penalty} only acts in beam search; "
                                   "set num_beams > 1 (e.g. --num-beams 4) or leave it at 1.0")

    def changed(self) -> dict[str, float]:
        """The settings that differ from plain greedy decoding, by name; {} for the defaults."""
        return {field.name: getattr(self, field.name) for field in fields(self)
                if getattr(self, field.name) != field.default}

    def describe(self) -> str:
        """ "greedy", or the changed settings as "num_beams=4, length_penalty=0.8"."""
        return ", ".join(f"{name}={value}" for name, value in self.changed().items()) or "greedy"

    def to_dict(self) -> dict[str, float]:
        """Every setting by name, as result files record it."""
        return asdict(self)


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding, as Hugging Face `generate` samples: the logits divided by
    `temperature`, then the `top_k` most likely tokens kept, then the smallest set of those whose
    probability reaches `top_p`.

    `seed` makes a call's draws repeatable on the engines that take one (OpenVINO seeds each prompt
    with `seed` + its place in the call; Hugging Face seeds torch's generator once per call); None
    draws from the process's generator (chat).

    Example:
        >>> Sampling(temperature=0.7, top_p=0.95, seed=0)
        Sampling(temperature=0.7, top_p=0.95, top_k=50, seed=0)
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 1:
            raise InstructuneError(f"sampling: temperature {self.temperature}, top_p {self.top_p}, top_k {self.top_k}; "
                                   "expected temperature > 0, 0 < top_p <= 1 and top_k >= 1")


@dataclass(frozen=True)
class Request:
    """One call's work, as an engine receives it."""

    prompts: list[list[int]]          # token ids of each prompt, chat formatting included
    max_new_tokens: int
    stop_ids: list[int]               # tokens that end an answer (left out of it)
    batch_size: int = 8               # rows per call (Hugging Face) or answers in flight at least (native)
    compute_type: str | None = None   # None: the engine's default
    decoding: Decoding = field(default_factory=Decoding)
    sampling: Sampling | None = None
    # Answers per prompt (sampling only): `run` returns them together, prompt by prompt
    # (prompt 0's answers, then prompt 1's, ...).
    num_return_sequences: int = 1


class EngineCrashed(InstructuneError):
    """An engine died loading or first running a model (a native crash caught in a probe); `reason` says how."""

    def __init__(self, engine: str, reason: str):
        super().__init__(f"{engine} engine: {reason}")
        self.engine, self.reason = engine, reason


class Engine(Protocol):
    """What generate.py calls on an engine module (see the module docstring)."""

    NAME: str
    COMPUTE_TYPES: tuple[str, ...]
    SEARCHES: bool
    SAMPLES: bool
    NEEDS_EXPORT: bool
    BESIDE_ALLOCATOR: bool

    def unsupported_reason(self, model: Any, compute_type: str | None, where: Where) -> str | None: ...

    def run(self, model: Any, tokenizer: Any, request: Request, where: Where,
            on_done: Callable[[int], None]) -> list[list[int]]: ...


def cut_at_stop(ids: list[int], stop_ids: set[int] | list[int]) -> list[int]:
    """`ids` up to (not including) the first stop token."""
    stops = set(stop_ids)
    for position, token in enumerate(ids):
        if token in stops:
            return ids[:position]
    return ids

"""Generation: prompts in, the model's answers out, in input order, on the engine that fits.

Decoder-only models see each prompt exactly as training formatted it (`format_prompt`, the chat
template when the tokenizer has one); encoder-decoder models (T5, FLAN-T5) get the raw prompt as
encoder input. Answers stop at EOS, `<|im_end|>` or the chat template's end-of-turn token. The
engines share one protocol (engines.py), and
`select_engine` is the one place an engine is chosen, from visible inputs only: for plain greedy
decoding "auto" takes OpenVINO (openvino_engine.py: GenAI's continuous batching and paged attention)
where it can run, else the native engine (native.py: unpadded prefill, continuous batching), both
with Hugging Face's answers in float32; sampling, and MBR decoding (mbr.py: the consensus of several
sampled answers), run on OpenVINO where it can, else Hugging Face; everything else (beam search and
the other `Decoding` settings, encoder-decoder, quantized and unknown-family models) runs on Hugging
Face `generate` (hf_engine.py), the reference. An engine that crashes at load (a probe in a child process
that dies, engine_probe.py) costs one line on stderr, and "auto" decodes on the next engine.
Streaming is chat.py's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from instructune.data.tokenize import prompt_token_ids
from instructune.errors import InstructuneError
from instructune.generation import hf_engine, llamacpp_engine, native, openvino_engine
from instructune.generation.engines import Decoding, EngineCrashed, Request, Sampling, Where
from instructune.generation.mbr import Mbr, choose
from instructune.models import is_encoder_decoder
from instructune.models.chat_templates import end_of_turn_token

__all__ = ["Decoding", "GenerateOptions", "Mbr", "Sampling", "Where", "encode_prompt", "generate", "select_engine",
           "stop_token_ids"]

CHAT_END_TOKEN = "<|im_end|>"
# The engines by name; "auto" tries them in this order and Hugging Face last (it runs any transformers model).
# llama.cpp runs GGUF files (llamacpp_engine.load_gguf) and nothing else.
ENGINES: dict[str, ModuleType] = {engine.NAME: engine for engine in (openvino_engine, native, llamacpp_engine,
                                                                      hf_engine)}
ENGINE_CHOICES = ("auto", *ENGINES)


@dataclass(frozen=True)
class GenerateOptions:
    """How `generate` answers: length, batching, formatting, engine and search.

    Example:
        >>> GenerateOptions(max_new_tokens=64, engine="native", compute_type="bfloat16")
    """

    # Cap on new tokens per answer.
    max_new_tokens: int = 128
    # Prompts per Hugging Face `generate` call, or answers in flight at least in the native engine's
    # continuous batch (at least native.MIN_SLOTS). OpenVINO keeps every prompt in flight.
    batch_size: int = 8
    # Wrap prompts in the tokenizer's chat template; None = when it has one. Ignored for encoder-decoder models.
    chat_template: bool | None = None
    # "auto" (select_engine's choice), or an engine by name: an error when it cannot run here.
    engine: str = "auto"
    # Precision of instructune's engines: None or "float32" (Hugging Face's answers), "bfloat16" (faster,
    # changes some answers). Hugging Face runs in the model's own dtype.
    compute_type: str | None = None
    # Beam search and the other Hugging Face `generate` settings; the default is plain greedy.
    decoding: Decoding = field(default_factory=Decoding)
    # Sample instead of searching (OpenVINO or Hugging Face); None = greedy.
    sampling: Sampling | None = None
    # Minimum Bayes risk decoding (mbr.py): sample `mbr.samples` answers per prompt, return their consensus.
    mbr: Mbr | None = None
    # A tqdm bar over prompts, with prompts/s and the time left.
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise InstructuneError(f"generate: batch_size and max_new_tokens must be >= 1, got {self.batch_size}, "
                                   f"{self.max_new_tokens}")
        if self.engine not in ENGINE_CHOICES:
            raise InstructuneError(f"generate: engine {self.engine!r}; expected one of {', '.join(ENGINE_CHOICES)}")
        if self.mbr is not None and (self.sampling is not None or self.decoding.changed()):
            what = "sampling" if self.sampling is not None else self.decoding.describe()
            raise InstructuneError(f"generate: MBR decoding samples its own candidates; it does not combine with {what}")


@dataclass(frozen=True)
class Selection:
    """The engine `select_engine` chose; why each one before it was passed over; which of those reasons are news.

    A plain fit (another family, beam search, a missing package, weights that change between calls) is
    not news; a crash and the process's allocator are: `generate` says those on stderr.
    """

    engine: str
    passed_over: tuple[tuple[str, str], ...] = ()
    news: tuple[str, ...] = ()  # engines passed over because they crash here, or for the preloaded allocator


def encode_prompt(model: Any, tokenizer: Any, prompt: str, chat_template: bool | None = None) -> list[int]:
    """Token ids of the text the model reads before its answer.

    Decoder-only: `prompt_token_ids`, exactly as training tokenizes the prompt. Encoder-decoder: the
    raw prompt with the tokenizer's own special tokens (T5 appends </s>).

    Example:
        >>> tokenizer.decode(encode_prompt(model, tokenizer, "Hi"))
        '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if is_encoder_decoder(model):
        return tokenizer(prompt)["input_ids"]
    return prompt_token_ids(tokenizer, prompt, chat_template)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids of the model and tokenizer, the token that ends an answer in the tokenizer's chat template
    (`<end_of_turn>` for Gemma's, models/chat_templates.py), and `<|im_end|>` when the vocabulary has it.

    Example:
        >>> tokenizer.convert_ids_to_tokens(stop_token_ids(model, tokenizer))   # Gemma 3 tuned with "gemma"
        ['<eos>', '<end_of_turn>']
    """
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in (config_eos, tokenizer.eos_token_id):
        ids.extend(candidate if isinstance(candidate, list) else [candidate])
    for token in (end_of_turn_token(tokenizer), CHAT_END_TOKEN):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    return sorted({i for i in ids if i is not None})


def select_engine(model: Any, options: GenerateOptions, where: Where, *, exclude: tuple[str, ...] = ()) -> Selection:
    """The engine that runs `options` on `model` where the call runs: a pure function of these inputs.

    An engine named in `options.engine` is an error when it cannot run; "auto" takes the first of
    ENGINES that can (OpenVINO, native, Hugging Face), of those `where.auto_engines` allows, skipping
    `exclude` (engines that crashed in this call). Instructune's own engines decode plain greedy answers only; Hugging Face runs any
    model and setting in the model's own dtype, so a precision asked of it is an error too.

    Example:
        >>> select_engine(model, GenerateOptions(), Where(allocator="libtcmalloc_minimal.so.4"))
        Selection(engine='native', passed_over=(('openvino', 'it aborts beside the preloaded allocator ...'),), news=('openvino',))
    """
    if isinstance(model, llamacpp_engine.GgufModel):  # a GGUF file runs in llama.cpp only
        if options.engine not in ("auto", llamacpp_engine.NAME):
            raise InstructuneError(f"generate: engine {options.engine!r} cannot run a GGUF file; use engine 'auto' "
                                   "or 'llamacpp'")
        names = [llamacpp_engine.NAME]
    elif options.engine != "auto":
        names = [options.engine]
    else:
        names = [name for name in ENGINES if where.auto_engines is None or name in where.auto_engines] or ["hf"]
    passed_over: list[tuple[str, str]] = []
    news: list[str] = []
    for name in names:
        engine = ENGINES[name]
        reason = _reason(engine, model, options, where)
        if reason is None:
            # Where it could run, what of this process stops it: a crash in this call, the allocator, a
            # configuration known to crash it here (found earlier, or by a probe; engine_probe.py).
            if name in exclude:
                reason = "crashed loading this model"
            elif where.allocator and not engine.BESIDE_ALLOCATOR:
                reason = f"it aborts beside the preloaded allocator {where.allocator}"
            elif hasattr(engine, "crash_reason"):
                reason = engine.crash_reason(model, options.compute_type)
            if reason is None:
                return Selection(name, tuple(passed_over), tuple(news))
            news.append(name)
        if options.engine != "auto":
            raise InstructuneError(f"generate: engine {name!r} cannot run here: {reason}; use engine 'auto' or 'hf'")
        passed_over.append((name, reason))
    raise InstructuneError("generate: no engine can run this here: " + "; ".join(f"{n}: {r}" for n, r in passed_over))


def _reason(engine: ModuleType, model: Any, options: GenerateOptions, where: Where) -> str | None:
    if not engine.SAMPLES and (options.sampling is not None or options.mbr is not None):
        return "it decodes greedily only"
    if not engine.SEARCHES and options.decoding.changed():
        return f"{options.decoding.describe()} needs Hugging Face generate"
    if options.compute_type is not None and options.compute_type not in (engine.COMPUTE_TYPES or ("float32",)):
        if not engine.COMPUTE_TYPES:
            return (f"compute_type {options.compute_type!r}: {engine.NAME} runs in the model's own dtype "
                    "(leave compute_type out)")
        return f"compute_type {options.compute_type!r} is not one of {', '.join(engine.COMPUTE_TYPES)}"
    if engine.NEEDS_EXPORT and where.weights_change:
        return "weights that change between calls decode without an export"
    return engine.unsupported_reason(model, options.compute_type, where)


def generate(model: Any, tokenizer: Any, prompts: list[str], options: GenerateOptions | None = None, *,
             where: Where | None = None, new_token_counts: list[int] | None = None, **settings: Any) -> list[str]:
    """Generate one answer per prompt: greedy by default, or searched, sampled, or MBR's consensus of samples.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        prompts: rendered instructions (template inputs), unformatted.
        options: `GenerateOptions`; None = the defaults.
        where: the calling process as engines see it; None = `Where.here()` (this process, weights
            that stay the same between calls). In-training checks pass `Where.here(weights_change=True)`.
        new_token_counts: a list that receives each answer's number of new tokens (the stop token left
            out), in the order of `prompts`: an answer of `max_new_tokens` tokens ran into the cap instead
            of stopping (evaluate/wellformed.py).
        settings: `GenerateOptions` fields that replace those of `options` (as Hugging Face's
            `generate(**kwargs)` over its GenerationConfig), e.g. `max_new_tokens=32, engine="hf"`.

    Returns:
        The decoded new text of each prompt, stripped, in the order of `prompts`.

    Example:
        >>> generate(model, tokenizer, ["Summarize: #Person1#: Hi. #Person2#: Hello."], max_new_tokens=32)
        ['Two people greet each other.']
    """
    from tqdm.auto import tqdm

    options = replace(options or GenerateOptions(), **settings)
    where = where or Where.here()
    if not prompts:
        return []
    stop_ids = stop_token_ids(model, tokenizer)
    encoded = [encode_prompt(model, tokenizer, prompt, options.chat_template) for prompt in prompts]
    # Longest first: similar lengths share a batch (less padding), and a memory error shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    per_prompt = options.mbr.samples if options.mbr else 1
    request = Request(prompts=[encoded[i] for i in order], max_new_tokens=options.max_new_tokens, stop_ids=stop_ids,
                      batch_size=options.batch_size, compute_type=options.compute_type, decoding=options.decoding,
                      sampling=options.mbr.sampling() if options.mbr else options.sampling,
                      num_return_sequences=per_prompt)
    crashed: tuple[str, ...] = ()
    while True:
        selection = select_engine(model, options, where, exclude=crashed)
        for name, reason in selection.passed_over:
            if name in selection.news and name not in crashed:
                print(f"generate: {name} engine skipped: {reason}; decoding on the {selection.engine} engine", file=sys.stderr)
        try:
            with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not options.progress) as bar:
                rows = ENGINES[selection.engine].run(model, tokenizer, request, where, lambda _: bar.update(1))
            break
        except EngineCrashed as crash:
            if options.engine != "auto":
                raise InstructuneError(f"generate: engine {crash.engine!r} cannot run here: {crash.reason}; "
                                       "use engine 'auto' or 'hf'") from None
            crashed += (crash.engine,)
            selection = select_engine(model, options, where, exclude=crashed)
            print(f"generate: {crash.engine} engine skipped: {crash.reason}; decoding on the {selection.engine} engine",
                  file=sys.stderr)
    if options.mbr:
        rows = [_consensus(tokenizer, rows[start:start + per_prompt], options.mbr.utility)
                for start in range(0, len(rows), per_prompt)]
    new_tokens: list[list[int]] = [[] for _ in prompts]
    for index, row in zip(order, rows):
        new_tokens[index] = row
    if new_token_counts is not None:
        new_token_counts.extend(len(row) for row in new_tokens)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def _consensus(tokenizer: Any, candidates: list[list[int]], utility: str) -> list[int]:
    """The MBR choice among one prompt's sampled answers (token ids in, token ids out)."""
    texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in candidates]
    return candidates[choose(texts, utility)]

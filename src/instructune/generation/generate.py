"""Batched text generation for evaluation: prompts in, the model's answers out, in input order.

Decoder-only models see each prompt exactly as training formatted it (`format_prompt`, the chat
template when the tokenizer has one); batches are left-padded so every row's answer starts at the
same column, and prompts are sorted by length so rows in a batch carry little padding. Generation
uses the KV cache and stops at EOS or `<|im_end|>`. Encoder-decoder models (T5, FLAN-T5) get the raw
prompt as encoder input and no chat template. Greedy decoding of Llama-family models runs on the
OpenVINO engine (openvino_engine.py: GenAI's continuous batching and paged attention) where it is
installed, else on the native engine (decode.py: unpadded prefill, continuous batching), both with
the same answers in float32; CTranslate2 (fast.py) is there on request; sampling, beam search and
the other `Decoding` settings, encoder-decoder and quantized models run on Hugging Face `generate`,
which stays the reference (beam search is HF's own, not reimplemented). A configuration OpenVINO
crashes on (openvino_engine.crash_reason, or a probe in a child process that dies) is one line on
stderr, and "auto" decodes on the next engine. Streaming and stop strings other than end tokens are
left out (chat.py streams).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

from instructune.errors import InstructuneError
from instructune.generation import native as decode
from instructune.generation import fast
from instructune.generation import openvino_engine
from instructune.models import is_encoder_decoder
from instructune.data.tokenize import prompt_token_ids

CHAT_END_TOKEN = "<|im_end|>"
# "auto": for greedy decoding, the OpenVINO engine when it is installed and can take the model (and the
# export can be kept: not for in-training checks), else the native engine, else Hugging Face.
ENGINES = ("auto", "hf", "openvino", "native", "ct2")
# What "auto" tries for greedy decoding, in order (CTranslate2 only for int8, which only it has).
AUTO_ENGINES = ("openvino", "native", "ct2")
# Precisions each engine offers; the first is its default. Hugging Face runs in the model's own dtype.
COMPUTE_TYPES = {"openvino": openvino_engine.COMPUTE_TYPES, "native": decode.COMPUTE_TYPES, "ct2": fast.COMPUTE_TYPES}


@dataclass(frozen=True)
class Decoding:
    """How answers are searched for beyond plain greedy decoding: Hugging Face `generate` settings.

    The defaults are plain greedy decoding, which every engine runs. Any other value is Hugging Face
    `generate`'s own (beam search, n-gram blocking, repetition penalty), so `generate(engine="auto")`
    then runs Hugging Face, slower than the native greedy engine, and "native" or "ct2" are an error.
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
    """EOS ids of the model and tokenizer, plus `<|im_end|>` when the vocabulary has it."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in (config_eos, tokenizer.eos_token_id):
        ids.extend(candidate if isinstance(candidate, list) else [candidate])
    chat_end = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
    if chat_end is not None and chat_end != tokenizer.unk_token_id:
        ids.append(chat_end)
    return sorted({i for i in ids if i is not None})


def pad_rows(rows: list[list[int]], pad_id: int, *, left: bool):
    """Token id rows as (input_ids, attention_mask) tensors of shape (N, longest row), padded left or right."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


def _cut_at_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat_template: bool | None = None,
    progress: bool = True,
    engine: str = "auto",
    compute_type: str | None = None,
    cache_engine: bool = True,
    decoding: Decoding | None = None,
) -> list[str]:
    """Generate one answer per prompt, greedy by default.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        prompts: rendered instructions (template inputs), unformatted.
        max_new_tokens: cap on generated tokens per answer.
        batch_size: prompts per `generate` call (Hugging Face, CTranslate2), or answers in flight
            at once in the native engine's continuous batch (at least `decode.MIN_SLOTS`). The
            OpenVINO engine keeps every prompt in flight, as its KV cache allows.
        do_sample: sample instead of greedy decoding; then `temperature` and `top_p` apply.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        chat_template: wrap prompts in the tokenizer's chat template; None = when it has one.
            Ignored for encoder-decoder models.
        progress: show a tqdm bar over prompts, with prompts/s and an ETA.
        engine: "auto" (for plain greedy decoding the OpenVINO engine when installed and
            `cache_engine`, else the native engine, when they can take the model; else Hugging Face),
            "hf" (always Hugging Face `generate`), "openvino", "native" or "ct2" (CTranslate2); the
            last three are an error when they cannot take the model or the decoding settings.
        compute_type: the precision of the OpenVINO, native or CTranslate2 engine: None or "float32"
            (the same answers as Hugging Face greedy), "bfloat16" (OpenVINO, native: faster, changes
            some answers) or "int8" (CTranslate2). The Hugging Face path runs in the model's own dtype.
        cache_engine: keep the OpenVINO export and CTranslate2's conversion on disk and in memory,
            keyed by a hash of the weights; turn off for weights that change between calls
            (in-training checks: "auto" then decodes on the native engine, which needs no export).
        decoding: beam search and the other Hugging Face `generate` settings (`Decoding`); None = plain
            greedy. `batch_size` prompts then make batch_size x num_beams rows per call.

    Returns:
        The decoded new text of each prompt, stripped, in the order of `prompts`.

    Example:
        >>> generate(model, tokenizer, ["Summarize: #Person1#: Hi. #Person2#: Hello."], max_new_tokens=32)
        ['Two people greet each other.']
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or max_new_tokens < 1:
        raise InstructuneError(f"generate: batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    if engine not in ENGINES:
        raise InstructuneError(f"generate: engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if not prompts:
        return []
    stop_ids = stop_token_ids(model, tokenizer)
    encoded = [encode_prompt(model, tokenizer, prompt, chat_template) for prompt in prompts]
    # Longest first: similar lengths share a batch (less padding), and a memory error shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    decoding = decoding or Decoding()
    hf_only = _hf_only_reason(do_sample, decoding)
    notes: list[str] = []
    chosen = _choose_engine(model, engine, compute_type, hf_only, cache_engine, notes)
    pipeline = None
    if chosen == "openvino":
        try:
            pipeline = openvino_engine.load_engine(model, compute_type=compute_type or "float32", cache=cache_engine)
        except openvino_engine.EngineCrashed as crash:
            if engine != "auto":
                raise InstructuneError(f"generate: engine 'openvino' cannot run here: {crash.reason}; "
                                       "use engine 'auto' or 'hf'") from None
            # The verdict is kept now, so the choice passes OpenVINO over (and notes why).
            chosen = _choose_engine(model, engine, compute_type, hf_only, cache_engine, notes)
    for note in notes:
        print(f"generate: {note}; decoding on the {chosen} engine", file=sys.stderr)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        if chosen == "openvino":
            rows = openvino_engine.generate_ids(pipeline, [encoded[i] for i in order], max_new_tokens=max_new_tokens,
                                                stop_ids=stop_ids, on_done=lambda _: bar.update(1))
            for index, row in zip(order, rows):
                new_tokens[index] = _cut_at_stop(row, set(stop_ids))
        elif chosen == "native":
            decoder = decode.NativeDecoder(model, compute_type or "float32")
            rows = decoder.generate([encoded[i] for i in order], max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                    slots=max(batch_size, decode.MIN_SLOTS), on_done=lambda _: bar.update(1))
            for index, row in zip(order, rows):
                new_tokens[index] = row
        else:
            if chosen == "ct2":
                decode_batch = _ct2_decoder(model, tokenizer, compute_type or "float32", cache_engine, stop_ids,
                                            max_new_tokens)
            else:
                decode_batch = _hf_decoder(model, tokenizer, stop_ids, max_new_tokens, do_sample, temperature, top_p,
                                           decoding)
            for start in range(0, len(order), batch_size):
                indices = order[start:start + batch_size]
                for index, row in zip(indices, decode_batch([encoded[i] for i in indices])):
                    new_tokens[index] = _cut_at_stop(row, set(stop_ids))
                bar.update(len(indices))
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def _hf_only_reason(do_sample: bool, decoding: Decoding) -> str | None:
    """Why only Hugging Face `generate` can decode this way, or None for plain greedy decoding."""
    if do_sample:
        return "it decodes greedily only"
    if decoding.changed():
        return f"{decoding.describe()} needs Hugging Face generate"
    return None


def _choose_engine(model: Any, engine: str, compute_type: str | None, hf_only: str | None,
                   persistent: bool = True, notes: list[str] | None = None) -> str:
    """The engine that runs: the one asked for, or for "auto" OpenVINO (when `persistent`) or the native
    one where they can, else "hf".

    `hf_only` says why the decoding asked for needs Hugging Face (None: plain greedy, any engine).
    `persistent` is False for weights that change between calls (in-training checks): "auto" skips
    OpenVINO, which would pay an export per call (~10 s for the default model) and cannot run in
    `instructune train` anyway (it aborts beside the tcmalloc training runs under). When "auto" passes
    OpenVINO over because it would crash here (openvino_engine.crash_reason), `notes` gets the reason.
    """
    if engine == "hf":
        return "hf"
    # auto prefers OpenVINO, then the native engine; int8 only exists on CTranslate2.
    candidates = AUTO_ENGINES if engine == "auto" else (engine,)
    modules = {"openvino": openvino_engine, "native": decode, "ct2": fast}
    for candidate in candidates:
        reason = hf_only or modules[candidate].unsupported_reason(model)
        if compute_type is not None and compute_type not in COMPUTE_TYPES[candidate]:
            reason = f"compute_type {compute_type!r} is not one of {', '.join(COMPUTE_TYPES[candidate])}"
        if engine == "auto" and candidate == "openvino" and not persistent:
            reason = reason or "weights that change between calls decode without an export"
        if reason is None and candidate == "openvino" and (crash := openvino_engine.crash_reason(
                model, compute_type or "float32")) is not None:
            reason = crash
            if engine == "auto" and notes is not None and f"openvino engine skipped: {crash}" not in notes:
                notes.append(f"openvino engine skipped: {crash}")
        if reason is None and (engine != "auto" or candidate != "ct2" or compute_type == "int8"):
            return candidate
        if engine != "auto":
            raise InstructuneError(f"generate: engine {engine!r} cannot run here: {reason}; use engine 'auto' or 'hf'")
    if compute_type not in (None, "float32"):
        why = hf_only or "neither can run this model"
        raise InstructuneError(f"generate: compute_type {compute_type!r} needs the openvino, native or ct2 engine, but {why}; "
                               "leave it out (Hugging Face runs in the model's dtype)")
    return "hf"


def _ct2_decoder(model: Any, tokenizer: Any, compute_type: str, cache: bool, stop_ids: list[int],
                 max_new_tokens: int):
    """A batch decoder on CTranslate2."""
    loaded = fast.load_engine(model, tokenizer, compute_type=compute_type, cache=cache)

    def decode_batch(rows: list[list[int]]) -> list[list[int]]:
        return fast.generate_ids(loaded, rows, tokenizer, max_new_tokens=max_new_tokens, stop_ids=stop_ids)

    return decode_batch


def _hf_decoder(model: Any, tokenizer: Any, stop_ids: list[int], max_new_tokens: int, do_sample: bool,
                temperature: float, top_p: float, decoding: Decoding):
    """A batch decoder on Hugging Face `generate`: left-padded rows in, new token ids out (the best beam's)."""
    import torch
    from transformers import GenerationConfig

    encoder_decoder = is_encoder_decoder(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    # Every decoding setting explicitly, defaults included: the model's own generation_config (a Hub
    # model may ship num_beams or a repetition penalty) must not change what the result file records.
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stop_ids, pad_token_id=pad_id, **sampling,
        **decoding.to_dict(),
    )
    if encoder_decoder:
        generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    model.eval()

    def decode_batch(rows: list[list[int]]) -> list[list[int]]:
        input_ids, attention_mask = pad_rows(rows, pad_id, left=True)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                generation_config=generation_config,
            )
        # Decoder-only output repeats the prompt; seq2seq output starts with the decoder start token.
        new_tokens = output[:, 1:] if encoder_decoder else output[:, input_ids.shape[1]:]
        return new_tokens.tolist()

    return decode_batch

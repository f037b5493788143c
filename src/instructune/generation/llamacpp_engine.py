"""The llama.cpp engine: a GGUF file run by llama.cpp's own server inside this process (xllamacpp).

`LlamaCppServer` starts llama.cpp's HTTP server (the `llama-server` code, from the xllamacpp wheel:
no compiler, no network) for one GGUF file, optionally with LoRA adapter files applied, with
`slots` sequences decoded side by side by its continuous batching. Everything goes through the
server's own endpoints, so what is measured is what a llama.cpp, Ollama or LM Studio user gets:
`apply_template` (the file's chat template, rendered by llama.cpp's Jinja engine), `tokenize` and
`detokenize` (llama.cpp's tokenizer, rebuilt from the file's vocabulary and pre-tokenizer name),
`generate_ids` (greedy: temperature 0, top-k 1, or sampling for chat; all prompts in flight at once, one
HTTP request per prompt from a thread pool; llama.cpp stops at the file's end-of-generation tokens) and
`score_items` (multiple choice). The server listens on 127.0.0.1 behind a random API key, and
`close()` shuts it down: xllamacpp has no stop method; dropping the last reference to its `Server`
runs the C++ destructor, which terminates the task loop, stops the HTTP server and joins its thread
(only once the loop has started: `_start` waits for it, else the join never returns).

Log-probabilities (checked on xllamacpp 2026.10.11549): llama.cpp's server gives log-probabilities
of *generated* tokens only. `/v1/completions` ignores `echo` (llama.cpp issue 27174; PRs 15189 and
17935 were not merged) and `n_probs` describes sampled positions, not the prompt. But every reported
`logprob` is taken from the raw logits before any sampler (`post_sampling_probs` false), and a GBNF
grammar can name token ids (`root ::= <[id]> <[id]> ...`). So a continuation is scored exactly by
*forcing* it: prompt = context, n_predict = its length, the grammar allows exactly its tokens, and
the sum of the reported log-probabilities is log p(continuation | context) under llama.cpp's own
forward pass (equal to transformers' to ~1e-4 on an f32 file, tests/test_llamacpp.py). One request
per option; with `cache_prompt` an item's options reuse its context's KV cache in one slot. A grammar
must not meet an end-of-generation token before its end (llama.cpp then aborts the process), so a
continuation that may hold one is forced a token at a time by a logit bias instead (slower, as exact).

Answers can depend a little on which sequences share a batch (ggml's kernels differ with the number
of rows, and bf16/f16 matmuls round the activations too), as in `llama-server` itself: a near tie may
go either way between runs. On f32 and f16 files greedy answers equal transformers' (tests).

`load_gguf` wraps a file as the (model, tokenizer) pair the evaluation library takes, so
`instructune eval --engine llamacpp --model FILE.gguf` tokenizes, formats and scores exactly as for
any other model, and `instructune chat --model FILE.gguf` talks to it (chat.py). What this file leaves
out: sampling in the engine protocol (evaluation is greedy only), streaming, embeddings, GPUs, and
building llama.cpp (the wheel is the only route: see `unsupported_reason`).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

from instructune.errors import InstructuneError
from instructune.generation.engines import Request, Sampling, Where, cut_at_stop

# The engine protocol (engines.py). The precision is the file's own (f32 ... q4_1), so no compute types;
# greedy only; nothing to export (the model is the file); it runs beside tcmalloc (tried: same answers).
NAME = "llamacpp"
COMPUTE_TYPES: tuple[str, ...] = ()
SEARCHES = False
SAMPLES = False
NEEDS_EXPORT = False
BESIDE_ALLOCATOR = True
# The wheel the tests and the docs are checked against (the `test` extra pins it too).
XLLAMACPP_VERSION = "2026.10.11549"
INSTALL_HINT = f"pip install 'instructune[test]' or pip install xllamacpp=={XLLAMACPP_VERSION}"
# Defaults: 8 sequences in flight, each up to 2,048 tokens (prompt + answer). The KV cache holds
# slots x ctx_per_slot tokens: ~380 MB in f16 for SmolLM2-135M (30 layers x 3 KV heads x 64 x 2 x 2 B).
DEFAULT_SLOTS = 8
DEFAULT_CTX_PER_SLOT = 2048
# One HTTP request waits at most this long (a whole answer on a busy 2-core machine).
REQUEST_TIMEOUT_S = 3600
# llama.cpp's token type for control tokens (gguf.TokenType.CONTROL): what skip_special_tokens drops.
_CONTROL = 3


def unsupported_reason(model: Any = None, compute_type: str | None = None, where: Where | None = None) -> str | None:
    """Why the llama.cpp engine cannot run here (or cannot run `model`), or None when it can.

    Example:
        >>> unsupported_reason()   # without the wheel
        "xllamacpp is not installed (pip install 'instructune[test]' or pip install xllamacpp==2026.10.11549)"
    """
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        return f"xllamacpp is not installed ({INSTALL_HINT})"
    if model is not None and not isinstance(model, GgufModel):
        return "the llama.cpp engine runs GGUF files: give --model FILE.gguf (instructune export --gguf TYPE writes one)"
    return None


def default_threads() -> int:
    """torch's thread count when torch is loaded (the CLI sets it), else the machine's cores."""
    torch = sys.modules.get("torch")
    return (torch.get_num_threads() if torch is not None else 0) or os.cpu_count() or 1


class LlamaCppServer:
    """llama.cpp's server for one GGUF file, in this process. Use as a context manager, or call close().

    Args:
        gguf_path: the model file.
        slots: sequences decoded at once (llama.cpp's `n_parallel`); requests beyond wait for a slot.
        ctx_per_slot: tokens one sequence may hold, prompt and answer together.
        threads: CPU threads for llama.cpp (default: `default_threads()`).
        lora: LoRA adapter GGUF files (export/gguf_adapter.py), applied at scale 1.
        verbose: let llama.cpp log to stderr.

    Example:
        >>> with LlamaCppServer("exported/bot.q8_0.gguf", slots=4) as server:
        ...     server.tokenize(server.apply_template([{"role": "user", "content": "Hi"}]))[:3]
        [1, 9690, 198]
    """

    def __init__(self, gguf_path: str | os.PathLike, *, slots: int = DEFAULT_SLOTS,
                 ctx_per_slot: int = DEFAULT_CTX_PER_SLOT, threads: int | None = None,
                 lora: Iterable[str | os.PathLike] = (), verbose: bool = False):
        if (reason := unsupported_reason()) is not None:
            raise InstructuneError(f"llama.cpp engine: {reason}")
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise InstructuneError(f"{self.path}: no such GGUF file")
        if slots < 1 or ctx_per_slot < 16:
            raise InstructuneError(f"llama.cpp engine: slots {slots}, ctx_per_slot {ctx_per_slot}; expected slots >= 1 "
                                   "and ctx_per_slot >= 16")
        self.lora = [Path(p) for p in lora]
        for adapter in self.lora:
            if not adapter.is_file():
                raise InstructuneError(f"{adapter}: no such LoRA adapter GGUF file")
        self.slots, self.threads, self.verbose = slots, threads or default_threads(), verbose
        self._server, self._eos_text = None, None
        self._start(ctx_per_slot)

    def _start(self, ctx_per_slot: int) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        # Separate KV cells per slot: with one shared pool (kv_unified), requests that overflow it fail
        # with HTTP 500; separate slots fail only a request longer than its slot, checked before sending.
        params.kv_unified = False
        params.n_parallel = self.slots
        params.n_ctx = self.slots * ctx_per_slot
        params.warmup = False
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
        params.verbosity = 3 if self.verbose else -1
        if self.lora:
            params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(p), 1.0) for p in self.lora]
        self._key = secrets.token_hex(16)  # other local users cannot drive the server
        params.api_keys = [self._key]
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as error:
            raise InstructuneError(f"{self.path}: llama.cpp could not load it ({error}); run with verbose=True "
                                   "for llama.cpp's log") from None
        self.ctx_per_slot = ctx_per_slot
        self.address = self._server.listening_address
        # Wait for the task loop: the Server returns before its loop starts, and a close() in between is
        # lost (the loop sets itself running on entry) and hangs the destructor's join for ever. /slots
        # is answered by the loop itself.
        self.request("/slots")

    def close(self) -> None:
        """Shut the server down (its destructor stops the loop and the HTTP thread) and free the model."""
        server, self._server = self._server, None
        del server  # the last reference: xllamacpp's C++ ~Server runs here

    def __enter__(self) -> "LlamaCppServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reserve(self, tokens: int) -> None:
        """Make every slot hold at least `tokens` (restarting the server with larger slots if needed)."""
        if tokens > self.ctx_per_slot:
            size = 1 << (tokens - 1).bit_length()  # the next power of two: few restarts
            self.close()
            self._start(size)

    # ---- the server's endpoints ----

    def request(self, path: str, body: dict | None = None) -> dict:
        """POST `body` (GET without one) to one endpoint; its JSON answer, or InstructuneError with llama.cpp's message."""
        if self._server is None:
            raise InstructuneError("llama.cpp engine: the server was closed")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"}
        request = urllib.request.Request(self.address + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = text[:300]
            raise InstructuneError(f"llama.cpp {path}: {message}") from None

    def props(self) -> dict:
        """The server's /props: chat template, bos/eos token texts, slots, file type."""
        return self.request("/props")

    def apply_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The file's chat template rendered by llama.cpp on `messages` (as `llama-server` would)."""
        return self.request("/apply-template", {"messages": messages,
                                                "add_generation_prompt": add_generation_prompt})["prompt"]

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """llama.cpp's token ids for `text`; `parse_special` matches special-token texts as single tokens."""
        return self.request("/tokenize", {"content": text, "add_special": add_special,
                                          "parse_special": parse_special})["tokens"]

    def detokenize(self, ids: list[int]) -> str:
        """llama.cpp's text for token ids (special tokens written out)."""
        return self.request("/detokenize", {"tokens": list(ids)})["content"]

    def may_end_generation(self, ids: list[int]) -> bool:
        """Whether `ids` may hold a token llama.cpp treats as end of generation (a superset test, from their text)."""
        if self._eos_text is None:
            self._eos_text = self.props().get("eos_token") or "<"
        text = self.detokenize(ids)
        return ("<" in text and ">" in text) or self._eos_text in text

    def complete(self, prompt_ids: list[int], max_new_tokens: int, **extra: Any) -> dict:
        """One /completion from token ids, greedy unless `extra` sets the samplers; the server's JSON answer."""
        body = {"prompt": list(prompt_ids), "n_predict": max_new_tokens, "temperature": 0.0, "top_k": 1,
                "samplers": ["top_k"], "return_tokens": True, "cache_prompt": True, "stream": False, **extra}
        return self.request("/completion", body)


def sampler_settings(sampling: Sampling | None) -> dict:
    """llama.cpp /completion settings: greedy (top-k 1), or sampling as Hugging Face `generate` samples.

    Sampling mirrors hf_engine.generation_config: temperature, then top-k, then top-p, in
    transformers' order; llama.cpp's other default samplers (min-p 0.05, penalties, DRY) are left out.

    Example:
        >>> sampler_settings(Sampling(temperature=0.7, top_p=0.9))
        {'temperature': 0.7, 'top_k': 50, 'top_p': 0.9, 'samplers': ['temperature', 'top_k', 'top_p']}
    """
    if sampling is None:
        return {"temperature": 0.0, "top_k": 1, "samplers": ["top_k"]}
    settings = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                "samplers": ["temperature", "top_k", "top_p"]}
    return settings if sampling.seed is None else {**settings, "seed": sampling.seed}


def generate_ids(engine: LlamaCppServer, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: list[int],
                 on_done: Callable[[int], None] | None = None, sampling: Sampling | None = None) -> list[list[int]]:
    """New token ids for every encoded prompt (greedy unless `sampling`), all sent at once, cut before a stop token.

    Args:
        engine: a running `LlamaCppServer` (restarted with larger slots when a prompt needs them).
        prompts: token id rows (chat formatting included).
        max_new_tokens: cap on new tokens per answer.
        stop_ids: tokens that end an answer (llama.cpp itself stops at the file's end-of-generation tokens).
        on_done: called with a prompt's index as its answer finishes (progress bars).
        sampling: None = greedy; else llama.cpp samples as `sampler_settings` says.

    Example:
        >>> generate_ids(engine, [[1, 9690, 198]], max_new_tokens=4, stop_ids=[2])
        [[17, 9, 41]]
    """
    if any(not row for row in prompts):
        raise InstructuneError("llama.cpp engine: an empty prompt has nothing to continue")
    if not prompts:
        return []
    engine.reserve(max(len(row) for row in prompts) + max_new_tokens)
    stops = set(stop_ids)

    def one(index: int) -> list[int]:
        answer = engine.complete(prompts[index], max_new_tokens, **sampler_settings(sampling))
        if answer.get("truncated"):
            raise InstructuneError(f"llama.cpp engine: prompt {index} was truncated to fit its slot "
                                   f"({engine.ctx_per_slot} tokens)")
        return cut_at_stop(answer["tokens"], stops)

    return _run_all(engine, len(prompts), one, on_done)


def run(model: "GgufModel", tokenizer: Any, request: Request, where: Where,
        on_done: Callable[[int], None]) -> list[list[int]]:
    """The engine protocol's entry: greedy answers of a GGUF file (`load_gguf`), cut before their stop tokens."""
    return generate_ids(model.engine, request.prompts, max_new_tokens=request.max_new_tokens,
                        stop_ids=request.stop_ids, on_done=on_done)


def _run_all(engine: LlamaCppServer, n: int, job: Callable[[int], Any],
             on_done: Callable[[int], None] | None) -> list[Any]:
    """job(0..n-1) on a pool as wide as the server's slots; results in index order.

    One job runs in the calling thread: Ctrl-C there closes its HTTP request, and llama.cpp's server
    then cancels the generation (chat's answers stop at once; a pool would wait for the answer's end).
    """
    if n == 1:
        result = job(0)
        if on_done:
            on_done(0)
        return [result]
    results: list[Any] = [None] * n
    with ThreadPoolExecutor(max_workers=min(engine.slots, n)) as pool:
        futures = {pool.submit(job, index): index for index in range(n)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_done:
                on_done(futures[future])
    return results


def loglikelihood(engine: LlamaCppServer, context_ids: list[int], continuation_ids: list[int]) -> float:
    """log p(continuation | context) under llama.cpp, the continuation forced token by token (`forced_steps`).

    Example:
        >>> loglikelihood(engine, tokenizer.encode("The sky is"), tokenizer.encode(" blue"))
        -2.0871
    """
    return float(sum(logprob for logprob, _ in forced_steps(engine, context_ids, continuation_ids)))


def forced_steps(engine: LlamaCppServer, context_ids: list[int], continuation_ids: list[int]) -> list[tuple[float, int]]:
    """Per continuation token, with the continuation forced after the context: (its log-probability, the token
    llama.cpp itself ranks first there). The second shows where a quantized file would leave a reference answer.

    One request with a token grammar; a continuation that may hold an end-of-generation token goes
    one request per token instead, each forced by a logit bias: llama.cpp aborts the whole process
    when a grammar meets an end-of-generation token before its end (llama-grammar.cpp), and treats
    more tokens as such than the file names (any `<|endoftext|>`, `<|im_end|>`...). Only a
    continuation whose text holds "<" and ">" or the EOS text takes the slow path.

    Example:
        >>> forced_steps(engine, tokenizer.encode("The sky is"), tokenizer.encode(" blue today"))
        [(-2.0871, 6150), (-3.1416, 30)]
    """
    if not context_ids or not continuation_ids:
        raise InstructuneError("llama.cpp engine: forcing a continuation needs a non-empty context and continuation")
    if engine.may_end_generation(continuation_ids):
        return [step for i, token in enumerate(continuation_ids)
                for step in _forced(engine, list(context_ids) + list(continuation_ids[:i]), [token], bias=True)]
    return _forced(engine, context_ids, continuation_ids, bias=False)


def forced_top1_agreement(engine: LlamaCppServer, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Share of reference answers' tokens that llama.cpp also ranks first when those answers are forced after
    their prompts: agreement per token, without the cascade after a first difference that whole answers show.

    Example:
        >>> forced_top1_agreement(engine, prompt_ids, transformers_answer_ids)   # a q8_0 file
        0.947
    """
    same = total = 0
    for prompt, answer in zip(prompts, answers):
        if answer:
            same += sum(top == token for (_, top), token in zip(forced_steps(engine, prompt, answer), answer))
            total += len(answer)
    if not total:
        raise InstructuneError("llama.cpp engine: no answer tokens to compare")
    return same / total


def _forced(engine: LlamaCppServer, prompt_ids: list[int], forced_ids: list[int], *, bias: bool) -> list[tuple[float, int]]:
    """(pre-sampling log-probability, top-1 id) of each of `forced_ids` generated after `prompt_ids`."""
    if bias:  # one token, forced by a logit bias (the reported log-probabilities are taken before any bias)
        extra = {"logit_bias": [[forced_ids[0], 1000.0]]}
    else:
        extra = {"grammar": "root ::= " + " ".join(f"<[{token}]>" for token in forced_ids)}
    answer = engine.complete(prompt_ids, len(forced_ids), n_probs=1, **extra)
    steps = answer.get("completion_probabilities", [])
    if [step["id"] for step in steps] != list(forced_ids):
        raise InstructuneError(f"llama.cpp engine: the forced continuation came back as "
                               f"{[step['id'] for step in steps][:8]}, expected {list(forced_ids)[:8]}")
    return [(float(step["logprob"]), int(step["top_logprobs"][0]["id"])) for step in steps]


def score_items(engine: LlamaCppServer, items: list[tuple[list[list[int]], list[list[int]]]],
                on_items_done: Callable[[int], None] | None = None) -> list[float]:
    """Summed log-probability of every option of every item, in order (as choice_pack.score_packed returns them).

    Args:
        engine: a running `LlamaCppServer`.
        items: per item (context ids per option, continuation ids per option).
        on_items_done: called with 1 as each item finishes.

    Returns:
        One float per option, items in order.
    """
    engine.reserve(max(len(c) + len(o) for contexts, options in items for c, o in zip(contexts, options)))

    def one(index: int) -> list[float]:
        # An item's options run one after another in one worker: the slot keeps the context's KV cache.
        contexts, options = items[index]
        return [loglikelihood(engine, context, option) for context, option in zip(contexts, options)]

    per_item = _run_all(engine, len(items), one, (lambda _: on_items_done(1)) if on_items_done else None)
    return [value for sums in per_item for value in sums]


# ---- a GGUF file as the (model, tokenizer) pair the evaluation library takes ----

class GgufModel:
    """A GGUF file run by llama.cpp, standing where evaluation takes a transformers model.

    `generate` (engine "llamacpp") calls `generate_ids(model.engine, ...)` and multiple choice calls
    `score_items(model.engine, ...)`; attributes the shared code reads (`config`, `generation_config`,
    `eval`) are provided, nothing else of a torch model is.
    """

    def __init__(self, engine: LlamaCppServer, metadata: dict):
        self.engine = engine
        self.path = engine.path
        # model_type "gguf": no family module claims it, so instructune's torch engines pass it over.
        self.config = SimpleNamespace(is_encoder_decoder=False, model_type="gguf", architectures=[],
                                      gguf_architecture=metadata["architecture"], name_or_path=str(engine.path))
        self.generation_config = SimpleNamespace(eos_token_id=metadata["eog_ids"])

    def eval(self) -> "GgufModel":
        return self

    def close(self) -> None:
        self.engine.close()


class GgufTokenizer:
    """The tokenizer a GGUF file carries, answered by llama.cpp: template, encode, decode, special ids.

    It offers the part of a transformers tokenizer that prompt formatting, multiple-choice encoding
    and decoding use (`apply_chat_template`, `__call__`, `encode`, `decode`, the special token ids).
    """

    def __init__(self, engine: LlamaCppServer, metadata: dict):
        self.engine = engine
        self.name_or_path = str(engine.path)
        self.chat_template = metadata["chat_template"]
        self._tokens, self._control = metadata["tokens"], metadata["control_ids"]
        ids = metadata["ids"]
        self.bos_token_id, self.eos_token_id = ids.get("bos"), ids.get("eos")
        self.unk_token_id = ids.get("unk")
        self.pad_token_id = ids.get("pad", self.eos_token_id)
        self.bos_token, self.eos_token = (self._tokens[i] if i is not None else None
                                          for i in (self.bos_token_id, self.eos_token_id))
        self.all_special_tokens = [self._tokens[i] for i in sorted(self._control)]
        self._index = {token: index for index, token in enumerate(self._tokens)}
        self._add_bos = metadata.get("add_bos", False)

    def __len__(self) -> int:
        return len(self._tokens)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False,
                            **_: Any) -> str | list[int]:
        text = self.engine.apply_template(messages, add_generation_prompt)
        # llama.cpp leaves the BOS out of the rendering when the file adds one on tokenizing (Gemma's), and
        # feeds it all the same: put it back, as transformers' rendering of such a template writes it
        if self._add_bos and self.bos_token and not text.startswith(self.bos_token):
            text = self.bos_token + text
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.engine.tokenize(text, add_special=add_special_tokens, parse_special=True)

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, **_: Any) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, **_: Any) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) in self._control)]
        return self.engine.detokenize(ids) if ids else ""

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._index.get(token, self.unk_token_id)


def read_metadata(gguf_path: str | os.PathLike) -> dict:
    """What GgufModel and GgufTokenizer need from a file's keys: architecture, tokens, special ids, template."""
    import gguf

    if not Path(gguf_path).is_file():
        raise InstructuneError(f"{gguf_path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(gguf_path)
    except (ValueError, OSError) as error:
        raise InstructuneError(f"{gguf_path}: not a readable GGUF file ({error})") from None

    def value(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    if value("general.type", "model") != "model":
        raise InstructuneError(f"{gguf_path}: general.type is {value('general.type')!r}; expected a model file "
                               "(a LoRA adapter GGUF is applied over its base: lora=[...])")
    tokens = list(value("tokenizer.ggml.tokens", []))
    types = list(value("tokenizer.ggml.token_type", []))
    ids = {name: value(f"tokenizer.ggml.{key}_token_id") for name, key in
           (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"), ("eot", "eot"))}
    ids = {name: int(i) for name, i in ids.items() if i is not None}
    eog = sorted({ids[name] for name in ("eos", "eot") if name in ids})
    return {"architecture": value("general.architecture"), "tokens": tokens, "ids": ids, "eog_ids": eog,
            "control_ids": {i for i, t in enumerate(types) if t == _CONTROL},
            "chat_template": value("tokenizer.chat_template"), "add_bos": bool(value("tokenizer.ggml.add_bos_token"))}


def lora_files(adapter: str | os.PathLike | None) -> list[str | os.PathLike]:
    """`--adapter` over a GGUF model, as `LlamaCppServer`'s `lora` list: a LoRA GGUF file or nothing.

    Example:
        >>> lora_files("runs/quickstart/adapter")
        InstructuneError: --adapter runs/quickstart/adapter: over a GGUF model give a LoRA GGUF file (...)
    """
    if adapter is None:
        return []
    if not str(adapter).endswith(".gguf"):
        raise InstructuneError(f"--adapter {adapter}: over a GGUF model give a LoRA GGUF file "
                               "(instructune export --adapter DIR --gguf-adapter f16 -o A.gguf)")
    return [adapter]


def load_gguf(gguf_path: str | os.PathLike, **server_options: Any) -> tuple[GgufModel, GgufTokenizer]:
    """Start llama.cpp on a GGUF file and return it as (model, tokenizer) for evaluate/generate.

    Args:
        gguf_path: the file to evaluate (`instructune export --gguf` writes one).
        server_options: `LlamaCppServer` keywords (slots, ctx_per_slot, threads, lora, verbose).

    Example:
        >>> model, tokenizer = load_gguf("exported/bot.q4_0.gguf", slots=8)
        >>> generate(model, tokenizer, ["Where is my order?"], engine="llamacpp")
        ['Your order has shipped.']
    """
    metadata = read_metadata(gguf_path)
    engine = LlamaCppServer(gguf_path, **server_options)
    return GgufModel(engine, metadata), GgufTokenizer(engine, metadata)

"""The OpenVINO generation engine: greedy or sampled decoding with OpenVINO GenAI's continuous batching.

OpenVINO's CPU plugin runs a whole forward pass in C++ (oneDNN matmuls, fused paged attention over
a block KV cache), and GenAI's scheduler keeps every greedy prompt of the call in flight (sampled
groups, many answers each, as the cache allows: `_admitted`): prompts are prefilled in chunks of up
to `PREFILL_TOKENS` tokens beside the running answers, finished answers
leave the batch at once, and KV blocks of a prefix that several prompts share (the system prompt,
the template's instruction) are computed once. On the 48 DialogSum prompts of issue 13 this ran at
about three times Hugging Face `generate`'s best and twice the native engine (bench/RESULTS.md).

The model is exported from the `torch` weights the caller holds (adapters merged into a copy), by
tracing `_traceable`: the family's decoder layer (models/llama.py, models/gemma3.py), which the native
engine runs too, in one forward over explicit past keys and values, then made stateful the way
OpenVINO's paged-attention pass expects (the KV cache as variables, a `beam_idx` gather, an empty
initial state). GenAI's pipeline then swaps each attention for its paged kernel, which is causal by
itself and takes a sliding window (Gemma 3's local layers) when the traced mask has the shape of
transformers' sliding-window mask (`_window_mask`); the pass sets no window from any other mask. In float32 the answers equal Hugging
Face greedy `generate`'s token for token (tests/test_openvino_engine.py, and 200 of 200 DialogSum
test answers in bench/RESULTS.md); bfloat16 runs the matmuls and the KV cache in bf16, faster,
changing some answers (its ROUGE against float32 is in bench/RESULTS.md).

Exports of instructune's cached models (the default model) are kept beside them, keyed by a hash of
the weights, so evaluating one again loads in seconds. Everything else is exported to a temporary
folder removed after loading. What the engine cannot take (`unsupported_reason`) goes to the native
engine or Hugging Face `generate` (generate.py).

A crash in OpenVINO's C++ is a fatal signal, not an exception: it would end `instructune eval` with
every answer. One is known and refused before any export (`crash_reason`): on CPUs with AMX, bfloat16
on one thread dies with SIGFPE while compiling (OpenVINO 2026.4.1; every Llama shape tried, from the
tests' tiny model to SmolLM2-135M). The CPU plugin fuses each gated MLP (gate, up, SiLU, down; hidden
and intermediate sizes multiples of 32) into its AMX-only LLMMLP node, whose down projection is split
over `threads / 2` workers, and divides by that (`LinearKsplit2::setup` in llm_mlp.cpp): zero on one
thread. Float32, two or more threads (OpenVINO counts at most the CPUs the process may run on), or a
CPU without AMX (oneDNN capped below AMX with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 runs) compile
fine; the KV-cache precision, prefix caching and the scheduler's batch size play no part.

Whatever else would crash is contained: before this process compiles a model in a configuration the
machine has not proven, a child process loads the export with the same settings and generates two
tokens (`_PROBE_SCRIPT`, engine_probe.py): 0.5-1 s for the tests' tiny model, 2.5-3.3 s and 1.1 GB
at its peak for SmolLM2-135M on a 2-core Xeon, paid once per configuration and machine. A child that
dies or fails raises `EngineCrashed`, and "auto" decodes on the next engine.

One more native hazard is OpenVINO's own, and lasts past the engine: its CPU plugin gives the thread
that loads it an alternate signal stack of its own (`SigAltStackSetup`, sized for AMX's large signal
frames) and unmaps it when the plugin goes, restoring the previous one only if the plugin is
destroyed on that same thread while its stack is still the current one. The plugin is often released
elsewhere (a worker thread holds the last reference), so the main thread's signal stack pointed at
unmapped memory, and the next signal handled there, e.g. Ctrl-C or SIGTERM asking a training run to
save its checkpoint, ended the process with SIGSEGV (tests/test_train.py::TestSignals died so after
the engine's tests). `signal_stack_kept` (signal_stack.py) puts the thread's previous signal stack
back as soon as the pipeline is built, so the plugin's stack is never the current one.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable

from instructune.errors import InstructuneError
from instructune.generation import engine_probe
from instructune.generation.engine_cache import LoadedEngines, converted_folder, is_temporary
from instructune.generation.engines import EngineCrashed, Request, Sampling, Where, cut_at_stop
from instructune.generation.signal_stack import signal_stack_kept
from instructune.models import merged_copy, unwrapped_model
from instructune.models.families import engine_unsupported_reason, family_of

NAME = "openvino"
COMPUTE_TYPES = ("float32", "bfloat16")
SEARCHES = False
SAMPLES = True
NEEDS_EXPORT = True
# Beside a preloaded tcmalloc (libtcmalloc_minimal.so.4), OpenVINO 2026.4 aborts with "free(): invalid pointer"
# while reading a model; it brings its own allocator (TBB's libtbbmalloc), and mixing the two is the likely
# cause, not pinned down. `instructune eval` keeps glibc's malloc where it may decode here (cli/__init__.py).
BESIDE_ALLOCATOR = False
_PRECISION = {"float32": "f32", "bfloat16": "bf16"}
# Tokens per scheduler step at most: prompts are prefilled in chunks of this many tokens beside the
# running answers. 2,048 ran the 48-prompt job in 13.8-14.1 s against 14.8-16.5 s at GenAI's default.
PREFILL_TOKENS = 2048
# KV-cache room, in tokens: enough for ~100 DialogSum prompts with their answers at once. The scheduler
# holds prompts back when the cache is full, so a smaller cache only costs speed.
CACHE_TOKENS = 32768
MODEL_FILE = "openvino_model.xml"

# The pipelines loaded for one model object in its current weights, by compute type.
_LOADED = LoadedEngines()

# The probe's child: only OpenVINO is imported (no torch: it starts in ~0.4 s). argv: the exported
# folder, the scheduler's fields and the compile properties as JSON. Two prompts with a shared beginning
# run two steps: prefill with prefix caching, then a decode step over the paged KV cache.
_PROBE_SCRIPT = """
import json, sys
import numpy as np, openvino as ov, openvino_genai
folder, fields, properties = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
scheduler = openvino_genai.SchedulerConfig()
for name, value in fields.items():
    setattr(scheduler, name, value)
pipeline = openvino_genai.ContinuousBatchingPipeline(folder, scheduler, "CPU", properties)
config = openvino_genai.GenerationConfig()
config.max_new_tokens, config.do_sample = 2, False
for index, row in enumerate([[1, 2, 3, 4], [1, 2, 3]]):
    pipeline.add_request(index, ov.Tensor(np.array([row], dtype=np.int64)), config)
while pipeline.has_non_finished_requests():
    pipeline.step()
"""


def unsupported_reason(model: Any, compute_type: str | None = None, where: Where | None = None) -> str | None:
    """Why the OpenVINO engine cannot decode `model` in `compute_type` where the call runs, or None when it can.

    It takes what the native engine takes (models/families.py: decoder-only, a known family,
    unquantized, on the CPU), in a process with no preloaded allocator, for weights that stay the same
    between calls (each new set of weights costs an export, ~10 s for the default model), in a
    configuration not known to crash OpenVINO here (`crash_reason`).

    Example:
        >>> unsupported_reason(t5_model)
        'encoder-decoder models use Hugging Face generate'
    """
    try:
        import openvino  # noqa: F401
        import openvino_genai  # noqa: F401
    except ImportError:
        return "openvino-genai is not installed (pip install openvino-genai)"
    return engine_unsupported_reason(model)


def run(model: Any, tokenizer: Any, request: Request, where: Where, on_done: Callable[[int], None]) -> list[list[int]]:
    """The engine protocol's call (engines.py): every prompt in flight at once, cut at its first stop token.

    Raises:
        EngineCrashed: as `load_engine`.
    """
    pipeline = load_engine(model, compute_type=request.compute_type or COMPUTE_TYPES[0], cache=not where.weights_change)
    rows = generate_ids(pipeline, request.prompts, max_new_tokens=request.max_new_tokens, stop_ids=request.stop_ids,
                        on_done=on_done, sampling=request.sampling, num_return_sequences=request.num_return_sequences)
    return [cut_at_stop(row, request.stop_ids) for row in rows]


def crash_reason(model: Any, compute_type: str | None = "float32") -> str | None:
    """Why OpenVINO would crash loading `model` in `compute_type` on this machine, or None when not known to.

    Known without trying: bfloat16 on one thread on an AMX CPU (SIGFPE compiling; the module docstring
    has the cause). Else the verdict of an earlier probe of the same configuration (engine_probe.py).
    The thread count is PyTorch's, which the engine is given, capped by the CPUs the process may use.

    Example:
        >>> torch.set_num_threads(1); crash_reason(model, "bfloat16")  # on a Xeon with AMX
        'bfloat16 on one thread crashes OpenVINO on AMX CPUs (SIGFPE compiling its fused MLP, which splits work over threads / 2)'
    """
    compute_type = compute_type or COMPUTE_TYPES[0]
    threads = _threads()
    if (known := _known_crash(compute_type, threads)) is not None:
        return known
    outcome = engine_probe.known_failure(_probe_key(model, compute_type, threads))
    return None if outcome is None else _probe_reason(outcome, compute_type, threads)


def _known_crash(compute_type: str, threads: int) -> str | None:
    """The crash found in OpenVINO 2026.4.1, refused without a probe (the module docstring has the cause)."""
    if compute_type == "bfloat16" and threads == 1 and "amx_bf16" in engine_probe.cpu_flags():
        return ("bfloat16 on one thread crashes OpenVINO on AMX CPUs (SIGFPE compiling its fused MLP, "
                "which splits work over threads / 2)")
    return None


def _threads() -> int:
    """The threads OpenVINO runs on: PyTorch's count (`load_engine` passes it on), at most the usable CPUs."""
    import torch

    return min(torch.get_num_threads(), engine_probe.usable_cpus())


def _probe_key(model: Any, compute_type: str, threads: int) -> dict[str, Any]:
    """What a probe's verdict depends on: OpenVINO's version, the model's shape, the compute type, threads, CPU."""
    import openvino

    config = unwrapped_model(model).config
    return engine_probe.machine_key(
        engine="openvino", version=openvino.__version__, model_type=config.model_type,
        layers=config.num_hidden_layers, hidden=config.hidden_size, intermediate=config.intermediate_size,
        heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
        head_dim=family_of(config).dims(config)[2],
        vocab=config.vocab_size, compute_type=compute_type, threads=threads,
    )


def _probe_reason(outcome: str, compute_type: str, threads: int) -> str:
    return (f"OpenVINO {outcome} in a probe (a child process loading this model in {compute_type} on {threads} "
            f"thread{'s' * (threads > 1)}; verdicts are kept in {engine_probe.probes_path()}: delete it to probe again)")


def _probe_command(folder: Path, scheduler_fields: dict[str, Any], properties: dict[str, Any]) -> list[str]:
    """The probe child's argv: `_PROBE_SCRIPT` on the exported folder with the settings the pipeline gets."""
    return [sys.executable, "-c", _PROBE_SCRIPT, str(folder), json.dumps(scheduler_fields), json.dumps(properties)]


def _traceable(model: Any) -> Any:
    """`model` (plain, float32) as a module whose forward takes and returns the KV cache as tensors.

    forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), past and present
    as (key, value) per layer, each (batch, kv heads, positions, head dim). Attention is one
    `scaled_dot_product_attention` per layer over the past and new keys, the key/value heads repeated
    for their query groups, which is the pattern OpenVINO's paged-attention pass recognises.
    """
    import torch
    import torch.nn.functional as F

    inner, lm_head, config = model.model, model.lm_head, model.config
    family = family_of(config)
    dims = family.dims(config)
    heads, kv_heads, head_dim = dims
    group = heads // kv_heads
    windows = family.attention_windows(config)

    class Traceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            batch, tokens = input_ids.shape
            x = inner.embed_tokens(input_ids)
            tables = family.rotary_tables(inner, x, position_ids)
            total = past[0].shape[2] + tokens
            # Each new token sees every past position and the new ones up to itself, minus padding.
            query_at = torch.arange(tokens).view(tokens, 1) + (total - tokens)
            key_at = torch.arange(total).view(1, total)
            allowed = (key_at <= query_at).view(1, 1, tokens, total)
            allowed = allowed & attention_mask.bool().view(batch, 1, 1, total)
            masks = {window: allowed if window is None else _window_mask(allowed, query_at, key_at, window)
                     for window in set(windows)}
            present = []

            def attend(index, q, k, v, scale):
                k = torch.cat([past[2 * index], k], dim=2)
                v = torch.cat([past[2 * index + 1], v], dim=2)
                present.extend([k, v])
                k = k[:, :, None].expand(batch, kv_heads, group, total, head_dim).reshape(batch, heads, total, head_dim)
                v = v[:, :, None].expand(batch, kv_heads, group, total, head_dim).reshape(batch, heads, total, head_dim)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=masks[windows[index]], scale=scale)

            for index, layer in enumerate(inner.layers):
                x = family.decoder_layer(layer, x, *tables[index], dims, partial(attend, index))
            return (lm_head(inner.norm(x)), *present)

    return Traceable().eval()


def _window_mask(allowed: Any, query_at: Any, key_at: Any, window: int) -> Any:
    """`allowed` (bool, (batch, 1, tokens, total)) cut to each query's last `window` positions, in the shape
    OpenVINO's paged-attention pass reads a window from.

    The pass drops every mask (its kernel is causal by itself) and takes a window only from the graph
    transformers' sliding-window mask traces to (`gpt_oss_sliding_window_pattern` in its
    state_management_pattern.cpp): `key > query + offset`, a constant offset, four bitwise ANDs, a
    broadcast, a select and a slice, whose window is -offset. Anything else leaves the window at 0, none.
    """
    import torch

    inside = key_at > query_at + (-window)  # (tokens, total): Greater(key, Add(query, offset))
    # Idempotent ANDs with `allowed`: the same mask, in the pattern's order of operands.
    seen = (allowed & ((allowed & inside) & allowed)) & allowed
    seen = seen.expand(allowed.shape[0], 1, -1, -1)
    total = key_at.shape[1]
    return torch.where(seen, 0.0, float("-inf"))[..., :total]


def export(model: Any, out_dir: str | Path) -> Path:
    """Export a decoder-only model held in memory to an OpenVINO folder GenAI's pipeline can load.

    Args:
        model: a model `unsupported_reason` accepts, PEFT-wrapped or not; it is not modified.
        out_dir: the folder to write (created; files in it are replaced).

    Returns:
        `out_dir`, holding openvino_model.xml/.bin (float32 weights) and config.json.

    Example:
        >>> export(model, "/tmp/smollm2-ov")
        PosixPath('/tmp/smollm2-ov')
    """
    import openvino as ov
    import torch
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    plain = merged_copy(model).float().eval()
    config = plain.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = family_of(config).dims(config)[2]
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *past_names]
    outputs = ["logits", *(name.replace("past_key_values", "present") for name in past_names)]
    batch, tokens, cached = 2, 3, 4
    example = (torch.ones(batch, tokens, dtype=torch.long), torch.ones(batch, cached + tokens, dtype=torch.long),
               torch.arange(cached, cached + tokens).repeat(batch, 1),
               *(torch.zeros(batch, kv_heads, cached, head_dim) for _ in past_names))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: intended
        converted = ov.convert_model(_traceable(plain), example_input=example)
    for port, name in zip(converted.inputs, inputs):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, outputs):
        port.get_tensor().set_names({name})
    converted.reshape({port: ov.PartialShape([-1, kv_heads, -1, head_dim] if name in past_names else [-1, -1])
                       for port, name in zip(converted.inputs, inputs)})
    # The cache as variables, reordered by beam_idx and empty at the start of a sequence.
    beam_idx = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    for port in converted.inputs:
        if port.get_any_name() in past_names:
            for target in list(port.get_target_inputs()):
                target.replace_source_output(ops.gather(port.get_node().output(0), beam_idx, ops.constant(0)).output(0))
    converted.add_parameters([beam_idx])
    apply_make_stateful_transformation(converted, dict(zip(past_names, outputs[1:])))
    batch_size = ops.gather(ops.shape_of(converted.input("input_ids")), ops.constant([0]), ops.constant(0))
    empty = ops.concat([batch_size, ops.constant([kv_heads], ov.Type.i64), ops.constant([0], ov.Type.i64),
                        ops.constant([head_dim], ov.Type.i64)], 0)
    for op in converted.get_ops():
        if op.get_type_name() == "ReadValue":
            op.set_arguments([ops.broadcast(ops.constant(0.0, ov.Type.f32), empty).output(0)])
    converted.validate_nodes_and_infer_types()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(converted, out / MODEL_FILE, compress_to_fp16=False)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")
    return out


def load_engine(model: Any, *, compute_type: str = "float32", cache: bool = True) -> Any:
    """A GenAI `ContinuousBatchingPipeline` for the model's current weights.

    Args:
        model: as for `export`.
        compute_type: "float32" (answers equal Hugging Face greedy ones) or "bfloat16" (matmuls and KV
            cache in bf16; faster, changes some answers).
        cache: keep the loaded pipeline in this process while the weights stay the same, and the
            default model's export under `cache_dir()/models`, keyed by a hash of the weights. Off for
            weights that change between calls: then the export goes to a temporary folder.

    Raises:
        EngineCrashed: OpenVINO crashes on this configuration here (`crash_reason`), or the probe of a
            configuration new to this machine crashed or failed; this process goes on.
    """
    import openvino_genai
    import torch

    if compute_type not in COMPUTE_TYPES:
        raise InstructuneError(f"openvino engine: compute_type {compute_type!r}; expected one of {', '.join(COMPUTE_TYPES)}")
    if cache and (engine := _LOADED.get(model, compute_type)) is not None:
        return engine
    if (reason := crash_reason(model, compute_type)) is not None:
        raise EngineCrashed(NAME, reason)
    config = unwrapped_model(model).config
    _, kv_heads, head_dim = family_of(config).dims(config)
    bytes_per_token = config.num_hidden_layers * 2 * kv_heads * head_dim * (
        4 if compute_type == "float32" else 2)
    scheduler_fields = {"cache_size": max(1, -(-bytes_per_token * CACHE_TOKENS // 2**30)),  # whole GB
                        "max_num_batched_tokens": PREFILL_TOKENS, "enable_prefix_caching": True}
    precision = _PRECISION[compute_type]
    properties = {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": precision,
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    folder = converted_folder(model, suffix="ov", marker=MODEL_FILE, write=lambda out: export(model, out), persist=cache)
    try:
        # A configuration this machine has not run yet is tried in a child first: a crash ends only it.
        threads = _threads()
        outcome = engine_probe.probe(_probe_key(model, compute_type, threads),
                                     _probe_command(folder, scheduler_fields, properties))
        if outcome is not None:
            raise EngineCrashed(NAME, _probe_reason(outcome, compute_type, threads))
        scheduler = openvino_genai.SchedulerConfig()
        for name, value in scheduler_fields.items():
            setattr(scheduler, name, value)
        with signal_stack_kept():
            engine = openvino_genai.ContinuousBatchingPipeline(str(folder), scheduler, "CPU", properties)
    finally:
        if is_temporary(folder, "ov"):
            shutil.rmtree(folder, ignore_errors=True)  # the weights are in memory now
    return _LOADED.put(model, compute_type, engine) if cache else engine


def generate_ids(engine: Any, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: list[int],
                 on_done: Callable[[int], None] | None = None, sampling: Sampling | None = None,
                 num_return_sequences: int = 1) -> list[list[int]]:
    """New token ids for every encoded prompt, greedy or sampled (a stop token may end a row).

    Greedy prompts are all handed to the scheduler at once; sampled groups as the KV cache allows (`_admitted`).

    Args:
        engine: from `load_engine`.
        prompts: token id rows (chat formatting included).
        max_new_tokens: cap on new tokens per answer.
        stop_ids: tokens that end an answer.
        on_done: called with a prompt's index as its answers finish (progress bars).
        sampling: None = greedy; else GenAI's multinomial sampler with the same temperature, top-k and
            top-p, prompt i seeded with `sampling.seed + i` (0 + i when None).
        num_return_sequences: sampled answers per prompt, returned together; they share the prompt's
            KV blocks (GenAI forks the sequence after prefill).

    Example:
        >>> generate_ids(engine, [[1, 2, 3]], max_new_tokens=4, stop_ids=[2])
        [[17, 9, 41, 2]]
    """
    import numpy as np
    import openvino as ov
    import openvino_genai

    if any(not row for row in prompts):
        raise InstructuneError("openvino engine: an empty prompt has nothing to continue")
    if sampling is None and num_return_sequences != 1:
        raise InstructuneError("openvino engine: several answers per prompt need sampling")
    # Sampled groups are admitted while their worst case fits the KV cache (`_admitted`); greedy prompts all at once.
    room = CACHE_TOKENS if num_return_sequences > 1 else None
    handles: list[Any] = []
    answers: list[list[list[int]] | None] = [None] * len(prompts)
    finished = openvino_genai.GenerationStatus.FINISHED

    def admit() -> None:
        for index in _admitted(prompts, len(handles), answers, room, num_return_sequences * max_new_tokens):
            handles.append(engine.add_request(index, ov.Tensor(np.array([prompts[index]], dtype=np.int64)),
                                              _config(max_new_tokens, stop_ids, sampling, num_return_sequences, index)))

    admit()
    while engine.has_non_finished_requests():
        engine.step()
        for index, handle in enumerate(handles):
            if answers[index] is None and handle.get_status() == finished:
                answers[index] = _read(handle, num_return_sequences)
                if on_done:
                    on_done(index)
        if len(handles) < len(prompts):
            admit()
    for index, handle in enumerate(handles):
        if answers[index] is None:
            status = handle.get_status()
            if status != finished:
                raise InstructuneError(f"openvino engine: prompt {index} ended as {status} "
                                       "(the KV cache may be too small for it; use --engine native)")
            answers[index] = _read(handle, num_return_sequences)
    return [row for rows in answers for row in rows]


def _admitted(prompts: list[list[int]], start: int, answers: list[Any], room: int | None,
              answer_tokens: int) -> range:
    """The prompts to add now, from `start` on: all when `room` is None, else while the unfinished ones fit it.

    A prompt's worst case is its own tokens plus `answer_tokens` (every answer at `max_new_tokens`).
    GenAI admits a sampled group when its prompt fits and grows its answers into whatever room is left;
    past the cache it preempts running groups and recomputes them from the prompt, sixteen answers
    at a time under MBR, so an overcommitted cache spends its steps redoing work: 96 DialogSum prompts x
    16 samples took 548 s added at once and 247 s admitted so (bench/mbr_admission.py, RESULTS). At
    least one prompt is always in flight.
    """
    if room is None:
        return range(start, len(prompts))
    used = sum(len(prompts[index]) + answer_tokens for index in range(start) if answers[index] is None)
    stop = start
    while stop < len(prompts) and (used == 0 or used + len(prompts[stop]) + answer_tokens <= room):
        used += len(prompts[stop]) + answer_tokens
        stop += 1
    return range(start, stop)


def _config(max_new_tokens: int, stop_ids: list[int], sampling: Sampling | None, num_return_sequences: int,
            index: int) -> Any:
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = max_new_tokens
    config.stop_token_ids = set(stop_ids)
    config.do_sample = sampling is not None
    if sampling is not None:
        config.temperature, config.top_k, config.top_p = sampling.temperature, sampling.top_k, sampling.top_p
        config.num_return_sequences = num_return_sequences
        config.rng_seed = (sampling.seed or 0) + index
    return config


def _read(handle: Any, count: int) -> list[list[int]]:
    """A finished request's answers, in the order GenAI numbered them (its outputs come keyed by sequence id)."""
    outputs = handle.read_all()
    if len(outputs) != count:
        raise InstructuneError(f"openvino engine: a prompt returned {len(outputs)} answers, expected {count}")
    return [list(output.generated_ids) for output in outputs]

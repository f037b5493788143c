"""The fast generation engine: greedy decoding through CTranslate2, converted from the weights in memory.

CTranslate2 (C++, CPU int8/float32 kernels) decodes a batch without Python in the loop and drops
finished rows from it; its float32 answers equal Hugging Face `generate`'s greedy ones token for token
(tests/test_fast.py), and int8 trades a little ROUGE for more speed (bench/RESULTS.md). The model is
converted from the `torch` weights the caller holds, never re-read from disk, so a LoRA-wrapped
model in the middle of training converts as it is (adapters merged into a copy). The default model's
conversion is cached beside it (engine_cache.py), keyed by a hash of the weights, so evaluating
it again loads in seconds. This file leaves out sampling, encoder-decoder models,
quantized (bitsandbytes) and GPU models: `unsupported_reason` names them and generate.py falls back
to Hugging Face `generate` for them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError
from instructune.generation.engine_cache import LoadedEngines, converted_folder, is_temporary
from instructune.models import is_encoder_decoder, merged_copy, unwrapped_model

COMPUTE_TYPES = ("float32", "int8")

# The engines loaded for one model object in its current weights, by compute type.
_LOADED = LoadedEngines()


def unsupported_reason(model: Any) -> str | None:
    """Why the CTranslate2 engine cannot run `model`, or None when it can.

    Example:
        >>> unsupported_reason(t5_model)
        'encoder-decoder models use Hugging Face generate'
    """
    try:
        from ctranslate2.converters import transformers as ct2_transformers
    except ImportError:
        return "ctranslate2 is not installed (pip install ctranslate2)"
    if is_encoder_decoder(model):
        return "encoder-decoder models use Hugging Face generate"
    if getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False):
        return "quantized (bitsandbytes) weights use Hugging Face generate"
    device = getattr(model, "device", None)
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        return f"the model is on {device}; the CTranslate2 wheel runs on CPU"
    config = unwrapped_model(model).config
    # The converter's registry of architectures; reading it avoids a failed conversion to find out.
    loaders = getattr(ct2_transformers, "_MODEL_LOADERS", {})
    if type(config).__name__ not in loaders:
        return f"CTranslate2 cannot convert {type(config).__name__}"
    return None


def _plain_copy(model: Any) -> Any:
    """A copy without wrappers: LoRA adapters merged in. The converter dismantles what it is given."""
    return merged_copy(model).float().eval()


def convert(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Convert a transformers causal LM held in memory into a CTranslate2 model folder (float32 weights).

    Args:
        model: a decoder-only transformers model CTranslate2 can take (see `unsupported_reason`),
            PEFT-wrapped or not; it is not modified.
        tokenizer: its tokenizer (the vocabulary and special tokens go into the folder).
        out_dir: the folder to write (replaced if it exists).

    Returns:
        `out_dir`, holding model.bin, config.json and vocabulary.json.

    Example:
        >>> convert(model, tokenizer, "/tmp/smollm2-ct2")
        PosixPath('/tmp/smollm2-ct2')
    """
    from ctranslate2.converters import TransformersConverter

    plain = _plain_copy(model)

    class _InMemoryConverter(TransformersConverter):
        # The converter reads the config from a folder, then asks these two hooks for the model.
        def load_model(self, model_class, model_name_or_path, **kwargs):
            return plain

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return tokenizer

    with tempfile.TemporaryDirectory(prefix="instructune-config-") as config_dir:
        plain.config.save_pretrained(config_dir)
        _InMemoryConverter(config_dir).convert(str(out_dir), quantization="float32", force=True)
    return Path(out_dir)


def load_engine(model: Any, tokenizer: Any, *, compute_type: str = "float32", cache: bool = True) -> Any:
    """A `ctranslate2.Generator` for the model's current weights.

    Args:
        model: as for `convert`.
        tokenizer: its tokenizer.
        compute_type: "float32" (answers equal Hugging Face greedy ones) or "int8" (weights quantized
            at load time; faster, but changes answers: ROUGE-1 0.018 lower on 16 DialogSum dialogues, bench/RESULTS.md).
        cache: keep the loaded engine in this process while the weights stay the same, and the
            default model's conversion under `cache_dir()/models`, keyed by a hash of the weights. Off for weights that change between calls (in-training
            checks): then the conversion goes to a temporary folder and nothing is hashed.

    Returns:
        The loaded generator, threads set to torch's.
    """
    import ctranslate2
    import torch

    if compute_type not in COMPUTE_TYPES:
        raise InstructuneError(f"fast generation: compute_type {compute_type!r}; expected one of {', '.join(COMPUTE_TYPES)}")
    if cache and (engine := _LOADED.get(model, compute_type)) is not None:
        return engine
    folder = converted_folder(model, suffix="ct2", marker="model.bin", write=lambda out: convert(model, tokenizer, out),
                              persist=cache)
    try:
        # The generator reads model.bin into memory, so a temporary folder can go afterwards.
        engine = ctranslate2.Generator(str(folder), device="cpu", compute_type=compute_type,
                                       intra_threads=torch.get_num_threads())
    finally:
        if is_temporary(folder, "ct2"):
            shutil.rmtree(folder, ignore_errors=True)
    return _LOADED.put(model, compute_type, engine) if cache else engine


def generate_ids(engine: Any, prompts: list[list[int]], tokenizer: Any, *, max_new_tokens: int,
                 stop_ids: list[int]) -> list[list[int]]:
    """Greedy new token ids for one batch of encoded prompts (stop tokens left out).

    Example:
        >>> generate_ids(engine, [[1, 2, 3]], tokenizer, max_new_tokens=4, stop_ids=[2])
        [[17, 9, 41]]
    """
    results = engine.generate_batch(
        [tokenizer.convert_ids_to_tokens(ids) for ids in prompts], max_batch_size=len(prompts),
        max_length=max_new_tokens, sampling_topk=1, include_prompt_in_result=False, end_token=stop_ids,
    )
    return [result.sequences_ids[0] for result in results]

"""`instructune export --gguf TYPE`: a Llama-architecture model as one GGUF file for llama.cpp, Ollama, LM Studio.

The file holds what llama.cpp reads: the `llama.*` hyperparameters, the weights under GGUF tensor
names (q/k projections permuted for llama.cpp's rotary layout), the tokenizer (gguf_tokenizer.py) and
the chat template; an Ollama Modelfile is written beside it (modelfile.py). Quantizing uses the
`gguf` package's own quantizers, so no compiler and no network are needed. Tensor types follow
llama.cpp: norms stay F32; for 4-bit files the output matrix (the token embedding when tied) stays
Q8_0, where llama-quantize would use Q6_K and falls back to Q8_0 on shapes like SmolLM2's.
Missing parent folders of the output are created; a place that cannot be written is one line before
the merge, and a write that fails midway (a full disk) removes its `.partial` file.
What this file leaves out: other architectures (one error line names the supported one), K-quants
(the `gguf` package cannot write them), and LoRA merging (models.merge_adapter).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from instructune.fileio.atomic import check_writable
from instructune.errors import InstructuneError
from instructune.export.gguf_tokenizer import add_tokenizer
from instructune.models import check_adapter_folder, load_model, merge_adapter
from instructune.export.modelfile import write_modelfile

# --gguf name -> (gguf.LlamaFileType member, gguf.GGMLQuantizationType member of the big matrices)
GGUF_TYPES = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
    "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "q4_1": ("MOSTLY_Q4_1", "Q4_1"),
}
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


def check_architecture(config: Any) -> None:
    """Refuse, in one line, a model llama.cpp's `llama` architecture would run wrongly."""
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", None) != "llama" or not set(archs) <= set(SUPPORTED_ARCHITECTURES):
        raise InstructuneError(
            f"GGUF export supports the llama architecture ({', '.join(SUPPORTED_ARCHITECTURES)}, e.g. SmolLM2, "
            f"TinyLlama); this model is {config.model_type!r} {archs}"
        )
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise InstructuneError(f"GGUF export supports default or linear RoPE; this model uses {rope['rope_type']!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise InstructuneError(f"GGUF export does not support {flag}=true Llama models")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise InstructuneError(f"GGUF export supports hidden_act 'silu'; this model uses {config.hidden_act!r}")


def _rope_parameters(config: Any) -> dict:
    # transformers 5 keeps theta and scaling in `rope_parameters`; older configs in rope_theta/rope_scaling.
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hyperparameters(writer: Any, config: Any, file_type: Any) -> None:
    """The `llama.*` keys llama.cpp reads to build the graph (names as its converter writes them)."""
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_file_type(file_type)


def permute_for_rope(weight: Any, n_heads: int) -> Any:
    """Reorder a q or k projection's rows from transformers' rotary layout to llama.cpp's.

    transformers rotates the first half of each head's dimensions against the second half; llama.cpp
    rotates neighbouring pairs (0,1), (2,3)... So within each head, row i of the first half and row i of
    the second half become rows 2i and 2i+1. llama.cpp's converter does the same (`permute`).
    """
    rows, cols = weight.shape  # (n_heads * head_dim, hidden)
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def tensor_type(gguf_name: str, shape: tuple, gguf_type: str, tied: bool) -> Any:
    """The GGML type one tensor is stored in, for a file of type `gguf_type`."""
    import gguf

    qtype = gguf.GGMLQuantizationType[GGUF_TYPES[gguf_type][1]]
    if len(shape) < 2 or gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32  # llama.cpp's kernels take 1-D tensors in F32 only
    is_output = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
    if gguf_type in ("q4_0", "q4_1") and is_output:
        qtype = gguf.GGMLQuantizationType.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16  # a row that does not split into blocks; llama.cpp does the same
    return qtype


def gguf_tensors(model: Any, gguf_type: str) -> Iterator[tuple[str, Any, Any]]:
    """(GGUF name, stored array, GGML type) for every weight of a Llama model, permuted and quantized."""
    import gguf
    import torch

    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise InstructuneError(f"{name}: no GGUF tensor name for this weight (unexpected for a Llama model)")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith("q_proj.weight"):
            data = permute_for_rope(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute_for_rope(data, n_kv_heads)
        qtype = tensor_type(new_name, data.shape, gguf_type, tied)
        yield new_name, gguf.quants.quantize(data, qtype), qtype


def write_gguf(model: Any, tokenizer: Any, output: str | os.PathLike, gguf_type: str = "q8_0", *,
               name: str | None = None) -> Path:
    """Write a Llama model and its tokenizer as one GGUF file.

    The file is written beside `output` first and renamed into place, so a failed export never
    leaves a truncated file where llama.cpp would try to load it.

    Args:
        model: a transformers LlamaForCausalLM (merged: no LoRA layers).
        tokenizer: its fast tokenizer, chat template included.
        output: the .gguf path; must not exist yet.
        gguf_type: one of GGUF_TYPES (f32, f16, bf16, q8_0, q4_0, q4_1).
        name: general.name in the file (default: the output's stem).

    Returns:
        The path written.

    Example:
        >>> write_gguf(model, tokenizer, "exported/support-bot.q8_0.gguf", "q8_0")
        PosixPath('exported/support-bot.q8_0.gguf')
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise InstructuneError(f"--gguf {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    check_architecture(model.config)
    output = Path(output)
    if output.exists():
        raise InstructuneError(f"{output}: file exists; choose a new path")
    check_writable(output)
    tmp = output.with_name(f".{output.name}.partial")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or output.stem)
        add_hyperparameters(writer, model.config, gguf.LlamaFileType[GGUF_TYPES[gguf_type][0]])
        add_tokenizer(writer, tokenizer, model.config.vocab_size)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, data, qtype in gguf_tensors(model, gguf_type):
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.rename(output)
    except OSError as error:  # a full disk or a lost mount midway
        raise InstructuneError(f"{output}: could not write the GGUF file ({error.strerror or error}); "
                               "nothing was left there") from None
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return output


def export_gguf(output: str | os.PathLike, gguf_type: str, *, adapter: str | None = None,
                model: str | None = None) -> tuple[Path, Path]:
    """Merge `adapter` into its base (or take `model` as it is) and write a GGUF file plus an Ollama Modelfile.

    Args:
        output: the .gguf path.
        gguf_type: one of GGUF_TYPES.
        adapter: a LoRA adapter folder; its base is `model`, else the one in its config, else the default.
        model: without `adapter`, the model to export: a merged or fully fine-tuned folder, or None for
            the default model.

    Returns:
        (GGUF path, Modelfile path).

    Example:
        >>> export_gguf("exported/support-bot.gguf", "q8_0", adapter="runs/quickstart/adapter")
        (PosixPath('exported/support-bot.gguf'), PosixPath('exported/support-bot.Modelfile'))
    """
    output = Path(output)
    if output.suffix != ".gguf":
        raise InstructuneError(f"{output}: a GGUF file name must end in .gguf")
    if gguf_type not in GGUF_TYPES:
        raise InstructuneError(f"--gguf {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    modelfile = output.with_suffix(".Modelfile")
    if modelfile.exists():
        raise InstructuneError(f"{modelfile}: file exists; choose a new output path")
    if output.exists():
        raise InstructuneError(f"{output}: file exists; choose a new path")
    if adapter is not None:
        check_adapter_folder(adapter)  # a bad adapter, then a bad place: both before the merge, nothing created
    check_writable(output)
    if adapter is not None:
        loaded, tokenizer = merge_adapter(adapter, model=model)
    else:
        loaded, tokenizer = load_model(model)
    check_architecture(loaded.config)  # before the slow part, and before anything is written
    write_gguf(loaded, tokenizer, output, gguf_type)
    return output, write_modelfile(modelfile, output, tokenizer)

"""`instructune export --gguf TYPE`: a model as one GGUF file for llama.cpp, Ollama, LM Studio.

The file holds what llama.cpp reads: the family's hyperparameters, the weights under GGUF tensor
names as the family stores them (models/llama.py: llama.cpp's `llama`, q/k projections permuted for
its rotary layout; models/gemma3.py: its `gemma3`, every RMSNorm weight stored as 1 + weight), the
tokenizer (gguf_tokenizer.py: byte-level BPE, or Gemma's SentencePiece-style vocabulary with scores)
and the chat template; an Ollama Modelfile is written beside it (modelfile.py). Quantizing uses the
`gguf` package's own quantizers, so no compiler and no network are needed. Tensor types follow
llama.cpp: norms stay F32; for 4-bit files the output matrix (the token embedding when tied) stays
Q8_0, where llama-quantize would use Q6_K and falls back to Q8_0 on shapes like SmolLM2's.
Missing parent folders of the output are created; a place that cannot be written is one line before
the merge, and a write that fails midway (a full disk) leaves nothing (fileio/atomic.py).
What this file leaves out: families without a module, and family configs llama.cpp fixes otherwise
(Gemma 3's layer pattern: one error line each, naming what is supported), K-quants
(the `gguf` package cannot write them), and LoRA merging (models.merge_adapter).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from instructune.data.tokenize import apply_chat_template_setting
from instructune.errors import InstructuneError
from instructune.export.gguf_tokenizer import add_tokenizer
from instructune.export.modelfile import write_modelfile
from instructune.fileio.atomic import atomic_file, check_writable
from instructune.models import check_adapter_folder, load_model, merge_adapter
from instructune.models.families import family_of

# --gguf name -> (gguf.LlamaFileType member, gguf.GGMLQuantizationType member of the big matrices)
GGUF_TYPES = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
    "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "q4_1": ("MOSTLY_Q4_1", "Q4_1"),
}


def gguf_family(config: Any) -> ModuleType:
    """The family module that writes this model's GGUF file, or one line naming what GGUF export supports."""
    family = family_of(config)
    reason = family.gguf_unsupported_reason(config) if family is not None else (
        f"GGUF export supports the llama architecture (LlamaForCausalLM, e.g. SmolLM2, TinyLlama) and gemma3 "
        f"(Gemma3ForCausalLM, e.g. Gemma 3 270M); this model is {getattr(config, 'model_type', None)!r} "
        f"{getattr(config, 'architectures', None) or []}")
    if reason is not None:
        raise InstructuneError(reason)
    return family


def check_architecture(config: Any) -> None:
    """Refuse, in one line, a model llama.cpp would run wrongly (before any slow work)."""
    gguf_family(config)


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
    """(GGUF name, stored array, GGML type) for every weight, as the model's family stores it, quantized."""
    import gguf
    import torch

    config = model.config
    family = gguf_family(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(family.gguf_arch(), config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise InstructuneError(f"{name}: no GGUF tensor name for this weight (unexpected for a {family.NAME} model)")
        data = family.gguf_tensor(name, tensor.detach().to(torch.float32).cpu().numpy(), config)
        qtype = tensor_type(new_name, data.shape, gguf_type, tied)
        yield new_name, gguf.quants.quantize(data, qtype), qtype


def write_gguf(model: Any, tokenizer: Any, output: str | os.PathLike, gguf_type: str = "q8_0", *,
               name: str | None = None) -> Path:
    """Write a model of a family with a GGUF side (Llama, Gemma 3) and its tokenizer as one GGUF file.

    The file is written beside `output` first and renamed into place, so a failed export never
    leaves a truncated file where llama.cpp would try to load it.

    Args:
        model: a transformers LlamaForCausalLM or Gemma3ForCausalLM (merged: no LoRA layers).
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
    family = gguf_family(model.config)
    output = Path(output)
    if output.exists():
        raise InstructuneError(f"{output}: file exists; choose a new path")
    check_writable(output)
    with atomic_file(output, what="the GGUF file") as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[family.gguf_arch()])
        try:
            _write(writer, model, tokenizer, gguf_type, name or output.stem, family)
        finally:
            writer.close()
    return output


def _write(writer: Any, model: Any, tokenizer: Any, gguf_type: str, name: str, family: ModuleType) -> None:
    """Everything of the file, in GGUF's order: keys (type, name, the family's hyperparameters, the
    tokenizer), then the tensors."""
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    family.add_gguf_hyperparameters(writer, model.config)
    writer.add_file_type(gguf.LlamaFileType[GGUF_TYPES[gguf_type][0]])
    add_tokenizer(writer, tokenizer, model.config.vocab_size)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, data, qtype in gguf_tensors(model, gguf_type):
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()


def export_gguf(output: str | os.PathLike, gguf_type: str, *, adapter: str | None = None,
                model: str | None = None, chat_template: bool | str | None = None) -> tuple[Path, Path]:
    """Merge `adapter` into its base (or take `model` as it is) and write a GGUF file plus an Ollama Modelfile.

    Args:
        output: the .gguf path.
        gguf_type: one of GGUF_TYPES.
        adapter: a LoRA adapter folder; its base is `model`, else the one in its config, else the default.
        model: without `adapter`, the model to export: a merged or fully fine-tuned folder, or None for
            the default model.
        chat_template: None keeps the tokenizer's own template; a built-in name ("gemma", "chatml") or a
            .jinja path puts that one in the file instead (a base model asked in its family's turns); False
            writes none (`model.chat_template` values, data.tokenize.apply_chat_template_setting).

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
    if chat_template is not None:
        tokenizer = apply_chat_template_setting(tokenizer, chat_template, loaded)
    check_architecture(loaded.config)  # before the slow part, and before anything is written
    write_gguf(loaded, tokenizer, output, gguf_type)
    return output, write_modelfile(modelfile, output, tokenizer)

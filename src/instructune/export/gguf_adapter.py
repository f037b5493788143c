"""`instructune export --adapter DIR --gguf-adapter TYPE`: a LoRA adapter as llama.cpp's LoRA GGUF file.

Users can then ship one base GGUF file and many small adapters: llama.cpp applies an adapter at load
time (`llama-cli -m base.gguf --lora adapter.gguf`, the server's `lora` parameters) and computes
W x + scale * B (A x) for every adapted matrix. The file holds what llama.cpp's adapter loader reads
(llama-adapter.cpp) and its converter writes (convert_lora_to_gguf.py): `general.architecture` equal
to the base file's, `general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`, and per
adapted matrix two tensors under the base tensor's GGUF name plus `.lora_a` (A, rank x in) and
`.lora_b` (B, out x rank). llama.cpp scales by alpha / rank with the rank read from B; PEFT scales by
alpha / r (or alpha / sqrt(r) with rsLoRA, per-module r and alpha with rank/alpha patterns), so any
factor between the two is folded into B and the plain case is written unchanged. The q and k
projections' B rows are permuted as the base export permutes those weights' rows (models/llama.py
`permute_for_rope`): (W + s B A) permuted by rows is W' + s B' A.

The adapter is read from its folder (adapter_config.json, adapter_model.safetensors) or taken from a
PEFT model in memory; the base weights are not needed, only the base config (heads, layers). What
this file leaves out: DoRA, LoRA biases, embedding or output-layer adapters and `modules_to_save`
(one error line each), K-quants, and the base model file (gguf.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError
from instructune.models import adapter_base_model, llama, load_model_config, resolve_model_path

# --gguf-adapter name -> GGML type of the A/B matrices (llama.cpp's converter offers these four).
ADAPTER_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
# PEFT module names llama.cpp can apply an adapter to, in a Llama model (GGUF attn_q ... ffn_down).
_ADAPTABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _read_adapter(adapter: Any) -> tuple[dict, dict]:
    """(PEFT config as a dict, {PEFT tensor name: fp32 tensor}) from a folder or a PeftModel."""
    import torch

    if hasattr(adapter, "peft_config"):  # a PeftModel in memory
        from peft import get_peft_model_state_dict

        name = getattr(adapter, "active_adapter", "default")
        config = adapter.peft_config[name].to_dict()
        state = get_peft_model_state_dict(adapter, adapter_name=name)
        return config, {k: v.detach().to(torch.float32).cpu() for k, v in state.items()}
    folder = Path(adapter).expanduser()
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise InstructuneError(f"{folder}: no adapter_config.json (expected a LoRA adapter folder)")
    config = json.loads(config_path.read_text())
    if (folder / _ADAPTER_FILES[0]).is_file():
        from safetensors.torch import load_file

        state = load_file(folder / _ADAPTER_FILES[0], device="cpu")
    elif (folder / _ADAPTER_FILES[1]).is_file():
        state = torch.load(folder / _ADAPTER_FILES[1], map_location="cpu", weights_only=True)
    else:
        raise InstructuneError(f"{folder}: no {' or '.join(_ADAPTER_FILES)} (expected a LoRA adapter folder)")
    return config, {k: v.to(torch.float32) for k, v in state.items()}


def _check_config(config: dict) -> None:
    """Refuse, in one line each, adapters llama.cpp's LoRA format cannot express."""
    peft_type = config.get("peft_type", "LORA")
    peft_type = str(getattr(peft_type, "value", peft_type))  # an enum in memory, a string in the json
    if peft_type.upper() != "LORA":
        raise InstructuneError(f"--gguf-adapter writes LoRA adapters; this one is {peft_type!r}")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (GPT-2 Conv1D) layers")):
        if config.get(flag):
            raise InstructuneError(f"--gguf-adapter: llama.cpp's LoRA format has no {what}; merge instead "
                                   "(instructune export --adapter DIR --gguf TYPE)")
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        raise InstructuneError("--gguf-adapter: llama.cpp's LoRA format has no bias terms; merge instead "
                               "(instructune export --adapter DIR --gguf TYPE)")
    if config.get("modules_to_save"):
        raise InstructuneError(f"--gguf-adapter: the adapter saves whole modules {config['modules_to_save']}, "
                               "which a LoRA GGUF cannot carry; merge instead (instructune export --gguf TYPE)")
    if not config.get("lora_alpha"):
        raise InstructuneError("--gguf-adapter: adapter_config.json has no lora_alpha")


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_pairs(config: dict, state: dict) -> list[tuple[str, Any, Any, float]]:
    """(module path, A (r, in), B (out, r), PEFT scaling) for every adapted matrix, in name order.

    Example:
        >>> lora_pairs(config, state)[0][0], lora_pairs(config, state)[0][3]
        ('model.layers.0.self_attn.q_proj', 2.0)
    """
    pairs: dict[str, dict] = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name)
        if match is None:
            raise InstructuneError(f"--gguf-adapter: tensor {name!r} is not a LoRA A/B matrix of a linear layer "
                                   "(embedding adapters and saved modules cannot go into a LoRA GGUF)")
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
    result = []
    for module in sorted(pairs):
        if set(pairs[module]) != {"A", "B"}:
            raise InstructuneError(f"--gguf-adapter: {module} has only lora_{''.join(pairs[module])}")
        if module.rsplit(".", 1)[-1] not in _ADAPTABLE:
            raise InstructuneError(f"--gguf-adapter: {module} is not one of the projections llama.cpp adapts "
                                   f"({', '.join(_ADAPTABLE)})")
        a, b = pairs[module]["A"], pairs[module]["B"]
        rank = a.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        result.append((module, a, b, scaling))
    if not result:
        raise InstructuneError("--gguf-adapter: the adapter has no LoRA matrices")
    return result


def _tensor_type(gguf_type: str, shape: tuple) -> Any:
    import gguf

    qtype = gguf.GGMLQuantizationType[ADAPTER_TYPES[gguf_type]]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    # B's rows are `rank` long (e.g. 8): too short for Q8_0 blocks of 32, stored F16 as llama.cpp does.
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def write_gguf_adapter(adapter: Any, base_config: Any, output: str | os.PathLike, gguf_type: str = "f16", *,
                       name: str | None = None) -> Path:
    """Write a LoRA adapter as one llama.cpp LoRA GGUF file, for use over the base model's GGUF file.

    The file is written beside `output` first and renamed into place.

    Args:
        adapter: a PEFT LoRA adapter folder, or a PeftModel (its active adapter).
        base_config: the base model's transformers config (a Llama-architecture model).
        output: the .gguf path; must not exist yet.
        gguf_type: one of ADAPTER_TYPES (f32, f16, bf16, q8_0).
        name: general.name in the file (default: the output's stem).

    Returns:
        The path written.

    Example:
        >>> write_gguf_adapter("runs/quickstart/adapter", AutoConfig.from_pretrained(base), "exported/support.lora.gguf")
        PosixPath('exported/support.lora.gguf')
    """
    import gguf

    if gguf_type not in ADAPTER_TYPES:
        raise InstructuneError(f"--gguf-adapter {gguf_type!r}: expected one of {', '.join(ADAPTER_TYPES)}")
    if (reason := llama.gguf_unsupported_reason(base_config)) is not None:
        raise InstructuneError(reason)
    output = Path(output)
    if output.suffix != ".gguf":
        raise InstructuneError(f"{output}: a GGUF file name must end in .gguf")
    if output.exists():
        raise InstructuneError(f"{output}: file exists; choose a new path")
    config, state = _read_adapter(adapter)
    _check_config(config)
    pairs = lora_pairs(config, state)
    alpha = float(config["lora_alpha"])
    heads, kv_heads, _ = llama.dims(base_config)
    names = gguf.get_tensor_name_map(llama.gguf_arch(), base_config.num_hidden_layers)
    tensors = []
    for module, a, b, scaling in pairs:
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise InstructuneError(f"--gguf-adapter: {module}: no GGUF tensor name for it in a Llama model")
        rank = a.shape[0]
        # llama.cpp multiplies B A by alpha / rank; fold whatever PEFT's scaling differs by into B.
        b = b * (scaling / (alpha / rank)) if not math.isclose(scaling, alpha / rank, rel_tol=1e-9) else b
        a, b = a.numpy(), b.numpy()
        if module.endswith("q_proj"):
            b = llama.permute_for_rope(b, heads)
        elif module.endswith("k_proj"):
            b = llama.permute_for_rope(b, kv_heads)
        tensors.append((gguf_name + ".lora_a", a))
        tensors.append((gguf_name + ".lora_b", b))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[llama.gguf_arch()])
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name or output.stem)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, data in tensors:
            qtype = _tensor_type(gguf_type, data.shape)
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.rename(output)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return output


def export_gguf_adapter(output: str | os.PathLike, gguf_type: str, *, adapter: str | os.PathLike,
                        model: str | None = None) -> Path:
    """`instructune export --adapter DIR --gguf-adapter TYPE -o A.gguf`: the base config resolved as merging does.

    The base is `model`, else the folder named in the adapter's config, else the default model; only
    its config.json is read.

    Example:
        >>> export_gguf_adapter("exported/support.lora.gguf", "f16", adapter="runs/quickstart/adapter")
        PosixPath('exported/support.lora.gguf')
    """
    base = resolve_model_path(model or adapter_base_model(adapter))
    return write_gguf_adapter(adapter, load_model_config(base), output, gguf_type)

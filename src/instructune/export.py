"""`instructune export`: merge a LoRA adapter into its base model and save a plain transformers folder.

The result (safetensors weights, tokenizer with its chat template, generation config) loads with
`AutoModelForCausalLM.from_pretrained` (or `AutoModelForSeq2SeqLM`) and needs neither peft nor
instructune. What this file leaves out: training (train.py) and loading (models.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .atomic import atomic_folder
from .errors import InstructuneError
from .models import load_model


def adapter_base_model(adapter: str | Path) -> str | None:
    """The base model folder recorded in an adapter's config, when it exists on this machine."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise InstructuneError(f"{adapter}: no adapter_config.json (expected a LoRA adapter folder)")
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    return base if base and Path(base).is_dir() else None


def export_merged(adapter: str | Path, output: str | Path, *, model: str | None = None) -> Path:
    """Merge `adapter` into its base and save to `output`.

    The base is `model`, else the folder named in the adapter's config, else the default model.

    The folder is written beside `output` first and renamed into place, so a failed export never
    leaves a half-written model where a user expects a good one.

    Example:
        >>> export_merged("runs/quickstart/adapter", "exported/smollm2-support")
        PosixPath('exported/smollm2-support')
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise InstructuneError(f"{output}: output folder exists and is not empty; choose a new path")
    wrapped, tokenizer = load_model(model or adapter_base_model(adapter), adapter=adapter)
    merged = wrapped.merge_and_unload()
    with atomic_folder(output) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return output


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune export",
        description="Merge a LoRA adapter into its base model; save a plain Hugging Face model folder.",
        epilog="Example: instructune export --adapter runs/quickstart/adapter -o exported/support-bot",
    )
    parser.add_argument("--adapter", required=True, help="LoRA adapter folder (e.g. runs/NAME/adapter).")
    parser.add_argument("--model", default=None, help="Base model folder; default: the default model.")
    parser.add_argument("-o", "--output", required=True, help="New folder for the merged model.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    out = export_merged(args.adapter, args.output, model=args.model)
    seq2seq = json.loads((out / "config.json").read_text()).get("is_encoder_decoder", False)
    print(f"merged model saved to {out} (load it with {'AutoModelForSeq2SeqLM' if seq2seq else 'AutoModelForCausalLM'}"
          ".from_pretrained)")
    return 0

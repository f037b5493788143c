"""`instructune export`: merge a LoRA adapter into its base model and save a plain transformers folder.

With `--gguf TYPE` the merged (or a full fine-tuned) model goes to one GGUF file instead; the
writing lives in gguf.py, the merge (models.merge_adapter) is shared by both.

The result (safetensors weights, tokenizer with its chat template, generation config) loads with
`AutoModelForCausalLM.from_pretrained` (or `AutoModelForSeq2SeqLM`) and needs neither peft nor
instructune. Missing parent folders of `-o` are created; a place that cannot be written is one line
before the merge starts (nothing created), and a write that fails midway (a full disk) leaves nothing at `-o`.
What this file leaves out: training (train/) and loading (models/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import SafetensorError

from instructune.data.tokenize import apply_chat_template_setting
from instructune.fileio.atomic import atomic_folder, check_writable
from instructune.errors import InstructuneError
from instructune.export.gguf import export_gguf
from instructune.export.gguf_adapter import export_gguf_adapter
from instructune.models import check_adapter_folder, is_encoder_decoder, load_model_config, merge_adapter


def export_merged(adapter: str | Path, output: str | Path, *, model: str | None = None,
                  chat_template: bool | str | None = None) -> Path:
    """Merge `adapter` into its base and save to `output`.

    The base is `model`, else the folder named in the adapter's config, else the default model.
    `chat_template` as in gguf.export_gguf: None keeps the tokenizer's own, a name or .jinja path
    replaces it, False drops it.

    The folder is written beside `output` first and renamed into place, so a failed export never
    leaves a half-written model where a user expects a good one.

    Example:
        >>> export_merged("runs/quickstart/adapter", "exported/smollm2-support")
        PosixPath('exported/smollm2-support')
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InstructuneError(f"{output}: a file is there; choose a new folder path")
    if output.exists() and any(output.iterdir()):
        raise InstructuneError(f"{output}: output folder exists and is not empty; choose a new path")
    check_adapter_folder(adapter)  # a bad adapter, then a bad place: both before the merge, nothing created
    check_writable(output)
    merged, tokenizer = merge_adapter(adapter, model=model)
    if chat_template is not None:
        tokenizer = apply_chat_template_setting(tokenizer, chat_template, merged)
    try:
        with atomic_folder(output) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    except (OSError, SafetensorError) as error:  # a full disk midway: the temp folder is gone, nothing at output
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise InstructuneError(f"{output}: could not write the merged model ({reason}); nothing was left there") from None
    return output


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune export",
        description="Merge a LoRA adapter into its base model; save a plain Hugging Face model folder, "
        "or (--gguf TYPE) one GGUF file for llama.cpp / Ollama / LM Studio plus an Ollama Modelfile.",
        epilog="Examples: instructune export --adapter runs/quickstart/adapter -o exported/support-bot\n"
        "          instructune export --adapter runs/quickstart/adapter --gguf q8_0 -o exported/support-bot.gguf\n"
        "          instructune export --model runs/dialogsum-full/best --gguf q4_1 -o exported/dialogsum.gguf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (e.g. runs/NAME/adapter).")
    parser.add_argument("--model", default=None,
                        help="With --adapter: its base model folder (default: the one recorded in the adapter, else "
                        "the default model). Without: the model to export (a merged or full fine-tuned folder; "
                        "'default' or 'gemma3-270m' for a built-in model), --gguf only.")
    parser.add_argument("--gguf", default=None, metavar="TYPE",
                        help="Write a GGUF file instead of a folder; TYPE is one of f32, f16, bf16, q8_0, q4_0, q4_1.")
    parser.add_argument("--gguf-adapter", default=None, metavar="TYPE",
                        help="Write the LoRA adapter alone as a llama.cpp LoRA GGUF file (TYPE: f32, f16, bf16, q8_0), "
                        "applied over the base model's GGUF file (export --model BASE --gguf TYPE): one base file, "
                        "many small adapters. Only the base's config is read.")
    parser.add_argument("--chat-template", default=None, metavar="NAME|FILE|none",
                        help="Put this chat template in the export instead of the tokenizer's own: a built-in name "
                        "(gemma, chatml) or a .jinja file; 'none' writes none. Default: the tokenizer's own (a tuned "
                        "model carries the one it was trained with). E.g. a base model asked in its family's turns.")
    parser.add_argument("-o", "--output", required=True, help="New folder for the merged model, or the .gguf file.")
    return parser


def _template_setting(value: str | None) -> bool | str | None:
    return False if value is not None and value.lower() == "none" else value


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.gguf_adapter is not None:
        if args.adapter is None or args.gguf is not None:
            raise InstructuneError("--gguf-adapter TYPE writes --adapter DIR alone (without --gguf); export the base "
                                   "with --model BASE --gguf TYPE in a second run")
        path = export_gguf_adapter(args.output, args.gguf_adapter, adapter=args.adapter, model=args.model)
        print(f"LoRA GGUF ({args.gguf_adapter}) saved to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        print(f"run it over the base's GGUF: llama-cli -m BASE.gguf --lora {path}   |   "
              f"instructune eval --model BASE.gguf --adapter {path} ...")
        return 0
    if args.gguf is not None:
        if args.adapter is None and args.model is None:
            raise InstructuneError("--gguf needs --adapter DIR or --model DIR (the model to export)")
        path, modelfile = export_gguf(args.output, args.gguf, adapter=args.adapter, model=args.model,
                                      chat_template=_template_setting(args.chat_template))
        size_mib = path.stat().st_size / 2**20
        print(f"GGUF ({args.gguf}) saved to {path} ({size_mib:.1f} MiB); Ollama Modelfile: {modelfile}")
        print(f"run it: llama-cli -m {path} -cnv   |   ollama create NAME -f {modelfile} && ollama run NAME")
        return 0
    if args.adapter is None:
        raise InstructuneError("--adapter is required (without --gguf, export merges an adapter into its base)")
    out = export_merged(args.adapter, args.output, model=args.model,
                        chat_template=_template_setting(args.chat_template))
    seq2seq = is_encoder_decoder(load_model_config(out))
    print(f"merged model saved to {out} (load it with {'AutoModelForSeq2SeqLM' if seq2seq else 'AutoModelForCausalLM'}"
          ".from_pretrained)")
    return 0

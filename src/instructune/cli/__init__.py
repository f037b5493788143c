"""The `instructune` command: a thin dispatcher over each stage's `main(argv)`.

Bad input (InstructuneError) ends in one line on stderr and exit code 2; Ctrl-C in exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import warnings

from instructune.cli.allocator import reexec_with_tcmalloc
from instructune.errors import EXIT_BAD_INPUT, InstructuneError

def _eval_allocator(argv: list[str]) -> str:
    """`eval` keeps glibc's malloc where OpenVINO may decode (--engine auto or openvino, openvino-genai
    installed): OpenVINO aborts beside tcmalloc (generation/openvino_engine.py). Elsewhere tcmalloc."""
    if importlib.util.find_spec("openvino_genai") is None:
        return "tcmalloc"
    options = importlib.import_module("instructune.evaluate.run").add_engine_arguments(
        argparse.ArgumentParser(add_help=False, exit_on_error=False))
    try:
        args, _ = options.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):  # a bad --engine: the command itself will say so
        return "system"
    return "system" if args.engine in ("auto", "openvino") else "tcmalloc"


# name -> (module whose main(argv) runs it, help line, allocator: "tcmalloc", "system" or a rule on argv).
# tcmalloc keeps freed tensors for reuse (cli/allocator.py: ~1.2-1.45x training tokens/s on this CPU).
COMMANDS = {
    "quickstart": ("instructune.cli.quickstart", "Run the whole pipeline end to end on the default model and built-in data.",
                   "tcmalloc"),
    "prepare": ("instructune.data.prepare", "Raw records + task templates (or a mixture) -> instruction JSONL.", "system"),
    "train": ("instructune.train.trainer", "Fine-tune from a YAML config with key=value overrides.", "tcmalloc"),
    "eval": ("instructune.evaluate.run", "Evaluate a model (optionally with an adapter) on tasks -> metrics JSON.",
             _eval_allocator),
    "compare": ("instructune.evaluate.compare", "Before/after table, forgetting flags, charts and an HTML report.",
                "system"),
    "chat": ("instructune.generation.chat", "Talk with a model (optionally with an adapter) in the terminal.", "system"),
    "export": ("instructune.export.merge", "Merge a LoRA adapter into its base: a plain model folder, or a GGUF file "
               "(--gguf).", "system"),
    "board": ("instructune.board.app", "A local web page over every stage (needs the board extra: gradio).", "system"),
}


def allocator_for(argv: list[str]) -> str:
    """The allocator a command line runs under: "tcmalloc" or "system" (COMMANDS' third column)."""
    if not argv or argv[0] not in COMMANDS:
        return "system"
    rule = COMMANDS[argv[0]][2]
    return rule(argv[1:]) if callable(rule) else rule


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: instructune <command> [options]   (instructune <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # Started from the shell: the allocator is chosen here, once, before any heavy import.
    if argv is None and allocator_for(sys.argv[1:]) == "tcmalloc":
        reexec_with_tcmalloc()
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Libraries' deprecation notices are for their callers (us), not for the person at the terminal.
    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes (imported by peft when installed) warns at import that an optional hub kernel is
    # missing; its built-in CPU path works without it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"instructune: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except InstructuneError as error:
        print(f"instructune {name}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"instructune {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `instructune` command: a thin dispatcher over each stage's `main(argv)`.

Bad input (InstructuneError) ends in one line on stderr and exit code 2; Ctrl-C in exit code 130.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings

from instructune.cli.allocator import reexec_with_tcmalloc
from instructune.errors import EXIT_BAD_INPUT, InstructuneError

COMMANDS = {
    "quickstart": ("instructune.cli.quickstart", "Run the whole pipeline end to end on the default model and built-in data."),
    "prepare": ("instructune.data.prepare", "Raw records + task templates (or a mixture) -> instruction JSONL."),
    "train": ("instructune.train.trainer", "Fine-tune from a YAML config with key=value overrides."),
    "eval": ("instructune.evaluate.run", "Evaluate a model (optionally with an adapter) on tasks -> metrics JSON."),
    "compare": ("instructune.evaluate.compare", "Before/after table, forgetting flags, charts and an HTML report."),
    "chat": ("instructune.generation.chat", "Talk with a model (optionally with an adapter) in the terminal."),
    "export": ("instructune.export.merge", "Merge a LoRA adapter into its base: a plain model folder, or a GGUF file (--gguf)."),
    "board": ("instructune.board.app", "A local web page over every stage (needs the board extra: gradio)."),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: instructune <command> [options]   (instructune <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


HEAVY = ("quickstart", "train", "eval")  # run under tcmalloc when started from the shell (allocator.py)


def _decodes_on_openvino(argv: list[str]) -> bool:
    """Whether `eval` will generate on OpenVINO, which aborts beside a preloaded tcmalloc
    (openvino_engine.unsupported_reason): then it keeps glibc's allocator."""
    if argv[0] != "eval" or importlib.util.find_spec("openvino_genai") is None:
        return False
    engine = next((value.split("=", 1)[1] if "=" in value else argv[i + 1] if i + 1 < len(argv) else "auto"
                   for i, value in enumerate(argv) if value.split("=", 1)[0] == "--engine"), "auto")
    return engine in ("auto", "openvino")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] and sys.argv[1] in HEAVY and not _decodes_on_openvino(sys.argv[1:]):
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

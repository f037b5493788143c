"""`instructune eval`: score a model (base, base + LoRA adapter, or merged folder) on tasks with ground truth.

For each --task/--data pair the raw records are rendered with the task's templates (zero- or
few-shot, a fixed template or a seeded sample) and scored by score.py in a named mode ("instruct" or
"lm-eval", each task's own unless --mode says). Writes one metrics JSON (model, adapter, and per task
its mode, split, template, start, every, limit, seed; package versions, timestamps) and the
predictions JSONL beside it. Where -o points is checked before the model loads, and both files are
written beside their names and renamed into place, so a failed write leaves no half file. Running
out of memory is one line naming the batch shape and what to lower (score.py). Comparing runs is
compare.py's job.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from instructune.fileio.atomic import check_writable, write_text_atomic
from instructune.data.render import parse_template_choice
from instructune.data.tokenize import apply_chat_template_setting
from instructune.data.templates import EVAL_MODES
from instructune.errors import InstructuneError
from instructune.generation.generate import ENGINE_CHOICES, Decoding, GenerateOptions, Mbr
from instructune.generation.mbr import UTILITIES
from instructune.evaluate.metrics import PROTOCOLS
from instructune.evaluate.score import evaluate_task
from instructune.generation import llamacpp_engine
from instructune.models import load_model

_PACKAGES = ("instructune", "torch", "transformers", "peft", "datasets", "rouge-score", "xllamacpp", "openvino",
             "openvino-genai")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def predictions_path(metrics_path: str | Path) -> Path:
    """Where the predictions of a metrics JSON live: OUT.json -> OUT.predictions.jsonl."""
    path = Path(metrics_path)
    return path.with_name(path.stem + ".predictions.jsonl")


def format_metrics(task: str, metrics: dict[str, float]) -> str:
    """One line per reference protocol for multi-reference ROUGE (see metrics.py), else one line.

    Example:
        >>> print(format_metrics("dialogsum", {"rouge1": 0.5, "rouge1_first_ref": 0.4, "rouge1_mean_ref": 0.42}))
          dialogsum: rouge1 0.5000 (best of the references)
          dialogsum: rouge1 0.4000 (first reference)
          dialogsum: rouge1 0.4200 (mean over the references)
    """
    if not any(name.endswith("_mean_ref") for name in metrics):
        return f"  {task}: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    lines = []
    for suffix, protocol in PROTOCOLS.items():
        chosen = {name.removesuffix(suffix): value for name, value in metrics.items()
                  if name.startswith("rouge") and (name.endswith(suffix) if suffix else "_" not in name)}
        if suffix == "":
            chosen.update({name: value for name, value in metrics.items() if not name.startswith("rouge")})
        lines.append(f"  {task}: " + ", ".join(f"{name} {value:.4f}" for name, value in chosen.items()) + f" ({protocol})")
    return "\n".join(lines)


def per_task_values(flag: str, values: list[int] | None, n_tasks: int, *, default: int | None,
                    smallest: int) -> list[int | None]:
    """One value per --task from a flag given never, once (every task) or once per --task.

    Example:
        >>> per_task_values("--limit", [1000, 1000, 200], 3, default=None, smallest=1)
        [1000, 1000, 200]
        >>> per_task_values("--start", None, 2, default=0, smallest=0)
        [0, 0]
    """
    values = values or [default]
    if len(values) not in (1, n_tasks):
        raise InstructuneError(f"eval: {len(values)} {flag} for {n_tasks} --task; give it once (every task) "
                               "or once per --task, in the same order")
    for value in values:
        if value is not None and value < smallest:
            raise InstructuneError(f"eval: {flag} {value}; expected a number >= {smallest}")
    return values * n_tasks if len(values) == 1 else values


def add_engine_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--engine and --compute-type: `eval`'s options that the CLI also reads to choose the allocator."""
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                        help="generation engine: auto = for Llama-family models OpenVINO (openvino-genai: "
                             "continuous batching, paged attention; exported once and cached) or, without it, the "
                             "native greedy engine, both with the same answers as HF generate fp32 (bench/RESULTS.md); "
                             "else Hugging Face generate (always under the decoding flags below)")
    parser.add_argument("--compute-type", choices=("float32", "bfloat16"), default=None,
                        help="engine precision (default float32, exact): bfloat16 (openvino, native) changes some "
                             "answers and is faster on CPUs with fast bf16 (AMX, AMD EPYC), slower on an Intel Xeon "
                             "without AMX; speed and ROUGE against float32 are in bench/RESULTS.md")
    return parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune eval",
        description="Evaluate a model on tasks with ground truth; write metrics JSON and predictions JSONL.",
    )
    parser.add_argument("--model", default=None, help="a local Hugging Face model folder, a built-in model (default: SmolLM2-135M-Instruct; gemma3-270m), or a .gguf file (scored in llama.cpp)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder to load over --model")
    parser.add_argument("--task", action="append", required=True,
                        help="built-in task name or task YAML path; repeat, paired in order with --data")
    parser.add_argument("--data", action="append", required=True,
                        help="records file or folder for the matching --task (repeat once per --task)")
    parser.add_argument("--split", default=None, help="split to read from a data folder or saved dataset")
    parser.add_argument("--limit", type=int, action="append", default=None,
                        help="evaluate at most N examples of each task: once for every task, or once per --task "
                             "in the same order (e.g. 1000 for multiple choice, 200 for generation)")
    parser.add_argument("--start", type=int, action="append", default=None,
                        help="skip the first N examples before --limit: once for every task, or once per --task "
                             "(--start 1000 --limit 500 scores items 1000-1499, e.g. to tune settings on items "
                             "the final evaluation does not use)")
    parser.add_argument("--every", type=int, action="append", default=None,
                        help="take every N-th example from --start on, before --limit: once for every task, or once "
                             "per --task (spreads a sample over a file sorted by topic; default 1)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="exemplars (from the same records) before each prompt")
    parser.add_argument("--template", default="0",
                        help="template index (default 0), 'sample' (seeded, one per record) or 'all'")
    parser.add_argument("--seed", type=int, default=0, help="seed for template sampling and few-shot draws")
    parser.add_argument("--no-options", action="store_true",
                        help="leave the options list out of multiple-choice prompts (score the endings alone)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per HF generate call (times --num-beams rows; "
                             "the native engine keeps at least 32 answers in flight; "
                             "multiple choice on decoder-only models packs items by tokens instead)")
    parser.add_argument("--max-new-tokens", type=int, action="append", default=None,
                        help="answer length cap for generation tasks (default 128): once for every task, or once per "
                             "--task (a topic needs 16, a support answer 320); an answer that reaches it is not "
                             "well formed (it did not stop)")
    parser.add_argument("--mode", choices=EVAL_MODES, default=None,
                        help="'lm-eval': lm-evaluation-harness 0.4's rules (plain prompt, ' ' + option, no chat "
                             "template, no options listed); 'instruct': prompts as training renders them "
                             "(default: each task's eval_mode; hellaswag_lmeval and piqa_lmeval are lm-eval)")
    add_engine_arguments(parser)
    decoding = parser.add_argument_group(
        "decoding", "how generation tasks search for an answer (default: greedy). These run on Hugging Face generate, "
                    "slower than the greedy engines: --engine auto picks it, --engine openvino/native refuse them")
    decoding.add_argument("--num-beams", type=int, default=1, metavar="N",
                          help="beam search with N beams per prompt (default 1: greedy); each beam is one more row "
                               "in every forward pass")
    decoding.add_argument("--length-penalty", type=float, default=1.0, metavar="F",
                          help="beam search ranks finished answers by summed log-probability / (new tokens ** F): "
                               "a higher F favours longer answers, a lower one shorter (default 1.0; needs "
                               "--num-beams > 1)")
    decoding.add_argument("--no-repeat-ngram-size", type=int, default=0, metavar="N",
                          help="never repeat an N-token sequence already in the prompt or answer (HF counts the "
                               "prompt too; default 0: off)")
    decoding.add_argument("--repetition-penalty", type=float, default=1.0, metavar="F",
                          help="make tokens already in the prompt or answer less likely: positive logits divided "
                               "by F, negative ones multiplied (default 1.0: off; the CTRL paper suggests ~1.2)")
    mbr = parser.add_argument_group(
        "MBR decoding", "minimum Bayes risk: sample N answers per prompt and keep the one that agrees most (by ROUGE) "
                        "with the others; N times the answers of greedy decoding, on OpenVINO where it runs, else "
                        "Hugging Face generate. Seeded by --seed")
    mbr.add_argument("--mbr", type=int, default=0, metavar="N",
                     help="answers sampled per prompt (default 0: off; 8-32 is usual)")
    mbr.add_argument("--mbr-utility", choices=UTILITIES, default="rouge1",
                     help="what agreement is measured by (default rouge1; 'rouge': the mean of ROUGE-1, -2 and -L)")
    mbr.add_argument("--mbr-temperature", type=float, default=1.0, metavar="T",
                     help="sampling temperature of the candidates (default 1.0)")
    mbr.add_argument("--mbr-top-p", type=float, default=1.0, metavar="P",
                     help="nucleus sampling mass of the candidates (default 1.0; top-k 50 always applies, as in "
                          "Hugging Face generate)")
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap prompts in the tokenizer's chat template (default: when it has one)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-o", "--output", required=True,
                        help="metrics JSON path; predictions go beside it as <name>.predictions.jsonl")
    return parser


@dataclass(frozen=True)
class TaskData:
    """One task of an evaluation: the task, its records, and which of its examples to score."""

    task: str                 # a built-in task name or a task YAML path
    data: str                 # the records file or folder
    limit: int | None = None  # at most this many examples, after start and every
    start: int = 0
    every: int = 1
    max_new_tokens: int | None = None  # this task's answer cap; None = the evaluation's


def evaluate_to_file(model_path: str | None, adapter: str | None, tasks: list[TaskData], output: str | Path, *,
                     options: GenerateOptions | None = None, split: str | None = None, num_fewshot: int = 0,
                     template: str | int = 0, seed: int = 0, with_options: bool = True,
                     mode: str | None = None) -> Path:
    """Load a model (and adapter), score it on every task and write the metrics JSON and predictions beside it.

    What `instructune eval` runs, and the board's Evaluate tab: one result file per model, which
    `compare_runs` (compare.py) reads. The output's folder is checked before the model loads.

    Returns:
        The metrics JSON path (predictions: `predictions_path` of it).

    Example:
        >>> evaluate_to_file(None, "runs/quickstart/adapter", [TaskData("dialogsum", "test.jsonl", limit=20)],
        ...                  "runs/eval/tuned.json")
        PosixPath('runs/eval/tuned.json')
    """
    options = options or GenerateOptions()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    output = Path(output)
    check_writable(output)  # before the model loads and the tasks run: an unwritable -o costs no waiting
    model, tokenizer = load_any_model(model_path, adapter, options)
    try:
        return _evaluate_loaded(model, tokenizer, model_path, adapter, tasks, output, options, started, split=split,
                                num_fewshot=num_fewshot, template=template, seed=seed, with_options=with_options,
                                mode=mode)
    finally:
        if isinstance(model, llamacpp_engine.GgufModel):
            model.close()  # llama.cpp's server stops with the evaluation


def load_any_model(model_path: str | None, adapter: str | None, options: GenerateOptions):
    """A model folder (and adapter) through transformers, or a .gguf file (and LoRA .gguf adapter) through llama.cpp."""
    if model_path is not None and str(model_path).endswith(".gguf"):
        return llamacpp_engine.load_gguf(model_path, slots=max(options.batch_size, 8),
                                         lora=llamacpp_engine.lora_files(adapter))
    if options.engine == llamacpp_engine.NAME:
        raise InstructuneError("--engine llamacpp runs GGUF files: give --model FILE.gguf "
                               "(instructune export --gguf TYPE writes one)")
    model, tokenizer = load_model(model_path, adapter)
    if options.chat_template is not False:
        # A base model without a chat template (Gemma 3 270M) is scored in its family's turns, as training with
        # model.chat_template null formats it, so base and tuned read the same prompts (--no-chat-template: plain).
        tokenizer = apply_chat_template_setting(tokenizer, None, model, say=lambda line: print(f"eval: {line}",
                                                                                               file=sys.stderr))
    return model, tokenizer


def _evaluate_loaded(model, tokenizer, model_path, adapter, tasks, output, options, started, *, split, num_fewshot,
                     template, seed, with_options, mode) -> Path:
    results: dict[str, dict] = {}
    all_rows: list[dict] = []
    for spec in tasks:
        task_options = replace(options, max_new_tokens=spec.max_new_tokens) if spec.max_new_tokens else options
        summary, rows = evaluate_task(
            model, tokenizer, spec.task, spec.data, split=split, limit=spec.limit, start=spec.start, every=spec.every,
            num_fewshot=num_fewshot, template=template, seed=seed, with_options=with_options, mode=mode,
            options=task_options,
        )
        key = summary["task"] if summary["task"] not in results else f"{summary['task']}:{Path(spec.data).stem}"
        results[key] = summary
        all_rows.extend({**row, "task": key} for row in rows)
        print(format_metrics(f"{key} ({summary['mode']})", summary["metrics"]))
        if "well_formed" in summary.get("intervals", {}):
            low, high = summary["intervals"]["well_formed"]
            print(f"  {key}: well formed {summary['metrics']['well_formed']:.3f} [{low:.3f}, {high:.3f}] (95% interval)")
    result = {
        "model": model_path or "default", "adapter": adapter,
        "engine": llamacpp_engine.NAME if isinstance(model, llamacpp_engine.GgufModel) else options.engine,
        "compute_type": options.compute_type, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": package_versions(),
        "predictions": predictions_path(output).name, "tasks": results,
    }
    predictions = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in all_rows)
    write_text_atomic(predictions_path(output), predictions)
    write_text_atomic(output, json.dumps(result, indent=2) + "\n")
    return output


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if len(args.task) != len(args.data):
        raise InstructuneError(
            f"eval: {len(args.task)} --task but {len(args.data)} --data; give one --data per --task, in the same order"
        )
    limits = per_task_values("--limit", args.limit, len(args.task), default=None, smallest=1)
    starts = per_task_values("--start", args.start, len(args.task), default=0, smallest=0)
    strides = per_task_values("--every", args.every, len(args.task), default=1, smallest=1)
    caps = per_task_values("--max-new-tokens", args.max_new_tokens, len(args.task), default=128, smallest=1)
    decoding = Decoding(num_beams=args.num_beams, length_penalty=args.length_penalty,
                        no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty)
    mbr = (Mbr(samples=args.mbr, utility=args.mbr_utility, temperature=args.mbr_temperature, top_p=args.mbr_top_p,
               seed=args.seed) if args.mbr else None)
    options = GenerateOptions(max_new_tokens=caps[0], batch_size=args.batch_size,
                              chat_template=args.chat_template, engine=args.engine, compute_type=args.compute_type,
                              decoding=decoding, mbr=mbr, progress=not args.no_progress)
    tasks = [TaskData(*spec) for spec in zip(args.task, args.data, limits, starts, strides, caps)]
    output = evaluate_to_file(args.model, args.adapter, tasks, args.output, options=options, split=args.split,
                              num_fewshot=args.num_fewshot, template=parse_template_choice(args.template),
                              seed=args.seed, with_options=not args.no_options, mode=args.mode)
    print(f"wrote {output} and {predictions_path(output)}")
    return 0

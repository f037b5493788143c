"""`instructune prepare`: raw records -> rendered instruction examples on disk, with a summary.

Two forms:
    instructune prepare RAW_FILE --task TASK_OR_YAML -o out.jsonl [--seed --template --num-fewshot --limit]
    instructune prepare --mixture mixture.yaml -o out.jsonl|out_dir

The output is JSON Lines (a path ending in .jsonl) or a `datasets` folder (any other path), and the
summary is printed and saved beside it as `<out>.summary.json`: examples per task and template,
length percentiles (tokens with `--tokenizer`, else characters) and how many exceed `--max-length`.
With `--tokenizer` the examples are encoded by training's own function (`tokenize_examples`), so the
counts of cut prompts, cut answers and dropped examples, and their rows, are the ones `train` prints.
Records whose target renders empty are skipped and listed (file:line), or stop the run with `--strict`.
`prepare()` is the same thing as a Python function, for notebooks.

Leaves out: tokenizing for training and packing (data/tokenize.py, train/pack.py); the examples are text.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from instructune.data.mixture import MixtureConfig, MixtureReport, mix
from instructune.data.sources import load_records, record_locations, select_positions
from instructune.data.render import RecordSource, RenderOptions, render_records, render_records_skipping_empty
from instructune.data.templates import load_task
from instructune.errors import InstructuneError
from instructune.models import is_encoder_decoder, load_model_config, load_tokenizer, resolve_model_path
from instructune.data.tokenize import FIRST_ROWS, describe_report, describe_rows, tokenize_examples
from instructune.fileio.yaml_io import read_yaml_mapping, validation_message

PERCENTILES = (50, 90, 95, 99)
_SINGLE_TASK_ONLY = " [single-task form; a mixture YAML sets its own]"


def load_mixture(path: str | Path) -> MixtureConfig:
    """Read and validate a mixture YAML.

    Raises:
        InstructuneError: one line naming the file and the bad key, e.g.
            `mix.yaml: tasks.0.limitt: unknown key`.

    Example:
        >>> load_mixture("mixture.yaml").strategy
        'proportional'
    """
    data = read_yaml_mapping(path, "a mapping with a `tasks:` list", kind="mixture file")
    try:
        return MixtureConfig.model_validate(data)
    except ValidationError as error:
        raise InstructuneError(validation_message(error, str(path), key_label=None)) from None


def _resolve(path: str, base_dir: Path | None) -> Path:
    """A relative path is looked up beside the mixture file first, then in the working directory."""
    candidate = Path(path)
    if not candidate.is_absolute() and base_dir is not None and (base_dir / candidate).exists():
        return base_dir / candidate
    return candidate


def build_task_examples(
    data: str | Path,
    task: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    start: int = 0,
    every: int = 1,
    seed: int = 0,
    template: str | int = "sample",
    num_fewshot: int = 0,
    skipped: list[str] | None = None,
    drop_columns: list[str] | tuple[str, ...] = (),
) -> list[dict]:
    """Load one raw file and render it with one task.

    Args:
        data: raw records (file or folder, see `load_records`).
        task: built-in task name or task YAML path.
        split: split of a saved DatasetDict or split folder.
        limit: use at most this many raw records (the first ones after `start`).
        start: skip this many raw records first, e.g. validation items kept for evaluation.
        every: take every N-th record from `start` on, before `limit` (as `instructune eval --every`):
            `start=1, every=2` trains on the odd rows of a file whose even rows are evaluated.
        seed, template, num_fewshot: as in `render_records`.
        skipped: a list to leave out examples whose completion renders empty; the location of each
            (`file:LINE`, or `path record N`) is appended.
        drop_columns: raw columns removed before rendering, so no template can show them; a template
            that needs one applies no more (`when`) or is an error naming the field.

    Returns:
        The rendered examples.

    Example:
        >>> build_task_examples("../shared/data/piqa/validation.jsonl", "piqa", limit=2)[0]["label"]
        0
    """
    loaded_task = load_task(task)
    records = load_records(data, split=split)
    for column in drop_columns:
        if column not in records.column_names:
            raise InstructuneError(f"{data}: drop_columns: no column {column!r} (columns: {', '.join(records.column_names)})")
    if drop_columns:
        records = records.remove_columns(list(drop_columns))
    positions = select_positions(len(records), start=start, every=every, limit=limit, what=str(data))
    if positions != range(len(records)):
        records = records.select(positions)
    source = RecordSource(data if Path(data).is_file() else None, first_record=start, record_step=every)
    options = RenderOptions(seed=seed, template=template, num_fewshot=num_fewshot)
    if skipped is None:
        return render_records(loaded_task, records, options, source=source)
    examples, empty = render_records_skipping_empty(loaded_task, records, options, source=source)
    skipped.extend(record_locations(data, empty))
    return examples


def build_mixture_examples(
    config: MixtureConfig, base_dir: str | Path | None = None, skipped: list[str] | None = None,
) -> tuple[list[dict], MixtureReport]:
    """Render every task of a mixture and mix them.

    Args:
        config: the mixture (see `MixtureConfig`).
        base_dir: where relative paths in the config are looked up first (the mixture file's folder).
        skipped: as in `build_task_examples` (empty completions are left out before mixing).

    Returns:
        (examples, report).
    """
    base = Path(base_dir) if base_dir is not None else None
    per_task: dict[str, list[dict]] = {}
    for entry in tqdm(config.tasks, desc="rendering tasks", unit="task"):
        task_ref = entry.task if not entry.task.endswith((".yaml", ".yml")) else str(_resolve(entry.task, base))
        per_task[entry.name or entry.task] = build_task_examples(
            _resolve(entry.data, base), task_ref, split=entry.split, limit=entry.limit, start=entry.start,
            every=entry.every, seed=config.seed,
            template=entry.template if entry.template is not None else config.template,
            num_fewshot=entry.num_fewshot if entry.num_fewshot is not None else config.num_fewshot, skipped=skipped,
            drop_columns=entry.drop_columns,
        )
    return mix(per_task, strategy=config.strategy, cap=config.cap, temperature=config.temperature,
               weights=config.weights, total=config.total, seed=config.seed)


def summarize(
    examples: list[dict], tokenizer: Any = None, max_length: int | None = None, *, encoder_decoder: bool = False,
    source: str | Path | None = None,
) -> dict[str, Any]:
    """Counts per task and template, length percentiles, and how many exceed `max_length`.

    Args:
        examples: rendered examples.
        tokenizer: measure in tokens by encoding each example as training does (`tokenize_examples`);
            None: characters of prompt + completion.
        max_length: count examples longer than this (same unit); with a tokenizer, the "truncation"
            entry says which had their prompt or answer cut and which training would drop.
        encoder_decoder: encode for an encoder-decoder model (lengths are then the longer side).
        source: the file the examples were written to, so the truncation rows say `file:LINE`.

    Example:
        >>> summarize([{"prompt": "ab", "completion": "c", "task": "t", "template": 0}])["length"]
        {'unit': 'characters', 'p50': 3, 'p90': 3, 'p95': 3, 'p99': 3, 'max': 3, 'mean': 3.0}
    """
    per_task = Counter(example["task"] for example in examples)
    per_template: dict[str, dict[str, int]] = {}
    for (task, index), count in sorted(Counter((e["task"], e["template"]) for e in examples).items()):
        per_template.setdefault(task, {})[str(index)] = count
    truncation = None
    if tokenizer is None:
        lengths = [len(example["prompt"]) + len(example["completion"]) for example in examples]
    else:
        # No max_length: measure only (a budget nothing reaches).
        _, report = tokenize_examples(examples, tokenizer, max_length or 2**62, encoder_decoder=encoder_decoder,
                                      desc="measuring tokens", source=source)
        lengths, truncation = report.lengths, report.to_dict()
    lengths = sorted(lengths)
    length: dict[str, Any] = {"unit": "tokens" if tokenizer is not None else "characters"}
    if lengths:
        for p in PERCENTILES:
            length[f"p{p}"] = lengths[min(len(lengths) - 1, max(0, -(-p * len(lengths) // 100) - 1))]  # nearest rank
        length["max"] = lengths[-1]
        length["mean"] = round(sum(lengths) / len(lengths), 1)
    summary = {"examples": len(examples), "per_task": dict(sorted(per_task.items())), "per_template": per_template,
               "length": length, "max_length": max_length}
    if max_length is not None:
        summary["over_max_length"] = sum(value > max_length for value in lengths)
        if truncation is not None:
            summary["truncation"] = truncation
    return summary


def write_examples(examples: list[dict], output: str | Path) -> Path:
    """Write JSON Lines (a path ending in .jsonl) or a `datasets` folder (any other path).

    Returns:
        The path written.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".jsonl":
        with open(output, "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(example, ensure_ascii=False) + "\n")
    else:
        import datasets

        datasets.Dataset.from_list(examples).save_to_disk(str(output))
    return output


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    length = summary["length"]
    lines = [f"{summary['examples']} examples -> {summary.get('output', '(not written)')}"]
    for task, count in summary["per_task"].items():
        templates = ", ".join(f"{index}:{n}" for index, n in summary["per_template"][task].items())
        lines.append(f"  {task}: {count} (per template {templates})")
    if "p50" in length:
        lines.append(f"  length ({length['unit']}): p50 {length['p50']}, p90 {length['p90']}, p95 {length['p95']}, "
                     f"p99 {length['p99']}, max {length['max']}")
    if summary.get("max_length") is not None:
        lines.append(f"  over max_length {summary['max_length']}: {summary['over_max_length']}")
    if "truncation" in summary:
        lines.append(f"  as training will cut them: {describe_report(summary['truncation'])}")
    if summary.get("empty_completion", {}).get("count"):
        lines.append("  " + describe_rows("skipped with an empty completion", summary["empty_completion"]))
    if "mixture" in summary:
        shares = summary["mixture"]["tasks"].items()
        lines.append("  mixture shares: " + ", ".join(f"{name} {info['proportion']:.1%}" for name, info in shares))
    return "\n".join(lines)


def prepare(
    output: str | Path,
    *,
    data: str | Path | None = None,
    task: str | Path | None = None,
    mixture: str | Path | MixtureConfig | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    template: str | int = "sample",
    num_fewshot: int = 0,
    tokenizer: Any = None,
    max_length: int | None = 1024,
    strict: bool = False,
    encoder_decoder: bool | None = None,
) -> dict[str, Any]:
    """Render one task (data + task) or a mixture, write the examples and their summary.

    Args:
        output: `.jsonl` file or `datasets` folder; the summary goes to `<output>.summary.json`.
        data, task: one raw file and its task (the single-task form).
        mixture: a mixture YAML path or `MixtureConfig` (the mixture form).
        split, limit, seed, template, num_fewshot: for the single-task form (a mixture carries its own).
        tokenizer: a tokenizer object or a local folder, to measure lengths in tokens.
        max_length: count examples longer than this (tokens, or characters without a tokenizer).
        strict: stop (write nothing) if any record's completion renders empty; by default such
            examples are skipped and listed in the summary ("empty_completion").
        encoder_decoder: measure as for an encoder-decoder model; None: from the tokenizer folder's
            config.json (False for a tokenizer object).

    Returns:
        The summary dict (also written as JSON); with a mixture it has a "mixture" report.

    Raises:
        InstructuneError: bad input, or with `strict` an empty completion, naming its file and line.

    Example:
        >>> prepare("runs/piqa.jsonl", data="../shared/data/piqa/validation.jsonl", task="piqa", limit=100)["examples"]
        100
    """
    if (mixture is None) == (data is None or task is None):
        raise InstructuneError("give either a data file and --task, or --mixture (not both)")
    report = None
    skipped: list[str] = []
    if mixture is not None:
        base_dir = None
        if not isinstance(mixture, MixtureConfig):
            base_dir = Path(mixture).parent
            mixture = load_mixture(mixture)
        examples, report = build_mixture_examples(mixture, base_dir, skipped=skipped)
    else:
        examples = build_task_examples(data, task, split=split, limit=limit, seed=seed, template=template,
                                       num_fewshot=num_fewshot, skipped=skipped)
    if strict and skipped:
        raise InstructuneError(f"{skipped[0]}: the completion renders empty ({len(skipped)} such examples in all); "
                               "fix those records, or leave out --strict to skip them")
    if skipped and not examples:
        raise InstructuneError(f"no examples left: every completion renders empty (first at {skipped[0]})")
    if isinstance(tokenizer, (str, Path)):
        folder = Path(tokenizer)
        folder = folder if folder.is_dir() else resolve_model_path(tokenizer)
        tokenizer = load_tokenizer(folder)
        if encoder_decoder is None:
            encoder_decoder = is_encoder_decoder(load_model_config(folder))
    written = write_examples(examples, output)
    summary = {"output": str(written), **summarize(examples, tokenizer, max_length,
                                                    encoder_decoder=bool(encoder_decoder), source=written)}
    summary["empty_completion"] = {"count": len(skipped), "first": list(dict.fromkeys(skipped))[:FIRST_ROWS]}
    if report is not None:
        summary["mixture"] = report.to_dict()
    Path(f"{written}.summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune prepare",
        description="Render raw records into instruction examples (one task, or a mixture of tasks).",
        epilog="examples:\n  instructune prepare ../shared/data/piqa/validation.jsonl --task piqa -o piqa.jsonl\n"
               "  instructune prepare --mixture mixture.yaml -o runs/mix",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", nargs="?", help="raw records: .jsonl/.json/.csv/.parquet or a datasets folder")
    parser.add_argument("--task", help="built-in task name or a task YAML path (with a data file)")
    parser.add_argument("--mixture", help="mixture YAML (instead of a data file and --task)")
    parser.add_argument("-o", "--output", required=True, help="output .jsonl file, or a folder for a datasets dataset")
    parser.add_argument("--split", help="split of a saved DatasetDict or of a folder of split files" + _SINGLE_TASK_ONLY)
    parser.add_argument("--limit", type=int, help="use at most this many raw records (the first ones)" + _SINGLE_TASK_ONLY)
    parser.add_argument("--seed", type=int, default=0, help="seed for template choice and few-shot draws (default 0)" + _SINGLE_TASK_ONLY)
    parser.add_argument("--template", default="sample",
                        help='"sample" (one seeded template per record), "all" (every applicable one) or an index' + _SINGLE_TASK_ONLY)
    parser.add_argument("--num-fewshot", type=int, default=0, help="exemplars placed before each prompt (default 0)" + _SINGLE_TASK_ONLY)
    parser.add_argument("--tokenizer", help="local model folder, or a built-in model ('default', 'gemma3-270m'): report lengths in tokens, not characters (plain prompts: no chat template)")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="report how many examples exceed this length (tokens, or characters; default 1024); "
                             "with --tokenizer, which prompts and answers training will cut and which it will drop")
    parser.add_argument("--strict", action="store_true",
                        help="stop at a record whose completion renders empty (default: skip and list such records)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `instructune prepare`; bad input raises InstructuneError (the CLI exits 2)."""
    args = make_parser().parse_args(argv)
    if args.mixture and (args.data or args.task):
        raise InstructuneError("give either a data file and --task, or --mixture, not both")
    if not args.mixture and not (args.data and args.task):
        raise InstructuneError("give a data file and --task TASK, or --mixture mixture.yaml")
    template = int(args.template) if args.template.isdigit() else args.template
    summary = prepare(args.output, data=args.data, task=args.task, mixture=args.mixture, split=args.split,
                      limit=args.limit, seed=args.seed, template=template, num_fewshot=args.num_fewshot,
                      tokenizer=args.tokenizer, max_length=args.max_length, strict=args.strict)
    print(format_summary(summary))
    print(f"summary: {summary['output']}.summary.json")
    return 0

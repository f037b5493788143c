"""`instructune eval`: score a model (base, base + LoRA adapter, or merged folder) on tasks with ground truth.

For each --task/--data pair the raw records are rendered with the task's templates (zero- or
few-shot, a fixed template or a seeded sample), then scored by the task's kind: generation tasks
by ROUGE, exact match and token F1 on greedy answers; multiple-choice tasks (and classification
tasks with options) by option log-likelihood (acc, acc_norm). Reference columns numbered 1..N
(DialogSum test's summary1..summary3) become several references per example. Writes one metrics
JSON (model, adapter, task, split, template, limit, seed, package versions, timestamps) and the
predictions JSONL beside it. Comparing runs is compare.py's job.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from instructune.errors import InstructuneError
from instructune.evaluate.choice import score_choices
from instructune.evaluate.generate import generate
from instructune.evaluate.metrics import generation_metrics

KINDS = ("generation", "multiple_choice", "classification")
_PACKAGES = ("instructune", "torch", "transformers", "peft", "datasets", "rouge-score")
_NUMBERED_COLUMN = re.compile(r"^(.*?)(\d+)$")


def evaluate_examples(
    model: Any,
    tokenizer: Any,
    examples: list[dict],
    *,
    kind: str,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    chat_template: bool | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict]]:
    """Score rendered examples with the method their kind calls for.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        examples: prompt/completion examples; multiple-choice ones add "options" and "label".
            An optional "references" list replaces [completion] as the ground truth.
        kind: "generation", "multiple_choice" or "classification" (scored as multiple choice when
            the examples carry options, else as generation).
        batch_size: examples per forward pass / generate call.
        max_new_tokens: answer length cap for generation.
        chat_template: wrap prompts in the tokenizer's chat template; None = when it has one.
        progress: show tqdm bars.

    Returns:
        (metrics, predictions): generation metrics {"rouge1", ..., "exact_match", "f1"} or choice
        metrics {"acc", "acc_norm"}; one prediction row per example with "prompt", "prediction" and
        "references" (multiple choice adds "options", "label", "pred", "pred_norm", "logprobs").

    Example:
        >>> metrics, rows = evaluate_examples(model, tokenizer, [{"prompt": "2+2?", "completion": "4"}],
        ...                                   kind="generation")
        >>> rows[0]
        {'prompt': '2+2?', 'prediction': '4', 'references': ['4']}
    """
    if kind not in KINDS:
        raise InstructuneError(f"evaluate_examples: kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not examples:
        raise InstructuneError("evaluate_examples: no examples to evaluate; expected at least one")
    multiple_choice = kind == "multiple_choice" or (kind == "classification" and "options" in examples[0])
    if multiple_choice:
        metrics, scored = score_choices(
            model, tokenizer, examples, batch_size=batch_size, chat_template=chat_template, progress=progress
        )
        rows = [
            {
                "prompt": example["prompt"], "prediction": example["options"][row["pred"]],
                "references": [example["options"][example["label"]]], "options": example["options"],
                "label": example["label"], "pred": row["pred"], "pred_norm": row["pred_norm"],
                "logprobs": row["logprobs"],
            }
            for example, row in zip(examples, scored)
        ]
        return metrics, rows
    references = [_references_of(example, index) for index, example in enumerate(examples)]
    predictions = generate(
        model, tokenizer, [example["prompt"] for example in examples], max_new_tokens=max_new_tokens,
        batch_size=batch_size, chat_template=chat_template, progress=progress,
    )
    rows = [
        {"prompt": example["prompt"], "prediction": prediction, "references": refs}
        for example, prediction, refs in zip(examples, predictions, references)
    ]
    return generation_metrics(predictions, references), rows


def _references_of(example: dict, index: int) -> list[str]:
    references = example.get("references") or [example.get("completion")]
    if not all(isinstance(ref, str) for ref in references):
        raise InstructuneError(f"example {index}: expected a 'completion' string or a 'references' list of strings")
    return list(references)


def extra_references(task: Any, record: dict, template_index: int) -> list[str]:
    """All references of a record whose target columns come numbered (summary1, summary2, summary3).

    Each numbered group (columns `<stem>1..<stem>N`, N >= 2) is read N times, the k-th time with every
    column of the group holding the k-th value, and the template's target is rendered each time.
    Records without numbered columns give [] (the example's completion is then the only reference).

    Example:
        >>> extra_references(load_task("dialogsum"), {"dialogue": "...", "summary1": "A", "summary2": "B",
        ...                  "summary3": "C"}, 0)
        ['A', 'B', 'C']
    """
    from instructune.data.render import render_example

    groups: dict[str, list[str]] = {}
    for column in record:
        match = _NUMBERED_COLUMN.match(column)
        if match and match.group(1):
            groups.setdefault(match.group(1), []).append(column)
    groups = {stem: sorted(cols, key=lambda c: int(_NUMBERED_COLUMN.match(c).group(2)))
              for stem, cols in groups.items() if len(cols) >= 2}
    if not groups:
        return []
    references = []
    for k in range(max(len(cols) for cols in groups.values())):
        variant = dict(record)
        for stem, cols in groups.items():
            value = record[cols[min(k, len(cols) - 1)]]
            variant.update({col: value for col in cols} | {stem: value})
        completion = render_example(task, variant, template_index)["completion"]
        if completion.strip() and completion not in references:
            references.append(completion)
    return references


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task_name: str,
    data: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    num_fewshot: int = 0,
    template: str | int = 0,
    seed: int = 0,
    with_options: bool = True,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    chat_template: bool | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Render a task's records and evaluate them: the run summary and the prediction rows.

    Args:
        task_name: a built-in task name or a task YAML path.
        data: the records (file or folder, as `load_records` reads).
        split: split of a folder or saved dataset.
        limit: evaluate the first N examples only (few-shot exemplars still come from all records).
        num_fewshot: exemplars placed before each prompt.
        template: a template index, "sample" (seeded, one per record) or "all".
        seed: seeds template sampling and few-shot draws.
        with_options: render the task's `{options_}` list into the prompt. Log-likelihood scoring of
            the untouched default model on HellaSwag is at chance with the list, ~0.39 acc_norm without.
        Other arguments as in `evaluate_examples`.

    Returns:
        ({"task", "kind", "metric", "data", "split", "template", "num_fewshot", "limit", "seed",
          "chat_template", "max_new_tokens", "n_examples", "seconds", "metrics"}, prediction rows with
          "task" and "template" added).
    """
    from instructune.data.sources import load_records
    from instructune.data.render import render_records
    from instructune.data.templates import load_task

    task = load_task(task_name)
    records = load_records(data, split=split).to_list()
    examples = render_records(task, records, seed=seed, template=template, num_fewshot=num_fewshot,
                              with_options=with_options, source=data)
    example_records = _records_of_examples(task, records, examples, template, seed)
    if limit is not None:
        examples, example_records = examples[:limit], example_records[:limit]
    if task.kind == "generation":
        for example, record in zip(examples, example_records):
            example["references"] = extra_references(task, record, example["template"]) or [example["completion"]]
    print(f"eval {task.name}: {len(examples)} {task.kind} examples from {data}")
    started = time.perf_counter()
    metrics, rows = evaluate_examples(
        model, tokenizer, examples, kind=task.kind, batch_size=batch_size, max_new_tokens=max_new_tokens,
        chat_template=chat_template, progress=progress,
    )
    seconds = time.perf_counter() - started
    for row, example in zip(rows, examples):
        row.update(task=task.name, template=example["template"])
    summary = {
        "task": task.name, "kind": task.kind, "metric": task.metric, "data": str(data), "split": split,
        "template": template, "num_fewshot": num_fewshot, "limit": limit, "seed": seed,
        "with_options": with_options, "chat_template": chat_template, "max_new_tokens": max_new_tokens if task.kind == "generation" else None,
        "n_examples": len(examples), "seconds": round(seconds, 2), "metrics": metrics,
    }
    return summary, rows


def _records_of_examples(task: Any, records: list[dict], examples: list[dict], template: str | int, seed: int):
    """The raw record behind each example: one each, except "all" (one per applicable template)."""
    if template != "all":
        return records
    from instructune.data.render import render_records

    owners = []
    for record in records:
        owners.extend([record] * len(render_records(task, [record], seed=seed, template="all")))
    if len(owners) != len(examples):
        raise InstructuneError(f"task {task.name!r}: could not match examples to records for template 'all'")
    return owners


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


def _parse_template(value: str) -> str | int:
    if value in ("sample", "all"):
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r}: expected a template index, 'sample' or 'all'")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune eval",
        description="Evaluate a model on tasks with ground truth; write metrics JSON and predictions JSONL.",
    )
    parser.add_argument("--model", default=None, help="local Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder to load over --model")
    parser.add_argument("--task", action="append", required=True,
                        help="built-in task name or task YAML path; repeat, paired in order with --data")
    parser.add_argument("--data", action="append", required=True,
                        help="records file or folder for the matching --task (repeat once per --task)")
    parser.add_argument("--split", default=None, help="split to read from a data folder or saved dataset")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    parser.add_argument("--num-fewshot", type=int, default=0, help="exemplars (from the same records) before each prompt")
    parser.add_argument("--template", type=_parse_template, default=0,
                        help="template index (default 0), 'sample' (seeded, one per record) or 'all'")
    parser.add_argument("--seed", type=int, default=0, help="seed for template sampling and few-shot draws")
    parser.add_argument("--no-options", action="store_true",
                        help="leave the options list out of multiple-choice prompts (score the endings alone)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass / generate call")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length cap for generation tasks")
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap prompts in the tokenizer's chat template (default: when it has one)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-o", "--output", required=True,
                        help="metrics JSON path; predictions go beside it as <name>.predictions.jsonl")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if len(args.task) != len(args.data):
        raise InstructuneError(
            f"eval: {len(args.task)} --task but {len(args.data)} --data; give one --data per --task, in the same order"
        )
    if args.limit is not None and args.limit < 1:
        raise InstructuneError(f"eval: --limit {args.limit}; expected a positive number of examples")
    from instructune.models import load_model

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model, tokenizer = load_model(args.model, args.adapter)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict] = {}
    all_rows: list[dict] = []
    for task_name, data in zip(args.task, args.data):
        summary, rows = evaluate_task(
            model, tokenizer, task_name, data, split=args.split, limit=args.limit, num_fewshot=args.num_fewshot,
            template=args.template, seed=args.seed, with_options=not args.no_options, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            chat_template=args.chat_template, progress=not args.no_progress,
        )
        key = summary["task"] if summary["task"] not in tasks else f"{summary['task']}:{Path(data).stem}"
        tasks[key] = summary
        all_rows.extend({**row, "task": key} for row in rows)
        print(f"  {key}: " + ", ".join(f"{name} {value:.4f}" for name, value in summary["metrics"].items()))
    result = {
        "model": args.model or "default", "adapter": args.adapter, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": package_versions(),
        "predictions": predictions_path(output).name, "tasks": tasks,
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    with predictions_path(output).open("w") as handle:
        for row in all_rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {output} and {predictions_path(output)}")
    return 0

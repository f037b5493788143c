"""The scoring library: rendered examples or a task's records in, metrics and prediction rows out.

Generation tasks are scored by ROUGE, exact match and token F1 on greedy answers, or on beam search
and the other Hugging Face settings a `Decoding` names (generation/, metrics.py); multiple-choice
tasks (and classification tasks with options) by option log-likelihood (choice.py), in one of two
named modes: "instruct" (prompts as training renders them, chat template) or "lm-eval"
(lm-evaluation-harness 0.4's plain-text rules). Training's in-training checks, `instructune eval`, the
quickstart and the benchmarks all call this file. Running out of memory while scoring is one line
(`OutOfMemory`) naming the batch shape and the settings to lower, under the caller's names for them.
Leaves out: the `eval` command and its files (run.py), comparing runs (compare.py).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from instructune.data.render import RenderOptions, extra_references, render_records
from instructune.data.sources import load_records, select_positions
from instructune.data.templates import EVAL_MODES, KINDS, load_task
from instructune.errors import InstructuneError, OutOfMemory, is_out_of_memory
from instructune.evaluate.choice import score_choices
from instructune.generation.generate import GenerateOptions, Where, encode_prompt, generate
from instructune.evaluate.metrics import generation_item_scores, mean_scores
from instructune.evaluate.wellformed import share_intervals, well_formed_scores
from instructune.models import is_encoder_decoder

# The `eval` command's names for batch_size and max_new_tokens, which an out-of-memory line tells to lower.
EVAL_SETTINGS = ("--batch-size", "--max-new-tokens")


def evaluate_examples(
    model: Any,
    tokenizer: Any,
    examples: list[dict],
    *,
    kind: str,
    options: GenerateOptions | None = None,
    mode: str = "instruct",
    where: Where | None = None,
    label: str = "scoring",
    settings: tuple[str, str] = ("batch_size", "max_new_tokens"),
    **overrides: Any,
) -> tuple[dict[str, float], list[dict]]:
    """Score rendered examples with the method their kind calls for.

    Args:
        model: a transformers causal LM or seq2seq LM (PEFT-wrapped is fine).
        tokenizer: its tokenizer.
        examples: prompt/completion examples; multiple-choice ones add "options" and "label".
            An optional "references" list replaces [completion] as the ground truth.
        kind: "generation", "multiple_choice" or "classification" (scored as multiple choice when
            the examples carry options, else as generation).
        options: how answers are generated (`GenerateOptions`: max_new_tokens, batch_size, chat_template,
            engine, compute_type, decoding, progress); multiple choice reads its batch_size, chat_template
            and progress. None = the defaults (plain greedy, which in-training checks keep).
        mode: "instruct" or "lm-eval" (multiple choice by lm-evaluation-harness's rules; generation
            then runs without the chat template).
        where: the calling process as generation engines see it (`generate`'s).
        label: what runs, for the out-of-memory line ("eval dialogsum", "in-training generation after step 40").
        settings: the caller's names for batch_size and max_new_tokens, which that line tells to lower
            (`instructune eval`: EVAL_SETTINGS; training: its train.* keys).
        overrides: `GenerateOptions` fields that replace those of `options` (batch_size=16, ...).

    Returns:
        (metrics, predictions): generation metrics {"rouge1", ..., "exact_match", "f1", "well_formed" and
        its three checks (wellformed.py)} or choice metrics {"acc", "acc_norm"}; one prediction row per example with "prompt", "prediction" and
        "references" (multiple choice adds "options", "label", "pred", "pred_norm", "logprobs"), and
        "scores": the example's own value of every metric (the metrics are their means), which
        `instructune compare` pairs across runs for confidence intervals.

    Example:
        >>> metrics, rows = evaluate_examples(model, tokenizer, [{"prompt": "2+2?", "completion": "4"}],
        ...                                   kind="generation")
        >>> rows[0]["prediction"], rows[0]["scores"]["exact_match"]
        ('4', 1.0)

    Raises:
        OutOfMemory: one line, e.g. `eval dialogsum: out of memory on batches of 8 prompts of up to 412
            tokens + up to 128 new tokens: lower --batch-size or --max-new-tokens`.
    """
    options = replace(options or GenerateOptions(), **overrides)
    try:
        return _evaluate_examples(model, tokenizer, examples, kind=kind, options=options, mode=mode, where=where)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        lower = _out_of_memory_advice(model, tokenizer, examples, kind=kind, options=options, mode=mode,
                                      settings=settings)
        raise OutOfMemory(f"{label}: out of memory on {lower}") from None


def _evaluate_examples(model: Any, tokenizer: Any, examples: list[dict], *, kind: str, options: GenerateOptions,
                       mode: str, where: Where | None) -> tuple[dict[str, float], list[dict]]:
    if kind not in KINDS:
        raise InstructuneError(f"evaluate_examples: kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not examples:
        raise InstructuneError("evaluate_examples: no examples to evaluate; expected at least one")
    if mode not in EVAL_MODES:
        raise InstructuneError(f"evaluate_examples: mode {mode!r}; expected one of {', '.join(EVAL_MODES)}")
    if mode == "lm-eval":
        if options.chat_template:
            raise InstructuneError("evaluate: mode 'lm-eval' scores plain text; drop --chat-template (or use --mode instruct)")
        options = replace(options, chat_template=False)
    if _multiple_choice(kind, examples):
        metrics, scored = score_choices(
            model, tokenizer, examples, batch_size=options.batch_size, chat_template=options.chat_template, mode=mode,
            progress=options.progress,
        )
        rows = [
            {
                "prompt": example["prompt"], "prediction": example["options"][row["pred"]],
                "references": [example["options"][example["label"]]], "options": example["options"],
                "label": example["label"], "pred": row["pred"], "pred_norm": row["pred_norm"],
                "logprobs": row["logprobs"],
                "scores": {"acc": float(row["correct"]), "acc_norm": float(row["correct_norm"])},
            }
            for example, row in zip(examples, scored)
        ]
        return metrics, rows
    references = [_references_of(example, index) for index, example in enumerate(examples)]
    new_tokens: list[int] = []
    predictions = generate(model, tokenizer, [example["prompt"] for example in examples], options, where=where,
                           new_token_counts=new_tokens)
    item_scores = generation_item_scores(predictions, references)
    # Instruction following beside the metric: an option where options were given, a stop before the cap,
    # no continuation of the prompt (wellformed.py); per item, so compare pairs them across runs.
    for example, prediction, count, scores in zip(examples, predictions, new_tokens, item_scores):
        scores.update(well_formed_scores(prediction, example["prompt"], options=example.get("options"),
                                         new_tokens=count, max_new_tokens=options.max_new_tokens))
    rows = [
        {"prompt": example["prompt"], "prediction": prediction, "references": refs, "scores": scores}
        for example, prediction, refs, scores in zip(examples, predictions, references, item_scores)
    ]
    return mean_scores(item_scores), rows


def _multiple_choice(kind: str, examples: list[dict]) -> bool:
    return kind == "multiple_choice" or (kind == "classification" and "options" in examples[0])


def _out_of_memory_advice(model: Any, tokenizer: Any, examples: list[dict], *, kind: str, options: GenerateOptions,
                          mode: str, settings: tuple[str, str]) -> str:
    """The batch shape that did not fit and what to lower, for the out-of-memory line (runs only then)."""
    rows = min(options.batch_size, len(examples))
    if _multiple_choice(kind, examples):
        if is_encoder_decoder(model):
            return f"batches of {rows} example(s) with all their options: lower {settings[0]}"
        return (f"packed rows of items and their options (decoder-only multiple choice packs by tokens, so "
                f"{settings[0]} does not change it): free memory or use a smaller model")
    template = False if mode == "lm-eval" else options.chat_template
    longest = max(len(encode_prompt(model, tokenizer, example["prompt"], template)) for example in examples)
    beams = options.decoding.num_beams
    per_prompt = f" x {beams} beams" if beams > 1 else ""
    return (f"batches of {rows} prompt(s){per_prompt} of up to {longest} tokens + up to {options.max_new_tokens} new tokens: "
            f"lower {settings[0]} or {settings[1]}")


def _references_of(example: dict, index: int) -> list[str]:
    references = example.get("references") or [example.get("completion")]
    if not all(isinstance(ref, str) for ref in references):
        raise InstructuneError(f"example {index}: expected a 'completion' string or a 'references' list of strings")
    return list(references)


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task_name: str,
    data: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    start: int = 0,
    every: int = 1,
    num_fewshot: int = 0,
    template: str | int = 0,
    seed: int = 0,
    with_options: bool = True,
    mode: str | None = None,
    options: GenerateOptions | None = None,
    where: Where | None = None,
    **overrides: Any,
) -> tuple[dict, list[dict]]:
    """Render a task's records and evaluate them: the run summary and the prediction rows.

    Args:
        task_name: a built-in task name or a task YAML path.
        data: the records (file or folder, as `load_records` reads).
        split: split of a folder or saved dataset.
        limit: evaluate the first N examples only (few-shot exemplars still come from all records).
        start: skip this many examples first, so `start=1000, limit=500` scores examples 1000-1499.
            Examples are rendered before the cut, so example i gets the same template in every slice.
        every: take every N-th example from `start` on (before `limit`), to spread a small sample over a
            file sorted by topic: `every=22, limit=200` covers all of Bitext's 4,514 rows and 27 intents.
        num_fewshot: exemplars placed before each prompt.
        template: a template index, "sample" (seeded, one per record) or "all".
        seed: seeds template sampling and few-shot draws.
        with_options: render the task's `{options_}` list into the prompt. Log-likelihood scoring of
            the untouched default model on HellaSwag is at chance with the list, ~0.39 acc_norm without.
            Ignored in "lm-eval" mode (options are never listed there).
        mode: "instruct" or "lm-eval"; None = the task's own `eval_mode` (hellaswag_lmeval and
            piqa_lmeval: "lm-eval"; the other built-in tasks: "instruct"). lm-eval parity is zero-shot:
            few-shot exemplars are instructune's own draw and separator, not the harness's.
        options, where, overrides: as in `evaluate_examples`.

    Returns:
        ({"task", "kind", "mode", "metric", "data", "split", "template", "num_fewshot", "start", "every", "limit",
          "seed", "with_options", "chat_template", "max_new_tokens", "decoding", "mbr", "n_examples", "seconds",
          "metrics"}, "max_new_tokens" and "decoding" (every `Decoding` setting) None unless the task kind is
          generation, "mbr" (every `Mbr` setting) None unless it was generated by MBR decoding,
          and for generated answers "intervals": {share: [low, high]}, the well-formed shares' 95% intervals;
          prediction rows with "task", "template" and "mode" added).
    """
    options = replace(options or GenerateOptions(), **overrides)
    task = load_task(task_name)
    mode = mode or task.eval_mode
    if mode == "lm-eval":
        with_options = False  # the harness scores each option after the bare context
    records = load_records(data, split=split).to_list()
    examples = render_records(task, records, RenderOptions(seed=seed, template=template, num_fewshot=num_fewshot,
                                                           with_options=with_options), source=data)
    example_records = _records_of_examples(task, records, examples, template, seed)
    positions = select_positions(len(examples), start=start, every=every, limit=limit,
                                 what=f"eval {task.name}: {data}", unit="examples", flag="--")
    examples, example_records = [examples[i] for i in positions], [example_records[i] for i in positions]
    if task.kind == "generation":
        for example, record in zip(examples, example_records):
            example["references"] = extra_references(task, record, example["template"]) or [example["completion"]]
    print(f"eval {task.name}: {len(examples)} {task.kind} examples from {data}, mode {mode}")
    started = time.perf_counter()
    metrics, rows = evaluate_examples(model, tokenizer, examples, kind=task.kind, options=options, mode=mode,
                                      where=where, label=f"eval {task.name}", settings=EVAL_SETTINGS)
    seconds = time.perf_counter() - started
    generation = task.kind == "generation"
    for row, example in zip(rows, examples):
        row.update(task=task.name, template=example["template"], mode=mode)
    summary = {
        "task": task.name, "kind": task.kind, "mode": mode, "metric": task.metric, "data": str(data), "split": split,
        "template": template, "num_fewshot": num_fewshot, "start": start, "every": every, "limit": limit, "seed": seed,
        "with_options": with_options,
        "chat_template": False if mode == "lm-eval" else options.chat_template,
        "max_new_tokens": options.max_new_tokens if generation else None,
        "decoding": options.decoding.to_dict() if generation else None,
        "mbr": options.mbr.to_dict() if generation and options.mbr else None,
        "n_examples": len(examples), "seconds": round(seconds, 2), "metrics": metrics,
    }
    intervals = share_intervals(metrics, len(examples))
    if intervals:
        summary["intervals"] = intervals  # Wilson 95% intervals of the well-formed shares
    return summary, rows


def _records_of_examples(task: Any, records: list[dict], examples: list[dict], template: str | int, seed: int):
    """The raw record behind each example: one each, except "all" (one per applicable template)."""
    if template != "all":
        return records
    owners = []
    for record in records:
        owners.extend([record] * len(render_records(task, [record], seed=seed, template="all")))
    if len(owners) != len(examples):
        raise InstructuneError(f"task {task.name!r}: could not match examples to records for template 'all'")
    return owners

"""The main job, end to end: built-in support data -> templates -> mixture -> LoRA -> before/after report.

`instructune quickstart` writes the built-in customer-support data, renders it with two tasks
(`support_response`, scored by ROUGE, and `support_intent`, scored by exact match), evaluates the
untouched default model on the held-out test split, fine-tunes a LoRA adapter for a few minutes,
evaluates again and writes the run folder: config, adapter, metrics JSON, report.md and loss.png.
Every stage is a call into the public API, so the same job runs from a notebook.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from instructune.config import RunConfig, default_config_path, load_config
from instructune.fileio.jsonio import read_jsonl
from instructune.data.support import TASKS, build_support_instructions
from instructune.data.tokenize import apply_chat_template_setting
from instructune.data.templates import load_task
from instructune.evaluate.compare import compare
from instructune.evaluate.report import before_after_markdown
from instructune.evaluate.score import evaluate_examples
from instructune.models import load_model
from instructune.train.trainer import Trainer

def evaluate_split(model: Any, tokenizer: Any, examples: list[dict], *, limit: int, batch_size: int,
                   max_new_tokens: int) -> tuple[dict[str, dict], list[dict]]:
    """Evaluate the first `limit` examples of each task; returns ({task: metrics}, prediction rows)."""
    metrics, rows = {}, []
    for name in TASKS:
        task = load_task(name)
        chosen = [e for e in examples if e["task"] == name][:limit]
        task_metrics, task_rows = evaluate_examples(
            model, tokenizer, chosen, kind=task.kind, batch_size=batch_size, max_new_tokens=max_new_tokens,
        )
        headline = {k: task_metrics[k] for k in ("rougeL", "rouge1", "exact_match", "f1") if k in task_metrics}
        metrics[name] = headline
        rows += [{**row, "task": name} for row in task_rows]
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in headline.items()))
    return metrics, rows


def run_quickstart(config: RunConfig, *, eval_limit: int = 40, eval_batch_size: int = 16,
                   max_new_tokens: int = 64) -> dict:
    """Run the whole pipeline; returns {"before", "after", "train", "run_dir"}.

    Example:
        >>> result = run_quickstart(load_config(default_config_path()))
        >>> result["after"]["support_response"]["rougeL"] > result["before"]["support_response"]["rougeL"]
        True
    """
    started = time.perf_counter()
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    print("[1/5] Loading the model")
    model, tokenizer = load_model(config.model.name, trust_remote_code=config.model.trust_remote_code)
    # The run's chat template (model.chat_template, or a base model's family template) from the first
    # evaluation on, so before and after are scored on the text training formats.
    tokenizer = apply_chat_template_setting(tokenizer, config.model.chat_template, model)

    print("[2/5] Building instruction data from the built-in customer-support set")
    paths = build_support_instructions(run_dir, seed=config.seed)
    test = read_jsonl(paths["test"])

    print(f"[3/5] Evaluating the untouched model on the test split ({eval_limit} examples per task)")
    settings = {"limit": eval_limit, "batch_size": eval_batch_size, "max_new_tokens": max_new_tokens}
    before, before_rows = evaluate_split(model, tokenizer, test, **settings)

    print("[4/5] Fine-tuning with LoRA (loss on the response tokens only)")
    trainer = Trainer(config.model_copy(update={"data": config.data.model_copy(
        update={"train": str(paths["train"]), "validation": str(paths["validation"])})}),
        model=model, tokenizer=tokenizer, overwrite=True)
    trainer.setup()
    train_summary = trainer.train()
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    tuned.eval()

    print("[5/5] Evaluating the tuned model on the same test split")
    after, after_rows = evaluate_split(tuned, trainer.tokenizer, test, **settings)

    table = before_after_markdown(compare(before, after, before_items=before_rows, after_items=after_rows))
    result = {"before": before, "after": after, "train": train_summary, "run_dir": str(run_dir),
              "seconds": time.perf_counter() - started}
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    with (run_dir / "predictions.jsonl").open("w") as handle:
        for b, a in zip(before_rows, after_rows):
            handle.write(json.dumps({"task": b["task"], "prompt": b["prompt"], "reference": b["references"][0],
                                     "before": b["prediction"], "after": a["prediction"]}) + "\n")
    (run_dir / "report.md").write_text(_report(config, result, table, before_rows, after_rows))
    print("\n" + table)
    print(f"Run folder: {run_dir}  (adapter/, metrics.json, report.md, loss.png); "
          f"{result['seconds'] / 60:.1f} minutes in all")
    print(f"Chat with it: instructune chat --adapter {run_dir / 'adapter'}")
    return result


def _report(config: RunConfig, result: dict, table: str, before_rows: list[dict], after_rows: list[dict]) -> str:
    train = result["train"]
    lines = [
        f"# {config.run_name}: before and after fine-tuning", "",
        "Model: " + (config.model.name or "SmolLM2-135M-Instruct (default)") + f"; LoRA r={config.lora.r}; "
        f"{train['steps']} steps, {train['train_tokens']} tokens in {train['train_seconds'] / 60:.1f} min "
        f"({train['tokens_per_s']:.0f} tokens/s); train loss {train.get('first_loss') or 0:.3f} -> "
        f"{train.get('final_loss') or 0:.3f}.", "",
        "Held-out test split of the built-in customer-support data (never trained on).", "",
        table, "![training and validation loss](loss.png)", "", "## Examples", "",
    ]
    for b, a in list(zip(before_rows, after_rows))[:3] + [x for x in zip(before_rows, after_rows)
                                                         if x[0]["task"] == "support_intent"][:2]:
        lines += [f"**{b['task']}** — prompt: {b['prompt']!r}", "",
                  f"- reference: {b['references'][0]!r}", f"- before: {b['prediction']!r}",
                  f"- after: {a['prediction']!r}", ""]
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune quickstart",
        description="Whole pipeline on the default model and the built-in customer-support data.",
        epilog="Example: instructune quickstart train.max_steps=10 --eval-limit 8",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.max_steps=20")
    parser.add_argument("--config", default=None, help="Run config YAML (default: the packaged quickstart.yaml).")
    parser.add_argument("--eval-limit", type=int, default=40, help="Test examples per task, before and after.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Answer length cap when generating.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    config = load_config(args.config or default_config_path(), args.overrides)
    run_quickstart(config, eval_limit=args.eval_limit, max_new_tokens=args.max_new_tokens)
    return 0

"""Training speed and memory: instructune vs TRL's SFTTrainer on the same model, data and settings.

Data: the first N DialogSum training dialogues from ../shared/data, prompt "Summarize the following
conversation.\\n\\n{dialogue}\\n\\nSummary:", completion = the human summary; plain text (no chat
template) for both engines; max length 512, batch 8, 1 epoch, AdamW, lr 2e-5 full / 2e-4 LoRA.
Each run is a fresh subprocess so its peak RSS is its own; runs alternate between engines.
TRL is a benchmark-only dependency: `.venv/bin/pip install --no-deps trl==1.16.0`.

    .venv/bin/python bench/train.py --dialogues 256                  # all configurations, alternating
    .venv/bin/python bench/train.py --one instructune lora fp32 --dialogues 32   # one run, prints JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum" / "train.jsonl"
PROMPT = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"
MAX_LENGTH, BATCH = 512, 8


def load_examples(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [{"prompt": PROMPT.format(dialogue=r["dialogue"]), "completion": " " + r["summary"]} for r in rows]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_instructune(examples: list[dict], mode: str, precision: str, packing: bool, micro_batch: int = BATCH) -> dict:
    from instructune.config import load_config
    from instructune.models import load_model
    from instructune.train import Trainer

    model, tokenizer = load_model()
    config = load_config(overrides=[
        "run_name=bench", f"output_dir=/tmp/instructune-bench-{os.getpid()}", f"lora.enabled={mode == 'lora'}",
        f"train.lr={2e-4 if mode == 'lora' else 2e-5}", f"train.batch_size={micro_batch}",
        f"train.grad_accum_steps={BATCH // micro_batch}", f"data.max_length={MAX_LENGTH}",
        f"data.packing={packing}", f"train.precision={precision}", "model.chat_template=false", "train.warmup_ratio=0",
        "train.schedule=constant",
    ])
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_examples=examples, progress=False)
    trainer.setup()
    summary = trainer.train()
    return {"tokens_per_s": summary["tokens_per_s"], "final_loss": summary["final_loss"],
            "tokens": summary["train_tokens"], "seconds": summary["train_seconds"], "steps": summary["steps"]}


def run_trl(examples: list[dict], mode: str, precision: str, packing: bool, micro_batch: int = BATCH) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from instructune.models import load_model

    model, tokenizer = load_model()
    seen = {"tokens": 0, "losses": []}

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            seen["seconds"] = time.perf_counter() - seen["start"]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen["losses"].append(logs["loss"])

    args = SFTConfig(
        output_dir=f"/tmp/trl-bench-{os.getpid()}", per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=BATCH // micro_batch, num_train_epochs=1,
        learning_rate=2e-4 if mode == "lora" else 2e-5, lr_scheduler_type="constant", max_length=MAX_LENGTH,
        packing=packing, bf16=precision == "bf16", use_cpu=True, logging_steps=1, save_strategy="no",
        report_to=[], completion_only_loss=True, dataloader_num_workers=0,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear") if mode == "lora" else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=lora, callbacks=[Meter()])
    seen["tokens"] = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    trainer.train()
    return {"tokens_per_s": seen["tokens"] / seen["seconds"], "final_loss": seen["losses"][-1] if seen["losses"] else None,
            "tokens": seen["tokens"], "seconds": seen["seconds"]}


def one(engine: str, mode: str, precision: str, packing: bool, dialogues: int, micro_batch: int = BATCH) -> dict:
    examples = load_examples(dialogues)
    runner = run_instructune if engine == "instructune" else run_trl
    result = runner(examples, mode, precision, packing, micro_batch)
    return {"engine": engine, "mode": mode, "precision": precision, "packing": packing, "micro_batch": micro_batch, **result,
            "peak_rss_gb": peak_rss_gb()}


CONFIGS = [  # (engine, mode, precision, packing, micro-batch), alternating engines; global batch 8 rows
    ("trl", "full", "fp32", False, 8), ("instructune", "full", "fp32", True, 2),
    ("trl", "lora", "fp32", False, 8), ("instructune", "lora", "fp32", True, 2),
    ("trl", "full", "fp32", True, 8), ("trl", "full", "bf16", False, 8), ("instructune", "full", "bf16", True, 2),
    ("instructune", "lora", "bf16", True, 2),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "MODE", "PRECISION"), help="Run one configuration.")
    parser.add_argument("--no-packing", action="store_true", help="With --one: no packing.")
    parser.add_argument("--micro-batch", type=int, default=BATCH,
                        help=f"Rows per micro-batch; {BATCH} // this many are accumulated per optimizer step.")
    parser.add_argument("--dialogues", type=int, default=256, help="First N DialogSum training dialogues.")
    parser.add_argument("--append", action="store_true", help="Append the table to bench/RESULTS.md.")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, packing=not args.no_packing, dialogues=args.dialogues,
                             micro_batch=args.micro_batch)))
        return 0
    rows = []
    for engine, mode, precision, packing, micro_batch in CONFIGS:
        cmd = [sys.executable, __file__, "--one", engine, mode, precision, "--dialogues", str(args.dialogues),
               "--micro-batch", str(micro_batch)]
        cmd += [] if packing else ["--no-packing"]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
        if line is None:
            print(f"{engine} {mode} {precision} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line))
        print(rows[-1], flush=True)
    table = ["| engine | mode | precision | packing | micro-batch | tokens/s | peak RSS GB | final loss |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    table += [f"| {r['engine']} | {r['mode']} | {r['precision']} | {r['packing']} | {r['micro_batch']} | {r['tokens_per_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {r['final_loss']:.4f} |" for r in rows]
    text = "\n".join(table)
    print(text)
    if args.append:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        header = (f"\n## Training speed: instructune vs TRL SFTTrainer (issue 5)\n\nCommand: `.venv/bin/python bench/train.py "
                  f"--dialogues {args.dialogues} --append`  \nMachine: {os.cpu_count()} CPU cores, {cpu}  \n"
                  f"Date: {datetime.date.today()}\n\n")
        with open(Path(__file__).with_name("RESULTS.md"), "a") as handle:
            handle.write(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed and memory: instructune vs TRL's SFTTrainer on the same model, data and settings.

Data: the first N DialogSum training dialogues from ../shared/data that fit in 512 tokens, prompt
"Summarize the following conversation.\\n\\n{dialogue}\\n\\nSummary:\\n", completion = the human
summary + EOS; plain text (no chat template) for both engines, which then see identical tokens and
labels. Max length 512, batch 8 rows, 1 epoch, AdamW, constant lr 2e-5 full / 2e-4 LoRA (r 16,
alpha 32, dropout 0.05, all linear layers, the same initialisation in both engines).
TRL reads the examples in instructune's shuffled order without shuffling again, so the unpacked
runs of the two engines train on the same batches step by step and their loss curves must coincide.
Each run is a fresh subprocess so its peak RSS is its own; runs alternate between engines, and each
finished run is appended to bench/results/train-N.jsonl (a re-run skips the ones already there).
TRL is a benchmark-only dependency: `.venv/bin/pip install -e '.[bench]'`.

Fairness (issue 14): both engines are timed by the same clock around the same span, the whole
`trainer.train()` call (model loading and data preparation before it excluded for both, logging and
the end-of-run bookkeeping inside it included for both), and tokens are counted the same way: the
prompt + completion tokens of the examples, one epoch (instructune's packed runs top up the last
step with a few rows of the next epoch; that extra work is not counted in its favour). TRL runs
with gradient checkpointing off (its SFTConfig default is on: that default is its own row) at the
same micro-batch sizes as instructune, with and without its packing. Both engines run under the
same allocator: glibc's malloc by default, tcmalloc when `run_subprocess(tcmalloc=True)` preloads it
(bench/repeat_train.py's `tcmalloc` flag); glibc's page faults slow TRL ~1.8x, instructune ~1.2x.
Every run also records a steady-state rate, from the end of the first optimizer step to the end of
the last (`steady()`), which leaves out compilation and end-of-run saving, and a steps rate, from
the start of the first optimizer step to the end of the last (`steps_span()`): compilation counts,
the end-of-run saves (instructune's checkpoint and model; TRL's runs save nothing) do not.

    .venv/bin/python bench/train.py --dialogues 256 --append   # all configurations, table + plot
    .venv/bin/python bench/train.py --dialogues 256 --report   # table + plot of the finished runs
    .venv/bin/python bench/train.py --one instructune lora fp32 --dialogues 32   # one run, prints JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum" / "train.jsonl"
# The model both engines train: a built-in name or a folder (`--model`; children inherit it from the
# environment), None = the default SmolLM2-135M-Instruct.
MODEL_ENV = "INSTRUCTUNE_BENCH_MODEL"


def bench_model() -> str | None:
    return os.environ.get(MODEL_ENV) or None
PROMPT = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:\n"  # ends in a newline: instructune adds none
MAX_LENGTH, BATCH = 512, 8


def load_examples(n: int) -> list[dict]:
    """The first n training dialogues whose prompt + summary + EOS fit in MAX_LENGTH tokens.

    Longer ones are left out because the engines truncate differently (TRL cuts the end and drops an
    example whose summary is cut away entirely; instructune cuts the prompt's start), and the loss
    curves are compared on identical tokens.
    """
    from instructune.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(bench_model()))
    examples = []
    for line in DATA.read_text().splitlines():
        record = json.loads(line)
        example = {"prompt": PROMPT.format(dialogue=record["dialogue"]), "completion": record["summary"]}
        if len(tokenizer(example["prompt"] + example["completion"])["input_ids"]) < MAX_LENGTH:
            examples.append(example)
        if len(examples) == n:
            return examples
    return examples


def example_tokens(tokenizer, examples: list[dict]) -> int:
    """Prompt + completion + EOS tokens of one epoch, counted the same way for both engines."""
    return sum(len(tokenizer(e["prompt"] + e["completion"])["input_ids"]) + 1 for e in examples)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_instructune(examples: list[dict], mode: str, precision: str, packing: bool, micro_batch: int = BATCH,
                    checkpointing: bool = False, compile: bool = False) -> dict:
    from instructune.config import load_config
    from instructune.train.runlog import MetricsLog
    from instructune.train.trainer import Trainer

    config = load_config(overrides=[*([f"model.name={bench_model()}"] if bench_model() else []),
        "run_name=bench", f"output_dir=/tmp/instructune-bench-{os.getpid()}", f"lora.enabled={mode == 'lora'}",
        f"train.lr={2e-4 if mode == 'lora' else 2e-5}", f"train.batch_size={micro_batch}",
        f"train.grad_accum_steps={BATCH // micro_batch}", f"data.max_length={MAX_LENGTH}",
        f"data.packing={packing}", f"train.precision={precision}", "model.chat_template=false", "train.warmup_ratio=0",
        "train.schedule=constant", f"train.gradient_checkpointing={checkpointing}", f"train.compile={compile}",
    ])
    # The trainer loads the model as `instructune train` does (bf16-true: straight into bf16), before the clock.
    trainer = Trainer(config, train_examples=examples, progress=False)
    trainer.setup()
    tokenizer = trainer.tokenizer
    marks = []  # (clock, tokens) at the end of each optimizer step
    begun = []  # clock at the start of each optimizer step
    step = trainer._optimizer_step

    def marked_step(*args, **kwargs):
        begun.append(time.perf_counter())
        result = step(*args, **kwargs)
        marks.append((time.perf_counter(), result[2]))
        return result

    trainer._optimizer_step = marked_step
    started = time.perf_counter()
    summary = trainer.train()
    seconds = time.perf_counter() - started
    losses = [r["loss"] for r in MetricsLog.read(trainer.run_dir / "metrics.jsonl") if "loss" in r]
    shutil.rmtree(config.output_dir, ignore_errors=True)  # ~2 GB of checkpoint a run: a disk filled up
    tokens = example_tokens(tokenizer, examples)
    return {"tokens_per_s": tokens / seconds, "final_loss": summary["final_loss"], "tokens": tokens,
            "seconds": seconds, "steps": summary["steps"], "losses": losses,
            "own_clock_tokens_per_s": summary["tokens_per_s"],
            **steady([t for t, _ in marks], [sum(n for _, n in marks[: i + 1]) for i in range(len(marks))]),
            **steps_span(begun, marks, tokens)}


def run_trl(examples: list[dict], mode: str, precision: str, packing: bool, micro_batch: int = BATCH,
            checkpointing: bool = False, compile: bool = False) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from instructune.models import load_model

    model, tokenizer = load_model(bench_model())
    if precision == "bf16-true":  # weights, gradients and AdamW state in bf16; torch's AdamW rounds to nearest
        import torch

        model = model.to(torch.bfloat16)
    from instructune.train.trainer import row_order

    # instructune's first-epoch order, read without shuffling again: unpacked, the same batches step by step.
    examples = [examples[i] for i in row_order(len(examples), seed=0, epoch=0)]
    seen = {"losses": []}

    marks = []  # (clock, tokens seen) at the end of each optimizer step
    begun = []  # clock at the start of each optimizer step (after its micro-batches are fetched)

    class Meter(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen["losses"].append(logs["loss"])

        def on_step_begin(self, args, state, control, **kwargs):
            begun.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    args = SFTConfig(
        output_dir=f"/tmp/trl-bench-{os.getpid()}", per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=BATCH // micro_batch, num_train_epochs=1,
        learning_rate=2e-4 if mode == "lora" else 2e-5, lr_scheduler_type="constant", max_length=MAX_LENGTH,
        packing=packing, bf16=precision in ("bf16", "bf16-true"), use_cpu=True, logging_steps=1, save_strategy="no",
        report_to=[], completion_only_loss=True, dataloader_num_workers=0, train_sampling_strategy="sequential",
        gradient_checkpointing=checkpointing,  # SFTConfig's default is True: set both ways explicitly
        torch_compile=compile,  # transformers' Trainer compiles the whole model (inductor)
        include_num_input_tokens_seen="non_padding",  # for the steady-state rate (steady())
    )
    if mode == "lora":  # r 16, alpha 32, dropout 0.05, all-linear, initialised as instructune does (seed 0)
        from transformers import set_seed

        from instructune.train.adapters import prepare_for_training
        from instructune.config import LoraConfig

        set_seed(0)
        model = prepare_for_training(model, LoraConfig())
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, callbacks=[Meter()])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(args.output_dir, ignore_errors=True)
    tokens = example_tokens(tokenizer, examples)
    return {"tokens_per_s": tokens / seconds, "final_loss": seen["losses"][-1] if seen["losses"] else None,
            "tokens": tokens, "seconds": seconds, "steps": len(seen["losses"]), "losses": seen["losses"],
            **steady([t for t, _ in marks], [int(n) for _, n in marks]), **steps_span(begun, marks, tokens)}


def steps_span(begun: list[float], marks: list[tuple], tokens: int) -> dict:
    """Tokens/s from the start of the first optimizer step to the end of the last, the same clock for
    both engines: the first step's compilation counts, setup before and saving after do not (TRL's
    runs save nothing, instructune's write a checkpoint and the model at the end)."""
    if not begun or not marks:
        return {}
    return {"steps_tokens_per_s": tokens / (marks[-1][0] - begun[0]), "steps_seconds": marks[-1][0] - begun[0]}


def steady(clock: list[float], tokens_seen: list[int]) -> dict:
    """Tokens/s from the end of the first optimizer step to the end of the last, by the same clock for
    both engines: leaves out the first step (compilation, first-call allocations) and the run's setup
    and end-of-run saving, which a longer run amortises. tokens_seen counts non-padding input tokens."""
    if len(clock) < 2:
        return {}
    return {"steady_tokens_per_s": (tokens_seen[-1] - tokens_seen[0]) / (clock[-1] - clock[0]),
            "step_clock": clock, "step_tokens_seen": tokens_seen}


def one(engine: str, mode: str, precision: str, packing: bool, dialogues: int, micro_batch: int = BATCH,
        checkpointing: bool = False, compile: bool = False) -> dict:
    examples = load_examples(dialogues)
    runner = run_instructune if engine == "instructune" else run_trl
    result = runner(examples, mode, precision, packing, micro_batch, checkpointing, compile)
    allocator = "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"
    return {"model": bench_model() or "default", "engine": engine, "mode": mode, "precision": precision,
            "packing": packing, "micro_batch": micro_batch, "checkpointing": checkpointing, "compile": compile, "allocator": allocator, **result,
            "peak_rss_gb": peak_rss_gb()}


# (engine, mode, precision, packing, micro-batch, gradient checkpointing); global batch 8 rows.
CONFIGS = [
    # Unpacked fp32 at equal micro-batch: the same batches step by step, so the loss curves must coincide.
    ("trl", "full", "fp32", False, 2, False), ("instructune", "full", "fp32", False, 2, False),
    ("trl", "lora", "fp32", False, 2, False), ("instructune", "lora", "fp32", False, 2, False),
    # Full fine-tune, bf16: TRL at its default (micro-batch 8, checkpointing on), then TRL and
    # instructune at micro-batch 1, 2 and 8, TRL with and without its packing.
    ("trl", "full", "bf16", False, 8, True),
    ("trl", "full", "bf16", False, 8, False), ("trl", "full", "bf16", True, 8, False), ("instructune", "full", "bf16", True, 8, False),
    ("trl", "full", "bf16", False, 2, False), ("trl", "full", "bf16", True, 2, False), ("instructune", "full", "bf16", True, 2, False),
    ("instructune", "full", "bf16", False, 2, False),
    ("trl", "full", "bf16", False, 1, False), ("trl", "full", "bf16", True, 1, False), ("instructune", "full", "bf16", True, 1, False),
    # fp32 packed, and LoRA bf16 at micro-batch 2 and 1.
    ("trl", "full", "fp32", True, 2, False), ("instructune", "full", "fp32", True, 2, False),
    ("trl", "lora", "bf16", False, 2, False), ("trl", "lora", "bf16", True, 2, False), ("instructune", "lora", "bf16", True, 2, False),
    ("trl", "lora", "bf16", True, 1, False), ("instructune", "lora", "bf16", True, 1, False),
]


def key(row: dict) -> tuple:
    return (row["engine"], row["mode"], row["precision"], row["packing"], row["micro_batch"],
            row.get("checkpointing", row["engine"] == "trl"))


def run_subprocess(engine: str, mode: str, precision: str, packing: bool, micro_batch: int, checkpointing: bool,
                   dialogues: int, compile: bool = False, tcmalloc: bool = False) -> dict | None:
    """One configuration in a fresh process; `tcmalloc` preloads it for either engine (the same allocator)."""
    cmd = [sys.executable, __file__, "--one", engine, mode, precision, "--dialogues", str(dialogues),
           "--micro-batch", str(micro_batch)] + ([] if packing else ["--no-packing"])
    cmd += (["--checkpointing"] if checkpointing else []) + (["--compile"] if compile else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LD_PRELOAD", None)
    if tcmalloc:
        from instructune.cli.allocator import find_tcmalloc

        env["LD_PRELOAD"] = find_tcmalloc() or sys.exit("tcmalloc asked for but not installed (libtcmalloc-minimal4)")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
    if line is None:
        print(f"{engine} {mode} {precision} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line)


def mean_loss(row: dict) -> float:
    return sum(row["losses"]) / len(row["losses"])


def table(rows: list[dict]) -> str:
    lines = ["| engine | mode | precision | packing | micro-batch | checkpointing | steps | tokens/s | peak RSS GB | mean loss | final loss |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['engine']} | {r['mode']} | {r['precision']} | {r['packing']} | {r['micro_batch']} | "
              f"{'on' if key(r)[5] else 'off'} | {r['steps']} | "
              f"{r['tokens_per_s']:.1f} | {r['peak_rss_gb']:.2f} | {mean_loss(r):.4f} | "
              f"{r['final_loss']:.4f} |" for r in rows]
    return "\n".join(lines)


def curve_gaps(rows: list[dict]) -> str:
    """Step-by-step gap between the two engines' unpacked fp32 curves (same batches in the same order)."""
    by_key = {key(r): r for r in rows}
    out = []
    for mode in ("full", "lora"):
        trl, ours = by_key.get(("trl", mode, "fp32", False, 2, False)), by_key.get(("instructune", mode, "fp32", False, 2, False))
        if trl and ours and len(trl["losses"]) == len(ours["losses"]):
            gaps = [abs(a - b) for a, b in zip(trl["losses"], ours["losses"])]
            out.append(f"- {mode}, unpacked fp32, {len(gaps)} steps: first-step loss TRL {trl['losses'][0]:.4f} vs "
                       f"instructune {ours['losses'][0]:.4f}; largest per-step gap {max(gaps):.4f}, mean gap "
                       f"{sum(gaps) / len(gaps):.4f}")
    trl, ours = by_key.get(("trl", "full", "fp32", True, 2, False)), by_key.get(("instructune", "full", "fp32", True, 2, False))
    if trl and ours:  # packed rows differ in make-up and order between engines: compare the epoch's mean
        out.append(f"- full, packed fp32: mean loss over the epoch TRL {mean_loss(trl):.4f} ({trl['steps']} steps) vs "
                   f"instructune {mean_loss(ours):.4f} ({ours['steps']} steps)")
    return "\n".join(out)


def verdict(rows: list[dict]) -> str:
    """Issue 14's targets: >= 2x TRL's fastest fair setting (checkpointing off) at <= 0.7x its peak memory."""
    out = []
    for mode in ("full", "lora"):
        fair = [r for r in rows if r["mode"] == mode and r["precision"] == "bf16" and not key(r)[5]]
        trl = [r for r in fair if r["engine"] == "trl"]
        ours = [r for r in fair if r["engine"] == "instructune"]
        if not trl or not ours:
            continue
        best_trl = max(trl, key=lambda r: r["tokens_per_s"])
        best_ours = max(ours, key=lambda r: r["tokens_per_s"])
        out.append(f"- {mode} bf16: instructune's fastest {best_ours['tokens_per_s']:.1f} tokens/s (micro-batch "
                   f"{best_ours['micro_batch']}, {best_ours['peak_rss_gb']:.2f} GB) vs TRL's fastest fair "
                   f"{best_trl['tokens_per_s']:.1f} (micro-batch {best_trl['micro_batch']}, packing {best_trl['packing']}, "
                   f"{best_trl['peak_rss_gb']:.2f} GB): {best_ours['tokens_per_s'] / best_trl['tokens_per_s']:.2f}x the speed "
                   f"at {best_ours['peak_rss_gb'] / best_trl['peak_rss_gb']:.2f}x the memory")
        for micro_batch in sorted({r["micro_batch"] for r in ours}):
            mine = [r for r in ours if r["micro_batch"] == micro_batch]
            theirs = [r for r in trl if r["micro_batch"] == micro_batch]
            if mine and theirs:
                a, b = max(mine, key=lambda r: r["tokens_per_s"]), max(theirs, key=lambda r: r["tokens_per_s"])
                out.append(f"  - micro-batch {micro_batch}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x the speed, "
                           f"{a['peak_rss_gb'] / min(r['peak_rss_gb'] for r in theirs):.2f}x the memory of TRL's leanest run there")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Three panels: the unpacked full and LoRA runs (same batches: the curves must overlay) and the
    packed runs, whose rows differ between engines, as a running mean over the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("full fine-tune, same batches (unpacked)", lambda r: r["mode"] == "full" and not r["packing"], False),
              ("LoRA, same batches (unpacked)", lambda r: r["mode"] == "lora" and not r["packing"], False),
              ("packed rows: running mean of the loss", lambda r: r["packing"], True)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for ax, (title, chosen, running) in zip(axes, panels):
        for r in filter(chosen, rows):
            losses, n = r["losses"], len(r["losses"])
            if running:
                losses = [sum(losses[: i + 1]) / (i + 1) for i in range(n)]
            label = f"{r['engine']} {r['mode']} {r['precision']}" + (f" micro-batch {r['micro_batch']}" if r["micro_batch"] == 1 else "")
            style = "-" if r["engine"] == "instructune" else "--"
            ax.plot([(i + 1) / n for i in range(n)], losses, style, label=label, linewidth=1.4 if running else 1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of the epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("train loss per optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "MODE", "PRECISION"), help="Run one configuration.")
    parser.add_argument("--no-packing", action="store_true", help="With --one: no packing.")
    parser.add_argument("--checkpointing", action="store_true", help="With --one: gradient checkpointing on.")
    parser.add_argument("--compile", action="store_true",
                        help="With --one: instructune train.compile=true; TRL torch_compile=True.")
    parser.add_argument("--micro-batch", type=int, default=BATCH,
                        help=f"Rows per micro-batch; {BATCH} // this many are accumulated per optimizer step.")
    parser.add_argument("--dialogues", type=int, default=256, help="First N DialogSum training dialogues.")
    parser.add_argument("--model", default=None, help="built-in name (gemma3-270m) or model folder; default: the default model")
    parser.add_argument("--out", type=Path, help="JSONL of finished runs (default bench/results/train-N.jsonl); "
                        "configurations already in it are skipped, so an interrupted benchmark continues.")
    parser.add_argument("--report", action="store_true", help="Only print the table and plot from --out.")
    parser.add_argument("--append", action="store_true", help="Append the table to bench/RESULTS.md.")
    args = parser.parse_args()
    if args.model:
        os.environ[MODEL_ENV] = args.model  # the runs are child processes: they read it there
    if args.one:
        print(json.dumps(one(*args.one, packing=not args.no_packing, dialogues=args.dialogues,
                             micro_batch=args.micro_batch, checkpointing=args.checkpointing, compile=args.compile)))
        return 0
    model_tag = f"-{Path(args.model).name}" if args.model else ""
    out = args.out or Path(__file__).with_name("results") / f"train-{args.dialogues}{model_tag}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(l) for l in out.read_text().splitlines()] if out.exists() else []
    if not args.report:
        done = {key(r) for r in rows}
        for config in CONFIGS:
            if config in done:
                continue
            row = run_subprocess(*config, dialogues=args.dialogues)
            if row:
                rows.append(row)
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print({k: v for k, v in row.items() if k != "losses"}, flush=True)
    text = table(rows) + "\n\n" + verdict(rows) + "\n\n" + curve_gaps(rows)
    plot(rows, out.with_suffix(".png"))
    print(text)
    if args.append:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        header = (f"\n## Training speed, fair: instructune vs TRL SFTTrainer at its best, {args.dialogues} dialogues (issue 14)\n\n"
                  f"Command: `.venv/bin/python bench/train.py --dialogues {args.dialogues} --append`  \n"
                  f"Machine: {os.cpu_count()} CPU cores, {cpu}  \nDate: {datetime.date.today()}\n\n")
        with open(Path(__file__).with_name("RESULTS.md"), "a") as handle:
            handle.write(header + text + f"\n\n![loss curves](results/{out.with_suffix('.png').name})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

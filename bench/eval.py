"""Generation speed and ROUGE: Hugging Face `generate` (fp32, bf16) vs instructune's native engine.

Issue 13 asks for >= 3x the new tokens/s of Hugging Face `generate` at its faster precision on the
same prompts (greedy, batch 8, 64 new tokens, DialogSum test, template 0, default model), with answers
equal to its fp32 greedy ones, and any lower precision within 0.005 ROUGE of the fp32 reference on 200
dialogues. Every engine runs over ALL the prompts in one `generate` call, one engine after another in
one process (the native engine's continuous batching works across what would be HF's batches, so
interleaving batch by batch would hide it); the load average is printed per engine so a disturbed run
shows. One table: new tokens/s, seconds, ROUGE-1/2/L (best of the 3 references, and the mean over
them) and how many answers equal HF fp32's. `--lora` wraps the model in a LoRA adapter with random
weights first, as an in-training check sees it (issue 13 item 4: 32 validation dialogues).

Run from the project root:
    .venv/bin/python bench/eval.py --n 48                          # speed (issue 13's prompts)
    .venv/bin/python bench/eval.py --n 200 --engines hf-fp32,native-fp32,native-bf16   # ROUGE of bf16
    .venv/bin/python bench/eval.py --n 32 --split validation --lora --engines hf-fp32,native-fp32
    .venv/bin/python bench/eval.py --n 48 --append bench/RESULTS.md # record it
    .venv/bin/python bench/eval.py --n 48 --engines hf-bf16w,native-bf16 --fresh   # each engine its own process
    .venv/bin/python bench/eval.py --n 48 --engines hf-bf16w,ov-bf16,native-bf16 --fresh   # OpenVINO too

The OpenVINO engines (ov-fp32, ov-bf16) abort beside a preloaded tcmalloc, so under `LD_PRELOAD=...tcmalloc...`
run them with --fresh: their child processes drop it, the other engines keep it. Their export and compile
are timed apart (setup).

`--choice-limit N` adds issue 13's multiple-choice half to the same run and the same table: the first N
validation items of PIQA and HellaSwag scored by lm-evaluation-harness and by instructune's lm-eval mode
(bench/choice.py's functions, fp32, the same threads), after the generation engines, in the same
process. It needs lm-eval (the bench extra):
    .venv/bin/python bench/eval.py --n 48 --choice-limit 500 --append bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# name -> (generate() keywords, how HF runs bf16: "autocast", "weights" (a bf16 copy) or None)
ENGINES = {
    "hf-fp32": ({"engine": "hf"}, None),
    "hf-bf16": ({"engine": "hf"}, "autocast"),
    "hf-bf16w": ({"engine": "hf"}, "weights"),
    "native-fp32": ({"engine": "native", "compute_type": "float32"}, None),
    "native-bf16": ({"engine": "native", "compute_type": "bfloat16"}, None),
    "ov-fp32": ({"engine": "openvino", "compute_type": "float32"}, None),
    "ov-bf16": ({"engine": "openvino", "compute_type": "bfloat16"}, None),
    # llama.cpp as the peer a CPU user would pick (issue 30): the default model exported to that GGUF type
    # (runs/gguf_bench/, once), its server in this process with --llama-slots sequences, every CPU thread.
    "llamacpp-f16": ({"engine": "llamacpp"}, "gguf:f16"),
    "llamacpp-q8_0": ({"engine": "llamacpp"}, "gguf:q8_0"),
    "llamacpp-q4_0": ({"engine": "llamacpp"}, "gguf:q4_0"),
}
DEFAULT_ENGINES = "hf-fp32,hf-bf16,hf-bf16w,native-fp32,native-bf16"
LABELS = {
    "hf-fp32": "HF generate, fp32", "hf-bf16": "HF generate, bf16 autocast", "hf-bf16w": "HF generate, bf16 weights",
    "native-fp32": "instructune native, fp32", "native-bf16": "instructune native, bf16 weights",
    "ov-fp32": "instructune OpenVINO, fp32", "ov-bf16": "instructune OpenVINO, bf16",
    "llamacpp-f16": "llama.cpp (xllamacpp), f16 GGUF", "llamacpp-q8_0": "llama.cpp (xllamacpp), q8_0 GGUF",
    "llamacpp-q4_0": "llama.cpp (xllamacpp), q4_0 GGUF",
}


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def _multiple_choice(model, tokenizer, limit: int, batch_size: int, limits: dict, model_name: str | None = None) -> dict:
    """lm-evaluation-harness and instructune's lm-eval mode on the first `limit` PIQA and HellaSwag items.

    bench/choice.py's own functions, in this process and on this model's weights file; returns the
    table rows (one per engine and task) and the notes (speed-ups, every differing prediction).
    The share of the matmul limit counts the work each engine does: the harness passes every request
    (an option with its whole context) through the decoder; instructune each context once and every
    option after it; the LM head is counted on the options' tokens only (the harness computes it on
    every position: its share is a lower bound).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import lm_eval
    import roofline
    from choice import _argmaxes, compare, run_instructune, run_lm_eval
    from lm_eval.models.huggingface import HFLM

    from instructune.models import resolve_model_path

    names = ["hellaswag", "piqa"]
    lm = HFLM(pretrained=str(resolve_model_path(model_name)), dtype="float32", device="cpu", batch_size=batch_size)
    reference = run_lm_eval(lm, names, limit)
    load = {"lm-eval": os.getloadavg()[0]}
    ours = run_instructune(model, tokenizer, names, limit, batch_size)
    load["instructune"] = os.getloadavg()[0]
    rows, notes = [], []
    body, head = (roofline.forward_flops_per_token(model.config, logits=False), 2 * roofline.model_flops(model.config)["head"])
    work = {(key, name): reference[name][tokens] * body + reference[name]["continuation_tokens"] * head
            for name in names for key, tokens in (("lm-eval", "tokens"), ("instructune", "shared_tokens"))}
    for name in names:
        peer_rate = reference[name]["requests"] / reference[name]["seconds"]
        lengths = [[len(option) for option in example["options"]] for example in ours[name]["examples"]]
        same = sum(_argmaxes(r["logprobs"], n) == _argmaxes(o["logprobs"], n)
                   for r, o, n in zip(reference[name]["items"], ours[name]["items"], lengths))
        for key, engine, result in (("lm-eval", f"lm-evaluation-harness {lm_eval.__version__}", reference[name]),
                                    ("instructune", "instructune --mode lm-eval", ours[name])):
            rate = result["requests"] / result["seconds"]
            used = roofline.share(work[key, name] / result["seconds"], "fp32", limits)
            rows.append(f"| multiple choice, {name} | {engine} | {result['requests']} requests | {result['seconds']:.1f} | "
                        f"{rate:.2f} | {rate / peer_rate:.2f} | {used:.1%} of fp32 | acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} | "
                        f"{same}/{len(lengths)} items | {load[key]:.2f} |")
        notes.append(f"- {name}: instructune {(ours[name]['requests'] / ours[name]['seconds']) / peer_rate:.2f}x "
                     "lm-eval's requests/s")
        notes.extend(compare(name, reference[name], ours[name], tie_tolerance=1e-4))
    return {"rows": rows, "notes": notes, "lm_eval": f"lm-evaluation-harness {lm_eval.__version__}"}


def _llamacpp(model, tokenizer, gguf_type: str, slots: int, threads: int, model_name: str | None = None):
    """The model as a GGUF file of `gguf_type` in llama.cpp's server: (GgufModel, GgufTokenizer)."""
    from instructune.export.gguf import write_gguf
    from instructune.generation.llamacpp_engine import load_gguf

    path = Path("runs/gguf_bench") / f"{Path(model_name).name if model_name else 'default'}.{gguf_type}.gguf"
    if not path.is_file():
        write_gguf(model, tokenizer, path, gguf_type)
    return load_gguf(path, slots=slots, threads=threads)


def _run_fresh(name: str, args: argparse.Namespace) -> tuple[list[str], float, float]:
    """One engine over all prompts in a child process of this script: its answers, seconds and load after."""
    with tempfile.TemporaryDirectory() as folder:
        dump = Path(folder) / "answers.json"
        command = [sys.executable, __file__, "--n", str(args.n), "--split", args.split, "--batch-size",
                   str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--engines", name,
                   "--dump", str(dump)]
        command += ["--native-slots", str(args.native_slots)] if args.native_slots else []
        command += ["--lora"] if args.lora else []
        command += ["--llama-slots", str(args.llama_slots), "--llama-threads", str(args.llama_threads)]
        command += ["--model", args.model] if args.model else []
        env = dict(os.environ)
        if name.startswith("ov-"):  # OpenVINO aborts beside a preloaded tcmalloc: it runs on glibc's malloc
            env["LD_PRELOAD"] = " ".join(p for p in env.get("LD_PRELOAD", "").split() if "malloc" not in Path(p).name)
        subprocess.run(command, check=True, env=env)
        result = json.loads(dump.read_text())
    return result["answers"][name], result["seconds"][name], result["loads"][name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="first N DialogSum test dialogues (48 for speed, 200 for ROUGE)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per HF generate call = native engine slots")
    parser.add_argument("--native-slots", type=int, default=None,
                        help="answers in flight for the native engines (default: --batch-size; at least decode.MIN_SLOTS)")
    parser.add_argument("--split", default="test", help="DialogSum split")
    parser.add_argument("--lora", action="store_true", help="wrap the model in a random LoRA adapter first (in-training check)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="summary length cap")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--choice-limit", type=int, default=0,
                        help="also score the first N PIQA and HellaSwag validation items with lm-eval and "
                             "instructune --mode lm-eval, in this run and table (needs the bench extra)")
    parser.add_argument("--append", default=None, help="append a results section to this markdown file")
    parser.add_argument("--fresh", action="store_true",
                        help="run each generation engine in a fresh process of its own (HF generate slows down "
                             "after earlier runs in the same process, and so does whatever runs after it)")
    parser.add_argument("--llama-slots", type=int, default=16, help="llama.cpp sequences decoded at once")
    parser.add_argument("--llama-threads", type=int, default=os.cpu_count() or 1, help="llama.cpp CPU threads")
    parser.add_argument("--model", default=None,
                        help="built-in name (gemma3-270m) or model folder; default: the default model")
    parser.add_argument("--dump", default=None, help=argparse.SUPPRESS)  # --fresh's child: answers to this JSON
    args = parser.parse_args()
    engines = args.engines.split(",")
    if unknown := [e for e in engines if e not in ENGINES]:
        parser.error(f"unknown engines {unknown}; choose from {', '.join(ENGINES)}")

    import copy

    import torch

    from instructune.data.render import extra_references, render_records
    from instructune.data.sources import load_records
    from instructune.data.templates import load_task
    from instructune.generation import openvino_engine
    from instructune.generation.native import MIN_SLOTS
    from instructune.generation.generate import generate
    from instructune.evaluate.metrics import generation_metrics
    from instructune.models import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import roofline

    limits = roofline.measure()  # before the engines run, on the same machine state
    print(roofline.format_limits(limits), flush=True)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    load_seconds = time.perf_counter() - started
    if args.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        with torch.no_grad():  # B is zero at init: give the adapter an effect, as training would
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.002)
        model.eval()
    task = load_task("dialogsum")
    records = load_records(DATA / "dialogsum" / f"{args.split}.jsonl").to_list()[: args.n]
    examples = render_records(task, records, template=0)
    prompts = [example["prompt"] for example in examples]
    references = [extra_references(task, record, 0) or [example["completion"]]
                  for example, record in zip(examples, records)]

    # Engine setup apart from decoding: OpenVINO's export (or its cache) and compile, HF's bf16 copy.
    setup_seconds = {}
    bf16_copy = None
    for name in engines if not args.fresh else ():
        started = time.perf_counter()
        if ENGINES[name][0]["engine"] == "openvino":  # export (or its cache) and compile, outside the clock
            openvino_engine.load_engine(model, compute_type=ENGINES[name][0]["compute_type"])
        elif ENGINES[name][1] == "weights":
            bf16_copy = copy.deepcopy(model).to(torch.bfloat16).eval()
        else:
            continue
        setup_seconds[name] = time.perf_counter() - started

    seconds, answers, loads = {}, {}, {}
    for name in engines:
        if args.fresh:
            answers[name], seconds[name], loads[name] = _run_fresh(name, args)
            print(f"{name}: {seconds[name]:.1f} s in a fresh process (1-min load {loads[name]:.2f})", flush=True)
            continue
        keywords, bf16 = ENGINES[name]
        runner, runner_tokenizer = (bf16_copy if bf16 == "weights" else model), tokenizer
        if bf16 and bf16.startswith("gguf:"):  # the file's export and the server's start are setup, outside the clock
            runner, runner_tokenizer = _llamacpp(model, tokenizer, bf16.split(":")[1], args.llama_slots,
                                                 args.llama_threads, args.model)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 == "autocast" else nullcontext()
        batch = args.native_slots if keywords["engine"] == "native" and args.native_slots else args.batch_size
        started = time.perf_counter()
        with autocast:
            answers[name] = generate(runner, runner_tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                     batch_size=batch, progress=False, **keywords)
        seconds[name] = time.perf_counter() - started
        loads[name] = os.getloadavg()[0]
        print(f"{name}: {seconds[name]:.1f} s (1-min load {loads[name]:.2f})", flush=True)

    if args.dump:
        Path(args.dump).write_text(json.dumps({"answers": answers, "seconds": seconds, "loads": loads}))
        return 0
    rows = {}
    for name in engines:
        new_tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers[name])
        metrics = generation_metrics(answers[name], references)
        rows[name] = {"new_tokens": new_tokens, "seconds": seconds[name], "tokens_per_s": new_tokens / seconds[name],
                      **{k: metrics[k] for k in ("rouge1", "rouge2", "rougeL")},
                      **{f"{k}_mean_ref": metrics.get(f"{k}_mean_ref", metrics[k])  # one reference: the same
                         for k in ("rouge1", "rouge2", "rougeL")}}
    hf_best = max((rows[n]["tokens_per_s"] for n in rows if n.startswith("hf-")), default=None)
    reference = answers.get("hf-fp32")
    choice = (_multiple_choice(model, tokenizer, args.choice_limit, args.batch_size, limits, args.model)
              if args.choice_limit else None)

    command = "python bench/eval.py " + " ".join(sys.argv[1:])
    if choice:
        title = (f"## Evaluation, one run: HF generate vs instructune on {args.n} DialogSum {args.split} dialogues, "
                 f"lm-evaluation-harness vs instructune on {args.choice_limit} PIQA and HellaSwag items")
    else:
        title = f"## Generation: HF generate vs instructune's engines, {args.n} DialogSum {args.split} dialogues"

    lines = [
        title + (", LoRA-wrapped model" if args.lora else "") + " (issue 13)",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {_cpu_name()} ({roofline.format_limits(limits)}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; "
        f"5-min load average at the end {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; model load {load_seconds:.1f} s",
        f"- generation: {args.model or 'default model'}, template 0, greedy, HF batch {args.batch_size}, native slots "
        f"{max(args.native_slots or args.batch_size, MIN_SLOTS)}, max {args.max_new_tokens} new tokens; "
        f"llama.cpp {args.llama_slots} slots, {args.llama_threads} threads; engines one after "
        f"another over all prompts, {'each in a fresh process' if args.fresh else 'in one process'}; ROUGE-1/2/L as the mean over the references (the DialogSum lab's "
        "protocol), and ROUGE-1 best of the references",
    ]
    if choice:
        lines.append(f"- multiple choice: {choice['lm_eval']}, float32, batch {args.batch_size} (lm-eval: requests; "
                     "instructune: items, all their options together), timed around the log-likelihood calls; "
                     "\"same\": items whose acc and acc_norm predictions equal lm-eval's")
    lines += [
        "",
        "| part | engine | work | seconds | per second | x peer's best | share of the matmul limit | scores | same as the reference | 1-min load after |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    # A generated token: 2 x the weights it passes through (prompt tokens' prefill left out): a lower bound.
    per_token = roofline.forward_flops_per_token(model.config)
    for name, row in rows.items():
        ratio = f"{row['tokens_per_s'] / hf_best:.2f}" if hf_best else "-"
        same = f"{sum(a == b for a, b in zip(answers[name], reference))}/{len(prompts)}" if reference else "-"
        precision = "fp32" if name.endswith("fp32") else "bf16"
        used = roofline.share(row["tokens_per_s"] * per_token, precision, limits)
        lines.append(
            f"| generation | {LABELS[name]} | {row['new_tokens']} new tokens | {row['seconds']:.1f} | "
            f"{row['tokens_per_s']:.1f} | {ratio} | {used:.1%} of {precision} | ROUGE-1/2/L {row['rouge1_mean_ref']:.4f} / "
            f"{row['rouge2_mean_ref']:.4f} / {row['rougeL_mean_ref']:.4f} (best of refs R-1 {row['rouge1']:.4f}) "
            f"| {same} answers = HF fp32 | {loads[name]:.2f} |"
        )
    if choice:
        lines.extend(choice["rows"])
    if setup_seconds:
        lines += ["", "Engine setup, not in the table (OpenVINO's export and compile, HF's bf16 copy): "
                  + ", ".join(f"{name} {value:.1f} s" for name, value in setup_seconds.items())]
    if choice:
        lines += ["", *choice["notes"]]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What quantization costs: exported GGUF files run in llama.cpp on DialogSum test dialogues, beside the merged model.

Issue 30 asks for one table: the merged model in transformers (fp32, Hugging Face greedy `generate`,
the reference) and its f16, q8_0, q4_0 and q4_1 GGUF files run by llama.cpp itself
(generation/llamacpp_engine.py: llama.cpp's server from the xllamacpp wheel, in this process,
greedy, all prompts in flight over `--slots` sequences), scored by the same ROUGE code under the
two protocols published tables use (mean over the 3 references, and summary1 alone), with new
tokens/s. Every engine gets the same prompt token ids (instructune's chat-formatted prompt) and
stops at the same end-of-turn ids. Per file it also checks what travelled in the file: llama.cpp's
rendering of the file's chat template and its tokenization of every prompt against the original,
how many summaries equal the reference engine's, and the share of the reference summaries' tokens
llama.cpp also ranks first when those summaries are forced (agreement per token, without the
cascade after a first difference).

Files missing from --gguf-dir are exported there from --model first (`write_gguf`, as `instructune
export --gguf TYPE` does). llama.cpp comes with the `test` extra (xllamacpp, a CPU wheel; nothing to
compile). (Not named gguf.py or llama_cpp.py: a script's folder comes first on sys.path, and those
names would hide the packages.)

Run from the project root (the default model, 200 dialogues; takes a while on 2 cores):
    .venv/bin/python bench/gguf_bench.py --n 200 --append bench/RESULTS.md
    .venv/bin/python bench/gguf_bench.py --model exported/dialogsum --gguf-dir runs/gguf/dialogsum --n 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TYPES = ("f16", "q8_0", "q4_0", "q4_1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the merged (or fully fine-tuned) model folder (default model)")
    parser.add_argument("--gguf-dir", default="runs/gguf_bench", help="where the GGUF files are (exported when missing)")
    parser.add_argument("--types", nargs="+", default=list(TYPES), help="GGUF types to run")
    parser.add_argument("--n", type=int, default=200, help="DialogSum test dialogues (the first N)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="summary length cap")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers generate batch size")
    parser.add_argument("--slots", type=int, default=16, help="llama.cpp sequences decoded at once")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both engines")
    parser.add_argument("--data", default=str(DATA / "dialogsum" / "test.jsonl"), help="DialogSum test JSONL")
    parser.add_argument("--no-forced", action="store_true", help="skip the forced-summary top-1 agreement")
    parser.add_argument("--append", default=None, help="append the results section to this markdown file")
    args = parser.parse_args()

    import torch

    from instructune.data.render import extra_references, render_records
    from instructune.data.sources import load_records
    from instructune.data.templates import load_task
    from instructune.data.tokenize import format_prompt
    from instructune.evaluate.metrics import generation_metrics
    from instructune.export.gguf import GGUF_TYPES, write_gguf
    from instructune.generation import llamacpp_engine
    from instructune.generation.generate import encode_prompt, generate, stop_token_ids
    from instructune.models import load_model

    if (reason := llamacpp_engine.unsupported_reason()) is not None:
        raise SystemExit(f"gguf_bench: {reason}")
    unknown = [t for t in args.types if t not in GGUF_TYPES]
    if unknown:
        raise SystemExit(f"gguf_bench: --types {unknown}: expected some of {', '.join(GGUF_TYPES)}")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    task = load_task("dialogsum")
    records = load_records(args.data).to_list()[: args.n]
    examples = render_records(task, records, template=0)
    references = [extra_references(task, record, 0) for record in records]
    prompts = [example["prompt"] for example in examples]
    prompt_ids = [encode_prompt(model, tokenizer, prompt) for prompt in prompts]
    formatted = [format_prompt(tokenizer, prompt) for prompt in prompts]
    stop_ids = stop_token_ids(model, tokenizer)

    def new_tokens(predictions: list[str]) -> int:
        # counted the same way for every engine: the answer text re-tokenized
        return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in predictions)

    started = time.perf_counter()
    reference = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                         progress=False, engine="hf")
    seconds = time.perf_counter() - started
    reference_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in reference]
    rows = [{"name": f"transformers fp32 (merged model, HF generate, batch {args.batch_size})", "size": "",
             "metrics": generation_metrics(reference, references), "tokens": new_tokens(reference),
             "seconds": seconds, "same": f"{len(prompts)}/{len(prompts)}", "checks": "", "forced": ""}]

    folder = Path(args.gguf_dir)
    for gguf_type in args.types:
        path = folder / f"{Path(args.model or 'smollm2').name}.{gguf_type}.gguf"
        if not path.exists():
            print(f"exporting {path} ...", flush=True)
            write_gguf(model, tokenizer, path, gguf_type)
        needed = max(len(ids) for ids in prompt_ids) + args.max_new_tokens
        with llamacpp_engine.LlamaCppServer(path, slots=args.slots, ctx_per_slot=needed,
                                            threads=args.threads) as server:
            same_template = sum(server.apply_template([{"role": "user", "content": p}]) == f
                                for p, f in zip(prompts, formatted))
            same_ids = sum(server.tokenize(f, add_special=False) == ids for f, ids in zip(formatted, prompt_ids))
            started = time.perf_counter()
            answers = llamacpp_engine.generate_ids(server, prompt_ids, max_new_tokens=args.max_new_tokens,
                                                   stop_ids=stop_ids)
            seconds = time.perf_counter() - started
            forced = "" if args.no_forced else (
                f"{llamacpp_engine.forced_top1_agreement(server, prompt_ids, reference_ids):.3f}")
        predictions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]
        n = len(prompts)
        rows.append({"name": f"llama.cpp, `{path.name}`", "size": f"{path.stat().st_size / 2**20:.0f} MiB",
                     "metrics": generation_metrics(predictions, references), "tokens": new_tokens(predictions),
                     "seconds": seconds, "same": f"{sum(a == b for a, b in zip(predictions, reference))}/{n}",
                     "checks": f"{same_template}/{n} / {same_ids}/{n}", "forced": forced})
        print(f"{path.name}: {rows[-1]['tokens'] / seconds:.1f} new tokens/s", flush=True)

    report = "\n".join(header(args, llamacpp_engine.XLLAMACPP_VERSION, torch.__version__) + table(rows)) + "\n"
    print(report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


def header(args, xllamacpp_version: str, torch_version: str) -> list[str]:
    from eval import _cpu_name  # bench/eval.py, beside this script (its folder is first on sys.path)

    load_average = os.getloadavg()[1]  # 5-minute: other jobs on the same cores slow every row
    # The run's own threads make a load of about --threads; more than that is another job on the cores.
    busy = " (another job shared the cores: timings are approximate)" if load_average > args.threads + 0.5 else ""
    return [
        f"## What quantization costs: GGUF files in llama.cpp beside the merged model, {args.n} DialogSum test "
        "dialogues (issue 30)",
        "",
        f"- command: `python bench/gguf_bench.py {' '.join(sys.argv[1:])}`",
        f"- machine: {_cpu_name()}; xllamacpp {xllamacpp_version} (llama.cpp's server, CPU wheel), torch "
        f"{torch_version}; {args.threads} threads each; llama.cpp {args.slots} slots",
        f"- model: {args.model or 'default (SmolLM2-135M-Instruct)'}; template 0 through the chat template, greedy, "
        f"at most {args.max_new_tokens} new tokens; each engine's time includes reading the prompts",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; 5-min load average at the end "
        f"{load_average:.2f} on {os.cpu_count()} cores, this run's {args.threads} threads included{busy}",
        "",
    ]


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| engine | file | ROUGE-1 / 2 / L, mean of 3 refs | ROUGE-1 / 2 / L, summary1 | new tokens | seconds | "
        "new tokens/s | summary = transformers' | file's template / prompt ids = original | reference tokens "
        "ranked first (forced) |",
        "|---|---:|---|---|---:|---:|---:|---|---|---:|",
    ]
    for row in rows:
        mean, first = ([row["metrics"][f"{key}{protocol}"] for key in ("rouge1", "rouge2", "rougeL")]
                       for protocol in ("_mean_ref", "_first_ref"))
        lines.append(
            f"| {row['name']} | {row['size']} | {' / '.join(f'{v:.4f}' for v in mean)} | "
            f"{' / '.join(f'{v:.4f}' for v in first)} | {row['tokens']} | {row['seconds']:.1f} | "
            f"{row['tokens'] / row['seconds']:.1f} | {row['same']} | {row['checks']} | {row['forced']} |"
        )
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())

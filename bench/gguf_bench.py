"""Run exported GGUF files in llama.cpp on DialogSum test prompts, beside instructune's own evaluation.

Issue 17 asks for one real llama.cpp run: load the file `instructune export --gguf` wrote, summarize
DialogSum test dialogues greedily, and report tokens/s and ROUGE next to instructune's evaluation of
the same model (transformers fp32, Hugging Face `generate`). Both engines get the same prompt token ids
(instructune's chat-formatted prompt), stop at the same end-of-turn ids and are scored by the same
ROUGE code, under two protocols: best of the 3 references and the mean over them. It also checks what
travelled in the file against the original on every prompt: llama.cpp's own tokenizer (built from the
file's vocabulary and pre-tokenizer name) encoding and decoding, the file's chat template rendered by
llama-cpp-python's Jinja formatter, and counts summaries that come out identical to instructune's.

llama-cpp-python compiles llama.cpp (cmake and a C++ compiler) when installed: either into the
project's environment (`pip install 'instructune[bench-gguf]'`) or, to keep the build apart, into its own
virtual environment named by --llama-python; the generation then runs there as a worker (`--worker`,
which imports only llama_cpp) and everything else in the project's. (Not named gguf.py or llama_cpp.py:
a script's folder comes first on sys.path, and those names would hide the packages.)

Run from the project root (the default model; export the files first):
    instructune export --model default --gguf q8_0 -o runs/gguf/smollm2.q8_0.gguf
    .venv/bin/python bench/gguf_bench.py --llama-python /work/llamavenv/bin/python --logit-prompts 0 \\
        runs/gguf/smollm2.f16.gguf runs/gguf/smollm2.q8_0.gguf --append bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def worker(job_path: str) -> int:
    """In the llama-cpp-python environment: tokenize and generate greedily for each prompt; JSON to stdout."""
    import llama_cpp
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    llm = Llama(model_path=job["gguf"], n_ctx=2048, n_threads=job["threads"], n_batch=512, verbose=False)
    load_seconds = time.perf_counter() - started
    tokenized = [llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in job["texts"]]
    # The chat template as the file carries it, rendered as llama-cpp-python's chat API renders it
    # (its "chat_template.default" handler: Jinja on the file's template and special-token texts).
    special_text = [llm._model.token_get_text(i) if i >= 0 else "" for i in (llm.token_eos(), llm.token_bos())]
    formatter = Jinja2ChatFormatter(llm.metadata.get("tokenizer.chat_template", ""), *special_text)
    rendered = [formatter(messages=[{"role": "user", "content": prompt}]).prompt for prompt in job["prompts"]]
    outputs, seconds = [], 0.0
    for ids in job["prompt_ids"]:
        llm.reset()  # no prompt-prefix reuse between dialogues: each is timed from an empty cache
        started = time.perf_counter()
        new: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token in job["stop_ids"]:
                break
            new.append(token)
            if len(new) >= job["max_new_tokens"]:
                break
        seconds += time.perf_counter() - started
        outputs.append(new)
    detokenized = [llm.detokenize(ids, special=False).decode("utf-8", errors="replace") for ids in outputs]
    json.dump({"outputs": outputs, "tokenized": tokenized, "rendered": rendered, "detokenized": detokenized,
               "seconds": seconds, "load_seconds": load_seconds, "chat_format": llm.chat_format,
               "version": llama_cpp.__version__}, sys.stdout)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="*", help="GGUF files exported from --model")
    parser.add_argument("--model", default=None, help="the model the files were exported from (default model)")
    parser.add_argument("--llama-python", default=sys.executable,
                        help="python of the environment with llama-cpp-python (default: this one, with the "
                        "'bench-gguf' extra installed)")
    parser.add_argument("--n", type=int, default=48, help="DialogSum test dialogues (48: bench/eval.py's)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="summary length cap")
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[8],
                        help="instructune eval batch sizes (the first one's answers are the reference)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both engines")
    parser.add_argument("--append", default=None, help="append a results section to this markdown file")
    parser.add_argument("--logit-prompts", type=int, default=8,
                        help="prompts whose logits are compared through transformers' GGUF reader (0: skip)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="only the logit comparison, no generation")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)

    import torch

    from instructune.data.render import extra_references, render_records
    from instructune.data.sources import load_records
    from instructune.data.templates import load_task
    from instructune.generation.generate import encode_prompt, stop_token_ids
    from instructune.evaluate.metrics import generation_metrics
    from instructune.evaluate.score import evaluate_examples
    from instructune.models import load_model
    from instructune.data.tokenize import format_prompt

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    task = load_task("dialogsum")
    records = load_records(DATA / "dialogsum" / "test.jsonl").to_list()[: args.n]
    examples = render_records(task, records, template=0)
    for example, record in zip(examples, records):
        example["references"] = extra_references(task, record, 0)
    references = [example["references"] for example in examples]
    prompt_ids = [encode_prompt(model, tokenizer, example["prompt"]) for example in examples]
    texts = [tokenizer.decode(ids) for ids in prompt_ids]
    formatted = [format_prompt(tokenizer, example["prompt"]) for example in examples]
    stop_ids = stop_token_ids(model, tokenizer)

    def count(predictions: list[str]) -> int:
        return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in predictions)

    logit_rows = [logit_agreement(model, path, prompt_ids[: args.logit_prompts]) for path in args.gguf
                  if args.logit_prompts]
    rows, notes, reference_predictions, version = [], [], None, "not run"
    for batch_size in ([] if args.no_llama_cpp else args.hf_batch_sizes):
        started = time.perf_counter()
        # Hugging Face generate, not the CTranslate2 engine `eval` may pick: the reference the export must match
        metrics, predicted = evaluate_examples(model, tokenizer, examples, kind="generation", batch_size=batch_size,
                                               max_new_tokens=args.max_new_tokens, progress=False,
                                               generate_options={"engine": "hf"})
        seconds = time.perf_counter() - started
        predictions = [row["prediction"] for row in predicted]
        reference_predictions = reference_predictions or predictions
        same_text = sum(a == b for a, b in zip(predictions, reference_predictions))
        rows.append((f"instructune eval (transformers fp32, batch {batch_size})", metrics, count(predictions),
                     seconds, "", "", f"{same_text}/{len(predictions)}"))

    for gguf_path in ([] if args.no_llama_cpp else args.gguf):
        job = Path(gguf_path).with_suffix(".job.json")
        job.write_text(json.dumps({"gguf": str(gguf_path), "texts": texts, "prompt_ids": prompt_ids,
                                   "prompts": [example["prompt"] for example in examples],
                                   "stop_ids": stop_ids, "max_new_tokens": args.max_new_tokens,
                                   "threads": args.threads}))
        done = subprocess.run([args.llama_python, __file__, "--worker", str(job)], capture_output=True, text=True)
        job.unlink()
        if done.returncode != 0:
            raise SystemExit(f"llama.cpp worker failed on {gguf_path}:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout)
        version = result["version"]
        predictions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in result["outputs"]]
        same_tokens = sum(ours == theirs for ours, theirs in zip(result["tokenized"], prompt_ids))
        same_decoded = sum(a.strip() == b for a, b in zip(result["detokenized"], predictions))
        same_template = sum(a == b for a, b in zip(result["rendered"], formatted))
        same_text = sum(a == b for a, b in zip(predictions, reference_predictions))
        metrics = generation_metrics(predictions, references)
        size = Path(gguf_path).stat().st_size / 2**20
        n = len(texts)
        # new tokens counted as for the transformers rows (the answer text re-tokenized), not llama.cpp's own count
        rows.append((f"llama.cpp, `{Path(gguf_path).name}` ({size:.0f} MiB)", metrics, count(predictions),
                     result["seconds"], f"{same_tokens}/{n} / {same_decoded}/{n}", f"{same_template}/{n}",
                     f"{same_text}/{n}" if reference_predictions else "-"))
        notes.append(f"`{Path(gguf_path).name}`: load {result['load_seconds']:.1f} s, llama-cpp-python chat "
                     f"format {result['chat_format']!r}, {sum(map(len, result['outputs']))} tokens generated")

    lines = header(args, version, torch.__version__) + (generation_table(args, rows) if rows else [])
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    if logit_rows:
        lines += [
            f"### The same files read back by transformers (`from_pretrained(gguf_file=...)`), logits against the "
            f"fp32 model on {min(args.logit_prompts, args.n)} chat-formatted DialogSum prompts",
            "",
            "| file | top-1 equal, all prompt positions | top-1 equal, next token | max abs logit difference |",
            "|---|---|---|---:|",
            *[f"| `{name}` | {all_equal} | {next_equal} | {largest:.4f} |"
              for name, all_equal, next_equal, largest in logit_rows],
            "",
        ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + report)
    return 0


def logit_agreement(model, gguf_path: str, prompt_ids: list[list[int]]) -> tuple[str, str, str, float]:
    """(file, top-1 equal over all positions, top-1 equal at the last position, max |logit difference|)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(gguf_path)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    equal = positions = next_equal = 0
    largest = 0.0
    with torch.no_grad():
        for ids in prompt_ids:
            got, want = (m(torch.tensor([ids])).logits[0] for m in (loaded, model))  # (T, vocab)
            same = got.argmax(-1) == want.argmax(-1)
            equal, positions, next_equal = equal + int(same.sum()), positions + len(ids), next_equal + int(same[-1])
            largest = max(largest, float((got - want).abs().max()))
    return path.name, f"{equal}/{positions}", f"{next_equal}/{len(prompt_ids)}", largest


def header(args, version: str, torch_version: str) -> list[str]:
    from eval import _cpu_name  # bench/eval.py, beside this script (its folder is first on sys.path)

    load_average = os.getloadavg()[1]  # 5-minute: other jobs on the same 2 cores slow every row
    command = "python bench/gguf_bench.py " + " ".join(sys.argv[1:])
    busy = " (shared, busy machine: timings are approximate)" if load_average > 2.5 else ""
    return [
        "## GGUF export read back by llama.cpp and transformers: DialogSum test prompts (issue 17)",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {_cpu_name()}; llama-cpp-python {version}, torch {torch_version}, {args.threads} threads each",
        f"- model: {args.model or 'default (SmolLM2-135M-Instruct)'}; template 0 through the chat template, greedy, "
        f"at most {args.max_new_tokens} new tokens; each engine's time includes reading the prompt",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; 5-min load average at the end "
        f"{load_average:.2f} on {os.cpu_count()} cores{busy}",
        "",
    ]


def generation_table(args, rows: list) -> list[str]:
    lines = [
        f"### Generation on {args.n} dialogues",
        "",
        "| engine | ROUGE-1 / 2 / L, best of 3 refs | ROUGE-1 / 2 / L, mean over refs | new tokens | seconds | "
        "new tokens/s | llama.cpp tokenizer = original (prompts encoded / answers decoded) | file's chat template "
        f"= original | summary = transformers batch {args.hf_batch_sizes[0]}'s |",
        "|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for name, metrics, new_tokens, seconds, same_tokens, same_template, same_text in rows:
        best, mean = ([metrics[f"{key}{protocol}"] for key in ("rouge1", "rouge2", "rougeL")]
                      for protocol in ("", "_mean_ref"))
        lines.append(
            f"| {name} | {' / '.join(f'{v:.4f}' for v in best)} | {' / '.join(f'{v:.4f}' for v in mean)} | "
            f"{new_tokens} | {seconds:.1f} | {new_tokens / seconds:.1f} | {same_tokens} | {same_template} | "
            f"{same_text} |"
        )
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())

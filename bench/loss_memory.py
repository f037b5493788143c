"""Peak memory and time of one training step's loss and backward: the chunked vocabulary against the model's own head.

Issue 31 item 3: Gemma 3's 262,144-token output layer scored on labelled rows only, in blocks of
vocabulary columns (train/loss.py), so the (labelled tokens x vocab) fp32 logits never exist whole.
This runs one packed micro-batch of DialogSum training dialogues (template 0, Gemma's turn format)
through `causal_lm_loss_sum` and its backward, twice, in a fresh process per variant ("unchunked"
raises CHUNKED_VOCAB past the vocabulary, so the model's own head computes every labelled row's logits
at once). Memory is the peak resident set of the step over the resident set at its start (Linux:
the peak is reset through /proc/self/clear_refs before the step), under glibc's malloc with a fixed mmap
threshold so that freed tensors leave the resident set. `--all-labelled`
labels every position (a pretraining-like batch), where the logits grow to ~1 MB per labelled token.

Run from the project root (Linux):
    .venv/bin/python bench/loss_memory.py --model gemma3-270m --precision bf16-true
    .venv/bin/python bench/loss_memory.py --model gemma3-270m --precision bf16-true --all-labelled
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _one_variant(args: argparse.Namespace) -> None:
    """The child: load, build the batch, run two steps, print one line per step."""
    import torch

    from instructune.data.render import render_records
    from instructune.data.sources import load_records
    from instructune.data.templates import load_task
    from instructune.data.tokenize import IGNORE_INDEX, apply_chat_template_setting, tokenize_examples
    from instructune.models import load_model
    from instructune.train import loss
    from instructune.train.pack import collate, pack_examples

    torch.set_num_threads(args.threads)
    if args.variant == "unchunked":
        loss.CHUNKED_VOCAB = 2**62
    model, tokenizer = load_model(args.model)
    tokenizer = apply_chat_template_setting(tokenizer, args.chat_template, model, say=lambda *_: None)
    model.config.use_cache = False
    model.train()
    if args.precision == "bf16-true":
        model.to(torch.bfloat16)
    task = load_task("dialogsum")
    records = load_records(DATA / "dialogsum" / "train.jsonl").to_list()[:64]
    examples = [{"prompt": e["prompt"], "completion": e["completion"]} for e in render_records(task, records, template=0)]
    encoded, _ = tokenize_examples(examples, tokenizer, args.max_length)
    batch = collate(pack_examples(encoded, args.max_length)[: args.rows], tokenizer.pad_token_id)
    if args.all_labelled:
        batch["labels"] = batch["input_ids"].clone()
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX
    print(f"{args.variant}, {args.precision}: batch {tuple(batch['input_ids'].shape)}, "
          f"{loss.label_count(batch, False)} labelled positions, chunked head: {loss.chunked_head(model) is not None}")
    for step in range(2):
        model.zero_grad(set_to_none=True)
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident set
        started = time.perf_counter()
        loss_sum, count = loss.causal_lm_loss_sum(model, batch)
        forward = time.perf_counter() - started
        loss_sum.backward()
        seconds = time.perf_counter() - started
        grad = model.get_input_embeddings().weight.grad.float().norm()
        print(f"  step {step}: loss {float(loss_sum.detach()) / count:.6f}, forward {forward:.1f} s, with backward "
              f"{seconds:.1f} s, peak {_status_mb('VmHWM') - before:.0f} MB over the {before:.0f} MB at its start, "
              f"embedding gradient norm {float(grad):.4f}, 1-min load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", help="a model name load_model knows, or a folder")
    parser.add_argument("--precision", choices=("fp32", "bf16-true"), default="bf16-true")
    parser.add_argument("--chat-template", default="gemma", help="model.chat_template for the prompts")
    parser.add_argument("--rows", type=int, default=2, help="packed rows in the micro-batch")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per packed row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all-labelled", action="store_true", help="label every position, not only the summaries")
    parser.add_argument("--variant", choices=("chunked", "unchunked"), default=None,
                        help="run this one variant here (the parent runs each in a child process)")
    args = parser.parse_args()
    if args.variant:
        _one_variant(args)
        return 0
    # A fixed mmap threshold: glibc's sliding one keeps large freed blocks in the heap after the first
    # free, so the resident set would follow the allocator's history rather than the tensors alive.
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
    for variant in ("unchunked", "chunked"):
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())

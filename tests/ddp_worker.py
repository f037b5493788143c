"""Worker for test_distributed.py: trains the tiny model for a few steps, in one or two processes.

The examples are laid out so that in a two-process step every row of rank 0 has a long answer and every
row of rank 1 a two-token one: a loss normalised per process instead of over the whole step would move
the weights differently from the one-process run.

Usage: ddp_worker.py OUT_DIR BATCH_SIZE [lora] [stop_after=N] [resume] [fsdp_on_cpu]
`stop_after=N` asks rank 0 alone to stop after step N (as a SIGTERM would: the processes agree on the
step, save a checkpoint and exit); `resume` continues the run in OUT_DIR. `fsdp_on_cpu` lifts
accelerate's GPU-only gate on FSDP (fsdp_on_cpu.py). Each process writes shard-RANK.json: how
accelerate distributed the run and how many of the trainable weights the process holds.
"""

import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import tiny  # noqa: E402

out_dir, batch_size, *options = sys.argv[1:]
if "fsdp_on_cpu" in options:
    from fsdp_on_cpu import allow_fsdp_on_cpu  # noqa: E402

    allow_fsdp_on_cpu()
from instructune.config import load_config  # noqa: E402
from instructune.train.trainer import Trainer, row_order  # noqa: E402

N_EXAMPLES = 64
torch.set_num_threads(1)
lora = "lora" in options
stop_after = next((int(o.split("=")[1]) for o in options if o.startswith("stop_after=")), None)
tokenizer = tiny.make_tokenizer()
config = load_config(overrides=[
    "run_name=run", f"output_dir={out_dir}", "train.max_steps=6", "train.lr=3e-3", f"lora.enabled={lora}",
    "lora.r=4", "lora.dropout=0", "train.precision=fp32", "train.max_grad_norm=null",
    f"train.batch_size={int(batch_size)}", "data.packing=false",
])
# In a two-process step of 8 rows, the row at epoch position q goes to rank q % 2 (train.step_batches).
rank_zero_rows = set(row_order(N_EXAMPLES, config.seed, 0)[0::2])
examples = [
    {"prompt": f"Where is order {i}?",
     "completion": f"Order {i} shipped on day {i % 7} and will arrive in three days. " * 4 if i in rank_zero_rows else "ok"}
    for i in range(N_EXAMPLES)
]
trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=examples,
                  progress=False, resume="resume" in options)
trainer.setup()
accelerator = trainer.accelerator
held = sum(getattr(p, "to_local", lambda: p)().numel() for p in trainer.params)  # a DTensor's local shard
Path(out_dir, f"shard-{accelerator.process_index}.json").write_text(json.dumps(
    {"distributed_type": accelerator.distributed_type.value, "held": held,
     "trainable": sum(p.numel() for p in trainer.params)}))
if stop_after is not None and accelerator.is_main_process:
    optimizer_step = trainer._optimizer_step

    def step_then_maybe_stop(step):
        result = optimizer_step(step)
        if step + 1 == stop_after:
            trainer._request_stop(signal.SIGTERM, None)
        return result

    trainer._optimizer_step = step_then_maybe_stop
try:
    trainer.train()
except KeyboardInterrupt:
    pass
finally:
    trainer.cleanup()
    # Whether the process left its process group before exiting (an alive gloo group can abort at exit).
    Path(out_dir, f"left-{accelerator.process_index}.json").write_text(
        json.dumps({"group_alive": torch.distributed.is_initialized()}))

"""Worker for test_distributed.py: trains the tiny model for a few steps, in one or two processes.

The examples are laid out so that in a two-process step every row of rank 0 has a long answer and every
row of rank 1 a two-token one: a loss normalised per process instead of over the whole step would move
the weights differently from the one-process run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import tiny  # noqa: E402
from instructune.config import load_config  # noqa: E402
from instructune.train import Trainer, row_order  # noqa: E402

N_EXAMPLES = 64
torch.set_num_threads(1)
out_dir, batch_size = sys.argv[1], int(sys.argv[2])
tokenizer = tiny.make_tokenizer()
config = load_config(overrides=[
    "run_name=run", f"output_dir={out_dir}", "train.max_steps=6", "train.lr=3e-3", "lora.enabled=false",
    "train.precision=fp32", "train.max_grad_norm=null",
    f"train.batch_size={batch_size}", "data.packing=false",
])
# In a two-process step of 8 rows, the row at epoch position q goes to rank q % 2 (train.step_batches).
rank_zero_rows = set(row_order(N_EXAMPLES, config.seed, 0)[0::2])
examples = [
    {"prompt": f"Where is order {i}?",
     "completion": f"Order {i} shipped on day {i % 7} and will arrive in three days. " * 4 if i in rank_zero_rows else "ok"}
    for i in range(N_EXAMPLES)
]
trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=examples, progress=False)
trainer.setup()
trainer.train()

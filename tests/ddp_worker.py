"""Worker for test_distributed.py: trains the tiny model for a few steps, in one or two processes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import tiny  # noqa: E402
from instructune.config import load_config  # noqa: E402
from instructune.train import Trainer  # noqa: E402

torch.set_num_threads(1)
out_dir, batch_size = sys.argv[1], int(sys.argv[2])
tokenizer = tiny.make_tokenizer()
examples = [{"prompt": f"Where is order {i}?", "completion": f"Order {i} shipped on day {i % 7}."} for i in range(64)]
config = load_config(overrides=[
    "run_name=run", f"output_dir={out_dir}", "train.max_steps=6", "train.lr=3e-3", "lora.enabled=false",
    "train.precision=fp32",
    f"train.batch_size={batch_size}", "data.packing=false",
])
trainer = Trainer(config, model=tiny.make_llama(tokenizer), tokenizer=tokenizer, train_examples=examples, progress=False)
trainer.setup()
trainer.train()

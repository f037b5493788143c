"""Training: examples -> token rows -> optimizer steps -> a tuned model folder or adapter.

pack.py packs tokenized examples into rows without cross-talk and collates them; loss.py is the
cross-entropy on labelled positions only; attention.py runs attention per packed example;
compiling.py compiles each decoder block; adapters.py wraps the model for LoRA / QLoRA; optim.py is
AdamW over bf16 weights with stochastic rounding; fsdp.py saves and resumes sharded runs;
checkpoint.py writes and finds checkpoints; runlog.py logs metrics and draws the loss plot;
trainer.py is the loop and the `instructune train` command. Tokenization is a data step
(data/tokenize.py). In-training checks score with the evaluation library (evaluate/), which
generates through generation/.
"""

from instructune.train.trainer import Trainer, train

__all__ = ["Trainer", "train"]

"""Cross-entropy on labelled tokens only, as a (sum, count) pair so callers control the normalisation.

The vocabulary projection is the costliest single matmul of a small model's step (FIELD-NOTES), and
most positions of an instruction example are prompt tokens with no label. So the decoder runs once
and only the hidden states that predict a label go through the output layer: `logits_to_keep` with a
(B, T) boolean mask returns just those rows. Returning the sum lets the trainer divide by the label
count of the whole optimizer step, across micro-batches and processes (not a mean of means).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from instructune.train.attention import segments, uses_packed_attention
from instructune.data.tokenize import IGNORE_INDEX


def label_count(batch: dict[str, torch.Tensor], encoder_decoder: bool) -> int:
    """How many positions of a batch carry a loss: the one count the loss sums and the step divides by.

    Decoder-only: labels shifted by one (token t+1 is predicted at position t); encoder-decoder: the
    decoder's labels as they are.
    """
    labels = batch["labels"] if encoder_decoder else batch["labels"][:, 1:]
    return int((labels != IGNORE_INDEX).sum())


def causal_lm_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over labelled positions of a decoder-only model.

    Args:
        model: a causal LM (plain, PEFT-wrapped or DDP-wrapped).
        batch: input_ids, labels, position_ids, each (B, T); labels -100 where no loss.

    Returns:
        (loss_sum, label_count)
    """
    targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at position t
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)  # (B, T)
    keep[:, :-1] = targets != IGNORE_INDEX
    count = label_count(batch, encoder_decoder=False)
    # Under attention.py's implementation each packed example attends as its own causal block.
    extra = {"packed_segments": segments(batch["position_ids"])} if uses_packed_attention(model) else {}
    output = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, logits_to_keep=keep,
        **extra,
    )
    logits = output.logits.float()  # (N, V), N = labelled positions
    if logits.dim() == 3:  # a model without boolean logits_to_keep support returned every position
        logits = logits[keep]
    loss_sum = F.cross_entropy(logits, targets[keep[:, :-1]], reduction="sum")
    return loss_sum, count


def seq2seq_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed loss of an encoder-decoder model on its target tokens."""
    labels = batch["labels"]
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    logits = output.logits.float()  # (B, T, V)
    loss_sum = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, label_count(batch, encoder_decoder=True)

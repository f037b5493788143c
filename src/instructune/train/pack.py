"""Batching for training: best-fit packing without cross-talk, and padding collation.

Packed rows hold several examples; `position_ids` restart at 0 for each, and no attention mask is
passed, so transformers' SDPA path builds a block-diagonal causal mask and no example attends to
another (FIELD-NOTES: packing with SDPA). Unpacked rows are right-padded and also need no mask: in
a causal model a real token never attends to padding that comes after it.
What this file leaves out: tokenization (data/tokenize.py) and the order of batches (trainer.py).
"""

from __future__ import annotations

import bisect
from typing import Any

import torch

from instructune.errors import InstructuneError
from instructune.data.tokenize import IGNORE_INDEX, pad_rows


def pack_best_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most `max_length` tokens, best-fit decreasing.

    Each example goes, longest first, into the open row with the least room that still fits it,
    so no example that fits is ever cut and rows end up nearly full.

    Example:
        >>> pack_best_fit([5, 3, 4, 2], max_length=8)
        [[0, 1], [2, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, row index)
    for i in order:
        need = lengths[i]
        if need > max_length:
            raise ValueError(f"example {i} has {need} tokens, more than max_length={max_length}")
        slot = bisect.bisect_left(room, (need, -1))
        if slot == len(room):
            rows.append([i])
            bisect.insort(room, (max_length - need, len(rows) - 1))
        else:
            free, row = room.pop(slot)
            rows[row].append(i)
            bisect.insort(room, (free - need, row))
    return rows


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Concatenate tokenized examples into packed rows with restarting position ids.

    The first label of each example is ignored: it would be predicted from the previous example.
    """
    rows = pack_best_fit([len(e["input_ids"]) for e in examples], max_length)
    packed = []
    for row in rows:
        input_ids, labels, position_ids = [], [], []
        for i in row:
            ids = examples[i]["input_ids"]
            input_ids += ids
            labels += [IGNORE_INDEX] + list(examples[i]["labels"][1:])
            position_ids += list(range(len(ids)))
        packed.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids})
    return packed


# Packed rows are nearly full, so their batches are padded to a multiple of this (never past max_length):
# each new (B, T) makes oneDNN compile and keep kernels for every matmul of the step (~2.4 MB each), and
# 256 packed Gemma 3 dialogues came in six widths between 440 and 512 tokens, which grew a LoRA run's
# peak by ~0.2 GB over 16 steps. Now two, for 2% more tokens on the five short batches.
PACKED_WIDTH_MULTIPLE = 64


def collate(rows: list[dict], pad_token_id: int, pad_to_multiple_of: int = 8,
            max_width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad rows into (B, T) tensors: input_ids, labels (-100 on padding), position_ids.

    T is the longest row rounded up to `pad_to_multiple_of`, but not past `max_width` (where given).
    Padding gets position ids that restart at 0, so in a packed batch it forms its own segment.
    """
    longest = max(len(r["input_ids"]) for r in rows)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    if max_width is not None:
        width = max(longest, min(width, max_width))
    input_ids, _ = pad_rows([r["input_ids"] for r in rows], pad_token_id, width=width)  # (B, T)
    labels, _ = pad_rows([r["labels"] for r in rows], IGNORE_INDEX, width=width)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        positions = row.get("position_ids") or list(range(n))
        position_ids[b, :n] = torch.tensor(positions)
        position_ids[b, n:] = torch.arange(width - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def collate_seq2seq(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad encoder inputs (with an attention mask) and decoder labels for an encoder-decoder model."""
    input_ids, attention_mask = pad_rows([r["input_ids"] for r in rows], pad_token_id)
    labels, _ = pad_rows([r["labels"] for r in rows], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def refuse_packed_flash_attention(model: Any, rows_per_batch: int) -> None:
    """Refuse packed batches of several rows under FlashAttention, where packed examples would attend to each other.

    transformers builds a block-diagonal mask from the restarting position_ids for SDPA, eager and flex
    attention, but its FlashAttention path does so only for a batch of one row (`_is_packed_sequence`).

    Example:
        >>> model.config._attn_implementation = "flash_attention_2"
        >>> refuse_packed_flash_attention(model, rows_per_batch=8)
        Traceback (most recent call last):
        instructune.errors.InstructuneError: config key 'data.packing': packed rows with attn_implementation=...
    """
    attention = str(getattr(model.config, "_attn_implementation", None) or "")
    if "flash" in attention and rows_per_batch > 1:
        raise InstructuneError(
            f"config key 'data.packing': packed rows with attn_implementation={attention} need train.batch_size=1 "
            f"(got {rows_per_batch}; raise train.grad_accum_steps instead), or set data.packing=false"
        )

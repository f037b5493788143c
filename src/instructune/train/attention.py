"""Attention over packed rows, one causal block per example instead of one masked square per row.

A packed row holds several examples whose `position_ids` restart at 0. Hugging Face's SDPA path turns
that into a block-diagonal boolean mask over the whole row, and an explicit mask makes torch's CPU
flash kernel compute every query-key pair of the row (it can skip the upper triangle only under
`is_causal=True`). Here each example's block runs alone as a causal SDPA call: the same attention, a
fraction of the work (two examples of 256 tokens in a 512-token row: 1/4 of the query-key pairs).
Measured on a 2-core CPU (bench/RESULTS.md): attention 5.5x faster on a 2,048-token row of 8
examples; no faster on 512-token rows of ~2 (torch's CPU flash backward costs as much per block
call as per masked row), where it adds ~0.4 GB of peak memory. Hence `train.packed_attention`,
off by default, for long packed rows.

A layer with a sliding window (Gemma 3's local layers pass `sliding_window`) attends within it inside
each example: a block longer than the window runs SDPA with a banded mask instead of `is_causal`.

It is a transformers attention function (`AttentionInterface`), so the model's own modules, LoRA
wrappers and autograd run as they are. It acts only when the caller passes `packed_segments` (the
training loss does, for packed rows); every other call, generation and padded batches included, goes
to transformers' SDPA function with its usual mask, so a model switched to it behaves as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from instructune.models import is_encoder_decoder

NAME = "instructune_packed"
_REGISTERED = False


def register() -> None:
    """Make NAME a transformers attention implementation (with SDPA's mask function)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    _REGISTERED = True


def use_packed_attention(model: Any) -> bool:
    """Switch a decoder-only model that runs SDPA to the per-example path; True when switched.

    Models on another implementation (eager, flash-attention, flex) are left as they are.
    """
    config = getattr(model, "config", None)
    if config is None or is_encoder_decoder(model):
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    model.set_attn_implementation(NAME)
    return getattr(config, "_attn_implementation", None) == NAME


def uses_packed_attention(model: Any) -> bool:
    """Whether `model` (or the model inside a PEFT or DDP wrapper) runs the per-example path."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) == NAME


def segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each packed example: a new one wherever position_ids is 0.

    Example:
        >>> segments(torch.tensor([[0, 1, 2, 0, 1, 0]]))
        [[(0, 3), (3, 5), (5, 6)]]
    """
    width = position_ids.shape[1]
    bounds = []
    for row in position_ids.tolist():
        starts = [t for t, p in enumerate(row) if p == 0] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        bounds.append(list(zip(starts, starts[1:] + [width])))
    return bounds


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     packed_segments: list[list[tuple[int, int]]] | None = None, sliding_window: int | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed example (within `sliding_window` positions where the layer has one);
    transformers' SDPA function for every other call.

    query is (B, heads, T, head dim), key and value (B, kv heads, T, head dim); returns (B, T, heads,
    head dim) as transformers' attention functions do.
    """
    if packed_segments is None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    groups = query.shape[1] // key.shape[1]
    bands: dict[int, torch.Tensor] = {}  # block length -> its banded mask, made once per call
    rows = []
    for b, bounds in enumerate(packed_segments):
        # Each block's output is put back in (1, tokens, heads, head dim) order, the layout torch's CPU
        # flash kernel writes and reads its gradient in: joining blocks along the head-major layout
        # instead cost ~30% more time, forward and backward together.
        blocks = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                dropout_p=dropout, scale=scaling, enable_gqa=groups > 1,
                **_causal(e - s, sliding_window, bands, query.device),
            ).transpose(1, 2)
            for s, e in bounds
        ]
        rows.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.contiguous(), None


def _causal(tokens: int, window: int | None, bands: dict[int, torch.Tensor], device: Any) -> dict[str, Any]:
    """SDPA's causal arguments for one block: `is_causal`, or a banded mask where the window is shorter.

    Query i sees key j when i - window < j <= i, as transformers' sliding-window mask has it.
    """
    if window is None or tokens <= window:
        return {"is_causal": True}
    if tokens not in bands:
        distance = torch.arange(tokens, device=device).unsqueeze(1) - torch.arange(tokens, device=device)
        bands[tokens] = (distance >= 0) & (distance < window)
    return {"attn_mask": bands[tokens]}

"""Regional compilation for training: each repeated decoder block compiled once, reused by every layer.

Compiling the whole model traces all 30 layers of SmolLM2 one after another and takes minutes on two
cores; the layers are the same code with different weights, so compiling the block class once (with
dynamic sequence length, as packed rows vary) costs ~30 s and the inductor cache makes later runs
start in seconds. Inside a compiled block inductor fuses the element-wise work (RMSNorm, SiLU, RoPE,
residual adds, autocast casts) and recomputes cheap activations in the backward instead of keeping
them: ~30% of an eager CPU step's time went to that work and its casts, and ~0.9 GB of peak memory.

Where the blocks compute in bf16 on CPU, they also switch from torch's flash-attention kernel to
transformers' eager attention (matmul, mask, softmax, matmul): inside a compiled block the mask and
softmax fuse, and the two bf16 matmuls run on the BLAS. On 512-token packed rows on an AMX CPU the bf16
flash kernel was ~34% of a compiled step, the batched matmuls ~13%: 1.3x the step's speed for ~0.5 GB
more peak memory. In fp32 the flash kernel is kept: on an Intel Xeon without AMX it was as fast as the
fused matmul-softmax or faster (1.04-1.10x a LoRA step) and kept 0.65 GB less, as it stores no
attention probabilities (bench/RESULTS.md has the measured effect of each part). On GPU the model's
attention is left alone.

The blocks are the classes a transformers model names in `_no_split_modules` (the unit FSDP and
device maps split at), so any Hugging Face decoder works without a per-architecture list.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from instructune.models import is_encoder_decoder


def block_classes(model: Any) -> set[str]:
    """The repeated block classes of a transformers model (or one inside PEFT / DDP wrappers)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    return set()


def compile_blocks(model: Any, memory_budget: float = 0.8, matmul_attention: bool = True) -> int:
    """Compile every repeated block of `model` in place; returns how many were compiled (0: none found).

    `matmul_attention`: on CPU, run an SDPA model's attention as eager matmul-softmax inside the blocks
    (for bf16 compute; the trainer passes False for fp32, where torch's flash kernel is kept).

    `memory_budget` (0-1] is the share of a block's activations its compiled backward may keep: below 1
    the partitioner recomputes the cheapest of the rest in the backward (AOTAutograd's
    `activation_memory_budget`, process-wide, read when a block first compiles).
    A block whose compilation fails at its first call (no C++ compiler, an operator inductor cannot
    lower) runs eagerly instead: dynamo's `suppress_errors` falls back per frame, so training goes on.
    Both settings it changes (`suppress_errors`, `specialize_float`) are dynamo's process-wide config.
    """
    import torch._dynamo
    import torch._functorch.config

    if torch._functorch.config.activation_memory_budget != memory_budget:
        # Compiled blocks of an earlier run in this process (a notebook) would be reused as they are.
        torch._dynamo.reset()
        torch._functorch.config.activation_memory_budget = memory_budget

    if is_encoder_decoder(model):
        return 0
    names = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        return 0
    torch._dynamo.config.suppress_errors = True
    # Module floats (RMSNorm's epsilon, LoRA's dropout rate and scaling) traced as constants. As symbols
    # (dynamo's default) they made each run's first block compilation restart its analysis and throw away an
    # AOTAutograd result that was never cached: ~4.5 s of every compiled SmolLM2 LoRA run, cache warm.
    torch._dynamo.config.specialize_float = True
    # Weights are graph inputs (dynamo's inline_inbuilt_nn_modules), so one graph serves every block.
    for block in blocks:
        block.compile(dynamic=True)
    if matmul_attention and not torch.cuda.is_available():
        config = getattr(_transformers_model(model), "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa":
            _transformers_model(model).set_attn_implementation("eager")
            model._instructune_attention = "sdpa"  # restored by `uncompiled`
    return len(blocks)


@contextmanager
def uncompiled(model: Any) -> Iterator[Any]:
    """Run `model` with its blocks eager and its original attention (generation), then compiled again."""
    blocks = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    saved = [m._compiled_call_impl for m in blocks]
    original = getattr(model, "_instructune_attention", None)
    inner = _transformers_model(model)
    for block in blocks:
        block._compiled_call_impl = None
    if original:
        inner.set_attn_implementation(original)
    try:
        yield model
    finally:
        for block, call in zip(blocks, saved):
            block._compiled_call_impl = call
        if original:
            inner.set_attn_implementation("eager")


def _transformers_model(model: Any) -> Any:
    """The transformers PreTrainedModel inside PEFT / DDP / accelerate wrappers."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    return model

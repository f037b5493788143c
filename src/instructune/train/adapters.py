"""Turn a loaded model into the one that trains: QLoRA preparation, LoRA wrapping, checkpointing.

The order matters and is kept here in one place: a 4-bit base is prepared first (norms and
embeddings to fp32), LoRA wraps it next, and gradient checkpointing goes on last, with input
gradients enabled when only adapters train (the embeddings are frozen, and a reentrant checkpoint
whose input needs no gradient would give the adapters inside it none).
"""

from __future__ import annotations

from typing import Any

import torch

from instructune.config import LoraConfig as LoraSettings
from instructune.errors import InstructuneError
from instructune.models import is_encoder_decoder


def prepare_for_training(model: Any, lora: LoraSettings, *, gradient_checkpointing: bool = False) -> Any:
    """The trainable model for these settings: the base itself (full fine-tune) or a peft LoRA model.

    Example:
        >>> model = prepare_for_training(model, config.lora, gradient_checkpointing=True)
    """
    model.config.use_cache = False
    if lora.load_in_4bit:
        model = _prepare_4bit(model, gradient_checkpointing)
    if lora.enabled:
        model = _wrap_lora(model, lora)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora.enabled:
            model.enable_input_require_grads()
    return model


def _prepare_4bit(model: Any, gradient_checkpointing: bool) -> Any:
    """QLoRA: the base must already be 4-bit; norms and embeddings go to fp32 for stable training."""
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False):
        raise InstructuneError("lora.load_in_4bit: the model given was not loaded in 4-bit; pass a model folder "
                               "(model.name) and let the trainer quantize it while loading")
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def _wrap_lora(model: Any, lora: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="SEQ_2_SEQ_LM" if is_encoder_decoder(model) else "CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def native_bf16() -> bool:
    """bf16 matmuls in hardware: a GPU that has them, or a CPU with AVX512-BF16/AMX (1.5x fp32 here)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@torch.library.custom_op("instructune::dropout_keep", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def dropout_keep(x: torch.Tensor, salt: torch.Tensor, threshold: int) -> torch.Tensor:
    """Keep-mask for `x` (bool, x's shape, contiguous): one 64-bit draw of torch's generator gives four
    elements' 16-bit uniforms, and an element is kept when its uniform (as int16) is >= `threshold`.

    A custom operator so that a compiled block calls it as it is, from torch's seeded generator: dynamo
    cannot trace `random_` (a graph break at every LoRA layer), and inductor's own in-kernel random
    numbers made a compiled LoRA step slower than the eager one (bench/RESULTS.md). `salt` is the
    calling module's empty buffer: it only makes each call's arguments different, so that compiler
    passes never merge the masks of two dropouts that see the same input (q, k and v projections).
    """
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    return words.view(torch.int16)[:n].view(x.shape) >= threshold


@dropout_keep.register_fake
def _(x: torch.Tensor, salt: torch.Tensor, threshold: int) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.bool)


class FastDropout(torch.nn.Module):
    """Dropout with the same distribution as `nn.Dropout`, its mask drawn from 16 random bits per element.

    torch's CPU dropout draws one random number per element (~5 ns each): with LoRA on every linear
    layer that was a quarter of a training step (bench/RESULTS.md). Here an element is kept when its
    16-bit uniform is at least round(p * 65536) / 65536, so p is honoured to within 2**-17
    (`dropout_keep`). 3x faster than `nn.Dropout` on a (2, 512, 576) bf16 input. Same scaling (kept
    elements times 1 / (1 - p)), identity in eval; the same masks eager and inside a compiled block.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = -(2**15) + round(p * 2**16)  # int16 uniforms below this are dropped
        self.register_buffer("salt", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = dropout_keep(x, self.salt, self.threshold)
        return torch.where(keep, x * (1 / (1 - self.p)), 0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: Any) -> int:
    """Swap PEFT LoRA layers' `nn.Dropout` for FastDropout in place; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p)
                swapped += 1
    return swapped


"""Turn a loaded model into the one that trains: QLoRA preparation, LoRA wrapping, checkpointing.

The order matters and is kept here in one place: a 4-bit base is prepared first (norms and
embeddings to fp32), LoRA wraps it next, and gradient checkpointing goes on last, with input
gradients enabled when only adapters train (the embeddings are frozen, and a reentrant checkpoint
whose input needs no gradient would give the adapters inside it none).
"""

from __future__ import annotations

import math
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


def _keep_mask(shape: torch.Size, seed: torch.Tensor, threshold: int, device: torch.device) -> torch.Tensor:
    """Keep-mask (bool, `shape`) drawn from a generator seeded with `seed`: one 64-bit draw gives four
    elements' 16-bit uniforms, and an element is kept when its uniform (as int16) is >= `threshold`.
    The same seed gives the same mask, so the backward draws it again instead of keeping it."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    return words.view(torch.int16)[:n].view(shape) >= threshold


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32 shape) in int32 lanes: products wrap modulo 2**32 (the
    vector units' low-half multiply) and each right shift is masked to a logical one, so the bits are those
    of the unsigned hash. int32 rather than int64 lanes: twice the elements per vector instruction, the mask
    kernels 1.5x faster on an AMX CPU (bench/RESULTS.md), the same masks."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * 0x7FEB352D
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * 0x4C6CA68B
    return h ^ ((h >> 16) & 0xFFFF)


def _hashed_keep(x: torch.Tensor, seed: torch.Tensor, threshold: int) -> torch.Tensor:
    """Keep-mask for `x` from a counter-based hash: element i's 16-bit uniform is the top half of
    mix(i + the seed's low 32 bits); kept when >= `threshold` (0..65536). No generator state and no stored
    bits: compiled, it is a dozen integer operations fused into the kernel that uses the mask. Two seeds
    read one sequence of uniforms at shifted positions, so an element sees independent draws under two
    seeds (what dropout needs) unless their low words are equal (2**-32 for torch's random seeds)."""
    if x.numel() < 2**31:
        index = torch.arange(x.numel(), device=x.device, dtype=torch.int32).view(x.shape)
    else:  # past int32's range: the index modulo 2**32, made in int64 (a slower kernel, the same masks)
        index = _as_int32(torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape))
    return ((_mix32(index + _as_int32(seed)) >> 16) & 0xFFFF) >= threshold


def _as_int32(values: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 `values`, as int32 (two's complement)."""
    low = values & 0xFFFFFFFF
    return torch.where(low >= 2**31, low - 2**32, low).to(torch.int32)


def _hashed_dropout(x: torch.Tensor, seed: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    return torch.where(_hashed_keep(x, seed, threshold), x * scale, 0)


def _hashed_dropout_backward(x: torch.Tensor, grad_x: torch.Tensor, seed: torch.Tensor, threshold: int,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The dropped input again (for the weight's gradient) and the input's gradient, one pass over the mask."""
    keep = _hashed_keep(x, seed, threshold)
    return torch.where(keep, x * scale, 0), torch.where(keep, grad_x * scale, 0)


_FUSED: dict[str, Any] = {}


def _fused(name: str):
    """The hashed mask and its use compiled into one kernel (inductor, dynamic shapes), made once per process.
    Called from inside the custom operators at run time, also when a compiled block calls them."""
    if name not in _FUSED:
        function = {"forward": _hashed_dropout, "backward": _hashed_dropout_backward}[name]
        _FUSED[name] = torch.compile(function, dynamic=True)
    return _FUSED[name]


@torch.library.custom_op("instructune::dropout_linear", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def dropout_linear(x: torch.Tensor, weight: torch.Tensor, salt: torch.Tensor, threshold: int,
                   scale: float, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear(dropout(x), weight)` and the seed its mask was drawn from (a 0-d int64 from torch's generator).

    One custom operator, forward and backward, so that autograd keeps only `x`, which the q, k and v
    projections (gate and up) share, and the seed: the backward draws the mask again. Kept the usual way,
    each LoRA layer held its own dropped copy of its input and a bool mask (3 bytes an element per
    projection: 0.35 GB of a 2 x 512-token Gemma 3 270M step). Opaque to torch.compile, so a compiled
    block draws the eager masks (dynamo cannot trace `random_`, and inductor's own in-kernel random
    numbers made a compiled LoRA step slower than the eager one: bench/RESULTS.md). `salt` is the calling
    module's empty buffer: it only makes each call's arguments different, so that compiler passes never
    merge two dropouts that see the same input.

    `fused` draws the mask from a counter-based hash of the seed instead of torch's generator (a different
    mask, the same distribution), computed with its use in one compiled kernel: set for compiled blocks
    (`fuse_dropout_masks`), where the generator's draw and the mask's eager passes over each input were a
    third of a compiled SmolLM2 LoRA step on an AMX CPU; fused, the step ran 1.3x faster (bench/RESULTS.md).
    """
    seed = torch.empty((), dtype=torch.int64).random_()
    if fused:
        dropped = _fused("forward")(x, seed, threshold + 2**15, scale)
    else:
        dropped = torch.where(_keep_mask(x.shape, seed, threshold, x.device), x * scale, 0)
    return torch.nn.functional.linear(dropped, weight), seed


@dropout_linear.register_fake
def _(x, weight, salt, threshold, scale, fused=False):
    return x.new_empty((*x.shape[:-1], weight.shape[0])), x.new_empty((), dtype=torch.int64)


@torch.library.custom_op("instructune::dropout_linear_backward", mutates_args=())
def dropout_linear_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, seed: torch.Tensor,
                            threshold: int, scale: float, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `dropout_linear` for its input and weight, the mask drawn again from its seed."""
    if fused:
        dropped, grad_x = _fused("backward")(x, grad @ weight, seed, threshold + 2**15, scale)
    else:
        keep = _keep_mask(x.shape, seed, threshold, x.device)
        dropped = torch.where(keep, x * scale, 0)
        grad_x = torch.where(keep, (grad @ weight) * scale, 0)
    grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ dropped.reshape(-1, x.shape[-1])
    return grad_x, grad_weight


@dropout_linear_backward.register_fake
def _(grad, x, weight, seed, threshold, scale, fused=False):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, _salt, threshold, scale, fused = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.threshold, ctx.scale, ctx.fused = threshold, scale, fused


def _backward(ctx, grad, _grad_seed):
    x, weight, seed = ctx.saved_tensors
    grad_x, grad_weight = dropout_linear_backward(grad.contiguous(), x, weight, seed, ctx.threshold, ctx.scale,
                                                  ctx.fused)
    return (grad_x if ctx.needs_input_grad[0] else None, grad_weight if ctx.needs_input_grad[1] else None,
            None, None, None, None)


dropout_linear.register_autograd(_backward, setup_context=_setup_context)


class DropoutLinear(torch.nn.Linear):
    """LoRA's `A` with its input dropout folded in: `linear(dropout(x))`, the mask not kept for the backward.

    Same distribution as `nn.Dropout` (kept elements times 1 / (1 - p)), the mask drawn from 16 random
    bits per element: an element is kept when its 16-bit uniform is at least round(p * 65536) / 65536,
    so p is honoured to within 2**-17. torch's CPU dropout draws one random number per element (~5 ns
    each): with LoRA on every linear layer that was a quarter of a training step (bench/RESULTS.md).
    Identity dropout in eval; the same masks eager and inside a compiled block. With `fused` (set by
    `fuse_dropout_masks` for compiled blocks) the masks come from a hash of the seed, computed inside one
    compiled kernel with their use: other masks, the same distribution, the same in eager and compiled code.
    """

    def __init__(self, linear: torch.nn.Linear, p: float):
        if linear.bias is not None:
            raise ValueError("DropoutLinear: LoRA's A has no bias")
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: the adapter's state dict is unchanged
        self.register_parameter("bias", None)
        self.p = p
        self.threshold = -(2**15) + round(p * 2**16)  # int16 uniforms below this are dropped
        self.fused = False  # masks from the hashed, compiled kernel (`fuse_dropout_masks`)
        self.register_buffer("salt", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        weight, device = self.weight, x.device.type
        if torch.is_autocast_enabled(device):  # as autocast runs a linear layer: both in its dtype
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
        return dropout_linear(x, weight, self.salt, self.threshold, 1 / (1 - self.p), self.fused)[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout p={self.p}" + (", hashed masks" if self.fused else "")


def use_fast_dropout(model: Any) -> int:
    """Fold each PEFT LoRA layer's `nn.Dropout` into its `A` (DropoutLinear) in place; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts, downs = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(dropouts, torch.nn.ModuleDict) or not isinstance(downs, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            down = downs[name] if name in downs else None
            if (isinstance(dropout, torch.nn.Dropout) and dropout.p > 0 and type(down) is torch.nn.Linear
                    and down.bias is None):
                downs[name] = DropoutLinear(down, dropout.p)
                dropouts[name] = torch.nn.Identity()
                swapped += 1
    return swapped


def fuse_dropout_masks(model: Any) -> int:
    """Switch every DropoutLinear of `model` to hashed masks computed in a compiled kernel; returns how many.

    For models whose blocks are compiled (`train.compile`): the kernel needs inductor, as the blocks do, and
    eager, the hash's integer passes would cost more than the generator's draw they replace.
    """
    layers = [m for m in model.modules() if isinstance(m, DropoutLinear)]
    for layer in layers:
        layer.fused = True
    return len(layers)

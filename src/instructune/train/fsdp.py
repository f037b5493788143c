"""What changes for saves and resumes when accelerate shards the model with FSDP (its config's `distributed_type: FSDP`).

Under FSDP each process holds a slice of every weight and of the optimizer state. A save therefore
first gathers the full state on every process (a collective: all of them must call it) and rank 0
writes it in the same files as a one-process run: the model or adapter through `save_pretrained`
(safetensors that `instructune eval --model` loads), the optimizer state as `optimizer.pt`, keyed by
parameter name (torch.distributed.checkpoint's full-state format) rather than by position. A resume
reads those files on every process and hands them to torch, which puts each process's slice back.
What this file leaves out: the sharding itself (accelerate's `prepare`, configured by
configs/accelerate/fsdp.yaml), accelerate's sharded DCP checkpoints (the run folder keeps one format
whatever the launch), and FSDP1 (FSDP2 only).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from instructune.errors import InstructuneError


def is_sharded(accelerator: Any) -> bool:
    """True when accelerate has sharded (or will shard) the model with FSDP."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def refuse_ignored_fsdp(accelerator: Any) -> None:
    """Raise when the launch asked for FSDP but accelerate chose something else.

    accelerate 1.x turns FSDP on only for GPU-like devices: on a CPU machine a `distributed_type: FSDP`
    config starts gloo processes that silently train with DDP (`MULTI_CPU`), every process holding the
    whole model. Better a clear stop than a run that does not shard what the user asked to shard.

    Example:
        >>> refuse_ignored_fsdp(Accelerator(cpu=True))  # under accelerate launch --config_file configs/accelerate/fsdp.yaml
        Traceback (most recent call last):
        instructune.errors.InstructuneError: accelerate config: distributed_type FSDP was asked for, but ...
    """
    import accelerate

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not is_sharded(accelerator):
        raise InstructuneError(
            f"accelerate config: distributed_type FSDP was asked for, but accelerate {accelerate.__version__} runs "
            f"FSDP only on GPUs/accelerators and would train with {accelerator.distributed_type.value} here; on CPU "
            "launch with configs/accelerate/ddp.yaml"
        )


def gather_model_state(accelerator: Any, model: Any, adapter_only: bool) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict on rank 0 under FSDP, {} on the others; None when not sharded.

    Every process must call it. With `adapter_only` the frozen base weights are not gathered: a LoRA
    save needs only the trainable tensors.
    """
    if not is_sharded(accelerator):
        return None
    if not adapter_only:
        return _drop_tied_copies(model, accelerator.get_state_dict(model))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def gather_optimizer_state(accelerator: Any, model: Any, optimizer: Any) -> dict | None:
    """The full optimizer state on rank 0 under FSDP (keyed by parameter name), {} on the others; None when not sharded."""
    if not is_sharded(accelerator):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, _inner(optimizer), options=options)


def state_loaders(accelerator: Any, model: Any, optimizer: Any) -> dict[str, Callable[[dict], None]]:
    """`load_checkpoint` keyword arguments that put full states back into the shards; {} when not sharded.

    Every process reads the checkpoint (resume needs the run folder on a filesystem all of them see)
    and torch keeps each process's slice.
    """
    if not is_sharded(accelerator):
        return {}
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # strict=False: an adapter checkpoint holds only the LoRA tensors, the frozen base stays as loaded.
    def load_model_state(state: dict) -> None:
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def load_optimizer_state(state: dict) -> None:
        set_optimizer_state_dict(model, _inner(optimizer), state, options=StateDictOptions(full_state_dict=True))

    return {"load_model_state": load_model_state, "load_optimizer_state": load_optimizer_state}


def _drop_tied_copies(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Leave out the second name of a tied weight (Llama's lm_head), as a one-process save does.

    The gathered copies no longer share storage, so save_pretrained would write the tensor twice.
    """
    kept = {name for name, _ in model.named_parameters()}  # one name per Parameter object
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in state.items() if k in kept or k not in every}


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer wrapper."""
    return getattr(optimizer, "optimizer", optimizer)

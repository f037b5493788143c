"""Atomic, resumable checkpoints: weights (safetensors), optimizer, scheduler, RNG and data position.

A checkpoint is written into a temporary folder and renamed into place only when complete, so a kill
during a save never damages the last good one; `latest_checkpoint` only sees complete folders.
The data position is the optimizer step: the trainer's batch order is a pure function of
(seed, step), so restoring the step restores the data stream exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

STATE_FILE = "trainer_state.json"
PREFIX = "step-"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    folder = checkpoint_dir(run_dir)
    done = [p for p in folder.glob(PREFIX + "*") if (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return max(done, key=lambda p: int(p.name[len(PREFIX):]), default=None)


def run_weights(run_dir: str | Path) -> tuple[str | None, str | None]:
    """What loads a finished run: (model folder or None for the default model, adapter folder or None).

    A LoRA run leaves `adapter/` over the base its config.yaml names; a full run leaves `model/`.

    Raises:
        InstructuneError: the folder holds no config.yaml, or no final weights yet.

    Example:
        >>> run_weights("runs/quickstart")
        (None, 'runs/quickstart/adapter')
    """
    import yaml

    from .errors import InstructuneError

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise InstructuneError(f"{run_dir}: no config.yaml (expected a run folder written by instructune train)")
    config = yaml.safe_load(config_file.read_text()) or {}
    adapter, model = run_dir / "adapter", run_dir / "model"
    if (adapter / "adapter_config.json").is_file():
        return (config.get("model") or {}).get("name"), str(adapter)
    if (model / "config.json").is_file():
        return str(model), None
    raise InstructuneError(f"{run_dir}: no adapter/ or model/ yet (the run has not finished)")


def save_weights(model: Any, folder: Path) -> None:
    """An adapter (PEFT) or a full model, as safetensors via save_pretrained."""
    model.save_pretrained(folder, safe_serialization=True)


def load_weights(model: Any, folder: Path) -> None:
    """Load weights saved by `save_weights` into the same (possibly PEFT-wrapped) model, in place."""
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (Llama's lm_head, T5's embed_tokens) are saved once, under the name they share
    # storage with; anything else missing means a wrong checkpoint.
    tensors = model.state_dict()
    loaded = {tensors[k].data_ptr() for k in state if k in tensors}
    missing = [k for k in missing if tensors[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise RuntimeError(f"{folder}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_checkpoint(
    run_dir: Path, step: int, *, model: Any, optimizer: Any, scheduler: Any, state: dict, keep_last: int
) -> Path:
    """Write checkpoint `step-N` atomically and delete all but the newest `keep_last`."""
    folder = checkpoint_dir(run_dir)
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "weights")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(folder.glob(PREFIX + "*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, *, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `folder`; returns the saved trainer state."""
    load_weights(model, folder / "weights")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True)["torch"])
    return json.loads((folder / STATE_FILE).read_text())

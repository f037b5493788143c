"""Atomic, resumable checkpoints: weights (safetensors), optimizer, scheduler, RNG and data position.

A checkpoint folder is written through `atomic.atomic_folder` (temp folder, fsync, rename), so a
kill or a power loss during a save never damages the last good one, not even a re-save of the same
step; `latest_checkpoint` only sees complete folders. Loading is strict: weights of another model,
LoRA shape or training mode are a one-line error naming the checkpoint and the mismatch. A file
that cannot be read at all (truncated by a full disk, corrupted in a copy, not JSON) is an
`UnreadableFile` naming it; every file of a checkpoint is read before anything is restored, so
`load_latest_checkpoint` can pass over an unreadable checkpoint to the one before it.
The data position is the optimizer step: the trainer's batch order is a pure function of
(seed, step), so restoring the step restores the data stream exactly.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from instructune.errors import InstructuneError, UnreadableFile
from instructune.fileio.atomic import OLD_PREFIX, TMP_PREFIX, atomic_folder, complete_copy
from instructune.fileio.jsonio import read_json_object
from instructune.models.weights import ADAPTER_FILE, check_weights_match, saved_shapes

STATE_FILE = "trainer_state.json"
PREFIX = "step-"
UNREADABLE_PREFIX = "unreadable-"  # where resume moves a checkpoint it cannot read (never deleted)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(name: str) -> int:
    return int(name.removeprefix(OLD_PREFIX)[len(PREFIX):])


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first; a step parked by a killed re-save counts as complete."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    steps = {p.name.removeprefix(OLD_PREFIX) for p in folder.glob(PREFIX + "*")}
    steps |= {p.name.removeprefix(OLD_PREFIX) for p in folder.glob(OLD_PREFIX + PREFIX + "*")}
    found = [complete_copy(folder / name) for name in steps]
    done = [p for p in found if p is not None and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: _step_of(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    done = _complete_checkpoints(run_dir)
    return done[-1] if done else None


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


def save_weights(model: Any, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """An adapter (PEFT) or a full model, as safetensors via save_pretrained.

    `state_dict` is the full state gathered from an FSDP-sharded model (fsdp.py); by default
    save_pretrained reads the model's own tensors.
    """
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)


def load_weights(model: Any, folder: Path, load_state: Callable[[dict], None] | None = None) -> None:
    """Load weights saved by `save_weights` into the same (possibly PEFT-wrapped) model, in place.

    Every tensor the model trains must be in the folder with its shape, and nothing else may be.
    `load_state` takes the checked tensors under the model's own state-dict names (fsdp.py passes one
    that fills an FSDP-sharded model); by default they are copied in with `load_state_dict`.
    """
    folder = Path(folder)
    checkpoint = folder.parent if folder.name == "weights" else folder
    if not any(folder.glob("*.safetensors")):
        raise UnreadableFile(f"{folder}: no weights (*.safetensors) in this checkpoint")
    is_adapter, is_peft = (folder / ADAPTER_FILE).is_file(), hasattr(model, "peft_config")
    if is_adapter != is_peft:
        held = "a LoRA adapter" if is_adapter else "full model weights"
        trains = "a LoRA adapter" if is_peft else "all weights"
        raise InstructuneError(f"{checkpoint}: checkpoint holds {held}, but this run trains {trains} (config key lora.enabled)")
    if is_adapter:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        tensors = model.state_dict()
        adapter = get_peft_model_state_dict(model, state_dict=tensors)
        expected = {k: tuple(v.shape) for k, v in adapter.items()}
        check_weights_match(checkpoint, saved_shapes([folder / ADAPTER_FILE]), expected, "checkpoint")
        if load_state is None:
            set_peft_model_state_dict(model, load_file(folder / ADAPTER_FILE))
            return
        # peft saves without the adapter name (lora_A.weight, not lora_A.default.weight); its picks are
        # the model's own tensor objects, which give back each one's state-dict name.
        model_name = {id(v): k for k, v in tensors.items()}
        load_state({model_name[id(adapter[k])]: v for k, v in load_file(folder / ADAPTER_FILE).items()})
        return
    shards = sorted(folder.glob("*.safetensors"))
    saved = saved_shapes(shards)
    tensors = model.state_dict()
    # Tied weights (Llama's lm_head, T5's embed_tokens) are one Parameter under two names, saved once;
    # they count as present when their twin is. Parameter identity, not storage, says which are tied:
    # under FSDP each process's shard of a small weight may be empty.
    twin = _tie_ids(model)
    stored = {twin.get(k, k) for k in saved}
    expected = {k: tuple(v.shape) for k, v in tensors.items() if k in saved or twin.get(k, k) not in stored}
    check_weights_match(checkpoint, saved, expected, "checkpoint")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    if load_state is None:
        model.load_state_dict(state, strict=False)
        return
    by_id = {twin[k]: v for k, v in state.items() if k in twin}
    load_state({**{k: by_id[i] for k, i in twin.items() if i in by_id and k in tensors}, **state})


def _tie_ids(model: Any) -> dict[str, int]:
    """{parameter or buffer name: id of the tensor}; tied weights share an id."""
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return {k: id(v) for k, v in named.items()}


def save_checkpoint(
    run_dir: Path, step: int, *, model: Any, optimizer: Any, scheduler: Any, state: dict, keep_last: int,
    rng_state: torch.Tensor | None = None, model_state: dict | None = None, optimizer_state: dict | None = None,
) -> Path:
    """Write checkpoint `step-N` atomically and delete all but the newest `keep_last`.

    `rng_state` is the torch RNG state that belongs to `step` (default: the current one);
    `model_state` and `optimizer_state` are full states gathered under FSDP (default: the objects' own).
    """
    folder = checkpoint_dir(run_dir)
    final = folder / f"{PREFIX}{step:07d}"
    _remove_leftovers(folder)
    try:
        with atomic_folder(final) as tmp:
            save_weights(model, tmp / "weights", model_state)
            torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save({"torch": torch.get_rng_state() if rng_state is None else rng_state}, tmp / "rng.pt")
            # The state file goes last: a folder without it is never taken for a checkpoint.
            (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
    except Exception as error:  # a full disk, a lost mount: safetensors, torch.save and open raise each their own type
        last = latest_checkpoint(run_dir)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise InstructuneError(
            f"could not write checkpoint {final.name} in {folder}: {reason} ({_free_gb(folder)} GB free there); "
            f"the last good checkpoint is {'kept: ' + str(last) if last else 'none (none was saved yet)'}"
        ) from error
    for old in _complete_checkpoints(run_dir)[:-keep_last]:
        (old / STATE_FILE).unlink()  # first, so a kill during the removal leaves no folder that looks complete
        shutil.rmtree(old, ignore_errors=True)
    return final


def _free_gb(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.1f}"
    except OSError:
        return "?"


def _remove_leftovers(folder: Path) -> None:
    """Temp folders of killed saves, and parked copies whose replacement made it into place."""
    if not folder.is_dir():
        return
    for path in folder.glob(TMP_PREFIX + "*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(OLD_PREFIX + "*"):
        if (folder / path.name.removeprefix(OLD_PREFIX)).is_dir():
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    folder: Path, *, model: Any, optimizer: Any, scheduler: Any, load_model_state: Callable[[dict], None] | None = None,
    load_optimizer_state: Callable[[dict], None] | None = None,
) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `folder`; returns the saved trainer state.

    Every file is read (and the weights' headers checked) before anything is restored, so an
    unreadable file (`UnreadableFile`) leaves the model, optimizer, scheduler and RNG as they were.
    The `load_*_state` callables put full states into an FSDP-sharded model and its optimizer (fsdp.py).
    """
    folder = Path(folder)
    state = read_json_object(folder / STATE_FILE)
    if not isinstance(state.get("step"), int):
        raise UnreadableFile(f"{folder / STATE_FILE}: no integer 'step' (not a trainer state written by instructune)")
    optimizer_state, scheduler_state, rng = (_torch_load(folder / name) for name in ("optimizer.pt", "scheduler.pt", "rng.pt"))
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        raise UnreadableFile(f"{folder / 'rng.pt'}: no torch RNG state (not a checkpoint file written by instructune)")
    load_weights(model, folder / "weights", load_model_state)
    try:
        (load_optimizer_state or optimizer.load_state_dict)(optimizer_state)
    except (ValueError, KeyError) as error:
        raise InstructuneError(f"{folder}: optimizer state does not match this run's parameters ({error})") from None
    scheduler.load_state_dict(scheduler_state)
    torch.set_rng_state(rng["torch"])
    return state


def _torch_load(path: Path) -> Any:
    """torch.load (tensors and plain containers only); a file it cannot read is one UnreadableFile line."""
    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        reason = str(error).split(". ")[0].strip() or ("empty or cut short" if isinstance(error, EOFError) else type(error).__name__)
        raise UnreadableFile(f"{path}: truncated or corrupt ({reason})") from None


def load_latest_checkpoint(run_dir: Path, *, say: Callable[[str], None], set_aside: bool, **parts: Any) -> tuple[Path, dict]:
    """Load the newest checkpoint that can be read; an unreadable one is passed over, said, and set aside.

    `parts` are `load_checkpoint`'s keywords (model, optimizer, scheduler, ...). A checkpoint that reads
    but does not fit the run (another model, LoRA rank) is an error at once: the ones before it would not
    fit either. With `set_aside` (the main process) an unreadable folder passed over is renamed to
    `unreadable-step-N` beside the others and kept for the user, so it is neither resumed from nor
    taken for the last good checkpoint again.

    Returns:
        (the checkpoint folder loaded, its trainer state).

    Raises:
        InstructuneError: no checkpoint at all, or none readable (naming the newest one's unreadable file).

    Example:
        >>> load_latest_checkpoint(Path("runs/x"), say=print, set_aside=True, model=m, optimizer=o, scheduler=s)
        passing over checkpoint step-0000004: runs/x/checkpoints/step-0000004/optimizer.pt: truncated or corrupt (...); moved to runs/x/checkpoints/unreadable-step-0000004
        (PosixPath('runs/x/checkpoints/step-0000002'), {'step': 2, ...})
    """
    candidates = _complete_checkpoints(run_dir)[::-1]
    if not candidates:
        raise InstructuneError(f"{run_dir}: no checkpoint to resume from in {checkpoint_dir(run_dir)}")
    unreadable: list[tuple[Path, UnreadableFile]] = []
    for folder in candidates:
        try:
            state = load_checkpoint(folder, **parts)
        except UnreadableFile as error:
            unreadable.append((folder, error))
            continue
        for bad, error in unreadable:
            say(f"passing over checkpoint {bad.name}: {error}; {_set_aside(bad) if set_aside else 'kept'}")
        return folder, state
    newest = unreadable[0][1]
    earlier = len(unreadable) - 1
    more = f" (the {earlier} earlier checkpoint{'s' if earlier > 1 else ''} cannot be read either)" if earlier else ""
    raise InstructuneError(f"{newest}{more}; nothing to resume from: drop --resume and pass --overwrite to start again")


def _set_aside(folder: Path) -> str:
    """Rename an unreadable checkpoint to `unreadable-step-N` (a free name); it stays on disk for the user."""
    name = UNREADABLE_PREFIX + folder.name.removeprefix(OLD_PREFIX)
    target, n = folder.with_name(name), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{name}.{n}")
    try:
        os.replace(folder, target)
    except OSError as error:
        return f"left in place ({error.strerror or error})"
    return f"moved to {target}"

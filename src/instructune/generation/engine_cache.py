"""Converted copies of a model's weights for the engines that need one (OpenVINO).

Both engines read a folder written from the `torch` weights the caller holds. `converted_folder` says
where it lives: models read from instructune's cache (the default model) keep their conversion
beside them, keyed by a hash of the weights, so evaluating them again loads in seconds; everything
else goes to a temporary folder that the engine removes once loaded: a user's own folders (their runs
are evaluated once or twice; a 0.5 GB copy each would pile up), LoRA-wrapped models (one per adapter),
models built in memory (tests) and `persist=False` (in-training checks). `LoadedEngines` keeps the
engines loaded for one live model while its weights stay the same.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable

from instructune.fileio.atomic import atomic_folder
from instructune.models import cache_dir, unwrapped_model


def weights_digest(model: Any) -> str:
    """A hash of every tensor in the model's state dict (names, dtypes, shapes and bytes).

    Example:
        >>> weights_digest(model)[:16]
        '5d0c2f0b6f1e9a3c'
    """
    import torch

    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).reshape(-1).numpy())
    return digest.hexdigest()


def weights_state(model: Any) -> tuple:
    """A cheap stand-in for the weights of a live model: each tensor's identity, storage and version.

    An optimizer step or any in-place edit bumps a tensor's version counter; a replaced tensor has a
    new identity. Only meaningful while the model object lives (`LoadedEngines` holds a weak reference).
    """
    return tuple((id(t), t.data_ptr(), t._version) for t in model.state_dict(keep_vars=True).values())


class LoadedEngines:
    """The engines loaded for one model object in its current weights, by key (compute type).

    One model at a time: an engine holds a full copy of the weights. A process that evaluates several
    tasks (eval, quickstart, the benchmark's batches) converts and loads once.
    """

    def __init__(self):
        self._model = None
        self._state = None
        self._engines: dict[str, Any] = {}

    def get(self, model: Any, key: str) -> Any | None:
        """The engine loaded for `model` under `key`, or None (forgetting every engine of another model
        or of these weights before they changed)."""
        owner = self._model() if self._model is not None else None
        state = weights_state(model)
        if owner is not model or self._state != state:
            self._model, self._state, self._engines = weakref.ref(model), state, {}
        return self._engines.get(key)

    def put(self, model: Any, key: str, engine: Any) -> Any:
        """Keep `engine` for `model` (whose weights `get` has just seen) under `key`; returns it."""
        self._engines[key] = engine
        return engine


def converted_folder(model: Any, *, suffix: str, marker: str, write: Callable[[Path], Any], persist: bool) -> Path:
    """Where the conversion of these weights lives, converting (atomically) when missing.

    Args:
        model: the model as the caller holds it (PEFT-wrapped or not).
        suffix: the engine's mark in the cached folder's name ("ov").
        marker: a file a finished conversion has (the cache is used only when it is there).
        write: writes the conversion into the folder it is given.
        persist: False for weights that change between calls: always a temporary folder.

    Returns:
        The cached folder, or a temporary one named `instructune-<suffix>-*` the caller removes.
    """
    source = Path(str(getattr(unwrapped_model(model).config, "_name_or_path", "") or ""))
    wrapped = hasattr(model, "merge_and_unload")
    cached = persist and not wrapped and source.is_dir() and cache_dir().resolve() in source.resolve().parents
    folder = cache_dir() / "models" / f"{source.name}.{suffix}-{weights_digest(model)[:16]}" if cached else None
    if folder is not None and (folder / marker).is_file():
        return folder
    if folder is not None:
        with atomic_folder(folder) as tmp:
            write(tmp)
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f"instructune-{suffix}-"))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def is_temporary(folder: Path, suffix: str) -> bool:
    """Whether `folder` is a temporary conversion (`converted_folder` with nothing to cache)."""
    return folder.name.startswith(f"instructune-{suffix}-")

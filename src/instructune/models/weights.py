"""Saved weights checked against a model before they load: tensor names and shapes from safetensors headers.

Adapters (models/__init__.py) and checkpoints (train/checkpoint.py) both refuse weights of another
model, LoRA shape or training mode with one line naming the folder and the first mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from safetensors import SafetensorError, safe_open

from instructune.errors import InstructuneError, UnreadableFile

ADAPTER_FILE = "adapter_model.safetensors"


def saved_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of safetensors files, read from their headers without loading the tensors.

    safetensors checks that the header is whole and that its tensors cover the file exactly, so a
    truncated or overwritten file is caught here, before any tensor is loaded.

    Raises:
        UnreadableFile: one line naming the file, e.g.
            `adapter/adapter_model.safetensors: truncated or corrupt safetensors file (invalid header length)`.
    """
    shapes = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as handle:
                shapes.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
        except SafetensorError as error:
            reason = str(error).removeprefix("Error while deserializing header: ")
            raise UnreadableFile(f"{path}: truncated or corrupt safetensors file ({reason})") from None
        except OSError as error:
            raise UnreadableFile(f"{path}: cannot read it ({error.strerror or error})") from None
    return shapes


def check_weights_match(where: Path, saved: Mapping[str, tuple], expected: Mapping[str, tuple], what: str) -> None:
    """Raise a one-line InstructuneError unless the saved tensor names and shapes are exactly the expected ones.

    Args:
        where: the checkpoint or adapter folder, named in the message.
        saved: {tensor name: shape} read from its safetensors files.
        expected: {tensor name: shape} the model needs.
        what: what the folder holds, for the message ("checkpoint", "adapter").

    Example:
        >>> check_weights_match(Path("ckpt"), {"a": (4, 2)}, {"a": (8, 2)}, "checkpoint")
        Traceback (most recent call last):
        instructune.errors.InstructuneError: ckpt: checkpoint does not match the model: 1 of another shape (a: saved (4, 2), model needs (8, 2))
    """
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [k for k in expected if k in saved and tuple(saved[k]) != tuple(expected[k])]
    problems = []
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape ({k}: saved {tuple(saved[k])}, model needs {tuple(expected[k])})")
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if problems:
        raise InstructuneError(f"{where}: {what} does not match the model: " + "; ".join(problems))

"""Write a folder so that a kill or a power loss never leaves it half-written: the one owner of that pattern.

`atomic_folder(final)` hands out a temporary folder beside `final` (`atomic_file(final)` a temporary
file, `write_text_atomic` writes one); when the caller's block ends
without an error, every file and folder in it is fsynced, and it is swapped into place:

    final -> .old-<name>    (only when final exists: a re-save of the same checkpoint step)
    tmp   -> final
    remove .old-<name>

At every moment one complete copy exists under `final` or `.old-<name>`; `complete_copy` finds it.
`check_writable` checks, before any slow work, that a new file or folder can be made where the user
asked, so a place that cannot be written is one line up front and nothing is created there yet.
What this file leaves out: what goes into the folder (train/checkpoint.py, export/, models/) and
which copies to keep (train/checkpoint.py prunes old steps).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from instructune.errors import InstructuneError

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def old_copy(final: Path) -> Path:
    """Where `final` is parked while its replacement is renamed into place."""
    return final.parent / f"{OLD_PREFIX}{final.name}"


def complete_copy(final: Path) -> Path | None:
    """`final` if it exists, else its parked copy when a kill came between the two renames, else None."""
    final = Path(final)
    for candidate in (final, old_copy(final)):
        if candidate.is_dir():
            return candidate
    return None


def check_writable(target: str | Path) -> Path:
    """Check that `target` (a new file or folder) can be created: its missing parents too, by the writer.

    Run it before slow work (a merge, an evaluation) so that a place that cannot be written costs no
    waiting. Nothing is created: one empty probe file is made and removed in the nearest existing
    parent folder, which catches a read-only disk or a place like /proc that a permission check misses.

    Returns:
        The nearest existing parent folder.

    Raises:
        InstructuneError: one line naming `target` and the reason, e.g.
            `exported/x.gguf: cannot write there: exported is a file, not a folder` or
            `/readonly/x.gguf: cannot write in /readonly (Read-only file system)`.

    Example:
        >>> check_writable("exported/support-bot.gguf")  # exported/ does not exist yet
        PosixPath('.')
    """
    target = Path(target)
    existing = next(p for p in target.parents if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise InstructuneError(f"{target}: cannot write there: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise InstructuneError(f"{target}: cannot write in {existing} ({error.strerror or error})") from None
    return existing


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """A temporary folder to fill; renamed to `final` (replacing it) only when the block succeeds.

    Args:
        final: the folder to create or replace. Its parent is created when missing.

    Returns:
        (as a context manager) the temporary folder, beside `final`, named `.tmp-<name>.<random>`.

    Example:
        >>> with atomic_folder("runs/x/checkpoints/step-0000010") as tmp:
        ...     (tmp / "trainer_state.json").write_text("{}")
        >>> sorted(p.name for p in Path("runs/x/checkpoints").iterdir())
        ['step-0000010']
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    # mkdtemp makes the folder private (0700); the result should get the permissions any new folder gets.
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        fsync_tree(tmp)
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(final: str | Path, *, what: str = "it") -> Iterator[Path]:
    """A temporary path beside `final` to write; fsynced and renamed to `final` only when the block succeeds.

    The file counterpart of `atomic_folder`: a kill, a full disk or a lost mount midway leaves the
    old `final` (or none), never half a file. A write that fails with an OSError is one line.

    Raises:
        InstructuneError: `final: could not write WHAT (No space left on device); nothing was left there`.

    Example:
        >>> with atomic_file("exported/model.gguf", what="the GGUF file") as tmp:
        ...     writer = gguf.GGUFWriter(tmp, "llama")
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent)
        os.close(fd)
    except OSError as error:
        raise InstructuneError(f"{final}: cannot write in {final.parent} ({error.strerror or error})") from None
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; the result gets a new file's permissions
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as error:  # a full disk or a lost mount midway
        raise InstructuneError(f"{final}: could not write {what} ({error.strerror or error}); "
                               "nothing was left there") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, *, what: str = "it") -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_file`; returns `path`."""
    with atomic_file(path, what=what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = old_copy(final)
    if final.exists():
        # `final` only ever appears by a rename of a complete folder, so a parked copy beside it is stale.
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)  # make both renames durable before the old copy goes
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder bottom-up, so a rename publishes only durable data."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The board's working folder: every path typed in the page resolves inside it, or is refused.

A relative path is taken from the working folder; an absolute one must lie inside it; `..` that
climbs out, and symlinks that point out, are refused with a one-line InstructuneError, as the CLI
words its errors. Leaves out: what the paths are used for (the tabs) and reading the files.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from instructune.errors import InstructuneError

BOARD_DIR = ".board"  # the board's own files (uploads, eval results, edited tasks), inside the working folder
_SKIPPED = ("node_modules", "__pycache__", "site-packages", "venv")


class Workdir:
    """The folder the board was started in, and the only place its paths may lead.

    Args:
        root: the working folder (made absolute; symlinks resolved).

    Example:
        >>> work = Workdir("/home/me/project")
        >>> work.path("data/train.jsonl")
        PosixPath('/home/me/project/data/train.jsonl')
        >>> work.path("../secrets.txt")
        Traceback (most recent call last):
        instructune.errors.InstructuneError: ../secrets.txt: outside the working folder /home/me/project; ...
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise InstructuneError(f"{root}: working folder not found")

    def path(self, text: str | Path, *, must_exist: bool = False, what: str = "path") -> Path:
        """The absolute path `text` names, checked to lie inside the working folder.

        Args:
            text: a path as typed: relative to the working folder, or absolute inside it.
            must_exist: raise when nothing is there.
            what: the kind of thing expected, for the message ("data file", "run folder").

        Returns:
            The resolved path.
        """
        text = str(text).strip()
        if not text:
            raise InstructuneError(f"{what}: empty; expected a path inside the working folder {self.root}")
        given = Path(text).expanduser()
        resolved = (given if given.is_absolute() else self.root / given).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise InstructuneError(f"{text}: outside the working folder {self.root}; expected a {what} inside it")
        if must_exist and not resolved.exists():
            raise InstructuneError(f"{text}: {what} not found in the working folder {self.root}")
        return resolved

    def show(self, path: str | Path) -> str:
        """A path as the page shows it: relative to the working folder when inside it."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def board_dir(self, *parts: str) -> Path:
        """A folder of the board's own files (created), e.g. board_dir("uploads")."""
        folder = self.root.joinpath(BOARD_DIR, *parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def files(self, pattern: str, *, max_depth: int = 3, limit: int = 200) -> list[Path]:
        """Files matching a name pattern at most `max_depth` folders down, sorted.

        Hidden folders (the board's own `.board/`, `.venv`, `.git`) and package folders are not
        searched, so a large working folder still answers at once.
        """
        found: list[Path] = []
        for folder, subfolders, names in os.walk(self.root):
            depth = len(Path(folder).relative_to(self.root).parts)
            subfolders[:] = sorted(name for name in subfolders if depth < max_depth and not name.startswith(".")
                                   and name not in _SKIPPED)
            found += [Path(folder) / name for name in sorted(names) if fnmatch.fnmatch(name, pattern)]
            if len(found) >= limit:
                break
        return sorted(found)[:limit]

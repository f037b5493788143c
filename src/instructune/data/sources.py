"""Load raw records from disk into a `datasets.Dataset`, with errors that name the file and line.

Reads JSON Lines, a JSON array, CSV, Parquet, a folder saved with `Dataset.save_to_disk`, or a folder
holding one file per split (`train.jsonl`, `validation.jsonl`, ...). JSON Lines are checked line by
line first, so a broken line is reported as `path:LINE` rather than as a pyarrow traceback. Text files
are decoded as UTF-8 by one reader (fileio/jsonio.py `decoded_lines`), so bytes that are not UTF-8 are reported as
`path:LINE` with their byte offset, in JSON Lines, JSON and CSV alike.

Leaves out: downloading from the Hub (pass a local path), streaming, and any knowledge of fields or
templates (that is templates.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import datasets

from instructune.errors import InstructuneError
from instructune.fileio.jsonio import decoded_lines, read_jsonl

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def load_records(path: str | Path, split: str | None = None) -> datasets.Dataset:
    """Load the raw records of one file or folder.

    Args:
        path: a `.jsonl`, `.json`, `.csv` or `.parquet` file, a `datasets` saved folder, or a folder
            with one file per split (`<split>.jsonl` etc.).
        split: which split to take from a saved `DatasetDict` or a folder of split files; ignored for
            a single file.

    Returns:
        The records as a `datasets.Dataset` (at least one row).

    Raises:
        InstructuneError: the path is missing, a line is not a JSON object, the file is empty, or the
            split is ambiguous or absent.

    Example:
        >>> ds = load_records("../shared/data/piqa/validation.jsonl")
        >>> len(ds), ds.column_names
        (1838, ['goal', 'sol1', 'sol2', 'label'])
    """
    path = Path(path)
    if not path.exists():
        raise InstructuneError(f"{path}: no such file or folder")
    if path.is_dir():
        dataset = _load_folder(path, split)
    else:
        dataset = _load_file(path)
    if len(dataset) == 0:
        raise InstructuneError(f"{path}: no records (the file is empty)")
    return dataset


def _load_file(path: Path) -> datasets.Dataset:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _from_rows(path, read_jsonl(path))
    if suffix == ".json":
        return _from_rows(path, _read_json(path))
    try:
        if suffix == ".csv":
            for _ in decoded_lines(path):  # pandas would only say "could not decode", with no line
                pass
            # keep_default_na=False: an empty cell is an empty string, not NaN (Alpaca's empty input).
            return datasets.Dataset.from_csv(str(path), keep_default_na=False)
        if suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path))
    except InstructuneError:
        raise
    except Exception as error:  # pandas / pyarrow raise many types; report one line
        raise InstructuneError(f"{path}: could not read {suffix[1:]} ({_first_line(error)})") from error
    raise InstructuneError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(FILE_SUFFIXES)}")


def _load_folder(path: Path, split: str | None) -> datasets.Dataset:
    saved = (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    if saved:
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            return loaded
        return _pick_split(path, split, {name: loaded[name] for name in loaded})
    split_files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in FILE_SUFFIXES}
    if not split_files:
        raise InstructuneError(f"{path}: folder holds no saved dataset and no {'/'.join(FILE_SUFFIXES)} files")
    return _pick_split(path, split, split_files)


def _pick_split(path: Path, split: str | None, splits: dict) -> datasets.Dataset:
    """Choose one split; a lone split needs no name."""
    if split is None and len(splits) == 1:
        split = next(iter(splits))
    if split not in splits:
        wanted = "a split" if split is None else f"split {split!r}"
        raise InstructuneError(f"{path}: choose {wanted} from: {', '.join(sorted(splits))}")
    chosen = splits[split]
    return _load_file(chosen) if isinstance(chosen, Path) else chosen


def _read_json(path: Path) -> list[dict]:
    """A JSON array of objects, or an object whose one list value holds them ({"data": [...]})."""
    try:
        data = json.loads("".join(line for _, line in decoded_lines(path)) or "[]")
    except json.JSONDecodeError as error:
        raise InstructuneError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise InstructuneError(f"{path}: expected a JSON array of objects (or an object with one list of them)")
        data = lists[0]
    if not isinstance(data, list):
        raise InstructuneError(f"{path}: expected a JSON array of objects")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise InstructuneError(f"{path}: record {index}: expected a JSON object, got {type(row).__name__}")
    return data


def _from_rows(path: Path, rows: list[dict]) -> datasets.Dataset:
    if not rows:
        raise InstructuneError(f"{path}: no records (the file is empty)")
    try:
        return _dataset(rows)
    except Exception as error:  # pyarrow type clashes between rows
        index, key = _first_clash(rows)
        raise InstructuneError(f"{record_location(path, index)}: field {key!r} has another type than in the records "
                               f"before it ({_first_line(error)})") from error


def _dataset(rows: list[dict]) -> datasets.Dataset:
    """Rows -> Dataset with every key of every row: `Dataset.from_list` keeps only the first row's keys,
    which would silently drop a column the first record happens to lack."""
    keys = dict.fromkeys(key for row in rows for key in row)
    return datasets.Dataset.from_dict({key: [row.get(key) for row in rows] for key in keys})


def _first_clash(rows: list[dict]) -> tuple[int, str]:
    """The first row whose types cannot join those before it, and the field that clashes.

    A clash in a prefix of the rows stays in every longer prefix, so a binary search finds the row.
    """
    good, bad = 0, len(rows)  # rows[:good] load; rows[:bad] do not
    while bad - good > 1:
        middle = (good + bad) // 2
        if _loads(rows[:middle]):
            good = middle
        else:
            bad = middle
    keys = [key for key in rows[bad - 1] if not _loads([{key: row.get(key)} for row in rows[:bad]])]
    return bad - 1, (keys or ["?"])[0]


def _loads(rows: list[dict]) -> bool:
    try:
        _dataset(rows)
        return True
    except Exception:  # the pyarrow type errors `_from_rows` reports
        return False


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def record_location(path: str | Path, index: int) -> str:
    """Where record `index` (0-based, as `load_records` returns them) sits in its file, for error messages.

    Args:
        path: the file the records came from.
        index: the record's position in the loaded dataset.

    Returns:
        `path:LINE` for JSON Lines (blank lines counted, as an editor shows them), else `path record N`.

    Example:
        >>> record_location("data.jsonl", 0)
        'data.jsonl:1'
    """
    return record_locations(path, [index])[0]


def record_locations(path: str | Path, indices: Iterable[int]) -> list[str]:
    """`record_location` for several records in one pass over the file (reports name the first few rows).

    Example:
        >>> record_locations("data.jsonl", [0, 2])   # a file with a blank line 2
        ['data.jsonl:1', 'data.jsonl:4']
    """
    path, indices = Path(path), list(indices)
    if path.suffix.lower() != ".jsonl":
        return [f"{path} record {index + 1}" for index in indices]
    lines = {index: index + 1 for index in indices}  # no file to read: count as if no line were blank
    if path.is_file() and indices:
        wanted, seen, last = set(indices), -1, max(indices)
        for line_number, line in decoded_lines(path):
            seen += bool(line.strip())
            if line.strip() and seen in wanted:
                lines[seen] = line_number
            if seen >= last:
                break
    return [f"{path}:{lines[index]}" for index in indices]


def read_examples(path: str | Path, limit: int | None = None) -> list[dict]:
    """Instruction examples from a file (JSONL, JSON, CSV, Parquet, datasets folder), the first `limit`.

    Rows hold prompt + completion, or messages; their shape is checked, with file:line, where they are
    encoded (`tokenize.tokenize_examples`).

    Example:
        >>> read_examples("train.jsonl", limit=1)
        [{'prompt': 'Summarize: ...', 'completion': '...'}]
    """
    return load_records(path).to_list()[:limit]


def select_positions(total: int, *, start: int = 0, every: int = 1, limit: int | None = None,
                     what: str = "data", unit: str = "records", flag: str = "") -> range:
    """The positions a start/every/limit selection takes from `total` items: the one rule `prepare` (on
    raw records) and `eval` (on rendered examples) share.

    Args:
        total: how many items there are.
        start: skip this many first.
        every: then take every N-th (N >= 1).
        limit: at most this many, after `start` and `every`.
        what, unit, flag: for the error line: where the items come from, what they are, and the
            command-line prefix of the option names ("--" for `eval`).

    Example:
        >>> list(select_positions(10, start=1, every=2, limit=3))
        [1, 3, 5]
    """
    if start and start >= total:
        raise InstructuneError(f"{what}: {flag}start {start}, but it holds only {total} {unit}")
    if every < 1:
        raise InstructuneError(f"{what}: {flag}every {every}; expected a step of at least 1 {unit.rstrip('s')}")
    return range(start, total, every)[:limit]

"""Read data files into located records: (where, row) with 1-based lines / rows for messages (L1, data).

One reader for the loaders and the dataset builders. A record's `where` names the file and the
place an editor shows: "data.jsonl line 7" for JSON Lines (blank lines count), "data.json row 3"
for the third object of a JSON array, a Parquet file or a dataset folder (all 1-based).
Only "hf:<owner>/<name>" reads the Hugging Face hub; a path that does not exist is an error at once.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf:"
LOCAL_FORMATS = ".jsonl or .json (either optionally .gz), .parquet, or a datasets save_to_disk folder"

Record = tuple[str, dict[str, Any]]
"""One input row and where it came from ("file.jsonl line 7"), for error messages."""


def missing_input_message(path: str | Path) -> str:
    """The one-line error for a local input that does not exist."""
    return (
        f"input {path}: no such file (it does not exist); pass a {LOCAL_FORMATS}, or "
        f"{HUB_PREFIX}<owner>/<name> for a Hugging Face hub dataset."
    )


def read_hub(dataset_id: str, split: str | None = None) -> Sequence[Record]:
    """Records of a hub dataset: one split, or every split in the order the hub lists them (needs network)."""
    import datasets

    logger.info("loading %s from the Hugging Face hub", dataset_id)
    try:
        loaded = (
            datasets.load_dataset(dataset_id)
            if split is None
            else datasets.load_dataset(dataset_id, split=split)
        )
    # offline: ConnectionError; a wrong name: DatasetNotFoundError, a FileNotFoundError
    except OSError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"cannot load {dataset_id} from the Hugging Face hub ({type(error).__name__}: {reason}); check the "
            "name and the network (offline mode: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or pass a local file."
        ) from None
    return DatasetRecords(loaded, dataset_id)


class DatasetRecords(Sequence[Record]):
    """Records of a `datasets` Dataset or DatasetDict (all splits in order), read row by row.

    Rows stay in Arrow until asked for, so a large dataset (UltraFeedback keeps long critiques per
    completion) is not copied into Python objects all at once.
    """

    def __init__(self, loaded: Any, source: str) -> None:
        import datasets

        parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
        self.split_names: list[str] | None = (
            list(loaded) if isinstance(loaded, datasets.DatasetDict) else None
        )
        self.parts: list[tuple[str, Any]] = [
            (f"{source} [{split}]" if split is not None else source, dataset) for split, dataset in parts
        ]

    def __len__(self) -> int:
        return sum(len(dataset) for _, dataset in self.parts)

    def __iter__(self) -> Iterator[Record]:
        for prefix, dataset in self.parts:
            for index, row in enumerate(dataset):
                yield f"{prefix} row {index + 1}", dict(row)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        if index < 0:
            index += len(self)
        for prefix, dataset in self.parts:
            if 0 <= index < len(dataset):
                return f"{prefix} row {index + 1}", dict(dataset[index])
            index -= len(dataset)
        raise IndexError(index)


def read_local(path: Path) -> Sequence[Record]:
    """Records of an existing local file or `save_to_disk` folder; raises on an unreadable one."""
    if path.is_dir():
        import datasets

        return DatasetRecords(datasets.load_from_disk(str(path)), str(path))
    lower = path.name.lower()
    base = lower[: -len(".gz")] if lower.endswith(".gz") else lower
    if lower.endswith(".parquet"):
        import pyarrow.parquet

        table = pyarrow.parquet.read_table(path)
        return [(f"{path} row {index + 1}", row) for index, row in enumerate(table.to_pylist())]
    if base.endswith((".jsonl", ".json")):
        return parse_json_text(read_text(path), path)
    raise ValueError(f"input {path}: unknown file type; use {LOCAL_FORMATS}.")


def read_text(path: Path) -> str:
    """The UTF-8 text of a file (gunzipped for .gz); a bad byte is an error naming its line."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except gzip.BadGzipFile as error:
        raise ValueError(f"input {path}: not a gzip file ({error}); is it the right file?") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        line = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"input {path}, line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
            f"{error.start - line_start + 1}); re-save the file as UTF-8."
        ) from None


def parse_json_text(text: str, path: Path) -> list[Record]:
    """A JSON array of objects (text starting with "[") or JSON Lines, whatever the extension says."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"input {path}: not valid JSON at line {error.lineno}, column {error.colno} ({error.msg}); "
                "fix the file or re-export it."
            ) from None
        records = [(f"{path} row {index + 1}", item) for index, item in enumerate(items)]
    else:
        records = []
        for number, line in enumerate(text.split("\n"), start=1):  # editor lines: only \n ends one
            if not line.strip():
                continue
            try:
                records.append((f"{path} line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"input {path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                    "fix or remove that line."
                ) from None
    for where, item in records:
        if not isinstance(item, dict):
            raise ValueError(
                f"{where}: expected a JSON object, got {type(item).__name__}; each row is one object."
            )
    return records

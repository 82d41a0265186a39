"""Read preference files (JSONL, JSON, Parquet, Hugging Face datasets) into a PreferenceSet (L1, data).

Two row shapes are accepted:

* user-grouped: {"user_id", "prompt"?, "chosen", "rejected", "user_type"?, "split"?}, items being
  strings (texts) or lists of floats (feature vectors); TRL's column names plus a user. TRL's
  conversational rows (message lists, explicit or implicit prompt) are read as their single-turn texts.
* multi-label: {"prompt"?, "response_a", "response_b", "choice_<label>": 0 | 1 | 0.5, ..., "split"?}.
  Each label acts as one user type (and one user). A choice of 0 means response_a is preferred, 1
  means response_b is, 0.5 is a tie: ties are dropped and counted in the report.

Every problem raises a ValueError naming the row and column and saying what to do; nothing is
dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npalign.data.conversation import conversation_texts, is_conversation
from npalign.data.records import (
    HUB_PREFIX,
    DatasetRecords,
    Record,
    missing_input_message,
    read_hub,
    read_local,
)
from npalign.data.splits import prompt_part
from npalign.types import PreferenceSet

logger = logging.getLogger(__name__)

USER_GROUPED = ("user_id", "chosen", "rejected")
MULTI_LABEL = ("response_a", "response_b")
CHOICE_PREFIX = "choice_"


@dataclass
class LoadReport:
    """What a load kept and dropped, for the user to read."""

    source: str
    format: str = ""
    rows: int = 0
    pairs: int = 0
    users: int = 0
    ties_dropped: dict[str, int] = field(default_factory=dict)
    rows_outside_split: int = 0
    users_dropped_min_pairs: int = 0
    pairs_dropped_min_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_records(source: str | Path) -> tuple[str, Sequence[Record]]:
    """(source, records) of a .jsonl(.gz), .json(.gz) array, .parquet file, a `save_to_disk` folder of one
    split, or "hf:<owner>/<name>" (the hub dataset's train split; needs network access).

    Each record is (where, row), where naming the file and 1-based line (JSONL) or row for messages.
    A local path that does not exist is a FileNotFoundError at once; it is never tried as a hub id.
    """
    text = str(source)
    if text.startswith(HUB_PREFIX):
        dataset_id = text[len(HUB_PREFIX) :]
        return dataset_id, read_hub(dataset_id, split="train")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(missing_input_message(path))
    records = read_local(path)
    if isinstance(records, DatasetRecords) and records.split_names is not None:
        raise ValueError(
            f"{path} holds a DatasetDict with splits {records.split_names}; pass the folder of one split."
        )
    if len(records) == 0:
        raise ValueError(f"{path} is empty; expected preference rows (JSONL or a JSON array).")
    return text, records


def read_rows(source: str | Path) -> list[dict[str, Any]]:
    """The rows of `read_records(source)`, without their locations."""
    return [row for _, row in read_records(source)[1]]


def _item(value: Any, where: str, column: str) -> str | list[float]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}, column {column!r}: empty text; remove the row or fill the text.")
        return value
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        floats = [float(v) for v in value]
        if not all(math.isfinite(v) for v in floats):
            raise ValueError(
                f"{where}, column {column!r}: features contain NaN or inf; clean the data first."
            )
        return floats
    raise ValueError(
        f"{where}, column {column!r}: expected a string, a non-empty list of numbers or a TRL message list, got {str(value)[:60]!r}."
    )


class _Builder:
    """Accumulates pairs, interning users, prompts and items."""

    def __init__(self) -> None:
        self.chosen: list[int] = []
        self.rejected: list[int] = []
        self.user: list[int] = []
        self.prompt: list[int] = []
        self.users: dict[str, int] = {}
        self.user_types: list[str] = []
        self.prompts: dict[str, int] = {}
        self.features: list[list[float]] = []
        self.text_items: dict[tuple[str, str], int] = {}
        self.kind: str | None = None
        self.width: int | None = None

    def _add_item(self, prompt: str, value: str | list[float], where: str, column: str) -> int:
        kind = "text" if isinstance(value, str) else "features"
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            raise ValueError(
                f"{where}, column {column!r}: a {kind} item in a file whose items so far are {self.kind}; "
                "use either texts or feature vectors throughout."
            )
        if isinstance(value, str):
            return self.text_items.setdefault((prompt, value), len(self.text_items))
        if self.width is None:
            self.width = len(value)
        elif len(value) != self.width:
            raise ValueError(
                f"{where}, column {column!r}: {len(value)} features, but earlier items have {self.width}; "
                "all items must have the same feature width."
            )
        self.features.append(value)
        return len(self.features) - 1

    def add(
        self,
        where: str,
        user: str,
        user_type: str,
        prompt: tuple[str, str],
        chosen: Any,
        rejected: Any,
        columns: tuple[str, str],
    ) -> None:
        """Add one pair; `prompt` is (key that identifies it, text that items are embedded with)."""
        chosen_item = _item(chosen, where, columns[0])
        rejected_item = _item(rejected, where, columns[1])
        if user not in self.users:
            self.users[user] = len(self.users)
            self.user_types.append(user_type)
        elif self.user_types[self.users[user]] != user_type:
            raise ValueError(
                f"{where}: user {user!r} has user_type {user_type!r} here but "
                f"{self.user_types[self.users[user]]!r} earlier; a user has one type."
            )
        self.user.append(self.users[user])
        prompt_key, prompt_text = prompt
        self.prompt.append(self.prompts.setdefault(prompt_key, len(self.prompts)))
        self.chosen.append(self._add_item(prompt_text, chosen_item, where, columns[0]))
        self.rejected.append(self._add_item(prompt_text, rejected_item, where, columns[1]))

    def build(self, meta: dict[str, Any]) -> PreferenceSet:
        long = torch.long
        texts = list(self.text_items) if self.kind == "text" else None
        return PreferenceSet(
            chosen=torch.tensor(self.chosen, dtype=long),
            rejected=torch.tensor(self.rejected, dtype=long),
            user=torch.tensor(self.user, dtype=long),
            prompt=torch.tensor(self.prompt, dtype=long),
            user_ids=list(self.users),
            user_types=self.user_types,
            prompt_ids=list(self.prompts),
            features=torch.tensor(self.features, dtype=torch.float32) if self.kind == "features" else None,
            item_prompts=[p for p, _ in texts] if texts is not None else None,
            item_responses=[r for _, r in texts] if texts is not None else None,
            meta=meta,
        )


def detect_format(columns: Iterable[str]) -> str:
    names = set(columns)
    # A row that has part of one shape is that shape; its missing columns are then reported by name.
    if names & set(MULTI_LABEL):
        return "multi-label"
    if "user_id" in names or {"chosen", "rejected"} <= names:
        return "user-grouped"
    raise ValueError(
        f"cannot tell the format from the columns {sorted(names)}: a user-grouped file needs "
        f"{list(USER_GROUPED)} (plus optional prompt, user_type), a multi-label file needs "
        f"{list(MULTI_LABEL)} and choice_<label> columns."
    )


def rows_to_preferences(
    rows: Sequence[dict[str, Any]],
    *,
    source: str = "<rows>",
    labels: Sequence[str] | None = None,
    split: str | None = None,
    meta: dict[str, Any] | None = None,
    where: Sequence[str] | None = None,
    min_pairs: int = 0,
) -> tuple[PreferenceSet, LoadReport]:
    """Validate rows and build a PreferenceSet.

    Args:
        rows: dicts in the user-grouped or multi-label shape (the first row decides which). User-grouped
            rows may be TRL conversational rows (message lists; see `npalign.data.conversation`).
        labels: multi-label only: which choice_<label> columns act as user types (default: all).
        split: keep only rows whose "split" column equals this (rows without the column are an error).
        where: each row's location for messages ("file.jsonl line 3"); default "<source> row <i>", 1-based.
        min_pairs: drop users with fewer pairs than this (after the split filter), counted in the report.
    """
    report = LoadReport(source=source)
    if not rows:
        raise ValueError(f"{source} has no rows; expected preference pairs.")
    if isinstance(min_pairs, bool) or not isinstance(min_pairs, int) or min_pairs < 0:
        raise ValueError(f"min_pairs={min_pairs!r} must be a non-negative integer (0 keeps every user).")
    places = list(where) if where is not None else [f"{source} row {i + 1}" for i in range(len(rows))]
    fmt = detect_format(rows[0])
    report.format = fmt
    builder = _Builder()
    meta = dict(meta or {})
    choice_labels = _choice_labels(rows[0], fmt, labels, source)
    if fmt == "multi-label":
        report.ties_dropped = dict.fromkeys(choice_labels, 0)
    if split is not None and all("split" in row for row in rows):
        present = sorted({str(row["split"]) for row in rows})
        if split not in present:
            raise ValueError(f"{source}: no rows with split {split!r}; the file has splits {present}.")
    required = (
        USER_GROUPED
        if fmt == "user-grouped"
        else (*MULTI_LABEL, *(CHOICE_PREFIX + lb for lb in choice_labels))
    )
    for place, row in zip(places, rows, strict=True):
        report.rows += 1
        if split is not None:
            if "split" not in row:
                raise ValueError(f"{place}: no 'split' column, but split={split!r} was requested.")
            if row["split"] != split:
                report.rows_outside_split += 1
                continue
        missing = [c for c in required if c not in row or row[c] is None]
        if missing:
            raise ValueError(f"{place}: missing column(s) {missing}; every row needs {list(required)}.")
        _add_row(builder, report, place, row, fmt, choice_labels)
    if not builder.chosen:
        raise ValueError(
            f"{source}: no pairs left (rows {report.rows}, outside split {report.rows_outside_split}, "
            f"ties dropped {report.ties_dropped})."
        )
    data = builder.build(meta)
    if min_pairs > 0:
        data = _drop_small_users(data, min_pairs, report)
    report.pairs, report.users = data.num_pairs, data.num_users
    if any(report.ties_dropped.values()):
        logger.info("%s: dropped ties per label %s", source, report.ties_dropped)
    return data, report


def _choice_labels(first: dict[str, Any], fmt: str, labels: Sequence[str] | None, source: str) -> list[str]:
    """The choice_<label> columns that act as user types: `labels`, else all the file has; [] if user-grouped."""
    if fmt != "multi-label":
        if labels:
            raise ValueError(
                f"{source}: labels={list(labels)} apply to multi-label files only; this one is user-grouped."
            )
        return []
    available = sorted(c[len(CHOICE_PREFIX) :] for c in first if c.startswith(CHOICE_PREFIX))
    if not available:
        raise ValueError(f"{source}: multi-label rows need choice_<label> columns; found {sorted(first)}.")
    choice_labels = list(labels) if labels else available
    unknown = [label for label in choice_labels if label not in available]
    if unknown:
        raise ValueError(f"{source}: unknown label(s) {unknown}; the file has {available}.")
    return choice_labels


def _add_row(
    builder: _Builder,
    report: LoadReport,
    place: str,
    row: dict[str, Any],
    fmt: str,
    choice_labels: list[str],
) -> None:
    """Add a validated row's pairs: one for a user-grouped row, one per non-tied label for a multi-label row."""
    prompt = row.get("prompt")
    chosen, rejected = (row["chosen"], row["rejected"]) if fmt == "user-grouped" else (None, None)
    if fmt == "user-grouped" and (is_conversation(chosen) or is_conversation(prompt)):
        prompt, chosen, rejected = conversation_texts(prompt, chosen, rejected, place)
    prompt_key = str(prompt) if prompt is not None else f"__row{report.rows - 1}"
    prompt_text = str(prompt) if prompt is not None else ""
    if fmt == "user-grouped":
        user_type = row.get("user_type")
        builder.add(
            place,
            str(row["user_id"]),
            "" if user_type is None else str(user_type),
            (prompt_key, prompt_text),
            chosen,
            rejected,
            ("chosen", "rejected"),
        )
        return
    for label in choice_labels:
        choice = row[CHOICE_PREFIX + label]
        if choice not in (0, 1, 0.5) or isinstance(choice, bool):
            raise ValueError(
                f"{place}, column {CHOICE_PREFIX + label!r}: value {choice!r}; use 0 "
                "(response_a preferred), 1 (response_b preferred) or 0.5 (tie)."
            )
        if choice == 0.5:
            report.ties_dropped[label] += 1
            continue
        chosen_col, rejected_col = (
            ("response_a", "response_b") if choice == 0 else ("response_b", "response_a")
        )
        builder.add(
            place,
            label,
            label,
            (prompt_key, prompt_text),
            row[chosen_col],
            row[rejected_col],
            (chosen_col, rejected_col),
        )


def _drop_small_users(data: PreferenceSet, min_pairs: int, report: LoadReport) -> PreferenceSet:
    """`data` without the users that have fewer than `min_pairs` pairs; the drop is counted in `report`."""
    pairs_per_user = torch.bincount(data.user, minlength=data.num_users)  # (users,)
    keep_pair = pairs_per_user[data.user] >= min_pairs  # (P,)
    report.users_dropped_min_pairs = int((pairs_per_user < min_pairs).sum())
    report.pairs_dropped_min_pairs = int((~keep_pair).sum())
    if not bool(keep_pair.any()):
        raise ValueError(
            f"{report.source}: no user has min_pairs={min_pairs} pairs (the most is "
            f"{int(pairs_per_user.max())}); lower min_pairs."
        )
    if report.users_dropped_min_pairs:
        logger.info(
            "%s: dropped %d users (%d pairs) with fewer than %d pairs",
            report.source,
            report.users_dropped_min_pairs,
            report.pairs_dropped_min_pairs,
            min_pairs,
        )
        return data.subset(keep_pair)
    return data


def load_preferences(
    source: str | Path,
    *,
    labels: Sequence[str] | None = None,
    split: str | None = None,
    min_pairs: int = 0,
) -> tuple[PreferenceSet, LoadReport]:
    """Load a preference file (see `read_records` for what `source` may be) into a PreferenceSet.

    A synthetic task's sidecar `<file>.task.json` is attached as meta["task"]. `labels`, `split` and
    `min_pairs` are those of `rows_to_preferences`.
    """
    name, records = read_records(source)
    meta: dict[str, Any] = {"source": str(source)}
    sidecar = Path(f"{source}.task.json")
    if not str(source).startswith(HUB_PREFIX) and sidecar.is_file():
        meta["task"] = json.loads(sidecar.read_text(encoding="utf-8"))
    return rows_to_preferences(
        [row for _, row in records],
        source=name,
        labels=labels,
        split=split,
        meta=meta,
        where=[place for place, _ in records],
        min_pairs=min_pairs,
    )


def preferences_to_rows(data: PreferenceSet) -> list[dict[str, Any]]:
    """The user-grouped rows of a PreferenceSet (features as lists of floats, or texts)."""
    rows = []
    for pair in range(data.num_pairs):
        user = int(data.user[pair])
        chosen, rejected = int(data.chosen[pair]), int(data.rejected[pair])
        row: dict[str, Any] = {
            "user_id": data.user_ids[user],
            "prompt": data.prompt_ids[int(data.prompt[pair])],
        }
        if data.features is not None:
            row["chosen"], row["rejected"] = data.features[chosen].tolist(), data.features[rejected].tolist()
        else:
            assert data.item_responses is not None
            row["chosen"], row["rejected"] = data.item_responses[chosen], data.item_responses[rejected]
        row["user_type"] = data.user_types[user]
        rows.append(row)
    return rows


def _check_fractions(fractions: Sequence[float]) -> None:
    """Split fractions: at least one, none negative, summing to 1 (every user or prompt lands in one part)."""
    if not fractions or any(not f >= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {list(fractions)} must be >= 0 and sum to 1, e.g. (0.8, 0.1, 0.1).")


def split_by_prompt(data: PreferenceSet, fractions: Sequence[float], seed: int = 0) -> list[PreferenceSet]:
    """Split pairs so that every prompt lands in exactly one part (`npalign.data.splits.prompt_part` of prompt id + seed)."""
    _check_fractions(fractions)
    # The builders' hash (npalign.data.splits), so a built file's split column and this split agree.
    part_of_prompt = torch.tensor(
        [prompt_part(p, seed, fractions) for p in data.prompt_ids], dtype=torch.long
    )
    part_of_pair = part_of_prompt[data.prompt]
    return [data.subset(part_of_pair == k) for k in range(len(fractions))]


def split_by_user(data: PreferenceSet, fractions: Sequence[float], seed: int = 0) -> list[PreferenceSet]:
    """Split users (stratified by user type) so that evaluation users were never seen in training."""
    _check_fractions(fractions)
    generator = torch.Generator().manual_seed(seed)
    part_of_user = torch.full((data.num_users,), len(fractions) - 1, dtype=torch.long)  # rounding: the last
    types = data.user_types
    for name in sorted(set(types)):
        members = torch.tensor([u for u, t in enumerate(types) if t == name])
        members = members[torch.randperm(len(members), generator=generator)]
        cuts = (torch.tensor(fractions, dtype=torch.float64).cumsum(0) * len(members)).round().long()
        start = 0
        for k, stop in enumerate(cuts.tolist()):
            part_of_user[members[start:stop]] = k
            start = stop
    part_of_pair = part_of_user[data.user]
    parts = [data.subset(part_of_pair == k) for k in range(len(fractions)) if bool((part_of_pair == k).any())]
    if len(parts) != len(fractions):
        raise ValueError(f"split_by_user: too few users ({data.num_users}) for fractions {list(fractions)}.")
    return parts

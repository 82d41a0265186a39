"""What every dataset source shares: the build report, row helpers, options, and writing the file (L1, data)."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from npalign.data.records import Record
from npalign.data.splits import SPLIT_NAMES, prompt_split
from npalign.utils.io import atomic_path

logger = logging.getLogger(__name__)

USER_GROUPED = "user-grouped"
MULTI_LABEL = "multi-label"
TIE = 0.5


@dataclass
class BuildReport:
    """What a build read, wrote and dropped.

    Attributes:
        name / source / out / format / subset / seed / split_fractions / options: what was asked for.
        rows_read: input rows (prompt-level rows for ultrafeedback and dsp, response rows for helpsteer2).
        rows_written: output rows per split ("train", "validation", "test").
        prompts: distinct prompts per split.
        user_types: the user types written (multi-label: the choice labels).
        users: distinct user_id values (multi-label: one user per label).
        pairs_per_user_type: rows per user type; multi-label: rows with a strict (non-tie) choice.
        ties_per_user_type: multi-label only: rows written with 0.5 for that label (the loader drops them).
        dropped: reason -> count; the reason's first word names the unit (completions, responses,
            prompts, pairs, length_pairs).
        counts: other tallies, e.g. `completions_read`.
    """

    name: str
    source: str
    out: str
    format: str
    subset: str | None
    seed: int
    split_fractions: tuple[float, float, float]
    options: dict[str, Any] = field(default_factory=dict)
    rows_read: int = 0
    rows_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))
    prompts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))
    user_types: list[str] = field(default_factory=list)
    users: int = 0
    pairs_per_user_type: dict[str, int] = field(default_factory=dict)
    ties_per_user_type: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total_written(self) -> int:
        return sum(self.rows_written.values())

    def drop(self, reason: str, where: str, count: int = 1) -> None:
        """Count `count` dropped things under `reason`; `where` is logged at debug level."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        logger.debug("%s: dropped (%s)", where, reason)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field plus `total_written`."""
        result = asdict(self)
        result["split_fractions"] = list(self.split_fractions)
        result["total_written"] = self.total_written
        return result


BuildFn = Callable[[Sequence[Record], BuildReport, str | None, dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Source:
    """One dataset source: how to turn its records into rows, and what it needs.

    Attributes:
        name: the name `build_dataset` and `npalign data build` take.
        build: (records, report, subset, options) -> rows without the split column.
        format: USER_GROUPED or MULTI_LABEL, the shape of the rows written.
        options: the options `build` accepts, with their defaults; by default only `keep_identical`
            (False), which every source honours (see the package docstring).
        hub_id: the default input on the Hugging Face hub, if any.
        default_file: the default input under the shared data folder, if any.
    """

    name: str
    build: BuildFn
    format: str
    options: dict[str, Any] = field(default_factory=lambda: {"keep_identical": False})
    hub_id: str | None = None
    default_file: str | None = None


# ---------------------------------------------------------------------------------------------------
# Rows, choices, ratings
# ---------------------------------------------------------------------------------------------------


def user_row(user_id: str, prompt: str, chosen: str, rejected: str, user_type: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "user_type": user_type,
    }


def multi_label_row(
    prompt: str, response_a: str, response_b: str, labels: Sequence[str], choices: Sequence[float]
) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    for label, choice in zip(labels, choices, strict=True):
        row[f"choice_{label}"] = choice
    return row


def rating_choice(rating_a: float, rating_b: float) -> float:
    """0 if response_a is rated higher, 1 if response_b is, 0.5 on equal ratings."""
    if rating_a > rating_b:
        return 0
    if rating_b > rating_a:
        return 1
    return TIE


def conflicting(choices: Iterable[float]) -> bool:
    """True when the non-tied choices point both ways (some label prefers a, another prefers b)."""
    return {choice for choice in choices if choice != TIE} == {0, 1}


def drop_reason(chosen: str, rejected: str, keep_identical: bool) -> str | None:
    """Why a pair is dropped ("empty_response", or "identical_responses" unless `keep_identical`); None keeps it."""
    if not chosen.strip() or not rejected.strip():
        return "empty_response"
    if chosen == rejected and not keep_identical:
        return "identical_responses"
    return None


def rated_pairs(
    rated: Sequence[tuple[str, Sequence[float]]],
    where: str,
    report: BuildReport,
    keep_identical: bool,
    too_few: str,
) -> Iterator[tuple[str, str, list[float]]]:
    """Every pair of one prompt's rated responses as (response_a, response_b, a choice per label).

    A prompt with fewer than two responses is dropped under `too_few`; a pair of identical texts is
    dropped unless `keep_identical`. Drops are counted as the pairs are drawn.
    """
    if len(rated) < 2:
        report.drop(too_few, where)
        return
    for (response_a, ratings_a), (response_b, ratings_b) in combinations(rated, 2):
        if response_a == response_b and not keep_identical:
            report.drop("pairs_identical_responses", where)
            continue
        yield response_a, response_b, [rating_choice(a, b) for a, b in zip(ratings_a, ratings_b, strict=True)]


def parse_rating(value: Any) -> float | None:
    """A finite number from an int, float or numeric string; None for "N/A", empty or missing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def require(row: dict[str, Any], key: str, where: str, hint: str) -> Any:
    if key not in row or row[key] is None:
        state = "is null" if key in row else "is missing"
        raise ValueError(f"{where}: field {key!r} {state}; the row has fields {sorted(row)} ({hint}).")
    return row[key]


def require_str(row: dict[str, Any], key: str, where: str, hint: str) -> str:
    value = require(row, key, where, hint)
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field {key!r} is {type(value).__name__} {value!r:.60}, expected a string ({hint})."
        )
    return value


# ---------------------------------------------------------------------------------------------------
# Options, splits, output
# ---------------------------------------------------------------------------------------------------


def resolve_options(source: Source, options: dict[str, Any]) -> dict[str, Any]:
    """The source's defaults updated by `options`; unknown keys and wrong types raise."""
    name, defaults = source.name, source.options
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"builder {name!r} has no option(s) {unknown}; its options are {sorted(defaults)}.")
    resolved = dict(defaults)
    for key, value in options.items():
        if isinstance(defaults[key], bool):
            if not isinstance(value, bool):
                raise ValueError(f"option {key}={value!r} of {name!r} must be true or false.")
        elif key.endswith("_column") and not (value is None or (isinstance(value, str) and value)):
            raise ValueError(f"option {key}={value!r} of {name!r} must be a column name.")
        resolved[key] = value
    return resolved


def check_fractions(splits: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in splits)
    if (
        len(values) != 3
        or not all(math.isfinite(f) and f >= 0 for f in values)
        or abs(sum(values) - 1) > 1e-6
    ):
        raise ValueError(
            f"splits={tuple(splits)} must be three non-negative (train, validation, test) fractions "
            "summing to 1, e.g. (0.8, 0.1, 0.1)."
        )
    return values[0], values[1], values[2]


def _sort_key(row: dict[str, Any]) -> tuple[int, tuple[str, ...]]:
    return SPLIT_NAMES.index(row["split"]), tuple(str(value) for key, value in row.items() if key != "split")


def finish(rows: list[dict[str, Any]], report: BuildReport, out: Path) -> None:
    """Assign splits by prompt, sort, fill the report's counts and write `out` atomically."""
    for reason, count in sorted(report.dropped.items()):
        logger.warning("%s: dropped %d %s", report.name, count, reason.replace("_", " "))
    if not rows:
        raise ValueError(
            f"{report.name}: no pairs left to write from {report.source} (rows read {report.rows_read}, "
            f"dropped {report.dropped}); check the input and the subset/options."
        )
    prompt_splits: dict[str, str] = {}
    for row in rows:
        prompt = row["prompt"]
        if prompt not in prompt_splits:
            prompt_splits[prompt] = prompt_split(prompt, seed=report.seed, fractions=report.split_fractions)
        row["split"] = prompt_splits[prompt]
    rows.sort(key=_sort_key)

    per_split_rows = Counter(row["split"] for row in rows)
    report.rows_written = {split: per_split_rows.get(split, 0) for split in SPLIT_NAMES}
    per_split = Counter(prompt_splits.values())
    report.prompts = {split: per_split.get(split, 0) for split in SPLIT_NAMES}
    if report.format == USER_GROUPED:
        per_type = Counter(row["user_type"] for row in rows)
        report.pairs_per_user_type = {label: per_type[label] for label in sorted(per_type)}
        report.users = len({row["user_id"] for row in rows})
    else:
        report.pairs_per_user_type = {
            label: sum(row[f"choice_{label}"] != TIE for row in rows) for label in report.user_types
        }
        report.ties_per_user_type = {
            label: sum(row[f"choice_{label}"] == TIE for row in rows) for label in report.user_types
        }
        report.users = len(report.user_types)

    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    logger.info(
        "%s: wrote %d rows (%s) from %s to %s",
        report.name,
        report.total_written,
        ", ".join(f"{split} {count}" for split, count in report.rows_written.items()),
        report.source,
        out,
    )

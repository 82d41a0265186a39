"""Dataset builders: public preference datasets -> npalign's user-grouped / multi-label JSONL (L1, data).

Each builder reads one dataset in its own schema and writes one JSONL file that
`npalign.data.loaders` reads:

* user-grouped, one row per pair:
  `{"user_id", "prompt", "chosen", "rejected", "user_type", "split"}` (TRL's columns plus a user);
* multi-label, one row per pair of responses:
  `{"prompt", "response_a", "response_b", "choice_<label>": 0 | 1 | 0.5, ..., "split"}`, where 0 means
  response_a is preferred under <label>, 1 means response_b is, and 0.5 is a tie (the loader drops ties
  and counts them). Each label acts as one user type.

Builders (`build_dataset(name, ...)`):

| name | source | format | user types |
|---|---|---|---|
| ultrafeedback | openbmb/UltraFeedback | multi-label | helpfulness, honesty, truthfulness, instruction_following |
| helpsteer2 | nvidia/HelpSteer2 | multi-label | helpfulness, correctness, coherence, complexity, verbosity |
| generic | any user-grouped table (PRISM-like) | user-grouped | a column of the table, or none |
| dsp | DSP domain-specific preference (test) | user-grouped | academy, business, entertainment, literature (+ concise, detailed) |
| hh-relabeled | HH-RLHF relabelled by objective (DPL) | user-grouped | helpful, harmless |

Rules shared by every builder:

* Splits go by prompt: a stable hash of (seed, prompt text) places each prompt in train, validation or
  test, so no prompt is in two splits. The hash is the one `loaders.split_by_prompt` uses.
* A pair whose two responses are the same text carries no preference (the loader would map both to
  one item), and the loader rejects empty texts; both are dropped and counted unless
  `keep_identical=True` keeps the identical ones.
* Nothing is dropped silently: every drop is counted in `BuildReport.dropped` (the key names the unit:
  `completions_...`, `prompts_...`, `pairs_...`) and logged as a warning.
* Rows are sorted (split, then their fields in order) and written atomically, so the same input and
  seed give a byte-identical file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from npalign.utils.io import atomic_path

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
USER_GROUPED = "user-grouped"
MULTI_LABEL = "multi-label"
TIE = 0.5

HUB_IDS = {"ultrafeedback": "openbmb/UltraFeedback", "helpsteer2": "nvidia/HelpSteer2"}
HUB_PREFIX = "hf:"
DATA_DIR_ENV = "NPALIGN_DATA_DIR"
DEFAULT_LOCAL_FILES = {
    "dsp": "dsp_domain_specific_preference/domain_specific_preference.test.json.gz",
    "hh-relabeled": "hh_rlhf_relabeled_dpl/both/test.jsonl.gz",
}

ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "truthfulness", "instruction_following")
ULTRAFEEDBACK_SUBSETS = {
    "hh": ("helpfulness", "honesty"),
    "hht": ("helpfulness", "honesty", "truthfulness"),
}
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER2_MAX_RATING = 4
DSP_DOMAINS = ("academy", "business", "entertainment", "literature")
DSP_NORMAL = "normal"
LENGTH_USERS = ("concise", "detailed")

Record = tuple[str, dict[str, Any]]
"""One input row and where it came from ("file.jsonl line 7"), for error messages."""


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


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------


def build_dataset(
    name: str,
    *,
    input: str | None,
    out: str | Path,
    subset: str | None = None,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    **options: Any,
) -> BuildReport:
    """Build one dataset into npalign's JSONL format and write it to `out`.

    Args:
        name: one of `BUILDERS`: ultrafeedback, helpsteer2, generic, dsp, hh-relabeled.
        input: a local file (.jsonl, .json, each optionally .gz, or .parquet), a `save_to_disk` folder,
            or "hf:<owner>/<name>" for a Hugging Face hub dataset. None means the builder's default:
            the hub dataset for ultrafeedback / helpsteer2, the copy under the shared data folder
            (`$NPALIGN_DATA_DIR`, else `shared/data` next to or inside the repository) for dsp /
            hh-relabeled; generic has no default.
        out: output JSONL path, replaced atomically.
        subset: ultrafeedback only: "hh" (helpfulness and honesty strictly disagree) or "hht"
            (helpfulness, honesty, truthfulness not unanimous).
        splits: (train, validation, test) fractions of the prompts; non-negative, summing to 1.
        seed: salt of the prompt hash that assigns splits.
        **options: builder options; see `BUILDER_OPTIONS` (e.g. dsp: include_normal, length_users;
            generic: user_column, prompt_column, chosen_column, rejected_column, type_column; all:
            keep_identical).
    Returns:
        The BuildReport; the file at `out` holds `report.total_written` rows.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset builder {name!r}; choose one of {sorted(BUILDERS)}.")
    builder, fmt = BUILDERS[name]
    fractions = _check_fractions(splits)
    if subset is not None and name != "ultrafeedback":
        raise ValueError(f"subset={subset!r} applies only to ultrafeedback; drop --subset for {name!r}.")
    if subset is not None and subset not in ULTRAFEEDBACK_SUBSETS:
        raise ValueError(
            f"unknown ultrafeedback subset {subset!r}; choose one of {sorted(ULTRAFEEDBACK_SUBSETS)}."
        )
    resolved = _resolve_options(name, options)
    source, records = _load_records(name, input)
    report = BuildReport(
        name=name,
        source=source,
        out=str(out),
        format=fmt,
        subset=subset,
        seed=seed,
        split_fractions=fractions,
        options=resolved,
        rows_read=len(records),
    )
    rows = builder(records, report, subset, resolved)
    _finish(rows, report, Path(out))
    return report


def prompt_split(prompt: str, *, seed: int, fractions: Sequence[float]) -> str:
    """The split ("train", "validation" or "test") of a prompt: a stable hash of seed and text.

    The same hash as `npalign.data.loaders.split_by_prompt`, so a builder's split column and a later
    `split_by_prompt(..., seed)` of the same fractions agree.
    """
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for split, fraction in zip(SPLIT_NAMES, fractions, strict=True):
        bound += fraction
        if position < bound:
            return split
    return SPLIT_NAMES[-1]  # position within rounding of 1.0


# ---------------------------------------------------------------------------------------------------
# Builders: (records, report, subset, options) -> rows without the split column
# ---------------------------------------------------------------------------------------------------


def _build_ultrafeedback(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """UltraFeedback: every pair of rated completions of a prompt, one choice per aspect.

    A completion needs a numeric `Rating` for every aspect that is written (all four, or the two /
    three of the subset); "N/A" or a missing rating drops the completion. The choice under an
    aspect prefers the higher rating; equal ratings are a 0.5 tie. Without a subset, pairs where all
    four aspects tie are dropped (they prefer nothing). With "hh", a pair is kept only when
    helpfulness and honesty strictly disagree (neither ties). With "hht", a pair is kept when the
    non-tied choices among helpfulness, honesty and truthfulness include both sides; a tied aspect
    neither breaks nor makes unanimity and is written as 0.5.
    """
    aspects = ULTRAFEEDBACK_SUBSETS[subset] if subset is not None else ULTRAFEEDBACK_ASPECTS
    report.user_types = list(aspects)
    hint = "each openbmb/UltraFeedback row has 'instruction' and 'completions'"
    rows: list[dict[str, Any]] = []
    completions_read = 0
    for where, row in records:
        prompt = _require_str(row, "instruction", where, hint)
        completions = _require(row, "completions", where, hint)
        if not isinstance(completions, list):
            raise ValueError(
                f"{where}: field 'completions' is {type(completions).__name__}, expected a list of "
                "{'response', 'annotations', ...} objects."
            )
        rated: list[tuple[str, tuple[float, ...]]] = []
        for index, completion in enumerate(completions):
            completion_where = f"{where}, completion {index}"
            completions_read += 1
            if not isinstance(completion, dict):
                raise ValueError(f"{completion_where}: expected an object, got {type(completion).__name__}.")
            response = _require_str(
                completion, "response", completion_where, "each completion has a 'response'"
            )
            if not response.strip():
                report.drop("completions_with_empty_response", completion_where)
                continue
            ratings = tuple(
                _ultrafeedback_rating(completion.get("annotations"), aspect) for aspect in aspects
            )
            if any(rating is None for rating in ratings):
                report.drop("completions_with_unparsable_rating", completion_where)
                continue
            rated.append((response, tuple(float(r) for r in ratings if r is not None)))
        if len(rated) < 2:
            report.drop("prompts_with_fewer_than_two_rated_completions", where)
            continue
        for (response_a, ratings_a), (response_b, ratings_b) in combinations(rated, 2):
            if response_a == response_b and not options["keep_identical"]:
                report.drop("pairs_identical_responses", where)
                continue
            choices = [_choice(a, b) for a, b in zip(ratings_a, ratings_b, strict=True)]
            if subset is None and all(choice == TIE for choice in choices):
                report.drop("pairs_all_labels_tied", where)
                continue
            if subset is not None and not _conflicting(choices):
                report.drop("pairs_without_conflict", where)
                continue
            rows.append(_multi_label_row(prompt, response_a, response_b, aspects, choices))
    report.counts["completions_read"] = completions_read
    return rows


def _build_helpsteer2(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """HelpSteer2: consecutive rows with the same prompt are the responses to compare.

    Every pair within such a run gives one row with a choice per attribute (higher rating
    preferred, so the "verbosity" user prefers the more verbose response). Pairs where all five
    attributes tie are dropped; a run with one response gives no pair.
    """
    report.user_types = list(HELPSTEER2_ATTRIBUTES)
    hint = "each nvidia/HelpSteer2 row has 'prompt', 'response' and the five attribute ratings"
    groups: list[tuple[str, str, list[tuple[str, tuple[float, ...]]]]] = []
    for where, row in records:
        prompt = _require_str(row, "prompt", where, hint)
        response = _require_str(row, "response", where, hint)
        ratings = tuple(_helpsteer2_rating(row, attribute, where) for attribute in HELPSTEER2_ATTRIBUTES)
        if not groups or groups[-1][1] != prompt:
            groups.append((where, prompt, []))
        if not response.strip():
            report.drop("responses_empty", where)
            continue
        groups[-1][2].append((response, ratings))
    rows: list[dict[str, Any]] = []
    for where, prompt, responses in groups:
        if len(responses) < 2:
            report.drop("prompts_with_fewer_than_two_responses", where)
            continue
        for (response_a, ratings_a), (response_b, ratings_b) in combinations(responses, 2):
            if response_a == response_b and not options["keep_identical"]:
                report.drop("pairs_identical_responses", where)
                continue
            choices = [_choice(a, b) for a, b in zip(ratings_a, ratings_b, strict=True)]
            if all(choice == TIE for choice in choices):
                report.drop("pairs_all_labels_tied", where)
                continue
            rows.append(_multi_label_row(prompt, response_a, response_b, HELPSTEER2_ATTRIBUTES, choices))
    report.counts["prompt_groups"] = len(groups)
    return rows


def _build_generic(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Any user-grouped table: options name the user, prompt, chosen, rejected and (optional) type columns.

    User ids and types may be strings or integers (written as strings); texts must be strings.
    Without `type_column` every user_type is "".
    """
    columns = {
        role: options[f"{role}_column"]
        for role in ("user", "prompt", "chosen", "rejected", "type")
        if options[f"{role}_column"] is not None
    }
    first_where, first_row = records[0]
    for role, column in columns.items():
        if column not in first_row:
            raise ValueError(
                f"column {column!r} ({role}_column) is not in {first_where}; the rows have columns "
                f"{sorted(first_row)}. Name the right one with --column {role}=<column>."
            )
    rows: list[dict[str, Any]] = []
    for where, row in records:
        values: dict[str, str] = {}
        for role, column in columns.items():
            if column not in row:
                raise ValueError(
                    f"{where}: no column {column!r} ({role}_column); this row has {sorted(row)}. "
                    "Fix the row or remove it."
                )
            value = row[column]
            is_id = role in ("user", "type")
            if isinstance(value, str) or (is_id and isinstance(value, int) and not isinstance(value, bool)):
                values[role] = str(value)
            else:
                expected = "a string or an integer" if is_id else "a string"
                raise ValueError(
                    f"{where}, column {column!r} ({role}_column): expected {expected}, got {value!r:.60}. "
                    "Fix the value or remove the row."
                )
        if not values["chosen"].strip() or not values["rejected"].strip():
            report.drop("pairs_empty_response", where)
            continue
        if values["chosen"] == values["rejected"] and not options["keep_identical"]:
            report.drop("pairs_identical_responses", where)
            continue
        rows.append(
            _user_row(
                values["user"], values["prompt"], values["chosen"], values["rejected"], values.get("type", "")
            )
        )
    report.user_types = sorted({row["user_type"] for row in rows})
    return rows


def _build_dsp(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """DSP: for each domain d (one user, user_id = d), responses[d] beats each other response of a query.

    With include_normal (default) that is 4 pairs per domain per query; without it the `normal`
    (Alpaca) response is left out entirely, giving 3. With length_users, two more users, `concise`
    and `detailed`, prefer the shorter / longer (in characters) response of every pair of the
    query's responses (10 pairs, or 6 without normal); pairs of equal length are skipped and counted
    as `length_pairs_tied` (in response pairs; each would have given one row per length user).
    """
    include_normal: bool = options["include_normal"]
    length_users: bool = options["length_users"]
    keep_identical: bool = options["keep_identical"]
    names = (*DSP_DOMAINS, DSP_NORMAL) if include_normal else DSP_DOMAINS
    report.user_types = sorted([*DSP_DOMAINS, *(LENGTH_USERS if length_users else ())])
    hint = (
        "each DSP row is {'query': str, 'responses': {academy, business, entertainment, literature, normal}}"
    )
    rows: list[dict[str, Any]] = []
    for where, row in records:
        query = _require_str(row, "query", where, hint)
        responses = _require(row, "responses", where, hint)
        if not isinstance(responses, dict):
            raise ValueError(f"{where}: field 'responses' is {type(responses).__name__}; {hint}.")
        texts = {name: _require_str(responses, name, f"{where}, responses", hint) for name in names}
        for domain in DSP_DOMAINS:
            for other in names:
                if other == domain:
                    continue
                chosen, rejected = texts[domain], texts[other]
                if not chosen.strip() or not rejected.strip():
                    report.drop("pairs_empty_response", f"{where} ({domain} vs {other})")
                elif chosen == rejected and not keep_identical:
                    report.drop("pairs_identical_responses", f"{where} ({domain} vs {other})")
                else:
                    rows.append(_user_row(domain, query, chosen, rejected, domain))
        if not length_users:
            continue
        for first, second in combinations(names, 2):
            text_a, text_b = texts[first], texts[second]
            pair_where = f"{where} ({first} vs {second})"
            if not text_a.strip() or not text_b.strip():
                report.drop("length_pairs_empty_response", pair_where)
            elif text_a == text_b and not keep_identical:
                report.drop("length_pairs_identical_responses", pair_where)
            elif len(text_a) == len(text_b):
                report.drop("length_pairs_tied", pair_where)
            else:
                shorter, longer = (text_a, text_b) if len(text_a) < len(text_b) else (text_b, text_a)
                rows.append(_user_row("concise", query, shorter, longer, "concise"))
                rows.append(_user_row("detailed", query, longer, shorter, "detailed"))
    return rows


def _build_hh_relabeled(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """HH-RLHF relabelled by objective: user = objective; chosen = responses[label]."""
    hint = "each row has 'prompt', 'responses' (two strings), 'label' (0 or 1) and 'objective'"
    rows: list[dict[str, Any]] = []
    for where, row in records:
        prompt = _require_str(row, "prompt", where, hint)
        objective = _require_str(row, "objective", where, hint)
        responses = _require(row, "responses", where, hint)
        label = _require(row, "label", where, hint)
        if not objective:
            raise ValueError(
                f"{where}: field 'objective' is empty; it names the user type (helpful/harmless)."
            )
        if not (
            isinstance(responses, list) and len(responses) == 2 and all(isinstance(r, str) for r in responses)
        ):
            raise ValueError(
                f"{where}: field 'responses' must be a list of two strings, got {responses!r:.80}."
            )
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(
                f"{where}: field 'label' is {label!r}; it must be 0 or 1 (index of the preferred response)."
            )
        chosen, rejected = responses[label], responses[1 - label]
        if not chosen.strip() or not rejected.strip():
            report.drop("pairs_empty_response", where)
        elif chosen == rejected and not options["keep_identical"]:
            report.drop("pairs_identical_responses", where)
        else:
            rows.append(_user_row(objective, prompt, chosen, rejected, objective))
    report.user_types = sorted({row["user_type"] for row in rows})
    return rows


BuilderFn = Callable[[Sequence[Record], BuildReport, str | None, dict[str, Any]], list[dict[str, Any]]]

BUILDERS: dict[str, tuple[BuilderFn, str]] = {
    "ultrafeedback": (_build_ultrafeedback, MULTI_LABEL),
    "helpsteer2": (_build_helpsteer2, MULTI_LABEL),
    "generic": (_build_generic, USER_GROUPED),
    "dsp": (_build_dsp, USER_GROUPED),
    "hh-relabeled": (_build_hh_relabeled, USER_GROUPED),
}
"""name -> (builder, output format)."""

BUILDER_OPTIONS: dict[str, dict[str, Any]] = {
    "ultrafeedback": {"keep_identical": False},
    "helpsteer2": {"keep_identical": False},
    "generic": {
        "user_column": "user_id",
        "prompt_column": "prompt",
        "chosen_column": "chosen",
        "rejected_column": "rejected",
        "type_column": None,
        "keep_identical": False,
    },
    "dsp": {"include_normal": True, "length_users": False, "keep_identical": False},
    "hh-relabeled": {"keep_identical": False},
}
"""name -> the options its builder accepts, with their defaults."""


# ---------------------------------------------------------------------------------------------------
# Rows, choices, ratings
# ---------------------------------------------------------------------------------------------------


def _user_row(user_id: str, prompt: str, chosen: str, rejected: str, user_type: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "user_type": user_type,
    }


def _multi_label_row(
    prompt: str, response_a: str, response_b: str, labels: Sequence[str], choices: Sequence[float]
) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    for label, choice in zip(labels, choices, strict=True):
        row[f"choice_{label}"] = choice
    return row


def _choice(rating_a: float, rating_b: float) -> float:
    """0 if response_a is rated higher, 1 if response_b is, 0.5 on equal ratings."""
    if rating_a > rating_b:
        return 0
    if rating_b > rating_a:
        return 1
    return TIE


def _conflicting(choices: Iterable[float]) -> bool:
    """True when the non-tied choices point both ways (some label prefers a, another prefers b)."""
    return {choice for choice in choices if choice != TIE} == {0, 1}


def _parse_rating(value: Any) -> float | None:
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


def _ultrafeedback_rating(annotations: Any, aspect: str) -> float | None:
    """The `Rating` of one aspect; the hub stores an object per aspect, the raw release a one-item list."""
    if not isinstance(annotations, dict):
        return None
    entry = annotations.get(aspect)
    if isinstance(entry, list) and len(entry) == 1:
        entry = entry[0]
    if not isinstance(entry, dict):
        return None
    return _parse_rating(entry.get("Rating"))


def _helpsteer2_rating(row: dict[str, Any], attribute: str, where: str) -> float:
    value = _require(row, attribute, where, f"HelpSteer2 rates {list(HELPSTEER2_ATTRIBUTES)} as integers")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= HELPSTEER2_MAX_RATING:
        raise ValueError(
            f"{where}: field {attribute!r} is {value!r}; HelpSteer2 ratings are integers 0-{HELPSTEER2_MAX_RATING}. "
            "Fix the value or remove the row."
        )
    return float(value)


def _require(row: dict[str, Any], key: str, where: str, hint: str) -> Any:
    if key not in row or row[key] is None:
        state = "is null" if key in row else "is missing"
        raise ValueError(f"{where}: field {key!r} {state}; the row has fields {sorted(row)} ({hint}).")
    return row[key]


def _require_str(row: dict[str, Any], key: str, where: str, hint: str) -> str:
    value = _require(row, key, where, hint)
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field {key!r} is {type(value).__name__} {value!r:.60}, expected a string ({hint})."
        )
    return value


# ---------------------------------------------------------------------------------------------------
# Options, splits, output
# ---------------------------------------------------------------------------------------------------


def _resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The builder's defaults updated by `options`; unknown keys and wrong types raise."""
    defaults = BUILDER_OPTIONS[name]
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


def _check_fractions(splits: Sequence[float]) -> tuple[float, float, float]:
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


def _finish(rows: list[dict[str, Any]], report: BuildReport, out: Path) -> None:
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


# ---------------------------------------------------------------------------------------------------
# Reading inputs
# ---------------------------------------------------------------------------------------------------


def _load_records(name: str, input: str | None) -> tuple[str, Sequence[Record]]:
    """(source description, records) for a builder's input; see `build_dataset` for what `input` may be."""
    records: Sequence[Record]
    if input is None and name in HUB_IDS:
        source = HUB_IDS[name]
        records = _read_hub(source)
    elif input is None and name in DEFAULT_LOCAL_FILES:
        path = _shared_data_file(DEFAULT_LOCAL_FILES[name])
        source, records = str(path), _read_local(path)
    elif input is None:
        raise ValueError(f"builder {name!r} has no default input; pass --input FILE (or input=...).")
    elif input.startswith(HUB_PREFIX):
        source = input[len(HUB_PREFIX) :]
        records = _read_hub(source)
    else:
        source, records = input, _read_local(Path(input))
    if len(records) == 0:
        raise ValueError(
            f"input {source} has no rows; check that it is the right file or dataset and not empty."
        )
    return source, records


def _shared_data_file(relative: str) -> Path:
    """`relative` under $NPALIGN_DATA_DIR, else under the first `shared/data` folder that holds it."""
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        candidates = [Path(env_dir)]
    else:
        repo_root = Path(__file__).resolve().parents[3]  # src/npalign/data/builders.py -> repository
        candidates = [
            Path.cwd() / "shared" / "data",
            repo_root / "shared" / "data",
            repo_root.parent / "shared" / "data",
        ]
    for directory in candidates:
        if (directory / relative).is_file():
            return directory / relative
    raise ValueError(
        f"cannot find the default input {relative} under {[str(c) for c in candidates]}; pass --input FILE "
        f"or set {DATA_DIR_ENV} to the folder that holds it."
    )


def _read_hub(dataset_id: str) -> Sequence[Record]:
    """Every split of a hub dataset, in the order the hub lists them (needs network access)."""
    import datasets

    logger.info("loading %s from the Hugging Face hub", dataset_id)
    return _DatasetRecords(datasets.load_dataset(dataset_id), dataset_id)


class _DatasetRecords(Sequence[Record]):
    """Records of a `datasets` Dataset or DatasetDict (all splits in order), read row by row.

    Rows stay in Arrow until asked for, so a large dataset (UltraFeedback keeps long critiques per
    completion) is not copied into Python objects all at once.
    """

    def __init__(self, loaded: Any, source: str) -> None:
        import datasets

        parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
        self.parts: list[tuple[str, Any]] = [
            (f"{source} [{split}]" if split is not None else source, dataset) for split, dataset in parts
        ]

    def __len__(self) -> int:
        return sum(len(dataset) for _, dataset in self.parts)

    def __iter__(self) -> Iterator[Record]:
        for prefix, dataset in self.parts:
            for index, row in enumerate(dataset):
                yield f"{prefix} row {index}", dict(row)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        if index < 0:
            index += len(self)
        for prefix, dataset in self.parts:
            if 0 <= index < len(dataset):
                return f"{prefix} row {index}", dict(dataset[index])
            index -= len(dataset)
        raise IndexError(index)


def _read_local(path: Path) -> Sequence[Record]:
    """Records of a local file or `save_to_disk` folder; raises on a missing or unreadable input."""
    records: Sequence[Record]
    if path.is_dir():
        import datasets

        records = _DatasetRecords(datasets.load_from_disk(str(path)), str(path))
    elif not path.is_file():
        raise ValueError(
            f"input {path} does not exist; pass a .jsonl/.json (optionally .gz) or .parquet file, a "
            f"datasets save_to_disk folder, or {HUB_PREFIX}<owner>/<name> for a hub dataset."
        )
    else:
        lower = path.name.lower()
        base = lower[: -len(".gz")] if lower.endswith(".gz") else lower
        if lower.endswith(".parquet"):
            import pyarrow.parquet

            table = pyarrow.parquet.read_table(path)
            records = [(f"{path} row {index}", row) for index, row in enumerate(table.to_pylist())]
        elif base.endswith((".jsonl", ".json")):
            records = _parse_json_text(_read_text(path), path)
        else:
            raise ValueError(
                f"input {path}: unknown file type; use .jsonl, .json (either optionally .gz), .parquet, or "
                "a datasets save_to_disk folder."
            )
    return records


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return path.read_text(encoding="utf-8")
    except (gzip.BadGzipFile, UnicodeDecodeError) as error:
        raise ValueError(
            f"input {path} cannot be read as UTF-8 text ({error}); is it the right file?"
        ) from None


def _parse_json_text(text: str, path: Path) -> list[Record]:
    """A JSON array of objects (text starting with "[") or JSON Lines, whatever the extension says."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"input {path}: not valid JSON at line {error.lineno}, column {error.colno} ({error.msg}); "
                "fix the file or re-export it."
            ) from None
        records = [(f"{path} row {index}", item) for index, item in enumerate(items)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"input {path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                    "fix or remove that line."
                ) from None
            records.append((f"{path} line {number}", item))
    for where, item in records:
        if not isinstance(item, dict):
            raise ValueError(
                f"{where}: expected a JSON object, got {type(item).__name__}; each row is one object."
            )
    return records

"""UltraFeedback (openbmb/UltraFeedback) -> multi-label rows, one choice per rated aspect (L1, data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from npalign.data.records import Record
from npalign.data.sources._common import (
    MULTI_LABEL,
    TIE,
    BuildReport,
    Source,
    conflicting,
    multi_label_row,
    parse_rating,
    rated_pairs,
    require,
    require_str,
)

ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "truthfulness", "instruction_following")
ULTRAFEEDBACK_SUBSETS = {
    "hh": ("helpfulness", "honesty"),
    "hht": ("helpfulness", "honesty", "truthfulness"),
}
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def build(
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
        prompt = require_str(row, "instruction", where, hint)
        completions = require(row, "completions", where, hint)
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
            response = require_str(
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
        for response_a, response_b, choices in rated_pairs(
            rated, where, report, options["keep_identical"], "prompts_with_fewer_than_two_rated_completions"
        ):
            if subset is None and all(choice == TIE for choice in choices):
                report.drop("pairs_all_labels_tied", where)
                continue
            if subset is not None and not conflicting(choices):
                report.drop("pairs_without_conflict", where)
                continue
            rows.append(multi_label_row(prompt, response_a, response_b, aspects, choices))
    report.counts["completions_read"] = completions_read
    return rows


def _ultrafeedback_rating(annotations: Any, aspect: str) -> float | None:
    """The `Rating` of one aspect; the hub stores an object per aspect, the raw release a one-item list."""
    if not isinstance(annotations, dict):
        return None
    entry = annotations.get(aspect)
    if isinstance(entry, list) and len(entry) == 1:
        entry = entry[0]
    if not isinstance(entry, dict):
        return None
    return parse_rating(entry.get("Rating"))


SOURCE = Source(name="ultrafeedback", build=build, format=MULTI_LABEL, hub_id="openbmb/UltraFeedback")

"""HelpSteer2 (nvidia/HelpSteer2) -> multi-label rows, one choice per rated attribute (L1, data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from npalign.data.records import Record
from npalign.data.sources._common import (
    MULTI_LABEL,
    TIE,
    BuildReport,
    Source,
    multi_label_row,
    rated_pairs,
    require,
    require_str,
)

HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER2_MAX_RATING = 4
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER2_MAX_RATING = 4


def build(
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
        prompt = require_str(row, "prompt", where, hint)
        response = require_str(row, "response", where, hint)
        ratings = tuple(_helpsteer2_rating(row, attribute, where) for attribute in HELPSTEER2_ATTRIBUTES)
        if not groups or groups[-1][1] != prompt:
            groups.append((where, prompt, []))
        if not response.strip():
            report.drop("responses_empty", where)
            continue
        groups[-1][2].append((response, ratings))
    rows: list[dict[str, Any]] = []
    for where, prompt, responses in groups:
        for response_a, response_b, choices in rated_pairs(
            responses, where, report, options["keep_identical"], "prompts_with_fewer_than_two_responses"
        ):
            if all(choice == TIE for choice in choices):
                report.drop("pairs_all_labels_tied", where)
                continue
            rows.append(multi_label_row(prompt, response_a, response_b, HELPSTEER2_ATTRIBUTES, choices))
    report.counts["prompt_groups"] = len(groups)
    return rows


def _helpsteer2_rating(row: dict[str, Any], attribute: str, where: str) -> float:
    value = require(row, attribute, where, f"HelpSteer2 rates {list(HELPSTEER2_ATTRIBUTES)} as integers")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= HELPSTEER2_MAX_RATING:
        raise ValueError(
            f"{where}: field {attribute!r} is {value!r}; HelpSteer2 ratings are integers 0-{HELPSTEER2_MAX_RATING}. "
            "Fix the value or remove the row."
        )
    return float(value)


SOURCE = Source(name="helpsteer2", build=build, format=MULTI_LABEL, hub_id="nvidia/HelpSteer2")

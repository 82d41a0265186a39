"""HH-RLHF relabelled by objective (DPL) -> user-grouped rows, one user per objective (L1, data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from npalign.data.records import Record
from npalign.data.sources import _common as common


def build(
    records: Sequence[Record], report: common.BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """HH-RLHF relabelled by objective: user = objective; chosen = responses[label]."""
    hint = "each row has 'prompt', 'responses' (two strings), 'label' (0 or 1) and 'objective'"
    rows: list[dict[str, Any]] = []
    for where, row in records:
        prompt = common.require_str(row, "prompt", where, hint)
        objective = common.require_str(row, "objective", where, hint)
        responses = common.require(row, "responses", where, hint)
        label = common.require(row, "label", where, hint)
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
        if reason := common.drop_reason(chosen, rejected, options["keep_identical"]):
            report.drop(f"pairs_{reason}", where)
        else:
            rows.append(common.user_row(objective, prompt, chosen, rejected, objective))
    report.user_types = sorted({row["user_type"] for row in rows})
    return rows


SOURCE = common.Source(
    name="hh-relabeled",
    build=build,
    format=common.USER_GROUPED,
    default_file="hh_rlhf_relabeled_dpl/both/test.jsonl.gz",
)

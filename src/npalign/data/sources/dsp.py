"""DSP (domain-specific preference) -> user-grouped rows: one user per domain, plus length users (L1, data)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

from npalign.data.records import Record
from npalign.data.sources._common import (
    USER_GROUPED,
    BuildReport,
    Source,
    drop_reason,
    require,
    require_str,
    user_row,
)

DSP_DOMAINS = ("academy", "business", "entertainment", "literature")
DSP_NORMAL = "normal"
LENGTH_USERS = ("concise", "detailed")


def build(
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
        query = require_str(row, "query", where, hint)
        responses = require(row, "responses", where, hint)
        if not isinstance(responses, dict):
            raise ValueError(f"{where}: field 'responses' is {type(responses).__name__}; {hint}.")
        texts = {name: require_str(responses, name, f"{where}, responses", hint) for name in names}
        for domain in DSP_DOMAINS:
            for other in names:
                if other == domain:
                    continue
                chosen, rejected = texts[domain], texts[other]
                if reason := drop_reason(chosen, rejected, keep_identical):
                    report.drop(f"pairs_{reason}", f"{where} ({domain} vs {other})")
                else:
                    rows.append(user_row(domain, query, chosen, rejected, domain))
        if not length_users:
            continue
        for first, second in combinations(names, 2):
            text_a, text_b = texts[first], texts[second]
            pair_where = f"{where} ({first} vs {second})"
            if reason := drop_reason(text_a, text_b, keep_identical):
                report.drop(f"length_pairs_{reason}", pair_where)
            elif len(text_a) == len(text_b):
                report.drop("length_pairs_tied", pair_where)
            else:
                shorter, longer = (text_a, text_b) if len(text_a) < len(text_b) else (text_b, text_a)
                rows.append(user_row("concise", query, shorter, longer, "concise"))
                rows.append(user_row("detailed", query, longer, shorter, "detailed"))
    return rows


SOURCE = Source(
    name="dsp",
    build=build,
    format=USER_GROUPED,
    options={"include_normal": True, "length_users": False, "keep_identical": False},
    default_file="dsp_domain_specific_preference/domain_specific_preference.test.json.gz",
)

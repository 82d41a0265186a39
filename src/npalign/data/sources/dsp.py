"""DSP (domain-specific preference) -> user-grouped rows: one user per domain, plus length users (L1, data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

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
from npalign.embedding.hub import load_tokenizer

DSP_DOMAINS = ("academy", "business", "entertainment", "literature")
DSP_NORMAL = "normal"
LENGTH_USERS = ("concise", "detailed")


def build(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """DSP: for each domain d (one user, user_id = d), responses[d] beats each other response of a query.

    With include_normal (default) that is 4 pairs per domain per query; without it the `normal`
    (Alpaca) response is left out entirely, giving 3. With length_users, two more users, `concise`
    and `detailed`, compare each domain response with itself at two lengths (`style.style_response`,
    prose): the first sentences within `short_tokens` against the first sentences within `cap`, both
    counted with the `tokenizer` and leaving room for the end token. Pairs across responses (the
    release's construction) would teach "prefer domain text over `normal`" instead of length, and
    responses over the cap would lose their end token; a response that cannot give two lengths is
    dropped and counted (`length_responses_...`). `normal` is never a length user's response.
    """
    include_normal: bool = options["include_normal"]
    length_users: bool = options["length_users"]
    keep_identical: bool = options["keep_identical"]
    names = (*DSP_DOMAINS, DSP_NORMAL) if include_normal else DSP_DOMAINS
    report.user_types = sorted([*DSP_DOMAINS, *(LENGTH_USERS if length_users else ())])
    hint = (
        "each DSP row is {'query': str, 'responses': {academy, business, entertainment, literature, normal}}"
    )
    tokenizer = _length_tokenizer(options) if length_users else None
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
        if tokenizer is not None:  # the length users
            pieces = [(f"{where} ({domain})", texts[domain]) for domain in DSP_DOMAINS]
            rows += _length_rows(query, pieces, report, options, tokenizer)
    return rows


def _length_tokenizer(options: dict[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer that counts the length users' tokens; `options` keeps its name (the report is JSON)."""
    if options["short_tokens"] >= options["cap"]:
        raise ValueError(
            f"option short_tokens={options['short_tokens']} must be below cap={options['cap']}, or no "
            "response gives two lengths."
        )
    tokenizer = options["tokenizer"]
    if isinstance(tokenizer, str):
        return load_tokenizer(tokenizer)
    options["tokenizer"] = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return tokenizer


def _length_rows(
    query: str,
    responses: list[tuple[str, str]],
    report: BuildReport,
    options: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict[str, Any]]:
    """The concise and detailed users' rows for one query: each response short against itself long."""
    # Imported here: the style source reads DSP rows too, and imports DSP_DOMAINS from this module.
    from npalign.data.sources.style import style_response

    rows = []
    for where, text in responses:
        styled = style_response(
            text, tokenizer, short_tokens=options["short_tokens"], cap=options["cap"],
            end_tokens=1, min_ratio=options["min_ratio"], min_sentences=1,
        )  # fmt: skip
        if isinstance(styled, str):
            report.drop(f"length_{styled}", where)
            continue
        short, long = styled.texts[("short", "prose")], styled.texts[("long", "prose")]
        rows.append(user_row("concise", query, short, long, "concise"))
        rows.append(user_row("detailed", query, long, short, "detailed"))
    return rows


SOURCE = Source(
    name="dsp",
    build=build,
    format=USER_GROUPED,
    options={
        "include_normal": True,
        "length_users": False,
        "keep_identical": False,
        # the length users' caps, counted with the policy's tokenizer (see `_length_rows`)
        "short_tokens": 48,
        "cap": 128,
        "min_ratio": 1.5,
        "tokenizer": "smollm2",
    },
    default_file="dsp_domain_specific_preference/domain_specific_preference.test.json.gz",
)

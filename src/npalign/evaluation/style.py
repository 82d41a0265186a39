"""Script judges for style users: token counts and list lines, recomputable from an answers file (L3, evaluation).

A judge here is a pure function of the answer text (and its token count), so anyone can rerun it on
`answers.jsonl` rows (`{"user", "prompt", "answer", "num_tokens", ...}`) without a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from npalign.data.sources.style import USER_TYPES, num_tokens, user_preferences
from npalign.embedding.style_stats import list_line_share, list_lines

__all__ = ["has_list", "list_line_share", "list_lines", "match_table", "matches_user", "num_tokens", "repeats"]


def has_list(text: str, min_lines: int = 2) -> bool:
    """True when `text` has at least `min_lines` list lines (one "- " line is not a list)."""
    return list_lines(text) >= min_lines


def repeats(text: str, *, ngram: int = 4, times: int = 3) -> bool:
    """True when `text` repeats itself: a non-empty line occurs twice (a list of one item over and over, or
    "-" lines with nothing after them), or a run of `ngram` words (lower-cased, punctuation dropped) occurs
    `times` times. Greedy decoding of a small model falls into such loops; the length and list judges
    would count them as long answers or as lists."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(lines)) < len(lines):
        return True
    words = re.findall(r"\w+", text.lower())
    counts: dict[tuple[str, ...], int] = {}
    for start in range(len(words) - ngram + 1):
        key = tuple(words[start : start + ngram])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= times:
            return True
    return False


def axis_matches(
    answer: str, user_type: str, answer_tokens: int, *, short_tokens: int = 48, min_list_lines: int = 2
) -> dict[str, bool]:
    """axis -> whether `answer` shows the value `user_type` prefers on that axis.

    Length: short means `answer_tokens <= short_tokens` (the builder's short budget), long means more.
    Format: list means `has_list(answer, min_list_lines)`, prose means not.
    """
    matches = {}
    for axis, value in user_preferences(user_type).items():
        if axis == "length":
            is_short = answer_tokens <= short_tokens
            matches[axis] = is_short if value == "short" else not is_short
        else:
            is_list = has_list(answer, min_list_lines)
            matches[axis] = is_list if value == "list" else not is_list
    return matches


def matches_user(
    answer: str, user_type: str, answer_tokens: int, *, short_tokens: int = 48, min_list_lines: int = 2
) -> bool:
    """True when `answer` shows every preference of `user_type` (see `axis_matches`)."""
    return all(axis_matches(answer, user_type, answer_tokens, short_tokens=short_tokens,
                            min_list_lines=min_list_lines).values())  # fmt: skip


def match_table(
    rows: Iterable[Mapping[str, Any]],
    user_types: Iterable[str] = USER_TYPES,
    *,
    short_tokens: int = 48,
    min_list_lines: int = 2,
) -> dict[str, dict[str, float]]:
    """For answers-file rows, {row["user"]: {user_type: share of that user's answers matching user_type}}.

    Rows need "user", "answer" and "num_tokens". A user's own column should beat every other row user's
    share in that column (issue 21's "each user's answers match that user's preferences more often").
    """
    types = list(user_types)
    hits: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for row in rows:
        user = str(row["user"])
        counts = hits.setdefault(user, dict.fromkeys(types, 0))
        totals[user] = totals.get(user, 0) + 1
        for user_type in types:
            counts[user_type] += matches_user(
                row["answer"], user_type, int(row["num_tokens"]), short_tokens=short_tokens,
                min_list_lines=min_list_lines,
            )  # fmt: skip
    return {user: {t: counts[t] / totals[user] for t in types} for user, counts in hits.items()}

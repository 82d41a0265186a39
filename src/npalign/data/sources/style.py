"""Controlled style users: pairs made by transforming the same response along a length or a format axis (L1, data).

Each source text (a DSP query's four domain responses, or any `{prompt, response}` row) is split into
sentences and rendered four ways, on two axes:

* length: `short` = the first sentences that fit `short_tokens` (at least `min_sentences`, 2); `long` = the first sentences that fit
  `cap` (the whole response when it fits); either side ends where a sentence ends with . ! or ?
  (`ends_properly`), never on a lead-in ("... here are some ideas:") or a verse line ("...,"), so that
  no training answer teaches stopping mid-thought;
* format: `list` = one "- " line per sentence; `prose` = the same sentences as one paragraph.

A pair differs on exactly the axes its user cares about: the short side's sentences are a prefix of the
long side's, and a list/prose pair has the same words. Users (`USER_TYPES`) prefer one value on one axis
(`concise`, `detailed`, `list`, `prose`) or on both (`concise+list`, ... a 2-D space); `user_choice` says
which pairs a user holds and how it chooses:

* a one-axis user gets every pair on its axis (it is indifferent to the other);
* a two-axis user gets the pairs on each axis whose shared value is the one it prefers, and the one pair
  that differs on both axes where its two preferences agree (concise+list: short-list over long-list,
  over short-prose and over long-prose), so its chosen side always shows both preferences. The pair on
  both axes where they disagree (short-prose against long-list) is not its pair.

Without the pair on both axes, concise+list and detailed+prose (and concise+prose and detailed+list)
could not be told apart by their choices: one reward, "short with list, long with prose", explains every
choice of both. On it they choose opposite sides, so a context can name them.

Token counts use the tokenizer the policy will use (default: the offline SmolLM2 tokenizer) on the
response alone; every emitted response has `count + end_tokens <= cap`, so the end-of-turn token
survives `max_response_length = cap` truncation. A response is cut only at a sentence boundary, and
one that cannot give two distinct lengths is dropped and counted -- no side is ever silently truncated.

Each user type's prompts are shuffled (seeded by `seed` and the type) and dealt round-robin to
`users_per_type` users (`<type>-<i>`), so a type's users hold disjoint prompt sets that together cover
every usable prompt. Splits go by prompt, as for every source.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from npalign.data.records import Record
from npalign.data.sources._common import USER_GROUPED, BuildReport, Source, drop_reason, require_str, user_row
from npalign.data.sources.dsp import DSP_DOMAINS
from npalign.embedding.hub import load_tokenizer

AXES: dict[str, tuple[str, str]] = {"length": ("short", "long"), "format": ("list", "prose")}
"""axis -> its two values."""
AXIS_USERS: dict[str, tuple[str, str]] = {"concise": ("length", "short"), "detailed": ("length", "long"),
                                          "list": ("format", "list"), "prose": ("format", "prose")}  # fmt: skip
"""one-axis user -> (axis, the value it prefers)."""
USER_TYPES = (
    "concise", "detailed", "list", "prose",
    "concise+list", "concise+prose", "detailed+list", "detailed+prose",
)  # fmt: skip
LIST_MARKER = "- "

_EXISTING_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket), then space, then
# something that starts a sentence. Abbreviations such as "e.g. The" split wrongly; both sides of every
# pair come from the same split, so that costs fluency, never the one-axis property.
_CLOSING = r"[\"')\]\u201d\u2019]"  # a closing quote or bracket after the stop
_SENTENCE_BREAK = re.compile(rf"(?:(?<=[.!?])|(?<=[.!?]{_CLOSING}))\s+(?=[\"'(\[\u201c\u2018]?[A-Z0-9])")
_PROPER_END = re.compile(rf"[.!?]{_CLOSING}*$")


def user_preferences(user_type: str) -> dict[str, str]:
    """axis -> preferred value for a user type, e.g. "concise+list" -> {"length": "short", "format": "list"}."""
    parts = user_type.split("+")
    preferences: dict[str, str] = {}
    for part in parts:
        if part not in AXIS_USERS or AXIS_USERS[part][0] in preferences:
            raise ValueError(
                f"unknown style user type {user_type!r}; choose one of {list(USER_TYPES)} "
                "(at most one user per axis)."
            )
        axis, value = AXIS_USERS[part]
        preferences[axis] = value
    return preferences


def num_tokens(text: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens of `text` alone, without special tokens (the template's end-of-turn token is not counted)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, in order: each non-empty line without its list marker ("- ", "* ", "1. "),
    split after . ! ? before a capital, digit or opening quote."""
    sentences: list[str] = []
    for line in text.splitlines():
        line = _EXISTING_MARKER.sub("", line).strip()
        if line:
            sentences.extend(part.strip() for part in _SENTENCE_BREAK.split(line) if part.strip())
    return sentences


def as_prose(sentences: Sequence[str]) -> str:
    return " ".join(sentences)


def as_list(sentences: Sequence[str]) -> str:
    return "\n".join(LIST_MARKER + sentence for sentence in sentences)


@dataclass(frozen=True)
class StyledResponse:
    """One source text at two lengths (sentence counts) and in two formats; `texts[(length, format)]`."""

    short_sentences: int
    long_sentences: int
    texts: dict[tuple[str, str], str]
    cut_at_cap: bool


def ends_properly(sentence: str) -> bool:
    """Whether `sentence` ends a thought: with . ! or ?, optionally inside closing quotes or brackets.
    A line that ends on ":" (a lead-in to what follows) or "," (a verse line) does not."""
    return _PROPER_END.search(sentence) is not None


def _fitting_prefix(
    sentences: Sequence[str], budget: int, end_tokens: int, tokenizer: PreTrainedTokenizerBase
) -> tuple[int, int]:
    """(k, tokens): the most leading sentences that end properly (`ends_properly`) and whose list and prose
    forms both fit `budget` with the end token(s), and the larger form's token count; (0, 0) when none do."""
    best = (0, 0)
    for k in range(1, len(sentences) + 1):
        tokens = max(
            num_tokens(as_list(sentences[:k]), tokenizer), num_tokens(as_prose(sentences[:k]), tokenizer)
        )
        if tokens + end_tokens > budget:
            break
        if ends_properly(sentences[k - 1]):
            best = (k, tokens)
    return best


def style_response(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    short_tokens: int,
    cap: int,
    end_tokens: int,
    min_ratio: float,
    min_sentences: int = 2,
) -> StyledResponse | str:
    """The four renderings of `text`, or the reason it is dropped (a `BuildReport.dropped` key).

    The short side keeps at least `min_sentences` sentences (2: a short list is still a list of two
    "- " lines), the long side more sentences than the short one and `min_ratio` times its tokens.
    """
    sentences = split_sentences(text)
    if not sentences:
        return "responses_empty"
    short, short_count = _fitting_prefix(sentences, short_tokens, end_tokens, tokenizer)
    if short < min_sentences:
        return "responses_no_ended_short_side"
    long, long_count = _fitting_prefix(sentences, cap, end_tokens, tokenizer)
    if long <= short:
        return "responses_too_short_for_two_lengths"
    if long_count < min_ratio * short_count:
        return "responses_lengths_too_close"
    texts = {}
    for length, count in (("short", short), ("long", long)):
        texts[(length, "list")] = as_list(sentences[:count])
        texts[(length, "prose")] = as_prose(sentences[:count])
    return StyledResponse(short, long, texts, cut_at_cap=long < len(sentences))


def style_pairs(styled: StyledResponse) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Every pair of renderings of a styled response that a user may hold, as (side A's values, side B's
    values): the two length pairs (one per format), the format pairs (at each length with at least two
    sentences: one "- " line is no list) and the two pairs that differ on both axes (whose list side has two)."""
    pairs = []
    for fmt in AXES["format"]:
        pairs.append(({"length": "short", "format": fmt}, {"length": "long", "format": fmt}))
    for length, sentences in (("short", styled.short_sentences), ("long", styled.long_sentences)):
        if sentences >= 2:
            pairs.append(({"length": length, "format": "list"}, {"length": length, "format": "prose"}))
    for short_format, long_format in (("list", "prose"), ("prose", "list")):
        if (styled.short_sentences if short_format == "list" else styled.long_sentences) >= 2:
            pairs.append(
                ({"length": "short", "format": short_format}, {"length": "long", "format": long_format})
            )
    return pairs


def user_choice(
    preferences: dict[str, str], side_a: dict[str, str], side_b: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]] | None:
    """(chosen, rejected) for a user with these preferences, or None when the pair is not that user's: it
    differs on an axis the user has no preference on, the user's preferences pick opposite sides, or a
    shared value is not the one the user prefers (so a chosen side shows every preference)."""
    differing = [axis for axis in AXES if side_a[axis] != side_b[axis]]
    if any(axis not in preferences for axis in differing):
        return None
    if any(side_a[axis] != value for axis, value in preferences.items() if axis not in differing):
        return None
    a_wins = {side_a[axis] == preferences[axis] for axis in differing}
    if len(a_wins) != 1:
        return None
    return (side_a, side_b) if a_wins.pop() else (side_b, side_a)


def _source_texts(records: Sequence[Record]) -> list[tuple[str, str, str]]:
    """(where, prompt, response) from DSP rows ({query, responses: {domain: text}}; the four domain
    responses, not `normal`) or from generic rows ({prompt, response})."""
    hint = "each row is a DSP {'query', 'responses': {academy, ...}} or a {'prompt', 'response'} object"
    texts: list[tuple[str, str, str]] = []
    for where, row in records:
        if "query" in row and "responses" in row:
            prompt = require_str(row, "query", where, hint)
            responses = row["responses"]
            if not isinstance(responses, dict):
                raise ValueError(f"{where}: field 'responses' is {type(responses).__name__}; {hint}.")
            for domain in DSP_DOMAINS:
                texts.append(
                    (
                        f"{where} ({domain})",
                        prompt,
                        require_str(responses, domain, f"{where}, responses", hint),
                    )
                )
        else:
            texts.append(
                (where, require_str(row, "prompt", where, hint), require_str(row, "response", where, hint))
            )
    return texts


def _check_options(options: dict[str, Any]) -> None:
    for key in ("short_tokens", "cap", "users_per_type", "end_tokens", "min_sentences"):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "end_tokens" else 1):
            raise ValueError(f"option {key}={value!r} of 'style' must be a positive integer.")
    if options["short_tokens"] >= options["cap"]:
        raise ValueError(
            f"option short_tokens={options['short_tokens']} must be below cap={options['cap']}, or no "
            "response gives two lengths; lower short_tokens or raise cap."
        )
    ratio = options["min_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio < 1:
        raise ValueError(f"option min_ratio={ratio!r} of 'style' must be a number >= 1, e.g. 1.5.")


def build(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Style users' pairs; see the module docstring. `report.counts` states the caps and the longest
    response written."""
    _check_options(options)
    tokenizer = options["tokenizer"]
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    else:  # a tokenizer object passed from Python: the report keeps its name, so it stays JSON
        options["tokenizer"] = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    short_tokens, cap, end_tokens = options["short_tokens"], options["cap"], options["end_tokens"]
    report.user_types = list(USER_TYPES)

    per_prompt: dict[str, list[StyledResponse]] = {}
    longest = 0
    for where, prompt, text in _source_texts(records):
        report.counts["responses_read"] = report.counts.get("responses_read", 0) + 1
        styled = style_response(
            text,
            tokenizer,
            short_tokens=short_tokens,
            cap=cap,
            end_tokens=end_tokens,
            min_ratio=options["min_ratio"],
            min_sentences=options["min_sentences"],
        )
        if isinstance(styled, str):
            report.drop(styled, where)
            continue
        report.counts["responses_cut_at_cap"] = (
            report.counts.get("responses_cut_at_cap", 0) + styled.cut_at_cap
        )
        longest = max(longest, *(num_tokens(t, tokenizer) for t in styled.texts.values()))
        per_prompt.setdefault(prompt, []).append(styled)
    report.counts.update(
        short_tokens=short_tokens,
        response_cap_tokens=cap,
        end_tokens=end_tokens,
        longest_response_tokens=longest,
    )
    report.counts["responses_used"] = sum(len(styled) for styled in per_prompt.values())
    for styled_list in per_prompt.values():
        for styled in styled_list:
            if styled.short_sentences < 2:
                report.drop("format_pairs_one_sentence", "short side of a response")

    rows: list[dict[str, Any]] = []
    prompts = sorted(per_prompt)
    for user_type in USER_TYPES:
        preferences = user_preferences(user_type)
        order = list(prompts)
        random.Random(f"{report.seed}:{user_type}").shuffle(order)
        for index, prompt in enumerate(order):
            user_id = f"{user_type}-{index % options['users_per_type']}"
            for styled in per_prompt[prompt]:
                for side_a, side_b in style_pairs(styled):
                    if (choice := user_choice(preferences, side_a, side_b)) is None:
                        continue
                    chosen, rejected = choice
                    chosen_text = styled.texts[(chosen["length"], chosen["format"])]
                    rejected_text = styled.texts[(rejected["length"], rejected["format"])]
                    if reason := drop_reason(chosen_text, rejected_text, options["keep_identical"]):
                        report.drop(f"pairs_{reason}", f"{prompt[:40]!r} ({user_type})")
                        continue
                    rows.append(user_row(user_id, prompt, chosen_text, rejected_text, user_type))
    return rows


SOURCE = Source(
    name="style",
    build=build,
    format=USER_GROUPED,
    options={
        "short_tokens": 48,
        "cap": 160,
        "end_tokens": 1,
        "min_ratio": 1.5,
        "min_sentences": 2,
        "users_per_type": 4,
        "tokenizer": "smollm2",
        "keep_identical": False,
    },
    default_file="dsp_domain_specific_preference/domain_specific_preference.test.json.gz",
)

"""Controlled style users (data.sources.style) and their script judges (evaluation.style)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import counting_tokenizer
from npalign.cli.main import main
from npalign.data.sources import build_dataset
from npalign.data.sources.style import USER_TYPES, ends_properly, style_response, user_choice
from npalign.evaluation.style import has_list, list_line_share, match_table, matches_user, num_tokens, repeats

CAP, SHORT = 24, 14


SENTENCES = [f"Cats nap {word}." for word in ("one", "two", "three", "four", "five", "six")]
RECORDS: list[dict[str, Any]] = [
    {"prompt": f"Tell me about cats {i}?", "response": " ".join(SENTENCES[: 3 + i % 4])} for i in range(12)
] + [
    {"prompt": "Too short?", "response": "Cats sleep. Dogs bark."},  # fits the short budget whole: one length
    {
        "prompt": "Listed?",
        "response": "Here is a list:\n1. Cats sleep a lot today.\n- Dogs bark at night.\n* Birds sing.",
    },
]


def _build(
    tmp_path: Path, name: str = "style.jsonl", seed: int = 0, **options: Any
) -> tuple[Any, list[dict]]:
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    out = tmp_path / name
    options = {
        "tokenizer": counting_tokenizer(),
        "short_tokens": SHORT,
        "cap": CAP,
        "users_per_type": 2,
        **options,
    }
    report = build_dataset("style", input=str(source), out=out, seed=seed, **options)
    return report, [json.loads(line) for line in out.read_text().splitlines()]


def _units(text: str) -> list[str]:
    """A list's lines without their marker, or a paragraph as one unit."""
    return [line.removeprefix("- ") for line in text.splitlines()] if text.startswith("- ") else [text]


def test_pairs_differ_on_the_users_axes_and_fit_the_cap_with_the_end_token(tmp_path: Path) -> None:
    report, rows = _build(tmp_path)
    tokenizer = counting_tokenizer()
    assert report.counts["response_cap_tokens"] == CAP and report.counts["short_tokens"] == SHORT
    assert report.dropped["responses_too_short_for_two_lengths"] == 1
    assert report.counts["responses_cut_at_cap"] > 0  # six 5-token list lines do not fit 24
    assert sorted(report.pairs_per_user_type) == sorted(USER_TYPES)
    for row in rows:
        chosen, rejected = row["chosen"], row["rejected"]
        for side in (chosen, rejected):
            assert num_tokens(side, tokenizer) + 1 <= CAP
        if chosen.startswith("- ") != rejected.startswith("- "):
            listed, prose = (chosen, rejected) if chosen.startswith("- ") else (rejected, chosen)
            assert len(_units(listed)) >= 2
            # on both axes (a two-axis user's pair only): one side's sentences start the other's
            if " ".join(_units(listed)) != prose:
                assert "+" in row["user_type"]
                shorter, longer = sorted((" ".join(_units(listed)), prose), key=len)
                assert longer.startswith(shorter) and longer[len(shorter)] == " "
                short_side = listed if " ".join(_units(listed)) == shorter else prose
                assert num_tokens(short_side, tokenizer) + 1 <= SHORT
        else:  # length pair: same format, and the short side is where the long side starts
            shorter, longer = sorted((chosen, rejected), key=len)
            assert longer.startswith(shorter) and longer[len(shorter)] in " \n"
            assert num_tokens(shorter, tokenizer) + 1 <= SHORT
    listed = [row for row in rows if row["prompt"] == "Listed?" and row["user_type"] == "list"]
    assert listed and all(row["chosen"].startswith("- Here is a list:\n- Cats sleep") for row in listed)


def test_users_prefer_their_side_and_opposed_users_disagree_on_every_shared_pair(tmp_path: Path) -> None:
    _, rows = _build(tmp_path)
    by_type: dict[str, set[tuple[str, str, str]]] = {}
    for row in rows:
        by_type.setdefault(row["user_type"], set()).add((row["prompt"], row["chosen"], row["rejected"]))
        tokens = (
            num_tokens(row["chosen"], counting_tokenizer()),
            num_tokens(row["rejected"], counting_tokenizer()),
        )
        for part in row["user_type"].split("+"):
            if part == "concise" and row["chosen"].startswith("- ") == row["rejected"].startswith("- "):
                assert tokens[0] < tokens[1]
            if part == "list" and row["chosen"].startswith("- ") != row["rejected"].startswith("- "):
                assert row["chosen"].startswith("- ")
    for first, second in [("concise", "detailed"), ("list", "prose"), ("concise+list", "detailed+list"),
                          ("concise+list", "concise+prose"), ("detailed+prose", "detailed+list"),
                          ("concise+list", "detailed+prose"), ("concise+prose", "detailed+list")]:  # fmt: skip
        flipped = {(prompt, rejected, chosen) for prompt, chosen, rejected in by_type[second]}
        shared = {(prompt, *sorted(sides)) for prompt, *sides in by_type[first]}
        shared &= {(prompt, *sorted(sides)) for prompt, *sides in by_type[second]}
        assert shared, (first, second)
        assert by_type[first] & flipped == {
            pair for pair in by_type[first] if (pair[0], *sorted(pair[1:])) in shared
        }
        assert not by_type[first] & by_type[second]
    # a combined user's chosen side always shows both of its preferences, against each of the other three
    for _, chosen, _ in by_type["concise+list"]:
        assert chosen.startswith("- ") and num_tokens(chosen, counting_tokenizer()) + 1 <= SHORT
    words = lambda text: len(" ".join(_units(text)).split())  # noqa: E731
    rejected = {  # (a list?, longer?)
        (row["rejected"].startswith("- "), words(row["rejected"]) > words(row["chosen"]))
        for row in rows
        if row["user_type"] == "concise+list"
    }
    assert len(rejected) == 3


def test_sides_end_where_a_sentence_ends_never_on_a_lead_in_or_a_verse_line(tmp_path: Path) -> None:
    _, rows = _build(tmp_path)
    assert rows and all(ends_properly(side.splitlines()[-1]) for row in rows for side in (row["chosen"], row["rejected"]))
    text = "Sure, here are some ideas:\nCats nap one.\nDogs nap too,\nbirds do not.\nFish swim,\nfar away"
    styled = style_response(
        text, counting_tokenizer(), short_tokens=14, cap=30, end_tokens=1, min_ratio=1.0, min_sentences=1
    )
    assert not isinstance(styled, str)
    # the short side runs past the lead-in to the first full stop; the long side stops before the verse
    # lines that never end ("Fish swim, far away")
    assert styled.texts[("short", "prose")] == "Sure, here are some ideas: Cats nap one."
    assert styled.texts[("long", "list")] == "- Sure, here are some ideas:\n- Cats nap one.\n- Dogs nap too,\n- birds do not."
    assert styled.cut_at_cap
    never_ends = "Sure, here are some ideas:\nA, b, c, d, e, f, g"
    assert style_response(
        never_ends, counting_tokenizer(), short_tokens=14, cap=30, end_tokens=1, min_ratio=1.0, min_sentences=1
    ) == "responses_no_ended_short_side"
    assert ends_properly('He said "yes."') and ends_properly("Really?)") and not ends_properly("ideas:")


@pytest.mark.parametrize(
    ("preferences", "side_a", "side_b", "expected"),
    [
        ({"length": "short"}, ("short", "list"), ("long", "list"), "a"),
        ({"length": "short"}, ("short", "list"), ("long", "prose"), None),  # differs on an axis it ignores
        ({"length": "long", "format": "prose"}, ("short", "list"), ("long", "list"), None),  # shared list
        ({"length": "long", "format": "prose"}, ("short", "list"), ("long", "prose"), "b"),  # both agree
        ({"length": "long", "format": "list"}, ("short", "list"), ("long", "prose"), None),  # they disagree
    ],
)
def test_user_choice_follows_every_preference(
    preferences: dict[str, str], side_a: tuple[str, str], side_b: tuple[str, str], expected: str | None
) -> None:
    a, b = ({"length": side[0], "format": side[1]} for side in (side_a, side_b))
    choice = user_choice(preferences, a, b)
    assert choice == {"a": (a, b), "b": (b, a), None: None}[expected]


def test_build_is_deterministic_splits_by_prompt_and_deals_disjoint_prompts_to_users(tmp_path: Path) -> None:
    _, rows = _build(tmp_path)
    _, again = _build(tmp_path, name="again.jsonl")
    assert (tmp_path / "style.jsonl").read_bytes() == (tmp_path / "again.jsonl").read_bytes()
    splits: dict[str, set[str]] = {}
    owners: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        splits.setdefault(row["prompt"], set()).add(row["split"])
        owners.setdefault((row["user_type"], row["prompt"]), set()).add(row["user_id"])
    assert all(len(found) == 1 for found in splits.values())
    assert all(len(users) == 1 for users in owners.values())  # one user of each type per prompt
    assert {row["user_id"] for row in rows} == {f"{t}-{i}" for t in USER_TYPES for i in range(2)}
    _, other_seed = _build(tmp_path, name="seed1.jsonl", seed=1)
    assert {(r["user_id"], r["prompt"]) for r in other_seed} != {(r["user_id"], r["prompt"]) for r in rows}


def test_bad_options_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="short_tokens=24 must be below cap=24"):
        _build(tmp_path, short_tokens=24)
    with pytest.raises(ValueError, match="min_ratio"):
        _build(tmp_path, min_ratio=0.5)


def test_cli_builds_style_with_a_tokenizer_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counting_tokenizer().save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text("{}")  # load_tokenizer takes a save_pretrained folder
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    out = tmp_path / "cli.jsonl"
    argv = ["data", "build", "style", "--input", str(source), "--out", str(out), "--tokenizer", str(tmp_path / "tok"),
            "--short-tokens", str(SHORT), "--cap", str(CAP), "--users-per-type", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["options"]["cap"] == CAP and report["users"] == 2 * len(USER_TYPES)
    assert report["total_written"] == len(out.read_text().splitlines())


def test_judges_on_hand_written_answers() -> None:
    tokenizer = counting_tokenizer()
    listed = "Here you go:\n- Cats sleep.\n- Dogs bark.\n\n1. Birds sing."
    prose = "Cats sleep. Dogs bark - loudly - at night."
    one_line = "- Cats sleep a lot."
    assert num_tokens("Cats sleep, dogs bark.", tokenizer) == 6
    assert list_line_share(listed) == pytest.approx(3 / 4) and list_line_share("") == 0.0
    assert (
        has_list(listed)
        and not has_list(prose)
        and not has_list(one_line)
        and has_list(one_line, min_lines=1)
    )
    assert matches_user(listed, "list", 20) and not matches_user(listed, "prose", 20)
    assert matches_user(prose, "concise+prose", 10, short_tokens=48)
    assert not matches_user(prose, "detailed+prose", 10, short_tokens=48)
    assert matches_user(listed, "detailed+list", 60, short_tokens=48)
    with pytest.raises(ValueError, match="unknown style user type"):
        matches_user(prose, "concise+detailed", 10)
    answers = [
        {"user": "concise+list", "answer": "- A.\n- B.", "num_tokens": 6},
        {"user": "concise+list", "answer": "A. B.", "num_tokens": 4},
        {"user": "detailed+prose", "answer": "A long answer. " * 20, "num_tokens": 60},
    ]
    table = match_table(answers)
    assert table["concise+list"]["concise+list"] == 0.5 and table["concise+list"]["concise+prose"] == 0.5
    assert table["detailed+prose"]["detailed+prose"] == 1.0 and table["detailed+prose"]["concise"] == 0.0
    assert not repeats(listed) and not repeats(prose) and not repeats("A long answer. " * 2)
    assert repeats("- Well-being:\n- Well-being:") and repeats("-\n-\n-")  # a line twice
    assert repeats("It can hear the wind, it can hear the wind, it can hear the wind")  # 4 words thrice
    assert repeats(answers[2]["answer"])

"""Loading preference files: both row shapes, splits by prompt and user, and every bad input's error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from npalign.data.loaders import (
    load_preferences,
    preferences_to_rows,
    rows_to_preferences,
    split_by_prompt,
    split_by_user,
)
from npalign.data.splits import SPLIT_NAMES, prompt_split
from npalign.data.synthetic import generate, task_spec


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _feature_rows(n: int = 6) -> list[dict]:
    return [
        {
            "user_id": f"u{i % 2}",
            "prompt": f"p{i // 2}",
            "chosen": [float(i), 1.0],
            "rejected": [0.0, float(i)],
            "user_type": f"t{i % 2}",
        }
        for i in range(n)
    ]


def test_user_grouped_features(tmp_path: Path) -> None:
    data, report = load_preferences(_write(tmp_path / "d.jsonl", _feature_rows()))
    assert report.format == "user-grouped" and report.pairs == 6 and report.users == 2
    assert data.features is not None and data.features.shape == (12, 2)
    assert data.user_types == ["t0", "t1"]
    torch.testing.assert_close(data.features[data.chosen[3]], torch.tensor([3.0, 1.0]))


def test_user_grouped_text_deduplicates_items_per_prompt() -> None:
    rows = [
        {"user_id": "a", "prompt": "q", "chosen": "x", "rejected": "y"},
        {"user_id": "b", "prompt": "q", "chosen": "y", "rejected": "x"},
        {"user_id": "b", "prompt": "r", "chosen": "y", "rejected": "x"},
    ]
    data, _ = rows_to_preferences(rows)
    assert data.is_text and data.num_items == 4  # (q, x), (q, y), (r, y), (r, x)
    assert data.item_prompts == ["q", "q", "r", "r"]
    assert data.user_types == ["", ""]


def test_multi_label_rows_ties_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        {"prompt": "q1", "response_a": "A", "response_b": "B", "choice_helpful": 0, "choice_honest": 1},
        {"prompt": "q2", "response_a": "C", "response_b": "D", "choice_helpful": 0.5, "choice_honest": 0},
    ]
    data, report = load_preferences(_write(tmp_path / "m.jsonl", rows))
    assert report.format == "multi-label" and report.ties_dropped == {"helpful": 1, "honest": 0}
    assert data.num_pairs == 3 and sorted(data.user_ids) == ["helpful", "honest"]
    assert data.item_responses is not None
    helpful = data.user_ids.index("helpful")
    first = int((data.user == helpful).nonzero()[0])
    assert data.item_responses[int(data.chosen[first])] == "A"  # 0 means response_a is preferred
    only, _ = load_preferences(tmp_path / "m.jsonl", labels=["honest"])
    assert only.user_ids == ["honest"] and only.num_pairs == 2


def test_parquet_and_saved_dataset_load_like_jsonl(tmp_path: Path) -> None:
    import datasets

    rows = _feature_rows()
    expected, _ = rows_to_preferences(rows)
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "d.parquet", tmp_path / "saved"):
        data, _ = load_preferences(source)
        assert data.features is not None and expected.features is not None
        torch.testing.assert_close(data.features, expected.features)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"user_id": "u", "chosen": [1.0]}], r"row 1: missing column\(s\) \['rejected'\]"),
        (
            [
                {"user_id": "u", "chosen": [1.0, 2.0], "rejected": [1.0, 2.0]},
                {"user_id": "u", "chosen": [1.0], "rejected": [2.0]},
            ],
            r"row 2, column 'chosen': 1 features, but earlier items have 2",
        ),
        (
            [{"user_id": "u", "chosen": [float("nan")], "rejected": [1.0]}],
            r"row 1, column 'chosen': features contain NaN or inf",
        ),
        (
            [{"user_id": "u", "chosen": [1.0], "rejected": [float("inf")]}],
            r"row 1, column 'rejected': features contain NaN or inf",
        ),
        (
            [{"user_id": "u", "chosen": "text", "rejected": [1.0]}],
            r"row 1, column 'rejected': a features item in a file whose items so far are text",
        ),
        ([{"user_id": "u", "chosen": "", "rejected": "b"}], r"row 1, column 'chosen': empty text"),
        (
            [
                {"user_id": "u", "chosen": "a", "rejected": "b", "user_type": "x"},
                {"user_id": "u", "chosen": "a", "rejected": "b", "user_type": "y"},
            ],
            r"row 2: user 'u' has user_type 'y'",
        ),
        ([{"response_a": "a", "response_b": "b", "choice_x": 2}], r"column 'choice_x': value 2; use 0"),
        ([{"prompt": "q", "chosen": "a"}], r"cannot tell the format"),
        ([{"response_a": "a", "response_b": "b"}], r"multi-label rows need choice_<label> columns"),
    ],
)
def test_bad_rows_raise_clear_errors(rows: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rows_to_preferences(rows)


def test_unknown_label_empty_file_and_bad_json(tmp_path: Path) -> None:
    rows = [{"response_a": "a", "response_b": "b", "choice_helpful": 0}]
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['honest'\]; the file has \['helpful'\]"):
        rows_to_preferences(rows, labels=["honest"])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_preferences(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"user_id": "u"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_preferences(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        load_preferences(tmp_path / "missing.jsonl")


def test_split_column_filter(tmp_path: Path) -> None:
    rows = [dict(r, split="train" if i < 4 else "test") for i, r in enumerate(_feature_rows())]
    data, report = load_preferences(_write(tmp_path / "s.jsonl", rows), split="test")
    assert data.num_pairs == 2 and report.rows_outside_split == 4
    with pytest.raises(ValueError, match="no 'split' column"):
        rows_to_preferences(_feature_rows(), split="train")


def test_split_by_prompt_keeps_every_prompt_in_one_part() -> None:
    rows = [
        {"user_id": f"u{i % 5}", "prompt": f"p{i % 37}", "chosen": f"c{i}", "rejected": f"r{i}"}
        for i in range(400)
    ]
    data, _ = rows_to_preferences(rows)
    parts = split_by_prompt(data, (0.8, 0.1, 0.1), seed=0)
    assert sum(p.num_pairs for p in parts) == data.num_pairs
    prompt_sets = [set(p.prompt_ids) for p in parts]
    assert (
        not (prompt_sets[0] & prompt_sets[1])
        and not (prompt_sets[0] & prompt_sets[2])
        and not (prompt_sets[1] & prompt_sets[2])
    )
    for part in parts:  # subsets are self-contained
        assert part.item_responses is not None
        assert int(part.chosen.max()) < part.num_items and int(part.user.max()) < part.num_users


@pytest.mark.parametrize("fractions", [(0.5, 0.3), (1.2, -0.2), ()])
def test_split_fractions_that_do_not_cover_everyone_are_refused(fractions: tuple[float, ...]) -> None:
    """(0.5, 0.3) once left the last fifth of each type's users in uninitialised parts: dropped at random."""
    data = generate(task_spec("paper1d", num_pairs=400, num_users=20), seed=0)
    for split in (split_by_user, split_by_prompt):
        with pytest.raises(ValueError, match="must be >= 0 and sum to 1"):
            split(data, fractions, seed=0)


def test_split_by_user_is_stratified_and_disjoint() -> None:
    data = generate(task_spec("paper1d", num_pairs=2000, num_users=40), seed=0)
    train, val, test = split_by_user(data, (0.8, 0.1, 0.1), seed=0)
    assert (train.num_users, val.num_users, test.num_users) == (32, 4, 4)
    assert not set(train.user_ids) & set(test.user_ids)
    assert sorted(set(test.user_types)) == ["type0", "type1"]


def test_rows_round_trip() -> None:
    data = generate(task_spec("mixture2d", num_pairs=300, num_users=6), seed=1)
    again, _ = rows_to_preferences(preferences_to_rows(data))
    assert again.features is not None and data.features is not None
    torch.testing.assert_close(again.features[again.chosen], data.features[data.chosen])
    assert again.user_types == data.user_types


# ---------------------------------------------------------------------------------------------------
# TRL conversational rows, min_pairs, one prompt hash, and bad files (each error names file and line)
# ---------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("name", ["trl_conversational.jsonl", "trl_implicit.jsonl"])
def test_trl_conversational_rows_load_like_standard_rows(name: str) -> None:
    """Both conversational forms (explicit prompt, implicit shared prefix) give the PreferenceSet of
    the same pairs written as TRL's standard text columns: prompt = the user message, items = replies."""
    expected, _ = load_preferences(FIXTURES / "trl_standard.jsonl")
    data, report = load_preferences(FIXTURES / name)
    assert report.pairs == 5 and report.users == 2
    for field in ("chosen", "rejected", "user", "prompt"):
        assert torch.equal(getattr(data, field), getattr(expected, field))
    assert (
        data.prompt_ids
        == expected.prompt_ids
        == ["Name a prime.", "Capital of France?", "Why is the sky blue?"]
    )
    assert data.item_prompts == expected.item_prompts
    assert data.item_responses == expected.item_responses


def _msg(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (  # two user turns in the prompt
            {
                "prompt": [_msg("user", "a"), _msg("assistant", "b"), _msg("user", "c")],
                "chosen": [_msg("assistant", "x")],
                "rejected": [_msg("assistant", "y")],
            },
            r"line 3, column 'prompt': the prompt has 3 messages .*single-turn",
        ),
        (  # a system message
            {
                "prompt": [_msg("system", "be terse"), _msg("user", "q")],
                "chosen": [_msg("assistant", "x")],
                "rejected": [_msg("assistant", "y")],
            },
            r"line 3, column 'prompt': the prompt starts with a system message.*fold it into the user message",
        ),
        (  # the chosen completion has two assistant turns
            {
                "prompt": [_msg("user", "q")],
                "chosen": [_msg("assistant", "x"), _msg("assistant", "z")],
                "rejected": [_msg("assistant", "y")],
            },
            r"line 3, column 'chosen': the chosen completion has 2 messages .*single-turn",
        ),
        (  # implicit prompts that differ
            {
                "chosen": [_msg("user", "q1"), _msg("assistant", "x")],
                "rejected": [_msg("user", "q2"), _msg("assistant", "y")],
            },
            r"line 3: implicit-prompt row, but 'chosen' and 'rejected' do not start with the same",
        ),
    ],
)
def test_unrepresentable_conversations_name_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    """The bad row is on line 3 (line 2 is blank): the error gives the editor's line, never truncates."""
    good = {
        "user_id": "u",
        "prompt": [_msg("user", "p")],
        "chosen": [_msg("assistant", "x")],
        "rejected": [_msg("assistant", "y")],
    }
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"user_id": "u", **row}) + "\n")
    with pytest.raises(ValueError, match=r"conv\.jsonl " + message):
        load_preferences(path)


def test_min_pairs_drops_and_counts_small_users(tmp_path: Path) -> None:
    """trl_standard.jsonl: alice has 2 pairs, bob 3. min_pairs=3 drops alice (1 user, 2 pairs);
    min_pairs=0 (the default) and 2 keep both; 4 leaves no user, which is an error."""
    path = FIXTURES / "trl_standard.jsonl"
    data, report = load_preferences(path)
    assert (data.num_users, report.users_dropped_min_pairs, report.pairs_dropped_min_pairs) == (2, 0, 0)
    data, report = load_preferences(path, min_pairs=2)
    assert (data.num_users, data.num_pairs, report.users_dropped_min_pairs) == (2, 5, 0)
    data, report = load_preferences(path, min_pairs=3)
    assert data.user_ids == ["bob"] and data.num_pairs == 3 and report.pairs == 3
    assert (report.users_dropped_min_pairs, report.pairs_dropped_min_pairs) == (1, 2)
    with pytest.raises(
        ValueError, match=r"trl_standard\.jsonl: no user has min_pairs=4 pairs \(the most is 3\)"
    ):
        load_preferences(path, min_pairs=4)


def test_split_by_prompt_uses_the_builders_prompt_hash() -> None:
    """One hash: the part split_by_prompt gives each prompt is the split the builders write for it."""
    data, _ = rows_to_preferences(
        [{"user_id": "u", "prompt": f"prompt {i}", "chosen": [1.0], "rejected": [0.0]} for i in range(200)]
    )
    fractions = (0.6, 0.25, 0.15)
    parts = split_by_prompt(data, fractions, seed=5)
    for name, part in zip(SPLIT_NAMES, parts, strict=True):
        assert part.num_pairs > 0
        assert all(prompt_split(p, seed=5, fractions=fractions) == name for p in part.prompt_ids)


def test_non_utf8_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"user_id": "u", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(good + b"\n" + b'{"user_id": "u", "chosen": "caf\xe9", "rejected": "b"}\n')
    with pytest.raises(
        ValueError, match=r"latin1\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at column 32\); re-save"
    ):
        load_preferences(path)


def test_missing_relative_path_fails_at_once_and_is_not_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data/nofile` looks like "owner/name" but is a missing file: no hub lookup, no retries."""
    import datasets

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("a missing local path must not reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"input data/nofile: no such file.*hf:<owner>/<name>"):
        load_preferences("data/nofile")


def test_hub_needs_the_hf_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_list([{"user_id": "u", "chosen": "a", "rejected": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data, report = load_preferences("hf:org/prefs")
    assert calls == [("org/prefs", "train")] and report.source == "org/prefs" and data.num_pairs == 1


def test_unknown_split_lists_the_splits_of_the_file(tmp_path: Path) -> None:
    rows = [
        {**r, "split": s} for r, s in zip(_feature_rows(6), ["train", "validation", "test"] * 2, strict=True)
    ]
    path = _write(tmp_path / "splits.jsonl", rows)
    with pytest.raises(
        ValueError,
        match=r"splits\.jsonl: no rows with split 'tset'; the file has splits \['test', 'train', 'validation'\]",
    ):
        load_preferences(path, split="tset")

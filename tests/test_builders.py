"""Dataset builders: pair counts worked out by hand, ties, conflict subsets, splits, bad inputs, CLI."""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from helpers import counting_tokenizer
from npalign.cli.data_cmd import register
from npalign.data.sources import (
    DSP_DOMAINS,
    SPLIT_NAMES,
    BuildReport,
    build_dataset,
    prompt_split,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DSP_REAL = SHARED_DATA / "dsp_domain_specific_preference" / "domain_specific_preference.test.json.gz"
HH_REAL = SHARED_DATA / "hh_rlhf_relabeled_dpl" / "both" / "test.jsonl.gz"
needs_shared = pytest.mark.skipif(
    not (DSP_REAL.is_file() and HH_REAL.is_file()), reason="the shared data copy is not on this machine"
)

UF_LABELS = ("helpfulness", "honesty", "truthfulness", "instruction_following")
HS2_LABELS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
DSP_USERS = ("academy", "business", "concise", "detailed", "entertainment", "literature")  # sorted
PRISM_COLUMNS = dict(
    prompt_column="opening_prompt", chosen_column="chosen_response", rejected_column="rejected_response"
)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def build(
    name: str, tmp_path: Path, input: str | Path | None, **kwargs: Any
) -> tuple[BuildReport, list[dict]]:
    out = tmp_path / f"{name}.jsonl"
    report = build_dataset(name, input=None if input is None else str(input), out=out, **kwargs)
    rows = read_rows(out)
    assert len(rows) == report.total_written
    return report, rows


def by_label(labels: Sequence[str], *counts: int) -> dict[str, int]:
    """{label: count}, the counts given in the labels' order."""
    return dict(zip(labels, counts, strict=True))


def multi_label_columns(labels: Sequence[str]) -> set[str]:
    """The columns of a multi-label row: one pair, its split and a choice per label."""
    return {"prompt", "response_a", "response_b", "split", *(f"choice_{label}" for label in labels)}


def assert_prompt_level_splits(rows: list[dict[str, Any]]) -> None:
    splits_of_prompt: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        assert row["split"] in SPLIT_NAMES
        splits_of_prompt[row["prompt"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_prompt.values())


# ---------------------------------------------------------------------------------------------------
# UltraFeedback
# ---------------------------------------------------------------------------------------------------


def test_ultrafeedback_all_aspects_counts_and_ties(tmp_path: Path) -> None:
    """6 prompts x 4 completions (ratings in tests/fixtures/make_fixtures.py, as (H, O, T, I)).

    Completions with an unparsable rating: P2-d (H "N/A"), P3-b (I "N/A"), P6-b (H "N/A"),
    P6-c (honesty missing), P6-d (T "N/A") -> 5. P6 keeps one completion -> prompt dropped.
    Candidate pairs: P1 6 + P2 3 + P3 3 + P4 6 + P5 6 = 24; P5 a/c are the same text (1 identical),
    P4 a/b tie on all four aspects (1 all-tied) -> 22 rows written.
    Ties written as 0.5: H P2ab, P5bc = 2; O P5ab, ad, bd = 3; T P3ac, P4 ac ad bc bd cd, P5ab, bc = 8;
    I P1ab, P2ab, P4ad, bd, P5 ab ad bc bd cd = 9.
    """
    report, rows = build("ultrafeedback", tmp_path, FIXTURES / "ultrafeedback_small.jsonl")
    assert report.format == "multi-label"
    assert report.rows_read == 6
    assert report.counts["completions_read"] == 24
    assert report.dropped == {
        "completions_with_unparsable_rating": 5, "prompts_with_fewer_than_two_rated_completions": 1,
        "pairs_identical_responses": 1, "pairs_all_labels_tied": 1,
    }  # fmt: skip
    assert report.total_written == 22
    assert report.ties_per_user_type == by_label(UF_LABELS, 2, 3, 8, 9)
    assert report.pairs_per_user_type == by_label(UF_LABELS, 20, 19, 14, 13)
    for row in rows:
        assert set(row) == multi_label_columns(UF_LABELS)
        assert all(row[f"choice_{lb}"] in (0, 1, 0.5) for lb in UF_LABELS)
        assert any(row[f"choice_{lb}"] != 0.5 for lb in UF_LABELS)
        assert row["response_a"] != row["response_b"]
    # P1 a vs b, ratings (5,3,5,4) vs (4,4,4,4): a wins H and T, b wins O, I ties.
    first = next(
        r for r in rows if r["response_a"].startswith("The tilt") and r["response_b"].startswith("Seasons")
    )
    assert [first[f"choice_{lb}"] for lb in UF_LABELS] == [0, 1, 0, 0.5]


def test_ultrafeedback_hh_keeps_only_strict_disagreement(tmp_path: Path) -> None:
    """HH needs only helpfulness and honesty, so P3-b and P6-d stay; 3 completions are unparsable.

    Candidates: P1 6 + P2 3 + P3 6 + P4 6 + P5 6 + P6 1 = 28; 1 identical (P5 a/c).
    Strict H/O disagreement: P1 ab ac bc (3), P3 bc (1), P4 ac ad bc bd cd (5), P5 cd (1) = 10;
    the other 17 have no conflict.
    """
    report, rows = build("ultrafeedback", tmp_path, FIXTURES / "ultrafeedback_small.jsonl", subset="hh")
    assert report.user_types == ["helpfulness", "honesty"]
    assert report.dropped == {
        "completions_with_unparsable_rating": 3, "pairs_identical_responses": 1, "pairs_without_conflict": 17,
    }  # fmt: skip
    assert report.total_written == 10
    assert report.ties_per_user_type == {"helpfulness": 0, "honesty": 0}
    for row in rows:
        assert set(row) == multi_label_columns(("helpfulness", "honesty"))
        assert {row["choice_helpfulness"], row["choice_honesty"]} == {0, 1}


def test_ultrafeedback_hht_not_unanimous(tmp_path: Path) -> None:
    """HHT needs H, O and T: 4 unparsable completions (P2-d, P6-b, P6-c, P6-d), P6 dropped.

    Candidates: P1 6 + P2 3 + P3 6 + P4 6 + P5 6 = 27; 1 identical. Kept (non-tied choices point
    both ways): P1 ab ac bc (3), P2 ab ac bc (3; ab ties H but O and T disagree), P3 bc (1),
    P4 ac ad bc bd cd (5), P5 cd (1) = 13; no conflict 13 (P4 ab ties everywhere, counted here).
    Ties among the kept rows: helpfulness P2ab (1); truthfulness P4 ac ad bc bd cd (5, all T = 4).
    """
    report, rows = build("ultrafeedback", tmp_path, FIXTURES / "ultrafeedback_small.jsonl", subset="hht")
    assert report.dropped == {
        "completions_with_unparsable_rating": 4, "prompts_with_fewer_than_two_rated_completions": 1,
        "pairs_identical_responses": 1, "pairs_without_conflict": 13,
    }  # fmt: skip
    assert report.total_written == 13
    labels = ("helpfulness", "honesty", "truthfulness")
    for row in rows:
        strict = {row[f"choice_{lb}"] for lb in labels} - {0.5}
        assert strict == {0, 1}
    assert report.ties_per_user_type == {"helpfulness": 1, "honesty": 0, "truthfulness": 5}


def test_ultrafeedback_from_hub_and_local_dataset_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """input=None loads openbmb/UltraFeedback through datasets.load_dataset (patched: no network);
    a save_to_disk folder and a Parquet file give the same rows as the JSONL fixture."""
    import datasets

    source_rows = read_rows(FIXTURES / "ultrafeedback_small.jsonl")
    build_dataset(
        "ultrafeedback", input=str(FIXTURES / "ultrafeedback_small.jsonl"), out=tmp_path / "ref.jsonl"
    )
    reference = (tmp_path / "ref.jsonl").read_text()

    calls = []

    def fake_load_dataset(name: str) -> datasets.DatasetDict:
        calls.append(name)
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(source_rows)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    report = build_dataset("ultrafeedback", input=None, out=tmp_path / "hub.jsonl")
    assert calls == ["openbmb/UltraFeedback"]
    assert report.source == "openbmb/UltraFeedback"
    assert (tmp_path / "hub.jsonl").read_text() == reference

    folder = tmp_path / "uf_disk"
    datasets.Dataset.from_list(source_rows).save_to_disk(str(folder))
    build_dataset("ultrafeedback", input=str(folder), out=tmp_path / "disk.jsonl")
    assert (tmp_path / "disk.jsonl").read_text() == reference

    parquet = tmp_path / "uf.parquet"
    datasets.Dataset.from_list(source_rows).to_parquet(str(parquet))
    build_dataset("ultrafeedback", input=str(parquet), out=tmp_path / "parquet.jsonl")
    assert (tmp_path / "parquet.jsonl").read_text() == reference


def test_same_seed_same_file_and_prompt_level_splits(tmp_path: Path) -> None:
    """Builds are deterministic for a seed; every prompt lands in exactly one split; the split
    column agrees with `prompt_split`."""
    fixture = FIXTURES / "ultrafeedback_small.jsonl"
    splits = (0.34, 0.33, 0.33)
    build_dataset("ultrafeedback", input=str(fixture), out=tmp_path / "a.jsonl", splits=splits, seed=3)
    build_dataset("ultrafeedback", input=str(fixture), out=tmp_path / "b.jsonl", splits=splits, seed=3)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    rows = read_rows(tmp_path / "a.jsonl")
    assert_prompt_level_splits(rows)
    for row in rows:
        assert row["split"] == prompt_split(row["prompt"], seed=3, fractions=splits)
    order = [SPLIT_NAMES.index(row["split"]) for row in rows]
    assert order == sorted(order)


# ---------------------------------------------------------------------------------------------------
# HelpSteer2, generic
# ---------------------------------------------------------------------------------------------------


def test_helpsteer2_consecutive_prompt_groups(tmp_path: Path) -> None:
    """10 rows in 5 consecutive prompt groups (see make_fixtures.py).

    black hole: 1 pair; synonym: 3 pairs, Joyful/Cheerful tie on all five (dropped); "2 + 2": one
    response (prompt dropped); "Say hello": two identical texts (dropped); colours: 1 pair.
    Written 1 + 2 + 1 = 4. Correctness ties: black hole, colours (2); coherence ties: colours (1).
    """
    report, rows = build("helpsteer2", tmp_path, FIXTURES / "helpsteer2_small.jsonl")
    assert report.rows_read == 10
    assert report.counts["prompt_groups"] == 5
    assert report.dropped == {
        "pairs_all_labels_tied": 1, "prompts_with_fewer_than_two_responses": 1,
        "pairs_identical_responses": 1,
    }  # fmt: skip
    assert report.total_written == 4
    assert report.ties_per_user_type == by_label(HS2_LABELS, 0, 2, 1, 0, 0)
    black_hole = next(r for r in rows if r["prompt"] == "Explain what a black hole is.")
    assert [black_hole[f"choice_{a}"] for a in report.user_types] == [0, 0.5, 0, 1, 0]
    assert_prompt_level_splits(rows)


def test_generic_column_mapping(tmp_path: Path) -> None:
    """PRISM-like table, 7 rows; user2's joke pair has chosen == rejected ("No.") -> 6 written:
    user0 2, user1 3, user2 1; types us 3, uk 3."""
    report, rows = build(
        "generic", tmp_path, FIXTURES / "prism_small.jsonl", **PRISM_COLUMNS, type_column="study_locale"
    )
    assert report.format == "user-grouped"
    assert report.dropped == {"pairs_identical_responses": 1}
    assert report.users == 3
    assert report.pairs_per_user_type == {"uk": 3, "us": 3}
    assert Counter(r["user_id"] for r in rows) == {"user0": 2, "user1": 3, "user2": 1}
    for row in rows:
        assert list(row) == ["user_id", "prompt", "chosen", "rejected", "user_type", "split"]
    assert_prompt_level_splits(rows)


def test_generic_without_type_column_writes_empty_type(tmp_path: Path) -> None:
    _, rows = build("generic", tmp_path, FIXTURES / "prism_small.jsonl", **PRISM_COLUMNS)
    assert {row["user_type"] for row in rows} == {""}


# ---------------------------------------------------------------------------------------------------
# DSP
# ---------------------------------------------------------------------------------------------------


def test_dsp_fixture_domain_and_length_users(tmp_path: Path) -> None:
    """3 queries. Domain pairs: 3 x 4 domains x 4 others = 48; query 3 has academy == business, so
    academy>business and business>academy are identical (2 dropped) -> 46: academy 11, business 11,
    entertainment 12, literature 12. The length users compare each domain response with its own first
    sentences; the fixture's responses are one sentence each, so all 12 give one length only."""
    report, rows = build("dsp", tmp_path, FIXTURES / "dsp_small.json", length_users=True)
    assert report.rows_read == 3
    assert report.pairs_per_user_type == by_label(DSP_USERS[:2] + DSP_USERS[4:], 11, 11, 12, 12)
    assert report.dropped == {
        "pairs_identical_responses": 2, "length_responses_too_short_for_two_lengths": 12,
    }  # fmt: skip
    assert report.total_written == 46
    assert_prompt_level_splits(rows)


def test_dsp_length_users_compare_a_response_with_itself_under_the_cap(tmp_path: Path) -> None:
    """Each domain response, short against long: the short side's sentences start the long side, both
    fit the cap with the end token (one token per word here), and `normal` is never used."""
    sentences = [f"Point {word} matters." for word in ("one", "two", "three", "four", "five", "six", "seven")]
    queries = [
        {"query": f"Question {q}?", "responses": {
            **{d: f"{d.title()} says: " + " ".join(sentences[: 3 + (q + i) % 4]) for i, d in enumerate(DSP_DOMAINS)},
            "normal": "A normal answer. It is short."}}
        for q in range(3)
    ]  # fmt: skip
    source = tmp_path / "dsp.json"
    source.write_text(json.dumps(queries))
    tokenizer = counting_tokenizer()
    report, rows = build("dsp", tmp_path, source, length_users=True, include_normal=False,
                         short_tokens=9, cap=14, tokenizer=tokenizer)  # fmt: skip
    length_rows = [row for row in rows if row["user_type"] in ("concise", "detailed")]
    # "Academy says: Point one matters." is 7 tokens, each later sentence 4: the short side is the first
    # sentence (7 + 1 <= 9), the long side the first two (11 + 1 <= 14), cut there from 3-6 sentences.
    assert report.dropped == {} and len(length_rows) == 2 * 12
    assert all(row["chosen" if row["user_type"] == "detailed" else "rejected"].count(".") == 2 for row in length_rows)
    for row in length_rows:
        short, long = (row["chosen"], row["rejected"]) if row["user_type"] == "concise" else (row["rejected"], row["chosen"])
        assert long.startswith(short) and len(long) > len(short)
        assert "normal" not in short.lower() and len(tokenizer(long)["input_ids"]) + 1 <= 14
    assert report.options["tokenizer"] and isinstance(report.options["tokenizer"], str)


def test_dsp_fixture_without_normal(tmp_path: Path) -> None:
    """Without `normal`: domain pairs 3 x 4 x 3 = 36 - 2 identical = 34 (academy 8, business 8,
    entertainment 9, literature 9), and no row holds a `normal` text."""
    report, rows = build("dsp", tmp_path, FIXTURES / "dsp_small.json", include_normal=False)
    assert report.pairs_per_user_type == by_label(DSP_USERS[:2] + DSP_USERS[4:], 8, 8, 9, 9)
    normal_texts = {q["responses"]["normal"] for q in json.loads((FIXTURES / "dsp_small.json").read_text())}
    assert not any(row["chosen"] in normal_texts or row["rejected"] in normal_texts for row in rows)


@needs_shared
def test_dsp_real_file_counts(tmp_path: Path) -> None:
    """494 queries x 4 pairs per domain = 1,976 candidate pairs per domain (7,904 in all).

    Query 44 has an empty `normal` answer, which the loader rejects: its 4 pairs against normal are
    dropped (1 per domain). Identical texts (e.g. "The artist created the painting." from every
    domain) are dropped by default, counted per domain independently here.
    """
    kept_report, kept_rows = build("dsp", tmp_path, None, keep_identical=True)
    assert kept_report.source.endswith("domain_specific_preference.test.json.gz")
    assert kept_report.rows_read == 494
    assert kept_report.dropped == {"pairs_empty_response": 4}
    assert kept_report.pairs_per_user_type == dict.fromkeys(
        ("academy", "business", "entertainment", "literature"), 1975
    )

    with gzip.open(DSP_REAL, "rt", encoding="utf-8") as handle:
        queries = json.load(handle)
    identical = Counter(
        domain
        for q in queries
        for domain in ("academy", "business", "entertainment", "literature")
        for other in q["responses"]
        if other != domain
        and q["responses"][domain] == q["responses"][other]
        and q["responses"][domain].strip()
    )
    report, rows = build("dsp", tmp_path, DSP_REAL)
    assert report.pairs_per_user_type == {d: 1975 - identical[d] for d in sorted(identical)}
    assert report.dropped == {"pairs_empty_response": 4, "pairs_identical_responses": sum(identical.values())}
    assert report.total_written + sum(report.dropped.values()) == 7904
    assert_prompt_level_splits(rows)
    assert all(report.prompts[split] > 0 for split in SPLIT_NAMES)
    # Two queries ("The artist created the painting.", ...) have the same text from all five sources.
    all_same = sum(len(set(q["responses"].values())) == 1 for q in queries)
    assert all_same == 2
    assert sum(report.prompts.values()) == 494 - all_same


# ---------------------------------------------------------------------------------------------------
# HH relabelled
# ---------------------------------------------------------------------------------------------------


@needs_shared
def test_hh_relabeled_real_file(tmp_path: Path) -> None:
    """4,043 rows (helpful 2,157, harmless 1,886). Six rows have an empty response (helpful 2,
    harmless 4) and two helpful rows have two identical responses -> helpful 2,153, harmless 1,882."""
    report, rows = build("hh-relabeled", tmp_path, None)
    assert report.rows_read == 4043
    assert report.dropped == {"pairs_empty_response": 6, "pairs_identical_responses": 2}
    assert report.pairs_per_user_type == {"harmless": 1882, "helpful": 2153}
    assert report.users == 2
    assert_prompt_level_splits(rows)
    with gzip.open(HH_REAL, "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    expected = {
        "user_id": first["objective"],
        "prompt": first["prompt"],
        "chosen": first["responses"][first["label"]],
        "rejected": first["responses"][1 - first["label"]],
        "user_type": first["objective"],
    }
    assert any({k: v for k, v in row.items() if k != "split"} == expected for row in rows)


def test_outputs_load_with_npalign_loader(tmp_path: Path) -> None:
    """The written files are what `npalign.data.loaders` reads: the multi-label UltraFeedback file
    gives one pair per strict choice (20 + 19 + 14 + 13 = 66, ties dropped by the loader), the DSP
    file one pair per row."""
    loaders = pytest.importorskip("npalign.data.loaders")
    uf = tmp_path / "uf.jsonl"
    build_dataset(
        "ultrafeedback", input=str(FIXTURES / "ultrafeedback_small.jsonl"), out=uf, splits=(1.0, 0.0, 0.0)
    )
    data, load_report = loaders.load_preferences(uf, split="train")
    assert data.num_pairs == 66
    assert data.type_names == sorted(UF_LABELS)
    assert load_report.ties_dropped == by_label(UF_LABELS, 2, 3, 8, 9)
    dsp = tmp_path / "dsp.jsonl"
    report = build_dataset("dsp", input=str(FIXTURES / "dsp_small.json"), out=dsp, length_users=True)
    data, _ = loaders.load_preferences(dsp)
    assert data.num_pairs == report.total_written == 46
    assert data.num_users == 4


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_unparsable_json_line_names_its_line(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "p", "responses": ["a", "b"], "label": 0, "objective": "helpful"})
    bad = write_lines(tmp_path / "bad.jsonl", [good, "", "{not json"])
    with pytest.raises(ValueError, match=r"line 3: not valid JSON"):
        build_dataset("hh-relabeled", input=str(bad), out=tmp_path / "o.jsonl")


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="has no rows"):
        build_dataset("hh-relabeled", input=str(empty), out=tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_field_names_row_and_field(tmp_path: Path) -> None:
    row = {"instruction": "Say hi.", "source": "x"}
    bad = write_lines(tmp_path / "uf.jsonl", [json.dumps(row)])
    with pytest.raises(ValueError, match=r"uf.jsonl line 1: field 'completions' is missing"):
        build_dataset("ultrafeedback", input=str(bad), out=tmp_path / "o.jsonl")


def test_generic_missing_column_lists_existing_columns(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"column 'prompt' \(prompt_column\).*chosen_response.*--column prompt="
    ):
        build_dataset("generic", input=str(FIXTURES / "prism_small.jsonl"), out=tmp_path / "o.jsonl")


def test_bad_values_are_errors(tmp_path: Path) -> None:
    hs2 = {"prompt": "p", "response": "r", **dict.fromkeys(HS2_LABELS, 1), "helpfulness": 5}
    bad = write_lines(tmp_path / "hs2.jsonl", [json.dumps(hs2)])
    with pytest.raises(
        ValueError, match=r"line 1: field 'helpfulness' is 5; HelpSteer2 ratings are integers 0-4"
    ):
        build_dataset("helpsteer2", input=str(bad), out=tmp_path / "o.jsonl")
    hh = {"prompt": "p", "responses": ["a", "b"], "label": 2, "objective": "helpful"}
    bad = write_lines(tmp_path / "hh.jsonl", [json.dumps(hh)])
    with pytest.raises(ValueError, match=r"field 'label' is 2; it must be 0 or 1"):
        build_dataset("hh-relabeled", input=str(bad), out=tmp_path / "o.jsonl")
    dsp = [{"query": "q", "responses": {"academy": "a", "business": "b"}}]
    (tmp_path / "dsp.json").write_text(json.dumps(dsp))
    with pytest.raises(ValueError, match=r"dsp.json row 1, responses: field 'entertainment' is missing"):
        build_dataset("dsp", input=str(tmp_path / "dsp.json"), out=tmp_path / "o.jsonl")


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    dsp = str(FIXTURES / "dsp_small.json")
    out = tmp_path / "o.jsonl"
    with pytest.raises(ValueError, match="unknown dataset builder 'nope'"):
        build_dataset("nope", input=dsp, out=out)
    with pytest.raises(ValueError, match="subset='hh' applies only to ultrafeedback"):
        build_dataset("dsp", input=dsp, out=out, subset="hh")
    with pytest.raises(ValueError, match=r"no option\(s\) \['user_column'\]"):
        build_dataset("dsp", input=dsp, out=out, user_column="x")
    with pytest.raises(ValueError, match="summing to 1"):
        build_dataset("dsp", input=dsp, out=out, splits=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset("dsp", input=str(tmp_path / "missing.json"), out=out)
    with pytest.raises(ValueError, match="has no default input"):
        build_dataset("generic", input=None, out=out)


def test_no_pairs_left_is_an_error(tmp_path: Path) -> None:
    """A file where every pair is dropped writes nothing and says why."""
    hh = {"prompt": "p", "responses": ["same", "same"], "label": 0, "objective": "helpful"}
    bad = write_lines(tmp_path / "hh.jsonl", [json.dumps(hh)])
    with pytest.raises(ValueError, match=r"no pairs left.*pairs_identical_responses"):
        build_dataset("hh-relabeled", input=str(bad), out=tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npalign")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_data_build_prints_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dsp.jsonl"
    args = make_parser().parse_args(
        ["data", "build", "dsp", "--input", str(FIXTURES / "dsp_small.json"), "--out", str(out)]
        + ["--no-normal", "--length-users", "--seed", "1", "--splits", "0.5,0.25,0.25"]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_written"] == 34  # 34 domain pairs; no length pairs from one-sentence answers
    assert report["options"] == {
        "include_normal": False, "length_users": True, "keep_identical": False,
        "short_tokens": 48, "cap": 128, "min_ratio": 1.5, "tokenizer": "smollm2",
    }  # fmt: skip
    assert report["split_fractions"] == [0.5, 0.25, 0.25]
    assert len(read_rows(out)) == 34


def test_cli_column_mapping_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = make_parser()
    out = tmp_path / "prism.jsonl"
    prism = str(FIXTURES / "prism_small.jsonl")
    build_prism = ["data", "build", "generic", "--input", prism, "--out", str(out)]
    args = parser.parse_args(
        build_prism
        + ["--column", "prompt=opening_prompt", "chosen_column=chosen_response", "rejected=rejected_response"]
        + ["--column", "type=study_locale"]
    )
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["pairs_per_user_type"] == {"uk": 3, "us": 3}

    args = parser.parse_args([*build_prism, "--column", "colour=red"])
    assert args.func(args) == 2
    assert "--column 'colour=red'" in capsys.readouterr().err

    args = parser.parse_args(build_prism)
    assert args.func(args) == 2
    assert "column 'prompt' (prompt_column)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "build", "ultrafeedback", "--subset", "xyz"])


# ---------------------------------------------------------------------------------------------------
# TRL conversational rows in the generic builder; bad files name the file and line
# ---------------------------------------------------------------------------------------------------


def test_generic_accepts_trl_conversational_rows(tmp_path: Path) -> None:
    """Explicit-prompt and implicit-prompt message lists build the file the text columns build."""
    options = {"type_column": "user_type"}
    _, expected = build("generic", tmp_path, FIXTURES / "trl_standard.jsonl", **options)
    assert len(expected) == 5
    for name in ("trl_conversational.jsonl", "trl_implicit.jsonl"):
        _, rows = build("generic", tmp_path, FIXTURES / name, **options)
        assert rows == expected


def test_generic_multi_turn_conversation_is_an_error(tmp_path: Path) -> None:
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    row = {
        "user_id": "u",
        "chosen": [*turn, *turn],
        "rejected": [*turn, turn[0], {"role": "assistant", "content": "b"}],
    }
    bad = write_lines(tmp_path / "conv.jsonl", [json.dumps(row)])
    with pytest.raises(ValueError, match=r"conv\.jsonl line 1, column 'chosen': the prompt has 3 messages"):
        build_dataset("generic", input=str(bad), out=tmp_path / "o.jsonl")


def test_non_utf8_input_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "hh.jsonl"
    path.write_bytes(b'{"prompt": "p"}\n{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=r"hh\.jsonl, line 2: not UTF-8 text \(byte 0xff at column 13\)"):
        build_dataset("hh-relabeled", input=str(path), out=tmp_path / "o.jsonl")


def test_missing_relative_input_is_no_such_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"input data/nofile: no such file .*hf:<owner>/<name>"):
        build_dataset("generic", input="data/nofile", out=tmp_path / "o.jsonl")

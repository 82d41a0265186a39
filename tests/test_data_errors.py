"""Bad data files through the CLI: one line on stderr naming the file and line / split, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from npalign.cli.main import main


def _train(data: str | Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--model", "btl", "--out", str(out), *extra])


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The one error line on stderr, after checking its `npalign CMD: error:` form."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"npalign {command}: error: ")
    return lines[0]


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _feature_rows(splits: list[str]) -> list[dict]:
    return [
        {
            "user_id": f"u{i % 2}",
            "prompt": f"p{i}",
            "chosen": [1.0, 0.0],
            "rejected": [0.0, 1.0],
            "split": split,
        }
        for i, split in enumerate(splits)
    ]


def test_train_non_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b'{"user_id": "u", "chosen": [1.0], "rejected": [0.0]}\n{"user_id": "\xe9"}\n')
    assert _train(path, tmp_path / "run") == 2
    line = _error_line(capsys, "train")
    assert f"{path}, line 2: not UTF-8 text" in line and "re-save the file as UTF-8" in line


def test_train_missing_relative_path_is_no_such_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("a missing local path must not reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    assert _train("data/nofile", tmp_path / "run") == 2
    line = _error_line(capsys, "train")
    assert "data/nofile: no such file" in line and "hf:<owner>/<name>" in line


def test_train_unknown_split_lists_the_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rows(tmp_path / "prefs.jsonl", _feature_rows(["train", "validation", "test", "train"]))
    assert _train(path, tmp_path / "run", "--data-split", "tset") == 2
    line = _error_line(capsys, "train")
    assert f"{path}: no rows with split 'tset'; the file has splits ['test', 'train', 'validation']" in line


def test_train_missing_column_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _feature_rows(["train", "train", "train"])
    del rows[2]["rejected"]
    path = _rows(tmp_path / "prefs.jsonl", rows)
    assert _train(path, tmp_path / "run") == 2
    assert f"{path} line 3: missing column(s) ['rejected']" in _error_line(capsys, "train")


def test_train_multi_turn_conversation_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    row = {"user_id": "u", "prompt": turn + turn[:1], "chosen": turn[1:], "rejected": turn[1:]}
    path = _rows(tmp_path / "conv.jsonl", [row])
    assert _train(path, tmp_path / "run") == 2
    line = _error_line(capsys, "train")
    assert f"{path} line 1, column 'prompt': the prompt has 3 messages" in line and "single-turn" in line


def test_data_build_non_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "table.jsonl"
    path.write_bytes(b'{"user_id": "\xff"}\n')
    assert main(["data", "build", "generic", "--input", str(path), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{path}, line 1: not UTF-8 text (byte 0xff at column 14)" in _error_line(capsys, "data build")


def test_data_build_missing_relative_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["data", "build", "generic", "--input", "data/nofile", "--out", "o.jsonl"]) == 2
    assert "input data/nofile: no such file" in _error_line(capsys, "data build")
    assert not (tmp_path / "o.jsonl").exists()


def test_training_says_what_min_pairs_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """trl_standard.jsonl: alice has 2 pairs, bob 3; data.min_pairs=3 drops alice, and the command says so
    on stderr before it goes on (here to refuse bob's 3 pairs as too few for an episode)."""
    fixture = Path(__file__).parent / "fixtures" / "trl_standard.jsonl"
    argv = ["train-reward", "--data", str(fixture), "--embedder", "minilm", "--out", str(tmp_path / "r")]
    main([*argv, "data.min_pairs=3"])
    err = capsys.readouterr().err
    assert "trl_standard.jsonl (train): dropped 1 users with fewer than data.min_pairs pairs (2 pairs)" in err

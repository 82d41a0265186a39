"""The command line on small inputs: synth -> train -> evaluate, the demo's pipeline, help texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import RELEASE_SHAPE, synth_command
from npalign.cli.main import build_parser, main

TINY = [
    *RELEASE_SHAPE,
    "model.hidden_dim=16",
    "model.latent_dim=4",
    "optim.steps=50",
    "optim.warmup_steps=5",
    "run.save_every=50",
    "eval.val_every=50",
    "eval.val_episodes=16",
    "run.progress=false",
]


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "synth", "train", "evaluate", "data", "serve"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: npalign" in capsys.readouterr().out


def test_synth_train_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "paper.jsonl"
    assert main(synth_command(str(data), 2000, 40, "--write-splits")) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 2000 and {"user_id", "chosen", "rejected", "user_type", "split"} <= set(rows[0])
    assert json.loads(Path(f"{data}.task.json").read_text())["name"] == "paper1d"
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "paper.train.jsonl"),
                "--val",
                str(tmp_path / "paper.validation.jsonl"),
                "--model",
                "np-btl",
                "--out",
                str(run),
                *TINY,
            ]
        )
        == 0
    )
    assert (run / "model.safetensors").exists() and (run / "config.yaml").exists()
    out = tmp_path / "eval" / "results.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run),
                "--data",
                str(tmp_path / "paper.test.jsonl"),
                "--contexts",
                "0",
                "1",
                "3",
                "--episodes",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    record = results["models"]["np-btl"]["accuracy"]
    assert set(record) == {"0", "1", "3"}
    assert {"mean", "sem", "by_type"} <= set(record["1"]) and set(record["1"]["by_type"]) == {
        "type0",
        "type1",
    }
    assert results["ceiling"] == pytest.approx({"0": 75.0, "1": 87.5, "3": 96.875})
    assert (out.parent / "accuracy.png").stat().st_size > 1000 and (out.parent / "results.md").exists()
    assert "| np-btl |" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train", "--data", str(empty), "--model", "btl", "--out", str(tmp_path / "r")]) == 2
    assert "is empty" in capsys.readouterr().err
    data = tmp_path / "d.jsonl"
    main(synth_command(str(data), 400, 40))
    assert main(["train", "--data", str(data), "--model", "np-btl", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "fewer pairs than context + targets" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "optim.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_demo_pipeline_small(tmp_path: Path) -> None:
    """The demo's code path end to end with small budgets (the full demo is a benchmark)."""
    from npalign.cli.demo import run_synthetic_benchmark

    models = {"btl": ["model.kind=btl", *TINY], "np-btl": ["model.kind=np-btl", *TINY]}
    run = run_synthetic_benchmark(
        tmp_path,
        models=models,
        episodes=64,
        progress=False,
        task_overrides={"num_pairs": 4000, "num_users": 80},
    )
    results = json.loads(run.paths["json"].read_text())
    assert set(results["models"]) == {"btl", "np-btl"}
    assert results["ceiling"]["10"] == pytest.approx(99.9755859375)
    assert run.paths["plot"].exists() and "Bayes ceiling" in run.paths["markdown"].read_text()


def test_overrides_may_follow_options(tmp_path: Path) -> None:
    """`--out DIR key=value` and `key=value --out DIR` mean the same; an unknown flag is still refused."""
    from npalign.utils.io import read_json

    assert main(synth_command(str(tmp_path / "p.jsonl"), 2000, 20)) == 0
    args = [
        "train-reward",
        "--data",
        str(tmp_path / "p.jsonl"),
        "--model",
        "btl",
        "--out",
        str(tmp_path / "r"),
    ]
    assert (
        main(
            [
                *args,
                "optim.steps=3",
                "optim.warmup_steps=1",
                "run.progress=false",
                "--no-progress",
                "run.log_every=1",
                "run.save_every=3",
            ]
        )
        == 0
    )
    assert read_json(tmp_path / "r" / "summary.json")["steps"] == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train-reward", "--out", "x", "--bogus"])
    with pytest.raises(SystemExit):
        main(["train-reward", "--out", str(tmp_path / "s"), "--bogus", "optim.steps=3"])

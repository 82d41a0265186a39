"""Configs: YAML + key=value overrides, unknown keys and wrong types stop the run, shipped YAMLs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from npalign.config import RewardTrainConfig, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(RewardTrainConfig, overrides=["optim.lr=3e-4", "model.kind=dpl", "eval.contexts=[0, 2]", "run.progress=false"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.model.kind == "dpl"
    assert cfg.eval.contexts == [0, 2] and cfg.run.progress is False
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["optim.lrr=1"], ValueError, r"unknown config key\(s\) \['optim.lrr'\]"),
        (["optim.steps=abc"], TypeError, r"optim.steps: expected an integer, got 'abc'"),
        (["optim.steps=1.5"], TypeError, r"optim.steps: expected an integer"),
        (["model.kind=gpt"], ValueError, r"model.kind='gpt' is not one of"),
        (["episodes.min_context=5", "episodes.max_context=2"], ValueError, r"min_context=5 and max_context=2"),
        (["run.save_every=30", "run.log_every=20"], ValueError, r"run.save_every=30 must be a positive multiple of log_every=20"),
        (["model.pooling=sum"], ValueError, r"model.pooling='sum'"),
        (["model.encoder_depth=1"], ValueError, r"model.encoder_depth=1 must be >= 2"),
        (["model.decoder_depth=0"], ValueError, r"model.decoder_depth=0 must be >= 1"),
        (["model.item_dropout=1.0"], ValueError, r"model.item_dropout=1.0 must lie in \[0, 1\)"),
        (["model.conditioning=concat"], ValueError, r"model.conditioning='concat': use 'shift' or 'film'"),
        (["run.progress=maybe"], TypeError, r"progress: expected true/false"),
        (["optim.lr"], ValueError, r"is not key=value"),
    ],
)
def test_bad_configs_stop_with_the_key_named(overrides: list[str], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load_config(RewardTrainConfig, overrides=overrides)


def test_every_reward_yaml_loads() -> None:
    files = sorted((CONFIGS / "reward").glob("*.yaml"))
    assert files
    for path in files:
        load_config(RewardTrainConfig, path)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  kind: np-btl\noptim:\n  steps: 10\n  warmup_steps: 5\n")
    cfg = load_config(RewardTrainConfig, path, ["optim.steps=20"])
    assert cfg.optim.steps == 20 and cfg.optim.warmup_steps == 5
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config(RewardTrainConfig, path)

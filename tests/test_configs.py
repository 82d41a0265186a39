"""Every YAML under configs/ loads and validates: training configs into their class, benchmark settings
through benchmarks/pipeline.py (whose key=value overrides go through load_config); unknown keys stop."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from npalign.config import PolicyTrainConfig, RewardTrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
YAML_FILES = sorted(CONFIGS.glob("**/*.yaml"))


@pytest.fixture(scope="module")
def pipeline() -> ModuleType:
    """benchmarks/pipeline.py, imported from its file (benchmarks/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("pipeline", REPO / "benchmarks" / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline"] = module  # dataclass annotations resolve through sys.modules
    spec.loader.exec_module(module)
    return module


def training_class(path: Path) -> type:
    """The config class of a training YAML: by folder (reward/, dpo/), else a policy file names `mode` or `dpo`."""
    folder = path.relative_to(CONFIGS).parts[0]
    if folder in ("reward", "dpo"):
        return RewardTrainConfig if folder == "reward" else PolicyTrainConfig
    data = yaml.safe_load(path.read_text()) or {}
    return PolicyTrainConfig if {"mode", "dpo"} & set(data) else RewardTrainConfig


def test_configs_folder_has_every_kind() -> None:
    folders = {path.relative_to(CONFIGS).parts[0] for path in YAML_FILES}
    assert {"reward", "dpo", "tiny", "benchmarks"} <= folders


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_under_configs_loads(path: Path, pipeline: ModuleType) -> None:
    if path.parent.name == "benchmarks":
        settings = pipeline.load_settings(path)
        assert isinstance(settings, pipeline.SCHEMAS[path.stem])
    else:
        cfg = load_config(training_class(path), path)
        assert isinstance(cfg, training_class(path))


def test_benchmark_settings_file_per_schema(pipeline: ModuleType) -> None:
    """Each script with a schema has its committed settings file, and each settings file its schema."""
    stems = {path.stem for path in (CONFIGS / "benchmarks").glob("*.yaml")}
    assert stems == set(pipeline.SCHEMAS)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"episodez": 10}, r"unknown config key\(s\) \['episodez'\]"),
        ({"episodes": "many"}, r"episodes: expected an integer"),
        (
            {"oracle": ["model.kind=btl", "optim.stepz=3"]},
            r"oracle: unknown config key\(s\) \['optim.stepz'\]",
        ),
        ({"models": {"BTL": ["model.kind=gpt"]}}, r"models.BTL: model.kind='gpt' is not one of"),
        ({"models": {"BTL": "model.kind=btl"}}, r"models.BTL: expected a list of key=value strings"),
        ({"models": {"NP": {"config": "np.yaml", "extra": 1}}}, r"models.NP: expected \{config: FILE"),
    ],
)
def test_bad_benchmark_settings_stop_naming_file_and_key(
    tmp_path: Path, pipeline: ModuleType, edit: dict, message: str
) -> None:
    good = {"dataset": "dsp", "common": ["run.progress=false"], "models": {"BTL": ["model.kind=btl"]}}
    path = tmp_path / "dsp.yaml"
    path.write_text(yaml.safe_dump(good | {"oracle": ["model.kind=btl"]} | edit))
    with pytest.raises((ValueError, TypeError), match=message) as error:
        pipeline.load_settings(path)
    assert str(path) in str(error.value)


def test_settings_base_and_model_config_file(tmp_path: Path, pipeline: ModuleType) -> None:
    """`base:` starts from another settings file; `{config: FILE}` flattens a training config into overrides."""
    (tmp_path / "np.yaml").write_text("model:\n  kind: np-btl\noptim:\n  steps: 7\n")
    (tmp_path / "dsp.yaml").write_text(
        yaml.safe_dump(
            {
                "dataset": "dsp",
                "common": ["run.progress=false", "eval.contexts=[0, 2]", "eval.targets=5"],
                "models": {"NP": {"config": "np.yaml", "overrides": ["optim.lr=1e-3"]}},
                "oracle": ["model.kind=btl"],
            }
        )
    )
    (tmp_path / "hh_relabeled.yaml").write_text("base: dsp.yaml\ndataset: hh-relabeled\n")
    settings = pipeline.load_settings(tmp_path / "hh_relabeled.yaml")
    assert settings.dataset == "hh-relabeled"
    assert settings.models == {"NP": ["model.kind=np-btl", "optim.steps=7", "optim.lr=1e-3"]}
    assert (settings.contexts, settings.targets) == ([0, 2], 5)


def test_unknown_key_in_a_training_yaml_stops(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  kind: np-btl\noptim:\n  stepz: 10\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['optim.stepz'\]"):
        load_config(RewardTrainConfig, path)

"""Bad inputs end in one line `npalign <command>: error: ...` naming the file (and line), exit code 2."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from npalign.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TINY_REWARD = [
    "model.hidden_dim=16",
    "model.latent_dim=4",
    "optim.steps=5",
    "optim.warmup_steps=1",
    "run.save_every=5",
    "run.log_every=5",
    "eval.val_every=5",
    "run.progress=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Feature data, a reward run and a policy run, each trained for a step or a few (a few seconds)."""
    root = tmp_path_factory.mktemp("cli_errors")
    data = root / "features.jsonl"
    assert (
        main(["synth", "--task", "paper1d", "--num-pairs", "800", "--num-users", "20", "--out", str(data)])
        == 0
    )
    reward = root / "reward"
    assert main(["train", "--data", str(data), "--model", "np-btl", "--out", str(reward), *TINY_REWARD]) == 0
    policy = root / "policy"
    tiny_policy = [
        "optim.steps=1",
        "optim.warmup_steps=1",
        "run.save_every=1",
        "run.log_every=1",
        "data.val_split=null",
    ]
    config, fixture = REPO / "configs/tiny/np_dpo.yaml", REPO / "tests/fixtures/dpo_tiny.jsonl"
    argv = ["train-dpo", "--config", str(config), "--out", str(policy), "--no-progress", *tiny_policy]
    assert main([*argv, f"data.train={fixture}", f"embedder.cache={root / 'cache'}"]) == 0
    return {"data": data, "reward": reward, "policy": policy}


def _copy(run: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(run, tmp / run.name))


def _truncate(path: Path, size: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:size])


CORRUPT_JSON = '{"format_version": 1, "mod\n'


# Each case: (tmp folder, runs) -> (argv, strings the error line must contain).
Case = Callable[[Path, dict[str, Path]], tuple[list[str], list[str]]]


def _evaluate_args(command: str, model_flag: str, model: Path, runs: dict[str, Path], tmp: Path) -> list[str]:
    """`evaluate --model` or `evaluate-dpo --policy` on the shared data, writing into `tmp`."""
    return [command, model_flag, str(model), "--data", str(runs["data"]), "--out", str(tmp / "r.json")]


def _evaluate(model: Path, runs: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    return [*_evaluate_args("evaluate", "--model", model, runs, tmp), *extra]


def _evaluate_dpo(policy: Path, runs: dict[str, Path], tmp: Path, *extra: str) -> list[str]:
    return [*_evaluate_args("evaluate-dpo", "--policy", policy, runs, tmp), *extra]


def _generate(policy: Path) -> list[str]:
    return ["generate", "--policy", str(policy), "--prompt", "hello"]


def _resume(run: Path, runs: dict[str, Path]) -> list[str]:
    return [
        "train",
        "--data",
        str(runs["data"]),
        "--model",
        "np-btl",
        "--out",
        str(run),
        "--resume",
        *TINY_REWARD,
    ]


def _train_with_config(config: Path, runs: dict[str, Path], tmp: Path) -> list[str]:
    return ["train", "--config", str(config), "--data", str(runs["data"]), "--out", str(tmp / "run")]


def contexts_negative(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate(runs["reward"], runs, tmp, "--contexts", "0", "-1"), ["--contexts", "'-1'", ">= 0"]


def contexts_not_a_number(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate(runs["reward"], runs, tmp, "--contexts", "a"), ["--contexts", "'a'"]


def contexts_negative_dpo(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate_dpo(runs["policy"], runs, tmp, "--contexts", "1,-1"), ["--contexts", "'-1'"]


def truncated_model(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["reward"], tmp)
    _truncate(run / "model.safetensors")
    return _evaluate(run, runs, tmp), [
        str(run / "model.safetensors"),
        "truncated or not a safetensors",
        "retrain",
    ]


def truncated_policy(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["policy"], tmp)
    _truncate(run / "policy" / "trainable.safetensors")
    return _generate(run), [str(run / "policy" / "trainable.safetensors"), "truncated or not a safetensors"]


def corrupt_reward_run_json(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["reward"], tmp)
    (run / "run.json").write_text(CORRUPT_JSON)
    return _evaluate(run, runs, tmp), [str(run / "run.json"), "line 1, column 27", "not valid JSON"]


def legacy_reward_run(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["reward"], tmp)
    (run / "run.json").rename(run / "model_config.json")  # what npalign 0.1 wrote instead of run.json
    return _evaluate(run, runs, tmp), [str(run), "npalign 0.1", "retrain"]


def corrupt_run_json(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["policy"], tmp)
    (run / "run.json").write_text('{\n  "kind": "policy",\n  "mod')  # torn while being written
    return _generate(run), [str(run / "run.json"), "line 3, column 3"]


def corrupt_trainer_state(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["reward"], tmp)
    (run / "checkpoint" / "trainer_state.json").write_text('{"step": 5,\n "best"')
    return _resume(run, runs), [str(run / "checkpoint" / "trainer_state.json"), "line 2, column 8"]


def corrupt_optimizer_json(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["reward"], tmp)
    (run / "checkpoint" / "optimizer.json").write_text(CORRUPT_JSON)
    return _resume(run, runs), [str(run / "checkpoint" / "optimizer.json"), "line 1, column 27"]


def yaml_with_tab(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    config = tmp / "bad.yaml"
    config.write_text("# tiny\noptim:\n\tsteps: 5\n")
    return _train_with_config(config, runs, tmp), [str(config), "line 3, column 1", "tabs"]


def yaml_not_a_mapping(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    config = tmp / "list.yaml"
    config.write_text("# a list by mistake\n- optim.steps=5\n")
    return _train_with_config(config, runs, tmp), [str(config), "line 2", "mapping"]


def bad_override_value(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    argv = ["train", "--data", str(runs["data"]), "--out", str(tmp / "run"), "optim.lr=["]
    return argv, ["optim.lr=[", "not valid YAML"]


def features_to_a_policy(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    expected = [str(runs["data"]), "feature vectors", "prompt, chosen and rejected"]
    return _evaluate_dpo(runs["policy"], runs, tmp, "--quiet"), expected


def missing_reward_run(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate(tmp / "nope", runs, tmp), [str(tmp / "nope"), "does not exist", "npalign train"]


def policy_given_as_reward_model(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate(runs["policy"], runs, tmp), [str(runs["policy"]), "policy run", "evaluate-dpo"]


def missing_policy_run(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _generate(tmp / "nope"), [str(tmp / "nope"), "does not exist", "train-dpo"]


def reward_given_as_policy(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate_dpo(runs["reward"], runs, tmp), [str(runs["reward"]), "evaluate-reward --model"]


def not_a_run(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _generate(tmp), [str(tmp), "train-dpo"]


def out_under_a_file(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    blocker = tmp / "file"
    blocker.write_text("")
    return ["synth", "--task", "paper1d", "--out", str(blocker / "d.jsonl")], [str(blocker), "another path"]


def out_is_a_directory(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    argv = [*_evaluate(runs["reward"], runs, tmp)[:-2], "--out", str(tmp)]  # checked before the work
    return argv, [str(tmp), "is a directory"]


def run_json_missing_a_key(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    run = _copy(runs["reward"], tmp)
    record = json.loads((run / "run.json").read_text())
    del record["model"]
    (run / "run.json").write_text(json.dumps(record))
    return _evaluate(run, runs, tmp), [str(run / "run.json"), "lacks ['model']", "restore it or retrain"]


def no_episodes(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate(runs["reward"], runs, tmp, "--episodes", "0"), ["episodes=0", ">= 1"]


def negative_targets(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _evaluate(runs["reward"], runs, tmp, "--targets", "-1"), ["targets=-1", ">= 1"]


def contexts_with_elicit(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    argv = _evaluate(runs["reward"], runs, tmp, "--elicit", "random", "--contexts", "0", "1")
    return argv, ["--contexts does not apply with --elicit"]


def texts_to_a_feature_model(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    fixture = REPO / "tests/fixtures/dpo_tiny.jsonl"
    argv = ["evaluate", "--model", str(runs["reward"]), "--data", str(fixture), "--out", str(tmp / "r.json")]
    return argv, [str(fixture), "holds texts", "trained on feature vectors"]


def config_is_a_directory(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return _train_with_config(tmp, runs, tmp), [str(tmp), "is a directory"]


def synth_alpha_zero(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    argv = ["synth", "--task", "dirichlet2d", "--alpha", "0", "--out", str(tmp / "d.jsonl")]
    return argv, ["alpha=0.0", "> 0"]


def user_id_without_user_type(tmp: Path, runs: dict[str, Path]) -> tuple[list[str], list[str]]:
    return [*_generate(runs["policy"]), "--user-id", "u1"], ["--user-id", "--user-type"]


CASES: list[Case] = [
    contexts_negative,
    contexts_not_a_number,
    contexts_negative_dpo,
    truncated_model,
    truncated_policy,
    corrupt_reward_run_json,
    legacy_reward_run,
    corrupt_run_json,
    corrupt_trainer_state,
    corrupt_optimizer_json,
    yaml_with_tab,
    yaml_not_a_mapping,
    bad_override_value,
    features_to_a_policy,
    missing_reward_run,
    policy_given_as_reward_model,
    missing_policy_run,
    reward_given_as_policy,
    not_a_run,
    out_under_a_file,
    out_is_a_directory,
    run_json_missing_a_key,
    no_episodes,
    negative_targets,
    contexts_with_elicit,
    texts_to_a_feature_model,
    config_is_a_directory,
    synth_alpha_zero,
    user_id_without_user_type,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_error_line(
    case: Case, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected = case(tmp_path, runs)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"npalign {argv[0]}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_verbose_adds_the_traceback_to_the_log(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # what -v does outside pytest, whose log handler is already installed
    argv, _ = corrupt_reward_run_json(tmp_path, runs)
    assert main(["-v", *argv]) == 2
    assert any(record.exc_info for record in caplog.records)
    assert capsys.readouterr().err.startswith("npalign evaluate: error: ")


def test_a_bug_is_not_reported_as_a_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """An assert that fires is an internal invariant broken: it keeps its traceback."""
    import npalign.cli.main as cli

    def broken(args: object) -> int:
        raise AssertionError("invariant")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["synth"].set_defaults(func=broken)  # type: ignore[union-attr]
    with pytest.raises(AssertionError):
        main(["synth", "--task", "paper1d", "--out", "unused.jsonl"])


@pytest.mark.parametrize("target", ["data", "run.json"])
def test_evaluate_refuses_an_out_that_would_overwrite_its_input_or_a_run(
    target: str, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out may not land on the data or on a run's own files: refused before any work, every file as it was."""
    run, data = _copy(runs["reward"], tmp_path), Path(shutil.copy(runs["data"], tmp_path / "data.jsonl"))
    out = {"data": data, "run.json": run / "run.json"}[target]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    for argv in (
        ["evaluate", "--model", str(run), "--data", str(data), "--out", str(out)],
        ["evaluate-dpo", "--policy", str(runs["policy"]), "--data", str(data), "--out", str(out)],
    ):
        assert main(argv) == 2
        assert "--out" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_hub_dataset_that_cannot_be_reached_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline (as in CI) the hub is not asked at all; the error says what to check."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    out = tmp_path / "d.jsonl"
    argv = ["data", "build", "dsp", "--input", "hf:npalign-tests/no-such-dataset", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load npalign-tests/no-such-dataset from the Hugging Face hub" in err and "\n" not in err
    assert not out.exists()


def test_ctrl_c_is_one_line_and_a_training_run_says_how_to_resume(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """A real SIGINT to a real training process, once it has saved a checkpoint: one line, exit code 130."""
    out = tmp_path / "run"
    train = ["train", "--data", str(runs["data"]), "--model", "np-btl", "--out", str(out), *TINY_REWARD]
    endless = ["optim.steps=1000000", "run.save_every=5", "eval.val_every=1000000", "eval.patience=null"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "npalign.cli.main", *train, *endless],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert (
        err.strip() == "npalign train: interrupted (rerun with --resume to go on from the last checkpoint)."
    )


def test_verbose_may_follow_the_command(runs: dict[str, Path], tmp_path: Path) -> None:
    assert (
        main(
            [
                "synth",
                "--task",
                "paper1d",
                "--num-pairs",
                "400",
                "--num-users",
                "20",
                "--out",
                str(tmp_path / "d.jsonl"),
                "-v",
            ]
        )
        == 0
    )

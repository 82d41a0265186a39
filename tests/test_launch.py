"""The scale-out path: the tiny reward and policy configs trained by two CPU processes under `accelerate
launch`, and metrics mirrored to TensorBoard through accelerate's trackers (`run.report_to`).

`accelerate launch --cpu --num_processes 2` starts one process, not two (on a CPU accelerate leaves
spawning to mpirun), so these tests launch through torchrun with `--multi_gpu` and no visible GPU: each
process's `Accelerator(cpu=True)` then joins a two-process gloo group (MULTI_CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from npalign.cli.main import main
from npalign.inference.policy import load_policy
from npalign.models.builders import load_reward_model
from npalign.models.policy import TRAINABLE_FILE
from npalign.utils.io import load_tensors, read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    "--main_process_port", "0",  # a free port, so that parallel test runs do not collide
]  # fmt: skip
# Tiny settings; log_every=1 so that the first record is one step's loss.
REWARD = ["--model", "np-btl", "model.hidden_dim=16", "model.latent_dim=4", "model.item_dropout=0", "optim.steps=6",
          "optim.warmup_steps=2", "run.log_every=1", "run.save_every=3", "eval.val_every=3", "eval.val_episodes=16",
          "run.progress=false"]  # fmt: skip
RUN_FILES = {".lock", "checkpoint", "config.yaml", "metrics.jsonl", "run.json", "summary.json"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread here and in the launched processes: runs are then bitwise comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("launch")
    data = folder / "paper.jsonl"
    args = ["synth", "--task", "paper1d", "--num-pairs", "2000", "--num-users", "40", "--out", str(data)]
    assert main([*args, "--write-splits"]) == 0
    return folder


def _launch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    process = subprocess.run(
        [*LAUNCH, "-m", "npalign.cli.main", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    return process


def _records(run: Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl split into training records (they carry the learning rate) and validation records."""
    records = read_jsonl(run / "metrics.jsonl")
    training = [r for r in records if "lr" in r or "learning_rate" in r]
    return training, [r for r in records if r not in training]


@pytest.mark.slow
def test_reward_model_trains_on_two_processes(paper_data: Path) -> None:
    """Two ranks train one model: metrics and files are written once, by the main process; the schedule
    follows the optimizer steps; and rank 1 draws other episodes than rank 0.

    The last is seen against a one-process run of the same config. Rank 0 draws exactly the episodes of
    the one-process run, from the same initial weights, so the first step's loss is the same to the bit.
    DDP then averages the two ranks' gradients: had rank 1 drawn rank 0's episodes (there is no dropout
    here), the average would equal rank 0's gradient and the weights of step 6 would match the one-process
    run's up to rounding (the two runs use different thread counts). The weights are compared, not the
    losses: six small steps leave the loss within 1e-6 of log 2, where the two runs' losses can round to
    the same float.
    """
    data = [
        "--data",
        str(paper_data / "paper.train.jsonl"),
        "--val",
        str(paper_data / "paper.validation.jsonl"),
    ]
    single, launched = paper_data / "single", paper_data / "launched"
    assert main(["train-reward", *data, "--out", str(single), *REWARD]) == 0
    printed = _launch("train-reward", *data, "--out", str(launched), *REWARD).stdout.splitlines()

    summary = read_json(launched / "summary.json")
    assert summary["steps"] == summary["steps_this_run"] == 6
    training, validation = _records(launched)
    assert [r["step"] for r in training] == [1, 2, 3, 4, 5, 6]  # once each: rank 1 wrote nothing
    assert [r["step"] for r in validation] == [3, 6]
    reference, _ = _records(single)
    assert [r["lr"] for r in training] == [r["lr"] for r in reference]  # one scheduler step per step
    assert training[0] == reference[0]
    assert read_json(launched / "checkpoint" / "trainer_state.json")["step"] == 6
    assert read_json(single / "checkpoint" / "trainer_state.json")["step"] == 6
    one, two = (load_tensors(run / "checkpoint" / "model.safetensors") for run in (single, launched))
    assert one.keys() == two.keys()
    assert max(float((one[name] - two[name]).abs().max()) for name in one) > 1e-4  # observed ~2e-3
    assert len(printed) == 1 and json.loads(printed[0])["best_step"] == summary["best_step"]  # rank 0 reports
    model, record = load_reward_model(launched)  # strictly: every weight there, none extra
    assert record["kind"] == "reward" and sum(p.numel() for p in model.parameters()) > 0
    assert summary["best_step"] in (3, 6)
    # The main process alone wrote the directory: nothing but the run's own files, no temporaries left.
    assert {p.name for p in launched.iterdir()} == RUN_FILES | {"model.safetensors"}
    assert len((launched / ".lock").read_text().split()) == 1
    # A run that reports to no tracker leaves nothing beside the run's own files.
    assert {p.name for p in single.iterdir()} == RUN_FILES | {"model.safetensors"}


@pytest.mark.slow
def test_policy_trains_on_two_processes(tmp_path: Path) -> None:
    """The tiny NP-DPO config for two steps on two ranks: a complete run that reloads strictly."""
    run = tmp_path / "run"
    printed = _launch(
        "train-dpo", "--config", "configs/tiny/np_dpo.yaml", "--out", str(run), "--no-progress",
        f"embedder.cache={tmp_path / 'cache'}", "optim.steps=2", "run.log_every=1", "run.save_every=2",
        "eval.val_every=2", "eval.val_episodes=2",
    ).stdout.splitlines()  # fmt: skip
    summary = read_json(run / "summary.json")
    assert summary["steps"] == summary["steps_this_run"] == 2 and summary["best_step"] == 2
    assert len(printed) == 1 and json.loads(printed[0])["best_step"] == 2
    training, validation = _records(run)
    assert [r["step"] for r in training] == [1, 2] and [r["step"] for r in validation] == [2]
    # The schedule after steps 1 and 2 (2 warm-up steps); stepped once per process it ends at 0.1 * 0.05.
    assert [r["learning_rate"] for r in training] == [0.05, 0.05]
    runner = load_policy(run)  # strictly: LoRA, FiLM and encoder all present
    assert runner.policy is not None
    assert {key.split(".")[0] for key in load_tensors(run / "policy" / TRAINABLE_FILE)} == {
        "lora",
        "film",
        "encoder",
    }
    assert {p.name for p in run.iterdir()} == RUN_FILES | {"policy"}


def test_metrics_reach_tensorboard(paper_data: Path) -> None:
    """run.report_to=[tensorboard]: event files in the run directory whose scalars are metrics.jsonl's."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = paper_data / "tensorboard"
    data = [
        "--data",
        str(paper_data / "paper.train.jsonl"),
        "--val",
        str(paper_data / "paper.validation.jsonl"),
    ]
    assert (
        main(
            [
                "train-reward",
                *data,
                "--out",
                str(run),
                *REWARD,
                "run.log_every=3",
                "run.report_to=[tensorboard]",
            ]
        )
        == 0
    )
    events = sorted(run.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event files"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for folder in {path.parent for path in events}:
        accumulator = EventAccumulator(str(folder)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    training, validation = _records(run)
    assert [r["step"] for r in training] == [3, 6]
    for name, records in (
        ("loss", training),
        ("lr", training),
        ("val_nll", validation),
        ("val_accuracy", validation),
    ):
        # TensorBoard stores float32.
        assert sorted(scalars[name]) == [(r["step"], float(np.float32(r[name]))) for r in records], name

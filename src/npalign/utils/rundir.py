"""Run directories of both jobs: names, run.json, the writer's lock, checks before anything is written (L0, utils).

A run directory (`--out`) holds, for a reward model or a policy alike:

    run.json          kind (reward | policy), format and library versions, the embedder and its feature
                      convention, the base model, the user types, and what inference needs to rebuild it
    config.yaml       the resolved config (rerun with --config)
    model.safetensors the kept reward-model weights (reward runs)
    policy/           the kept policy: LoRA + FiLM + encoder weights and their config (policy runs)
    metrics.jsonl     training averages every run.log_every steps and every validation
    checkpoint/       the last state for --resume
    summary.json      wall time and the kept step
    .lock             held by the process that writes the run
    <name of DIR>/    TensorBoard event files, with run.report_to=[tensorboard] (accelerate's layout)

Nothing in an existing run is rewritten before the request has been checked against it
(`check_run_directory`), a second writer is refused (`run_lock`), and a new run that fails before its
first record leaves no run behind (`forget_unstarted_run`), so the mended command can use the same --out.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from npalign.utils.io import read_json, read_yaml

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
LOCK_FILE = ".lock"
REWARD_WEIGHTS = "model.safetensors"
POLICY_DIR = "policy"
RUN_FORMAT_VERSION = 2
RUN_KINDS = ("reward", "policy")
# What each kind's run.json holds besides format_version, kind and versions (reward.py / dpo.py write them).
RUN_KEYS = {
    "reward": ("embedder", "type_names", "model", "embed_dim"),
    "policy": (
        "embedder",
        "base",
        "type_names",
        "mode",
        "beta",
        "max_prompt_length",
        "max_response_length",
        "data",
    ),
}
# Config keys that may change between a run and its --resume: they change how it is shown, not what it is.
RESUME_FREE_KEYS = (("run", "progress"), ("run", "report_to"))
# The npalign 0.1 reward-run record, replaced by run.json.
LEGACY_REWARD_FILE = "model_config.json"
# The files above that a run directory holds of its own: no other command may write over one of these.
RUN_OWN_FILES = (
    RUN_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CHECKPOINT_DIR, LOCK_FILE, REWARD_WEIGHTS, POLICY_DIR,
    LEGACY_REWARD_FILE,
)  # fmt: skip


def library_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a run depends on."""
    versions = {"python": platform.python_version()}
    for package in ("npalign", "torch", "transformers", "peft", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_record(kind: str, **fields: Any) -> dict[str, Any]:
    """The run.json document: format, kind and versions first, then the job's own fields."""
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind {kind!r} is not one of {RUN_KINDS}.")
    return {"format_version": RUN_FORMAT_VERSION, "kind": kind, "versions": library_versions(), **fields}


def _legacy_remedy(directory: Path) -> str:
    return (
        f"{directory} was written by npalign 0.1, whose runs this version does not read; retrain it with "
        f"this version (its settings are in {directory / CONFIG_FILE}), or load it with npalign 0.1.x."
    )


def read_run(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The run.json of a run directory, checked for format (and for `kind` when given).

    Raises:
        FileNotFoundError: `directory` is not a run directory.
        ValueError: a run of another kind or format (an npalign 0.1 run says how to go on).
    """
    directory = Path(directory)
    path = directory / RUN_FILE
    what = {"reward": "npalign train-reward", "policy": "npalign train-dpo"}.get(kind or "", "npalign")
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; pass the --out directory of `{what}`.")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist; pass the --out directory of `{what}`.")
    if not path.is_file():
        if (directory / LEGACY_REWARD_FILE).is_file():
            raise ValueError(_legacy_remedy(directory))
        raise FileNotFoundError(
            f"{directory} is not an npalign run directory (no {RUN_FILE}); pass the --out folder of `{what}`."
        )
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format_version") != RUN_FORMAT_VERSION:
        version = record.get("format_version") if isinstance(record, dict) else None
        if version == 1:
            raise ValueError(_legacy_remedy(directory))
        raise ValueError(f"{path}: unsupported format_version {version!r}; expected {RUN_FORMAT_VERSION}.")
    if record.get("kind") not in RUN_KINDS:
        raise ValueError(f"{path}: kind {record.get('kind')!r} is not one of {RUN_KINDS}.")
    missing = [key for key in RUN_KEYS[record["kind"]] if key not in record]
    if missing:
        raise ValueError(f"{path}: lacks {missing}; the file was edited or cut short: restore it or retrain.")
    if kind is not None and record["kind"] != kind:
        raise ValueError(
            f"{directory} holds a {record['kind']} run, not a {kind} run; "
            + (
                f"use `npalign evaluate-dpo --policy {directory}` or `npalign generate --policy {directory}`."
                if record["kind"] == "policy"
                else f"use `npalign evaluate-reward --model {directory}`."
            )
        )
    return record


@contextmanager
def run_lock(directory: str | Path) -> Iterator[None]:
    """Hold `directory/.lock` for the block; a second writer of the same run gets a clear error at once.

    The lock is an flock on the file, so it is released when the holder exits, even when killed.

    Raises:
        FileExistsError: another process holds the lock (its pid is named).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise FileExistsError(
                f"{directory} is being written by another npalign process (pid {holder}); wait for it to "
                "finish or choose another --out."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock


def _without(config: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for section, key in keys:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def check_run_directory(directory: str | Path, kind: str, config: dict[str, Any], *, resume: bool) -> bool:
    """Check a training request against what `directory` holds, before anything in it is written.

    Args:
        directory: the run directory (`--out`); it may not exist yet.
        kind: "reward" or "policy", the job about to write it.
        config: the resolved config of the request, as a dict.
        resume: the request is `--resume`.
    Returns:
        True when there is a checkpoint to resume from.
    Raises:
        FileExistsError: a run is already there and `resume` is false.
        ValueError: the run there is of another kind or format, or `--resume` asks for another config.
    """
    directory = Path(directory)
    if (directory / LEGACY_REWARD_FILE).is_file():
        raise ValueError(_legacy_remedy(directory))
    has_run = (directory / RUN_FILE).is_file() or (directory / CONFIG_FILE).is_file()
    if has_run and not resume:
        raise FileExistsError(
            f"{directory} already holds a run; pass --resume to continue it or choose another --out."
        )
    if not has_run:
        return False
    if (directory / RUN_FILE).is_file():
        read_run(directory, kind)
    if (directory / CONFIG_FILE).is_file():
        recorded = _without(read_yaml(directory / CONFIG_FILE), RESUME_FREE_KEYS)
        current = _without(config, RESUME_FREE_KEYS)
        if recorded != current:
            changed = sorted(
                key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key)
            )
            raise ValueError(
                f"--resume: the config differs from {directory / CONFIG_FILE} in section(s) {changed}; resume "
                "with the same config (see that file) or start a new run with another --out."
            )
    return (directory / CHECKPOINT_DIR).is_dir()


def check_new_run_directory(directory: Path) -> None:
    """Where `save_pretrained` may write a run: a new or existing directory that holds no run yet."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; save_pretrained writes a directory, choose another path.")
    if (directory / RUN_FILE).exists():
        raise FileExistsError(f"{directory} already holds a run; choose another directory.")


def forget_unstarted_run(directory: str | Path) -> bool:
    """Remove config.yaml and run.json of a run that wrote nothing else (no metrics, weights, checkpoint or
    summary): what a new run leaves when it fails before its first record. Returns whether it did."""
    directory = Path(directory)
    started = (METRICS_FILE, CHECKPOINT_DIR, SUMMARY_FILE, REWARD_WEIGHTS, POLICY_DIR)
    if any((directory / name).exists() for name in started):
        return False
    for name in (CONFIG_FILE, RUN_FILE):
        (directory / name).unlink(missing_ok=True)
    return True


def relative_to_run(path: str | None, directory: str | Path) -> str | None:
    """A data path as run.json records it: relative to the run directory (None stays None)."""
    if not path or path.startswith("hf:"):
        return path
    return os.path.relpath(Path(path).resolve(), Path(directory).resolve())


def path_from_run(path: str | None, directory: str | Path) -> str | None:
    """The inverse of `relative_to_run`: a recorded path made usable from the working directory."""
    if not path or path.startswith("hf:") or Path(path).is_absolute():
        return path
    return str((Path(directory) / path).resolve())

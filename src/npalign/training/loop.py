"""Pieces both training loops share: optimizer and schedule, checkpoints, metrics, keep-the-best (L2, training).

Small helpers, not a framework: each loop (`training/reward.py`, `training/dpo.py`) keeps its own step
and its own validation, and calls these for everything around them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs
from torch import Tensor, nn
from tqdm.auto import tqdm

from npalign.config import DataConfig, OptimConfig, RunConfig, to_dict
from npalign.data.episodes import derived_seed
from npalign.data.loaders import LoadReport, load_preferences
from npalign.types import PreferenceSet
from npalign.utils.io import (
    append_jsonl,
    atomic_dir,
    load_tensors,
    read_json,
    save_tensors,
    truncate_jsonl,
    write_json,
    write_yaml,
)
from npalign.utils.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    check_run_directory,
    forget_unstarted_run,
    run_lock,
)

logger = logging.getLogger(__name__)


def load_run_data(
    data: DataConfig,
) -> tuple[PreferenceSet, PreferenceSet | None, dict[str, LoadReport]]:
    """The training and validation pairs that `data` names, and what loading dropped from each.

    Validation is `data.val` (or the training file when only `data.val_split` is set), rows of
    `data.val_split`; None when neither is set.
    """
    if not data.train:
        raise ValueError("data.train is empty; name a preference file, e.g. --data FILE or data.train=FILE.")
    train, train_report = load_preferences(
        data.train, split=data.train_split, labels=data.labels, min_pairs=data.min_pairs
    )
    reports = {"train": train_report}
    if data.val is None and data.val_split is None:
        return train, None, reports
    val, reports["validation"] = load_preferences(
        data.val or data.train, split=data.val_split, labels=data.labels, min_pairs=data.min_pairs
    )
    return train, val, reports


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 0 to 1, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    parameters: Iterable[nn.Parameter], optim: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `parameters` and its warm-up + cosine schedule, stepped once per optimizer step."""
    optimizer = torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(optim.warmup, optim.steps, optim.min_lr_ratio)
    )
    return optimizer, scheduler


def make_accelerator(run: RunConfig, out_dir: Path, *, unused_parameters: bool = False) -> Accelerator:
    """The run's accelerator: CPU unless CUDA is there, its mixed precision, its trackers (run.report_to).

    Under `accelerate launch` each process draws its own episodes for the same `optim.steps` (no data is
    sharded), so the schedule advances once per optimizer step, not once per process: that is what
    accelerate calls split batches. `unused_parameters`: some steps leave trainable parameters without a
    gradient (an encoder when every context of the batch is empty, an unconditional policy's encoder and
    FiLM), which DDP must then look for; a single process ignores it.
    """
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_parameters else []
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=run.mixed_precision,
        log_with=list(run.report_to) or None,
        project_dir=str(out_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=handlers,
    )


def is_main_process() -> bool:
    """True in a plain run and in the main process of `accelerate launch` (the one that writes and reports)."""
    return PartialState().is_main_process


@contextlib.contextmanager
def open_run(
    out_dir: Path, kind: str, config: Any, accelerator: Accelerator, *, resume: bool
) -> Iterator[bool]:
    """Check the request against `out_dir`, lock it, and start the trackers; yields "resume from a checkpoint".

    The check runs on every process (it only reads) before anything is written; the lock and the writes
    are the main process's. A new run that fails before it has logged, validated or saved anything (bad
    data found at the first draw, say) takes its config.yaml and run.json with it, so that the same
    command, mended, can be run again into the same --out. Trackers named by `config.run.report_to` are
    started and ended here.
    """
    fresh = not any((out_dir / name).is_file() for name in (RUN_FILE, CONFIG_FILE))  # no run there yet
    resumable = check_run_directory(out_dir, kind, to_dict(config), resume=resume)
    # Every process has checked the directory before the main one writes to it (run.json comes first).
    accelerator.wait_for_everyone()
    lock = run_lock(out_dir) if accelerator.is_main_process else contextlib.nullcontext()
    with lock:
        if accelerator.is_main_process:
            # Again under the lock: a run another job finished between the check and the lock is not
            # written over.
            check_run_directory(out_dir, kind, to_dict(config), resume=resume)
        if config.run.report_to:
            accelerator.init_trackers(out_dir.name, config=_flat(to_dict(config)))
        try:
            yield resumable
        except BaseException:
            if fresh and accelerator.is_main_process:
                forget_unstarted_run(out_dir)
            raise
        finally:
            if config.run.report_to:
                accelerator.end_training()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"optim.lr": ...}; lists as strings (trackers take scalars only)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


@contextlib.contextmanager
def sizes_from(keys: str) -> Iterator[None]:
    """Name the config keys behind an episode sampler's context and target sizes in its errors."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{error} (sizes from {keys})") from None


def write_run_files(out_dir: Path, config: Any, record: dict[str, Any]) -> None:
    """config.yaml and run.json, atomically (main process only)."""
    write_yaml(to_dict(config), out_dir / CONFIG_FILE)
    write_json(record, out_dir / RUN_FILE)


class MetricsLog:
    """metrics.jsonl of a run (flushed per record) and the trackers of `run.report_to`.

    On resume, records after the checkpoint's step are dropped: those steps are replayed. A fresh run
    starts an empty log.
    """

    def __init__(self, out_dir: Path, accelerator: Accelerator, *, resumed_step: int | None) -> None:
        self.path = out_dir / METRICS_FILE
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        if not self.is_main:
            return
        if resumed_step is not None:
            truncate_jsonl(self.path, lambda record: record["step"] <= resumed_step)
        elif self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if self.is_main:
            append_jsonl(record, self.path)
            if self.accelerator.trackers:
                self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


class RunningMeans:
    """Sums of per-step statistics, averaged over the steps since the last record."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, stats: dict[str, float], weight: float = 1.0) -> None:
        for name, value in stats.items():
            self.sums[name] = self.sums.get(name, 0.0) + weight * float(value)

    def record(self, done: int, log_every: int, **extra: float) -> dict[str, Any]:
        """{"step": done, **extra, **means}; the means cover the steps since the last multiple of log_every."""
        count = log_every if done % log_every == 0 else done % log_every
        record = {"step": done, **extra, **{name: value / count for name, value in self.sums.items()}}
        self.sums = {}
        return record


def due(done: int, every: int, total: int) -> bool:
    """True at every `every`-th step and at the last one."""
    return done % every == 0 or done == total


def keep_best(state: dict[str, Any], part: str, score: tuple[float, ...], step: int) -> bool:
    """Record `score` (lower is better, compared in order) for `part` if it beats the best so far.

    The best score and its step live in `state` (saved with every checkpoint) as `best_<part>_score`
    and `best_<part>_step`.
    """
    best = state.get(f"best_{part}_score")
    if best is not None and tuple(score) >= tuple(best):
        return False
    state[f"best_{part}_score"] = list(score)
    state[f"best_{part}_step"] = step
    return True


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)


def seeded_step(
    seed: int, accelerator: Accelerator, *parts: int | str
) -> contextlib.AbstractContextManager[Any]:
    """Seed torch's global generators for one step's dropout, per rank, inside a fork of the RNG state.

    A resumed run then draws the same masks, the ranks of a multi-process run draw different ones, and the
    caller's random state is left as it was.
    """
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derived_seed(seed, "dropout", accelerator.process_index, *parts))
            yield

    return block()


# ----- checkpoints: weights + optimizer + scheduler + loop state, pickle-free --------------------------------


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state into tensors (for safetensors) and JSON (hyperparameters, scalars)."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], extra: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, slots in extra["scalars"].items():
        state.setdefault(int(index), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": extra["param_groups"]})


def save_checkpoint(
    out_dir: Path,
    write_weights: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
) -> None:
    """Write `out_dir/checkpoint` as one directory, atomically: `write_weights(folder)` writes the trainable
    weights into it, then the optimizer, scheduler and loop state are added."""
    with atomic_dir(out_dir / CHECKPOINT_DIR) as tmp:
        write_weights(tmp)
        tensors, extra = optimizer_tensors(optimizer)
        save_tensors(tensors, tmp / "optimizer.safetensors")
        extra["scheduler"] = scheduler.state_dict()
        write_json(extra, tmp / "optimizer.json")
        write_json(trainer_state, tmp / "trainer_state.json")


def load_checkpoint(
    out_dir: Path,
    read_weights: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote (`read_weights(folder)` loads the weights strictly) and return
    the loop state."""
    folder = out_dir / CHECKPOINT_DIR
    read_weights(folder)
    extra = read_json(folder / "optimizer.json")
    load_optimizer_tensors(optimizer, load_tensors(folder / "optimizer.safetensors"), extra)
    scheduler.load_state_dict(extra["scheduler"])
    return dict(read_json(folder / "trainer_state.json"))


def resume_state(
    out_dir: Path,
    resumable: bool,
    read_weights: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fresh: dict[str, Any],
) -> dict[str, Any]:
    """The loop state: `fresh` for a new run, else the checkpoint's (its weights, optimizer and schedule
    restored into the given objects)."""
    if not resumable:
        return fresh
    state = load_checkpoint(out_dir, read_weights, optimizer, scheduler)
    logger.info("resumed from step %d", state["step"])
    return state


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Apply the accumulated gradients, advance the schedule, clear the gradients."""
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def write_summary(out_dir: Path, total: int, first_step: int, seconds: float, **fields: Any) -> None:
    """summary.json: steps, this run's wall time and ms per step, plus the job's own fields."""
    steps_run = max(1, total - first_step)
    write_json(
        {
            "steps": total,
            "steps_this_run": total - first_step,
            "seconds_this_run": seconds,
            "ms_per_step": 1000 * seconds / steps_run,
            **fields,
        },
        out_dir / SUMMARY_FILE,
    )

"""Small helpers for training loops: schedule, pickle-free optimizer checkpoints (L2, training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from npalign.utils.io import atomic_dir, load_state_strict, load_tensors, read_json, save_tensors, write_json


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 0 to 1, then cosine decay to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


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
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
) -> None:
    """Write model + optimizer + scheduler + loop state as one directory, atomically."""
    with atomic_dir(path) as tmp:
        save_tensors(model.state_dict(), tmp / "model.safetensors")
        tensors, extra = optimizer_tensors(optimizer)
        save_tensors(tensors, tmp / "optimizer.safetensors")
        extra["scheduler"] = scheduler.state_dict()
        write_json(extra, tmp / "optimizer.json")
        write_json(trainer_state, tmp / "trainer_state.json")


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote (strictly) and return the loop state."""
    load_state_strict(model, load_tensors(path / "model.safetensors"), f"checkpoint {path}")
    extra = read_json(path / "optimizer.json")
    load_optimizer_tensors(optimizer, load_tensors(path / "optimizer.safetensors"), extra)
    scheduler.load_state_dict(extra["scheduler"])
    return dict(read_json(path / "trainer_state.json"))

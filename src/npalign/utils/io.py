"""Atomic, pickle-free files: safetensors weights, JSON/YAML configs, JSONL logs (L0, utils)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.

    A crash while writing leaves the previous file (or nothing) in place, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` as a whole once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_tensors(
    tensors: Mapping[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to a safetensors file atomically (contiguous CPU copies)."""
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file; a clear error if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a safetensors file written by npalign.")
    return load_file(str(path))


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Load `state` into `module`, failing loudly on any missing or unexpected key or shape mismatch.

    The original release loaded non-strictly and silently kept a random context encoder.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what}: checkpoint does not match the model. Missing keys: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; unexpected keys: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. The checkpoint is incomplete or from another model."
        )
    for name, tensor in state.items():
        if tuple(expected[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{what}: tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[name].shape)} in the model built from its config."
            )
    module.load_state_dict(dict(state), strict=True)


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    return yaml.safe_load(path.read_text()) or {}


def append_jsonl(record: Mapping[str, Any], path: str | Path) -> None:
    """Append one JSON line and flush it to disk (metrics survive a crash)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(dict(record)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: str | Path, keep: Any) -> None:
    """Rewrite a JSONL file keeping only the records for which `keep(record)` is true."""
    records = [r for r in read_jsonl(path) if keep(r)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a fresh CPU generator with the same seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

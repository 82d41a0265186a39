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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.

    A crash while writing leaves the previous file (or nothing) in place, never a torn file. The file
    gets the permissions a plain `open(path, "w")` would give (mkstemp's are owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~_umask())
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
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's are owner-only
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
    """Read a safetensors file.

    Raises:
        FileNotFoundError: `path` is missing.
        ValueError: naming `path`, when it is truncated or not a safetensors file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; expected a safetensors file written by npalign: restore it or retrain."
        )
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ValueError(
            f"{path} is truncated or not a safetensors file ({error}); restore it or retrain."
        ) from error


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


def _read_text(path: Path) -> str:
    """The UTF-8 text of `path`; a ValueError naming the file and the offset if it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte offset {error.start}: {error.reason}); "
            "restore the file or save it as UTF-8."
        ) from error


def read_json(path: str | Path) -> Any:
    """Parse a JSON file.

    Raises:
        FileNotFoundError: `path` is missing.
        ValueError: naming `path`, the line and the column (counted from 1), when it is not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg.removesuffix(' at')}); the file is "
            "truncated or was edited by hand: restore it or retrain."
        ) from error


def write_yaml(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; an empty file gives {}.

    Raises:
        FileNotFoundError: `path` is missing.
        ValueError: naming `path`, the line and the column (counted from 1), when it is not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    text = _read_text(path)
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(yaml_error_message(path, text, error)) from error


def yaml_error_message(path: str | Path, text: str, error: yaml.YAMLError) -> str:
    """One line naming `path` and the line and column (counted from 1) where YAML parsing failed."""
    mark = getattr(error, "problem_mark", None)
    what = " ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
    if mark is None:
        return f"{path}: not valid YAML ({what or error}); fix the file."
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    hint = "YAML indents with spaces, not tabs" if "\t" in line else "fix that line"
    return f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({what}); {hint}."


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
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {number}, column {error.colno}: not valid JSON ({error.msg.removesuffix(' at')}); "
                "delete or repair that line."
            ) from error
    return records


def truncate_jsonl(path: str | Path, keep: Any) -> None:
    """Rewrite a JSONL file keeping only the records for which `keep(record)` is true."""
    records = [r for r in read_jsonl(path) if keep(r)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a fresh CPU generator with the same seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

"""Configs from YAML files and key=value overrides: strict types, unknown keys named (L0, config)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import yaml

from npalign.config import jobs, sections

# Config keys that hold file paths: relative values in a config file are read relative to that file,
# and every path is recorded absolute in the resolved config, so a run works from any directory.
PATH_KEYS = (("data", "train"), ("data", "val"), ("embedder", "cache"))
# Keys that moved into the `run` section; named in the error for a config written before the move.
MOVED_TO_RUN = ("seed", "save_every", "log_every", "progress", "mixed_precision")

T = TypeVar("T")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to `annotation`, or raise naming the key."""
    if isinstance(annotation, str):
        # Our own annotations only; they may name any config section of the package.
        namespace = vars(typing) | vars(sections) | vars(jobs) | globals()
        annotation = eval(annotation, namespace)  # noqa: S307
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(annotation)}:
            value = {"name": value}  # `embedder: minilm` is shorthand for `embedder: {name: minilm}`
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a mapping, got {value!r}.")
        return from_dict(annotation, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin in (list, tuple):
        (inner,) = typing.get_args(annotation)[:1]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple):
            raise TypeError(f"{key}: expected a list, got {value!r}.")
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or value == "null":
            return None
        for option in options[:-1]:  # the first type the value converts to (model.bf16: bool, then "auto")
            try:
                return _convert(value, option, key)
            except TypeError:
                pass
        return _convert(value, options[-1], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"{key}: expected true/false, got {value!r}.")
    if annotation is int or annotation is float:
        expected = "an integer" if annotation is int else "a number"
        fractional = annotation is int and isinstance(value, float) and not value.is_integer()
        if isinstance(value, bool) or fractional:  # True is an int to Python, not to a config
            raise TypeError(f"{key}: expected {expected}, got {value!r}.")
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise TypeError(f"{key}: expected {expected}, got {value!r}.") from None
    if annotation is str:
        if not isinstance(value, str | int | float):
            raise TypeError(f"{key}: expected a string, got {value!r}.")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        moved = [k for k in unknown if k in MOVED_TO_RUN and "run" in fields]
        hint = f" ({', '.join(moved)} moved into the run section: write run.{moved[0]}=...)" if moved else ""
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}.{hint}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["optim.lr=3e-4", "model.kind=dpl"] into a nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4).")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as error:
            raise ValueError(
                f"override {item!r}: the value is not valid YAML; quote it or fix it."
            ) from error
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier one.")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """`data` with the relative paths of PATH_KEYS made absolute against `base` (hub ids `hf:...` kept).

    A `model.base` that names an existing folder relative to `base` is resolved too; other values of it
    are model names (smollm2, a hub id) and stay as they are.
    """
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str) and value and not value.startswith("hf:") and not Path(value).is_absolute():
            out[section][key] = str((base / value).resolve())
    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str) and (base / model["base"]).exists():
        model["base"] = str((base / model["base"]).resolve())
    return out


def _expand_shorthands(data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("embedder"), str):
        return {**data, "embedder": {"name": data["embedder"]}}
    return data


def _read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`; errors name the file and the line (counted from 1, as editors do)."""
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a directory; pass a YAML file (see configs/).")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte offset {error.start}); save it as UTF-8."
        ) from error
    except yaml.MarkedYAMLError as error:
        where = (
            f"line {error.problem_mark.line + 1}, column {error.problem_mark.column + 1}"
            if error.problem_mark
            else "?"
        )
        raise ValueError(
            f"{path}, {where}: not valid YAML ({error.problem}); fix that line (YAML indents with spaces, "
            "not tabs)."
        ) from error
    if not isinstance(loaded, dict):
        lines = text.splitlines()
        first = next((n for n, line in enumerate(lines, 1) if line.strip() and line[0] not in "#%"), 1)
        raise ValueError(
            f"{path}, line {first}: a config file must be a YAML mapping of sections such as `optim:`, "
            f"not a {type(loaded).__name__}."
        )
    return loaded


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults < YAML file < key=value overrides, validated into `cls`.

    Relative paths (data.train, data.val, embedder.cache, a model.base folder) are read relative to the
    config file when they come from it and to the working directory when they come from an override;
    the config holds them absolute.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = _resolve_paths(_expand_shorthands(_read_config_file(path)), path.parent)
    update = _resolve_paths(_expand_shorthands(parse_overrides(overrides or [])), Path.cwd())
    return from_dict(cls, merge(data, update))

"""Typed run configs filled from YAML and key=value overrides (L0, config).

Unknown keys and wrong types stop the run; cross-field checks say how to fix the problem.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

MODEL_KINDS = ("btl", "dpl", "np-btl", "np-btl-latent")


@dataclass
class ModelConfig:
    """Which reward model and its sizes (the release: hidden 256, latent 256)."""

    kind: str = "np-btl"
    hidden_dim: int = 256
    latent_dim: int = 64
    attention: bool = False
    num_heads: int = 8
    min_scale: float = 0.01
    pooling: str = "mean+max"
    encoder_depth: int = 2
    decoder_depth: int = 1
    item_dropout: float = 0.0
    kl_weight: float = 1.0
    num_samples: int = 8
    dpl_cdf: str = "exact"
    prior_head: bool = False
    conditioning: str = "shift"

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r} is not one of {MODEL_KINDS}.")
        if self.dpl_cdf not in ("exact", "logistic"):
            raise ValueError(
                f"model.dpl_cdf={self.dpl_cdf!r}: use 'exact' (normal CDF) or 'logistic' (the release's stand-in)."
            )
        if self.pooling not in ("mean", "mean+max"):
            raise ValueError(f"model.pooling={self.pooling!r}: use 'mean' or 'mean+max'.")
        if self.encoder_depth < 2:
            raise ValueError(f"model.encoder_depth={self.encoder_depth} must be >= 2 (linear layers per pair).")
        if self.decoder_depth < 1:
            raise ValueError(f"model.decoder_depth={self.decoder_depth} must be >= 1 (hidden layers after z joins).")
        if not 0 <= self.item_dropout < 1:
            raise ValueError(f"model.item_dropout={self.item_dropout} must lie in [0, 1).")
        if self.hidden_dim <= 0 or self.latent_dim <= 0:
            raise ValueError("model.hidden_dim and model.latent_dim must be positive.")
        if not 0 < self.min_scale < 1:
            raise ValueError(f"model.min_scale={self.min_scale} must lie in (0, 1).")
        if self.kl_weight < 0:
            raise ValueError(f"model.kl_weight={self.kl_weight} must be >= 0.")
        if self.num_samples < 1:
            raise ValueError(f"model.num_samples={self.num_samples} must be >= 1.")
        if self.conditioning not in ("shift", "film"):
            raise ValueError(f"model.conditioning={self.conditioning!r}: use 'shift' or 'film'.")
        if self.prior_head and self.kind != "np-btl":
            raise ValueError(f"model.prior_head is for model.kind=np-btl, not {self.kind!r}.")

    @property
    def conditional(self) -> bool:
        return self.kind.startswith("np-")

    @property
    def stochastic(self) -> bool:
        return self.kind == "np-btl-latent"


@dataclass
class EpisodeConfig:
    """How a training batch is drawn: B users x (C context, T disjoint target) pairs."""

    batch_users: int = 64
    targets: int = 20
    min_context: int = 0
    max_context: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.min_context <= self.max_context:
            raise ValueError(
                f"episodes.min_context={self.min_context} and max_context={self.max_context}: "
                "need 0 <= min_context <= max_context."
            )
        if self.targets < 1 or self.batch_users < 1:
            raise ValueError("episodes.targets and episodes.batch_users must be >= 1.")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to `min_lr_ratio` x lr."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    steps: int = 2000
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"optim.steps={self.steps} must be >= 1.")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ValueError(
                f"optim.warmup_steps={self.warmup_steps} must lie in [0, optim.steps={self.steps}]."
            )
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be positive.")


@dataclass
class EvalConfig:
    """Validation during training and the final evaluation protocol."""

    contexts: list[int] = field(default_factory=lambda: [0, 1, 3, 5, 10])
    episodes: int = 6000
    targets: int = 20
    val_episodes: int = 512
    val_every: int = 250
    seed: int = 1234
    # Which validation figure picks the kept weights: "nll" (mean target NLL over the contexts) or
    # "accuracy" (mean accuracy, the figure the benchmarks report). On small data the rewards' NLL can
    # rise from overconfidence while accuracy still improves as the encoder learns to tell users apart.
    select_by: str = "nll"

    def __post_init__(self) -> None:
        if self.select_by not in ("nll", "accuracy"):
            raise ValueError(f"eval.select_by={self.select_by!r}: use 'nll' or 'accuracy'.")
        if not self.contexts or any(m < 0 for m in self.contexts):
            raise ValueError(f"eval.contexts={self.contexts} must be a non-empty list of sizes >= 0.")
        if self.episodes < 1 or self.val_episodes < 1 or self.targets < 1:
            raise ValueError("eval.episodes, eval.val_episodes and eval.targets must be >= 1.")


@dataclass
class TrainConfig:
    """Everything a reward-model run needs; written resolved into the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    save_every: int = 250
    log_every: int = 50
    mixed_precision: str = "no"
    embedder: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: use no, bf16 or fp16.")
        if self.save_every < 1 or self.log_every < 1 or self.save_every % self.log_every:
            raise ValueError(
                f"save_every={self.save_every} must be a positive multiple of log_every={self.log_every}, "
                "so that a resumed run logs exactly what an uninterrupted one would."
            )


T = TypeVar("T")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to `annotation`, or raise naming the key."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | globals())  # noqa: S307 - our own annotations only
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
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
        return _convert(value, options[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"{key}: expected true/false, got {value!r}.")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"{key}: expected an integer, got {value!r}.")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TypeError(f"{key}: expected an integer, got {value!r}.") from None
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError(f"{key}: expected a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{key}: expected a number, got {value!r}.") from None
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
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}.")
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


def _read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`; errors name the file and the line (counted from 1, as editors do)."""
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
    """Defaults < YAML file < key=value overrides, validated into `cls`."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_config_file(Path(path))
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)

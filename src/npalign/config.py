"""Typed run configs for both jobs, filled from YAML and key=value overrides (L0, config).

    npalign train-reward --config configs/reward/np_btl_dsp.yaml optim.lr=3e-4
    npalign train-dpo --config configs/dpo/np_dpo_dsp_smollm2.yaml dpo.beta=0.1

Shared sections (`data`, `embedder`, `episodes`, `optim`, `eval`, `run`) compose the reward config
(`RewardTrainConfig`, plus `model`) and the policy config (`PolicyTrainConfig`, plus `model`, `dpo` and
`mode`); a job's own defaults are subclasses of the shared sections. Unknown keys and wrong types stop
the run; cross-field checks say how to fix the problem. Paths in a config file are relative to that file.
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
DPO_MODES = ("conditional", "unconditional")
TRACKERS = ("tensorboard", "wandb", "trackio")
# Config keys that hold file paths: relative values in a config file are read relative to that file,
# and every path is recorded absolute in the resolved config, so a run works from any directory.
PATH_KEYS = (("data", "train"), ("data", "val"), ("embedder", "cache"))
# Keys that moved into the `run` section; named in the error for a config written before the move.
MOVED_TO_RUN = ("seed", "save_every", "log_every", "progress", "mixed_precision")


# ----- the reward model ------------------------------------------------------------------------------------


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
            raise ValueError(
                f"model.encoder_depth={self.encoder_depth} must be >= 2 (linear layers per pair)."
            )
        if self.decoder_depth < 1:
            raise ValueError(
                f"model.decoder_depth={self.decoder_depth} must be >= 1 (hidden layers after z joins)."
            )
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


# ----- sections both jobs share --------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which preference file(s) and rows to train on.

    Attributes:
        train: a preference file (user-grouped or multi-label rows; see the README) or dataset folder.
        train_split: keep only rows whose split column equals this (null: every row).
        val: the validation file; null means the training file (with `val_split`) or no validation.
        val_split: rows of the validation file to use.
        labels: multi-label files only: which choice_<label> columns act as user types.
        user_types: keep only users of these types (e.g. a single-type baseline); null keeps all.
        min_pairs: drop (and count) users with fewer pairs than this; 0 keeps everyone.
    """

    train: str = ""
    train_split: str | None = None
    val: str | None = None
    val_split: str | None = None
    labels: list[str] | None = None
    user_types: list[str] | None = None
    min_pairs: int = 0

    def __post_init__(self) -> None:
        if self.user_types is not None and not self.user_types:
            raise ValueError("data.user_types is an empty list; use null to keep every user type.")
        if self.min_pairs < 0:
            raise ValueError(f"data.min_pairs={self.min_pairs} must be >= 0.")


@dataclass
class EmbedderConfig:
    """The frozen text embedder whose vectors are the item features (text data only).

    A YAML string (`embedder: minilm`) is shorthand for `embedder: {name: minilm}`.

    Attributes:
        name: "minilm", "smollm2", "smollm2-mean", "smollm2-mean64", or a local model folder; "" for data
            that holds feature vectors already.
        max_length: token budget per (prompt, response); null = the embedder's default.
        batch_size: items per embedding forward pass.
        cache: embedding cache root; null = `<npalign cache>/embeddings`.
    """

    name: str = ""
    max_length: int | None = None
    batch_size: int = 32
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"embedder.batch_size={self.batch_size} must be >= 1.")


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
    """AdamW with linear warm-up then cosine decay to `min_lr_ratio` x lr.

    Attributes:
        warmup_steps: warm-up length in steps; null means `warmup_ratio` of `steps`.
        warmup_ratio: warm-up as a fraction of the steps, used when warmup_steps is null.
        grad_accumulation: micro-batches per optimizer step.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05
    steps: int = 2000
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    grad_accumulation: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"optim.steps={self.steps} must be >= 1.")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"optim.warmup_ratio={self.warmup_ratio} must lie in [0, 1].")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"optim.warmup_steps={self.warmup_steps} must lie in [0, optim.steps={self.steps}]; lower it, "
                "or set optim.warmup_steps=null to warm up over optim.warmup_ratio of the steps."
            )
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be positive.")
        if self.grad_accumulation < 1:
            raise ValueError(f"optim.grad_accumulation={self.grad_accumulation} must be >= 1.")

    @property
    def warmup(self) -> int:
        """Warm-up steps: `warmup_steps`, else `warmup_ratio` of the steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_ratio * self.steps)


@dataclass
class EvalConfig:
    """Validation during training: fixed episodes of validation users at each context size.

    Attributes:
        contexts: context sizes m scored at each validation.
        targets: target pairs per validation episode.
        val_episodes: episodes per m (users balanced over types).
        val_every: steps between validations (and at the last step).
        seed: seed of the fixed validation episodes.
    """

    contexts: list[int] = field(default_factory=lambda: [0, 1, 3, 5, 10])
    targets: int = 20
    val_episodes: int = 512
    val_every: int = 250
    seed: int = 1234

    def __post_init__(self) -> None:
        if not self.contexts or any(m < 0 for m in self.contexts):
            raise ValueError(f"eval.contexts={self.contexts} must be a non-empty list of sizes >= 0.")
        if self.val_episodes < 1 or self.targets < 1 or self.val_every < 1:
            raise ValueError("eval.val_episodes, eval.targets and eval.val_every must be >= 1.")


@dataclass
class RunConfig:
    """How a run is carried out and recorded.

    Attributes:
        seed: seeds the initial weights and every batch (a batch is a pure function of seed and step).
        save_every / log_every: steps between checkpoints / metric records (save_every a multiple of
            log_every, so that a resumed run logs exactly what an uninterrupted one would).
        progress: show progress bars (main process only).
        report_to: experiment trackers fed through accelerate besides metrics.jsonl: any of
            tensorboard, wandb, trackio (each needs its package installed).
        mixed_precision: no, bf16 or fp16 autocast (accelerate).
    """

    seed: int = 0
    save_every: int = 250
    log_every: int = 50
    progress: bool = True
    report_to: list[str] = field(default_factory=list)
    mixed_precision: str = "no"

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"run.mixed_precision={self.mixed_precision!r}: use no, bf16 or fp16.")
        if self.save_every < 1 or self.log_every < 1 or self.save_every % self.log_every:
            raise ValueError(
                f"run.save_every={self.save_every} must be a positive multiple of log_every={self.log_every}, "
                "so that a resumed run logs exactly what an uninterrupted one would."
            )
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            raise ValueError(f"run.report_to={self.report_to}: {unknown} not among {list(TRACKERS)}.")


# ----- the reward job --------------------------------------------------------------------------------------


@dataclass
class RewardEvalConfig(EvalConfig):
    """Reward validation, plus the final evaluation protocol.

    Attributes:
        episodes: evaluation episodes per m.
        select_by: which validation figure picks the kept weights: "nll" (mean target NLL over the
            contexts) or "accuracy" (mean accuracy, the figure the benchmarks report). On small data the
            rewards' NLL can rise from overconfidence while accuracy still improves as the encoder
            learns to tell users apart.
    """

    episodes: int = 6000
    select_by: str = "nll"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select_by not in ("nll", "accuracy"):
            raise ValueError(f"eval.select_by={self.select_by!r}: use 'nll' or 'accuracy'.")
        if self.episodes < 1:
            raise ValueError(f"eval.episodes={self.episodes} must be >= 1.")


@dataclass
class RewardTrainConfig:
    """Everything a reward-model run needs; written resolved into the run directory as config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: RewardEvalConfig = field(default_factory=RewardEvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----- the policy job --------------------------------------------------------------------------------------


@dataclass
class PolicyModelConfig:
    """The base LM and the trainable parts around it (release: Qwen2.5-1.5B, LoRA r 128, alpha 256, q/v).

    Attributes:
        base: "smollm2", a local model folder, a hub id, or a random base such as "tiny-random-llama".
        latent_dim: Z.
        encoder_hidden_dim / encoder_attention / encoder_num_heads: the context encoder.
        lora_r / lora_alpha / lora_dropout: peft LoRA settings.
        lora_target_modules: module names to adapt; null means the architecture's q/v projections.
        film_layers: decoder blocks to modulate; null means every block.
        gradient_checkpointing: recompute decoder blocks in backward (less memory, ~1/3 more compute).
        bf16: keep the frozen base in bfloat16; LoRA, FiLM and the encoder stay float32.
    """

    base: str = "smollm2"
    latent_dim: int = 64
    encoder_hidden_dim: int = 256
    encoder_attention: bool = False
    encoder_num_heads: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    film_layers: list[int] | None = None
    gradient_checkpointing: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("model.base is empty; name a base LM, e.g. model.base=smollm2.")
        if self.latent_dim < 1 or self.encoder_hidden_dim < 1 or self.lora_r < 1:
            raise ValueError(
                f"model.latent_dim={self.latent_dim}, model.encoder_hidden_dim={self.encoder_hidden_dim} and "
                f"model.lora_r={self.lora_r} must all be >= 1."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"model.lora_dropout={self.lora_dropout} must lie in [0, 1).")
        if self.encoder_attention and self.encoder_hidden_dim % self.encoder_num_heads:
            raise ValueError(
                f"model.encoder_hidden_dim={self.encoder_hidden_dim} must be divisible by "
                f"model.encoder_num_heads={self.encoder_num_heads} when model.encoder_attention=true."
            )


@dataclass
class PolicyDataConfig(DataConfig):
    """`DataConfig` with the policy's split defaults and token budgets.

    Attributes:
        max_prompt_length: prompt tokens kept (from the left, so the generation prompt survives).
        max_response_length: response tokens kept (from the right).
    """

    train_split: str | None = "train"
    val_split: str | None = "validation"
    max_prompt_length: int = 256
    max_response_length: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_prompt_length < 1 or self.max_response_length < 1:
            raise ValueError(
                f"data.max_prompt_length={self.max_prompt_length} and data.max_response_length="
                f"{self.max_response_length} must be >= 1."
            )


@dataclass
class PolicyEmbedderConfig(EmbedderConfig):
    """The embedder of the context pairs z is inferred from (the policy's default: minilm)."""

    name: str = "minilm"


@dataclass
class PolicyEpisodeConfig(EpisodeConfig):
    """Per step: B users, each with m ~ U[min_context, max_context] context pairs and T disjoint targets.

    The release: 2 users, 9 target pairs each, m in 0..6.
    """

    batch_users: int = 2
    targets: int = 9
    min_context: int = 0
    max_context: int = 6


@dataclass
class PolicyOptimConfig(OptimConfig):
    """AdamW over LoRA + FiLM + encoder with linear warm-up then cosine decay (release lr 1e-5)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int | None = 20
    steps: int = 500
    min_lr_ratio: float = 0.1


@dataclass
class DPOLossConfig:
    """The DPO objective.

    Attributes:
        beta: KL strength (0.05 in the release; 0.1 is TRL's default).
        precompute_reference: compute log pi_ref of every pair once before training (one pass over the
            data with adapters off) instead of a reference forward per step.
    """

    beta: float = 0.05
    precompute_reference: bool = False

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"dpo.beta={self.beta} must be positive (0.05 in the release, 0.1 in TRL).")


@dataclass
class PolicyEvalConfig(EvalConfig):
    """Policy validation: implicit-reward accuracy on fixed episodes of validation users.

    Attributes:
        batch_pairs: target pairs per forward pass in validation and reference precomputation.
    """

    contexts: list[int] = field(default_factory=lambda: [0, 1, 3, 5])
    val_episodes: int = 16
    targets: int = 9
    val_every: int = 100
    batch_pairs: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_pairs < 1:
            raise ValueError(f"eval.batch_pairs={self.batch_pairs} must be >= 1.")


@dataclass
class PolicyRunConfig(RunConfig):
    """`RunConfig` with the policy's (slower) step defaults."""

    save_every: int = 50
    log_every: int = 10


@dataclass
class PolicyTrainConfig:
    """Everything an NP-DPO run needs; written resolved into the run directory as config.yaml.

    Attributes:
        mode: "conditional" (NP-DPO: z from the user's context steers the policy through FiLM) or
            "unconditional" (plain DPO on the same episodes' target pairs, no z, FiLM never bound).
    """

    mode: str = "conditional"
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    data: PolicyDataConfig = field(default_factory=PolicyDataConfig)
    embedder: PolicyEmbedderConfig = field(default_factory=PolicyEmbedderConfig)
    episodes: PolicyEpisodeConfig = field(default_factory=PolicyEpisodeConfig)
    optim: PolicyOptimConfig = field(default_factory=PolicyOptimConfig)
    dpo: DPOLossConfig = field(default_factory=DPOLossConfig)
    eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)
    run: PolicyRunConfig = field(default_factory=PolicyRunConfig)

    def __post_init__(self) -> None:
        if self.mode not in DPO_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {DPO_MODES}.")
        if self.conditional and not self.embedder.name:
            raise ValueError(
                "embedder.name is empty; a conditional policy reads its context through one, e.g. minilm."
            )

    @property
    def conditional(self) -> bool:
        return self.mode == "conditional"


T = TypeVar("T")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to `annotation`, or raise naming the key."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | globals())  # noqa: S307 - our own annotations only
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

"""The config sections both jobs compose: data, embedder, episodes, optim, eval, run (L0, config)."""

from __future__ import annotations

from dataclasses import dataclass, field

TRACKERS = ("tensorboard", "wandb", "trackio")


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

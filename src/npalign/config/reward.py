"""The reward-model job's config: the model section, reward validation, `RewardTrainConfig` (L0, config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from npalign.config.sections import (
    DataConfig,
    EmbedderConfig,
    EpisodeConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
)

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

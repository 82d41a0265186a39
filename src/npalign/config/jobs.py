"""The two jobs' configs: the reward model (`RewardTrainConfig`) and the NP-DPO policy (`PolicyTrainConfig`) (L0, config).

Each composes the shared sections of `sections.py`; a job's own defaults are subclasses of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npalign.config import sections

# ----- the reward job ------------------------------------------------------------------------------------

MODEL_KINDS = ("btl", "dpl", "np-btl", "np-btl-latent")


@dataclass
class ModelConfig:
    """Which reward model and its sizes (the release: hidden 256, latent 256).

    The default depths (a 4-layer per-pair encoder, 3 hidden layers after z joins) serve the three
    synthetic tasks without per-task settings (benchmarks/results/defaults); the release's shape is
    encoder_depth 2, decoder_depth 1, which the paper's 1-D task and the DSP configs pin.
    """

    kind: str = "np-btl"
    hidden_dim: int = 256
    latent_dim: int = 64
    attention: bool = False
    num_heads: int = 8
    min_scale: float = 0.01
    pooling: str = "mean+max"
    encoder_depth: int = 4
    decoder_depth: int = 3
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
class RewardEvalConfig(sections.EvalConfig):
    """Reward validation, plus the final evaluation protocol.

    Attributes:
        episodes: evaluation episodes per m.
        select_by: which validation figure picks the kept weights: "nll" (mean target NLL over the
            contexts) or "accuracy" (mean accuracy, the figure the benchmarks report). On small data the
            rewards' NLL can rise from overconfidence while accuracy still improves as the encoder
            learns to tell users apart.
        patience: stop once this many validations in a row have not beaten the kept step (a plateau;
            8 x val_every 250 = 2,000 steps by default); optim.steps is then a cap. null trains for
            exactly optim.steps.
    """

    episodes: int = 6000
    select_by: str = "nll"
    patience: int | None = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select_by not in ("nll", "accuracy"):
            raise ValueError(f"eval.select_by={self.select_by!r}: use 'nll' or 'accuracy'.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(
                f"eval.patience={self.patience} must be >= 1 (validations without improvement), or null."
            )
        if self.episodes < 1:
            raise ValueError(f"eval.episodes={self.episodes} must be >= 1.")


@dataclass
class RewardOptimConfig(sections.OptimConfig):
    """The reward job's optimiser: `steps` is a cap that the validation plateau (eval.patience) cuts short."""

    steps: int = 10000


@dataclass
class RewardTrainConfig:
    """Everything a reward-model run needs; written resolved into the run directory as config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: sections.DataConfig = field(default_factory=sections.DataConfig)
    embedder: sections.EmbedderConfig = field(default_factory=sections.EmbedderConfig)
    episodes: sections.EpisodeConfig = field(default_factory=sections.EpisodeConfig)
    optim: RewardOptimConfig = field(default_factory=RewardOptimConfig)
    eval: RewardEvalConfig = field(default_factory=RewardEvalConfig)
    run: sections.RunConfig = field(default_factory=sections.RunConfig)


# ----- the policy job ------------------------------------------------------------------------------------

DPO_MODES = ("conditional", "unconditional")


@dataclass
class PolicyModelConfig:
    """The base LM and the trainable parts around it (release: Qwen2.5-1.5B, LoRA r 128, alpha 256, q/v).

    Attributes:
        base: "smollm2", a local model folder, a hub id, or a random base such as "tiny-random-llama".
        latent_dim: Z.
        encoder_hidden_dim / encoder_attention / encoder_num_heads: the context encoder.
        film_layers: decoder blocks to modulate; null means every block.
        lora_r / lora_alpha / lora_dropout: peft LoRA settings.
        lora_target_modules: module names to adapt; null means the architecture's q/v projections.
        lora_layers: decoder blocks whose target modules get LoRA; null means every block (with
            film_layers, the last few blocks keep the backward pass short on a CPU).
        gradient_checkpointing: recompute decoder blocks in backward (less memory, ~1/3 more compute).
        bf16: keep the frozen base in bfloat16 (true) or float32 (false); LoRA, FiLM and the encoder stay
            float32. "auto": bfloat16 where the device computes it natively (`models.bases.native_bfloat16`:
            a CUDA GPU with bfloat16, a CPU with AVX512-BF16 or AMX), else float32. An AVX2-only CPU
            emulates bfloat16 matmuls about 100x slower than float32 ones.
    """

    base: str = "smollm2"
    latent_dim: int = 64
    encoder_hidden_dim: int = 256
    encoder_attention: bool = False
    encoder_num_heads: int = 8
    film_layers: list[int] | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    lora_layers: list[int] | None = None
    gradient_checkpointing: bool = False
    bf16: bool | str = False

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("model.base is empty; name a base LM, e.g. model.base=smollm2.")
        if not isinstance(self.bf16, bool) and self.bf16 != "auto":
            raise ValueError(f"model.bf16={self.bf16!r}: use true, false or auto.")
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
class PolicyDataConfig(sections.DataConfig):
    """`sections.DataConfig` with the policy's split defaults and token budgets.

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
class PolicyEmbedderConfig(sections.EmbedderConfig):
    """The embedder of the context pairs z is inferred from (the policy's default: minilm)."""

    name: str = "minilm"


@dataclass
class PolicyEpisodeConfig(sections.EpisodeConfig):
    """Per step: B users, each with m ~ U[min_context, max_context] context pairs and T disjoint targets.

    The release: 2 users, 9 target pairs each, m in 0..6.
    """

    batch_users: int = 2
    targets: int = 9
    min_context: int = 0
    max_context: int = 6


@dataclass
class PolicyOptimConfig(sections.OptimConfig):
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
        loss_type: "sigmoid", DPO's loss (the default), or "ipo", IPO's squared loss with its optimum at a
            margin of 1/(2 beta) nats over the reference's (TRL's names; `models.losses.dpo_loss`). Where a
            user's choices are deterministic, as the style users' are, DPO's loss has no finite optimum.
            Validation and `evaluate` report DPO's loss under both, so that runs compare. On the style
            users at beta 0.1 it looped less than DPO but steered format far less (docs/details.md).
        precompute_reference: compute log pi_ref of every pair once before training (one pass over the
            data with adapters off) instead of a reference forward per step.
        rpo_alpha: weight of the negative log-likelihood of the chosen responses added to the DPO loss
            (TRL's `rpo_alpha`, Pang et al. 2024); None (the default) is plain DPO. A pair whose two sides
            share a prefix (a short answer against its own continuation) gives DPO's margin one token on
            the chosen side, and DPO can widen it by lowering the rejected continuation alone; the NLL
            term teaches the conditioned policy to produce what the user chose, where it ends included.
        rpo_min_context: the NLL term counts only the episodes with at least this many context pairs
            (conditional mode; 0: all). With no context the NLL fits the mix of users' choices; where the
            reference rarely writes one side of an axis (a list), that raises the side against the
            reference, and the implicit reward at m = 0 ranks it first whatever the user. With 1, an empty
            context is trained by DPO alone, whose optimum over opposed users is no margin (on the style
            users it shrank the m = 0 format margin but kept its sign; docs/details.md).
        prior_margin_weight: weight of the mean squared implicit margin h (nats) of the pairs of episodes
            with an empty context, added to the loss (conditional mode; 0, the default: none). It pulls
            the m = 0 policy towards the reference on every pair, which is the population's answer where
            opposed users share each pair (as the style users do). At beta 0.1 DPO's loss
            over two opposed users is log 2 + (beta h)^2 / 8 near h = 0, too flat to undo a lean of about one
            nat that the conditioned episodes teach the shared adapters. Where users agree on a pair,
            this pulls against their consensus: leave it at 0 there. On the style users (0.1, two seeds)
            it removed the m = 0 lean and met implicit accuracy for every type, but lost length steering
            in one seed (docs/details.md).
    """

    beta: float = 0.05
    loss_type: str = "sigmoid"
    precompute_reference: bool = False
    rpo_alpha: float | None = None
    rpo_min_context: int = 0
    prior_margin_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"dpo.beta={self.beta} must be positive (0.05 in the release, 0.1 in TRL).")
        if self.loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f"dpo.loss_type={self.loss_type!r}: use 'sigmoid' (DPO) or 'ipo'.")
        if self.rpo_alpha is not None and not self.rpo_alpha >= 0:
            raise ValueError(f"dpo.rpo_alpha={self.rpo_alpha} must be >= 0 (TRL's RPO weight, 1.0 in the RPO paper).")
        if self.rpo_min_context < 0:
            raise ValueError(f"dpo.rpo_min_context={self.rpo_min_context} must be >= 0 (context pairs).")
        if not self.prior_margin_weight >= 0:
            raise ValueError(f"dpo.prior_margin_weight={self.prior_margin_weight} must be >= 0 (0: no pull).")


@dataclass
class PolicyEvalConfig(sections.EvalConfig):
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
class PolicyRunConfig(sections.RunConfig):
    """`sections.RunConfig` with the policy's (slower) step defaults."""

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

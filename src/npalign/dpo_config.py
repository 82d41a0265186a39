"""Typed NP-DPO run configs filled from YAML and key=value overrides (L0, config).

`npalign train-dpo --config configs/dpo/np_dpo_dsp_smollm2.yaml optim.lr=5e-5 dpo.beta=0.1`. Loading,
overrides and type checks are `npalign.config.load_config`; this file only declares the sections and
their cross-field checks. Each section has its own defaults (nested sections are rebuilt from their class
defaults when a YAML file names only some of their keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npalign.config import EpisodeConfig, OptimConfig

DPO_MODES = ("conditional", "unconditional")

# Names inside an NP-DPO run directory, shared by training (which writes it) and inference (which reads it).
RUN_FILE = "run.json"
POLICY_DIR = "policy"


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
class DPODataConfig:
    """Which preference file and rows to train on, and how long the token sequences may be.

    Attributes:
        train: a user-grouped preference file (JSONL rows {user_id, prompt, chosen, rejected, user_type,
            split}); relative paths are relative to the working directory.
        train_split: keep only rows whose split column equals this (null: every row).
        val: the validation file; null means the training file.
        val_split: rows of the validation file to use; null disables validation.
        labels: multi-label files only: which choice_<label> columns act as user types.
        user_types: keep only users of these types (the single-type DPO baseline); null keeps all.
        max_prompt_length: prompt tokens kept (from the left, so the generation prompt survives).
        max_response_length: response tokens kept (from the right).
    """

    train: str = ""
    train_split: str | None = "train"
    val: str | None = None
    val_split: str | None = "validation"
    labels: list[str] | None = None
    user_types: list[str] | None = None
    max_prompt_length: int = 256
    max_response_length: int = 256

    def __post_init__(self) -> None:
        if self.max_prompt_length < 1 or self.max_response_length < 1:
            raise ValueError(
                f"data.max_prompt_length={self.max_prompt_length} and data.max_response_length="
                f"{self.max_response_length} must be >= 1."
            )
        if self.user_types is not None and not self.user_types:
            raise ValueError("data.user_types is an empty list; use null to keep every user type.")


@dataclass
class DPOEmbedderConfig:
    """The frozen text embedder whose features of the context pairs the encoder reads.

    Attributes:
        name: "minilm", "smollm2", "smollm2-mean", "smollm2-mean64", or a local model folder (see embedding.embedders).
        max_length: token budget per (prompt, response); null = the embedder's default.
        batch_size: pairs per embedding forward pass.
        cache: embedding cache root; null = `<npalign cache>/embeddings`.
    """

    name: str = "minilm"
    max_length: int | None = None
    batch_size: int = 32
    cache: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("embedder.name is empty; use e.g. embedder.name=minilm.")
        if self.batch_size < 1:
            raise ValueError(f"embedder.batch_size={self.batch_size} must be >= 1.")


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
class DPOEpisodeConfig(EpisodeConfig):
    """Per step: B users, each with m ~ U[min_context, max_context] context pairs and T disjoint targets.

    The release: 2 users, 9 target pairs each, m in 0..6.
    """

    batch_users: int = 2
    targets: int = 9
    min_context: int = 0
    max_context: int = 6


@dataclass
class DPOOptimConfig(OptimConfig):
    """AdamW over LoRA + FiLM + encoder with linear warm-up then cosine decay (release lr 1e-5)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 20
    steps: int = 500
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class DPOEvalConfig:
    """Validation during training: implicit-reward accuracy on fixed episodes of validation users.

    Attributes:
        contexts: context sizes m scored at each validation.
        val_episodes: episodes per m (users balanced over types).
        targets: target pairs per validation episode.
        val_every: steps between validations (and at the last step).
        seed: seed of the fixed validation episodes.
        batch_pairs: target pairs per forward pass in validation and reference precomputation.
    """

    contexts: list[int] = field(default_factory=lambda: [0, 1, 3, 5])
    val_episodes: int = 16
    targets: int = 9
    val_every: int = 100
    seed: int = 1234
    batch_pairs: int = 16

    def __post_init__(self) -> None:
        if not self.contexts or any(m < 0 for m in self.contexts):
            raise ValueError(f"eval.contexts={self.contexts} must be a non-empty list of sizes >= 0.")
        if self.val_episodes < 1 or self.targets < 1 or self.val_every < 1 or self.batch_pairs < 1:
            raise ValueError(
                "eval.val_episodes, eval.targets, eval.val_every and eval.batch_pairs must all be >= 1."
            )


@dataclass
class DPOTrainConfig:
    """Everything an NP-DPO run needs; written resolved into the run directory as config.yaml.

    Attributes:
        mode: "conditional" (NP-DPO: z from the user's context steers the policy through FiLM) or
            "unconditional" (plain DPO on the same episodes' target pairs, no z, FiLM never bound).
        grad_accumulation: micro-batches of `episodes.batch_users` users per optimizer step.
        save_every / log_every: steps between checkpoints / metric records (save_every a multiple of
            log_every, so a resumed run logs exactly what an uninterrupted one would).
    """

    mode: str = "conditional"
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    data: DPODataConfig = field(default_factory=DPODataConfig)
    embedder: DPOEmbedderConfig = field(default_factory=DPOEmbedderConfig)
    episodes: DPOEpisodeConfig = field(default_factory=DPOEpisodeConfig)
    optim: DPOOptimConfig = field(default_factory=DPOOptimConfig)
    dpo: DPOLossConfig = field(default_factory=DPOLossConfig)
    eval: DPOEvalConfig = field(default_factory=DPOEvalConfig)
    seed: int = 0
    grad_accumulation: int = 1
    save_every: int = 50
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in DPO_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {DPO_MODES}.")
        if self.grad_accumulation < 1:
            raise ValueError(f"grad_accumulation={self.grad_accumulation} must be >= 1.")
        if self.save_every < 1 or self.log_every < 1 or self.save_every % self.log_every:
            raise ValueError(
                f"save_every={self.save_every} must be a positive multiple of log_every={self.log_every}, "
                "so that a resumed run logs exactly what an uninterrupted one would."
            )

    @property
    def conditional(self) -> bool:
        return self.mode == "conditional"

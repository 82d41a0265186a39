"""The NP-DPO training loop on accelerate, in one readable function (L2, training).

Per optimizer step, `grad_accumulation` micro-batches of B users; each user has m ~ U[min, max] context
pairs and T disjoint target pairs. z = encoder(frozen embeddings of the user's context pairs), one per
user and repeated over that user's 2T target sequences; the loss is DPO (METHOD.md section 4) against the
reference, which is the same weights with LoRA and FiLM off (`policy.reference()`), either run per step or
precomputed once per dataset. `mode: unconditional` trains plain DPO on the same target pairs with no z.

Run directory:
    config.yaml                   the resolved DPOTrainConfig (rerun with --config)
    run.json                      what `inference.policy.load_policy` needs besides the policy: base and
                                  embedder names and revisions, mode, beta, lengths, user types, data
    policy/                       the best policy on validation (the last without validation):
                                  trainable.safetensors (LoRA + FiLM + encoder) + policy_config.json
    checkpoint/                   the last state for --resume: policy/, optimizer.safetensors,
                                  optimizer.json (hyperparameters, scheduler), trainer_state.json
    reference_logps.safetensors   with dpo.precompute_reference: log pi_ref of every pair, per split
    metrics.jsonl                 TRL-named training averages every log_every steps, eval_* at validation
    summary.json                  wall time, tokens per second, best step
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from npalign.config import to_dict
from npalign.data.dpo_episodes import DPOBatch, DPOEpisodeSampler, filter_user_types, pair_texts
from npalign.data.dpo_tokenize import tokenize_preference_pairs
from npalign.data.episodes import derived_seed
from npalign.data.loaders import load_preferences
from npalign.dpo_config import POLICY_DIR, RUN_FILE, DPOTrainConfig
from npalign.embedding.cache import EmbeddingCache
from npalign.embedding.embedders import build_embedder
from npalign.embedding.features import embed_items, embedding_cache_root
from npalign.models.film import sequence_latents
from npalign.models.losses import dpo_loss, dpo_metrics, sequence_logprobs
from npalign.models.policy import TRAINABLE_FILE, ConditionalPolicy, load_base
from npalign.training.loop import load_optimizer_tensors, optimizer_tensors, warmup_cosine
from npalign.types import PreferenceSet
from npalign.utils.io import (
    append_jsonl,
    atomic_dir,
    load_tensors,
    read_json,
    read_yaml,
    save_tensors,
    truncate_jsonl,
    write_json,
    write_yaml,
)

logger = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoint"
REFERENCE_FILE = "reference_logps.safetensors"
# The encoder of an unconditional policy is never called; it only keeps the checkpoint format uniform.
UNCONDITIONAL_EMBED_DIM = 1


@dataclass
class DPOTrainResult:
    out_dir: Path
    steps: int
    best_step: int
    best_val_accuracy: float
    seconds: float
    ms_per_step: float


# ----- data ----------------------------------------------------------------------------------------------


def load_dpo_data(cfg: DPOTrainConfig) -> tuple[PreferenceSet, PreferenceSet | None]:
    """The training and validation pairs named by `cfg.data` (validation None when val_split is null)."""
    if not cfg.data.train:
        raise ValueError("data.train is empty; name a user-grouped preference file, e.g. data.train=FILE.")
    train, _ = load_preferences(cfg.data.train, split=cfg.data.train_split, labels=cfg.data.labels)
    if cfg.data.val_split is None:
        return train, None
    val, _ = load_preferences(
        cfg.data.val or cfg.data.train, split=cfg.data.val_split, labels=cfg.data.labels
    )
    return train, val


# ----- scoring target pairs --------------------------------------------------------------------------------


def _sequence_z(
    policy: ConditionalPolicy, batch: DPOBatch, conditional: bool, device: torch.device
) -> Tensor | None:
    """z of the batch's users, one row per sequence of `DPOBatch.tokenize_targets`: (2BT, Z), or None.

    z (B, Z) comes from the encoder over each user's context features; `sequence_latents` spreads it over
    the user's chosen rows, then rejected rows. None when unconditional.
    """
    if not conditional:
        return None
    episodes = batch.episodes
    z = policy.encode_context(
        episodes.context_chosen.to(device),
        episodes.context_rejected.to(device),
        episodes.context_mask.to(device),
    )  # (B, Z)
    return sequence_latents(z, batch.num_targets, pairs=True)  # (2BT, Z)


def _reference_of_batch(
    policy: ConditionalPolicy, tokens: dict[str, Tensor], batch: DPOBatch, table: Tensor | None
) -> Tensor:
    """log pi_ref of the batch's 2BT sequences: looked up in the precomputed (P, 2) table, or computed."""
    if table is not None:
        pairs = table[batch.episodes.target_pairs.flatten()]  # (BT, 2): chosen, rejected
        return torch.cat([pairs[:, 0], pairs[:, 1]]).to(tokens["input_ids"].device)  # (2BT,)
    return policy.reference_logprobs(
        tokens["input_ids"], tokens["attention_mask"], tokens["completion_mask"]
    )  # (2BT,)


@torch.no_grad()
def score_batch(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    batch: DPOBatch,
    *,
    conditional: bool,
    beta: float,
    max_prompt_length: int,
    max_response_length: int,
    reference_table: Tensor | None = None,
) -> dict[str, Tensor]:
    """Implicit rewards and DPO losses of a batch's target pairs under each user's z, in eval mode.

    Args:
        policy: the policy; z comes from its encoder over the batch's context features.
        batch: B users with T target pairs each.
        conditional: False scores the policy without z (unconditional runs).
        reference_table: (P, 2) precomputed log pi_ref (chosen, rejected) of the batch's source pairs, or
            None to run the reference.
    Returns:
        chosen_rewards, rejected_rewards, losses: (B, T) each, float32 on the CPU;
        implicit reward = beta * (log pi(y | x, z) - log pi_ref(y | x)).
    """
    was_training = policy.training
    policy.eval()
    try:
        device = policy.encoder.empty_context.device
        tokens = {
            key: value.to(device)
            for key, value in batch.tokenize_targets(
                tokenizer, max_prompt_length=max_prompt_length, max_response_length=max_response_length
            ).items()
        }  # (2BT, L) each
        chosen_rewards, rejected_rewards, losses = policy.implicit_rewards(
            tokens["input_ids"],
            tokens["attention_mask"],
            tokens["completion_mask"],
            _sequence_z(policy, batch, conditional, device),  # (2BT, Z) or None
            _reference_of_batch(policy, tokens, batch, reference_table),  # (2BT,)
            beta=beta,
        )  # (BT,) each
    finally:
        policy.train(was_training)
    shape = (batch.num_users, batch.num_targets)
    return {
        "chosen_rewards": chosen_rewards.float().cpu().view(shape),
        "rejected_rewards": rejected_rewards.float().cpu().view(shape),
        "losses": losses.float().cpu().view(shape),
    }


@torch.no_grad()
def episode_scores(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    sampler: DPOEpisodeSampler,
    context_size: int,
    *,
    episodes: int,
    seed: int,
    conditional: bool,
    beta: float,
    max_prompt_length: int,
    max_response_length: int,
    batch_pairs: int,
    reference_table: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-episode implicit-reward accuracy and DPO loss on fixed episodes with m = `context_size`.

    Returns:
        accuracy (E,) fraction of the episode's T targets with chosen reward > rejected reward;
        loss (E,) mean DPO loss over the targets; margin (E,) mean reward margin; user_type (E,) long
        index into `sampler.type_names`.
    """
    users_per_batch = max(1, batch_pairs // sampler.sampler.targets)
    accuracy, loss, margin, types = [], [], [], []
    for batch in sampler.evaluation_batches(context_size, episodes, seed, chunk=users_per_batch):
        scores = score_batch(
            policy,
            tokenizer,
            batch,
            conditional=conditional,
            beta=beta,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
            reference_table=reference_table,
        )
        chosen, rejected = scores["chosen_rewards"], scores["rejected_rewards"]  # (B, T)
        accuracy.append((chosen > rejected).float().mean(1))
        margin.append((chosen - rejected).mean(1))
        loss.append(scores["losses"].mean(1))
        types.append(batch.episodes.user_type)
    return {
        "accuracy": torch.cat(accuracy),
        "loss": torch.cat(loss),
        "margin": torch.cat(margin),
        "user_type": torch.cat(types),
    }


def validate(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    sampler: DPOEpisodeSampler,
    cfg: DPOTrainConfig,
    reference_table: Tensor | None,
) -> dict[str, float]:
    """eval_* metrics: implicit-reward accuracy (percent) and DPO loss per m and averaged over m."""
    record: dict[str, float] = {}
    accuracies, losses, margins = [], [], []
    for m in cfg.eval.contexts:
        scores = episode_scores(
            policy,
            tokenizer,
            sampler,
            m,
            episodes=cfg.eval.val_episodes,
            seed=cfg.eval.seed,
            conditional=cfg.conditional,
            beta=cfg.dpo.beta,
            max_prompt_length=cfg.data.max_prompt_length,
            max_response_length=cfg.data.max_response_length,
            batch_pairs=cfg.eval.batch_pairs,
            reference_table=reference_table,
        )
        accuracy = 100 * float(scores["accuracy"].mean())
        record[f"eval_rewards/accuracies_m{m}"] = accuracy
        accuracies.append(accuracy)
        losses.append(float(scores["loss"].mean()))
        margins.append(float(scores["margin"].mean()))
    record["eval_rewards/accuracies"] = sum(accuracies) / len(accuracies)
    record["eval_rewards/margins"] = sum(margins) / len(margins)
    record["eval_loss"] = sum(losses) / len(losses)
    return record


# ----- reference log-probabilities, once per dataset --------------------------------------------------------


def _reference_fingerprint(
    data: PreferenceSet, base_revision: str, max_prompt_length: int, max_response_length: int
) -> str:
    digest = hashlib.sha256(f"{base_revision}|{max_prompt_length}|{max_response_length}".encode())
    for prompt, chosen, rejected in pair_texts(data, range(data.num_pairs)):
        digest.update(repr((prompt, chosen, rejected)).encode())
    return digest.hexdigest()


@torch.no_grad()
def precompute_reference(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    data: PreferenceSet,
    *,
    max_prompt_length: int,
    max_response_length: int,
    batch_pairs: int,
    progress: bool = False,
) -> Tensor:
    """log pi_ref(chosen | prompt) and log pi_ref(rejected | prompt) of every pair, adapters off.

    Returns:
        (P, 2) float32 on the CPU, row p for pair p of `data`: [chosen, rejected].
    """
    device = policy.encoder.empty_context.device
    table = torch.empty(data.num_pairs, 2)
    for start in tqdm(
        range(0, data.num_pairs, batch_pairs), desc="reference log-probs", disable=not progress, leave=False
    ):
        pairs = list(range(start, min(start + batch_pairs, data.num_pairs)))
        texts = pair_texts(data, pairs)
        tokens = tokenize_preference_pairs(
            tokenizer,
            [t[0] for t in texts],
            [t[1] for t in texts],
            [t[2] for t in texts],
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
        )
        for column, side in enumerate(("chosen", "rejected")):
            table[start : start + len(pairs), column] = policy.reference_logprobs(
                tokens[f"{side}_input_ids"].to(device),
                tokens[f"{side}_attention_mask"].to(device),
                tokens[f"{side}_completion_mask"].to(device),
            ).cpu()  # (n,)
    return table


def _reference_tables(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    splits: dict[str, PreferenceSet],
    cfg: DPOTrainConfig,
    base_revision: str,
    path: Path,
    is_main: bool,
) -> dict[str, Tensor]:
    """The (P, 2) reference tables of each split, reused from `path` when made from the same pairs."""
    lengths = (cfg.data.max_prompt_length, cfg.data.max_response_length)
    fingerprints = {
        name: _reference_fingerprint(data, base_revision, *lengths) for name, data in splits.items()
    }
    if path.is_file():
        stored = load_tensors(path)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if all(metadata.get(name) == fingerprint for name, fingerprint in fingerprints.items()):
            logger.info("reusing reference log-probs from %s", path)
            return {name: stored[name] for name in splits}
    started = time.perf_counter()
    tables = {
        name: precompute_reference(
            policy,
            tokenizer,
            data,
            max_prompt_length=cfg.data.max_prompt_length,
            max_response_length=cfg.data.max_response_length,
            batch_pairs=cfg.eval.batch_pairs,
            progress=cfg.progress and is_main,
        )
        for name, data in splits.items()
    }
    logger.info(
        "reference log-probs of %d pairs in %.1f s",
        sum(len(t) for t in tables.values()),
        time.perf_counter() - started,
    )
    if is_main:
        save_tensors(tables, path, metadata=fingerprints)
    return tables


# ----- checkpoints ------------------------------------------------------------------------------------------


def save_policy_checkpoint(
    path: Path,
    policy: ConditionalPolicy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
) -> None:
    """Policy (LoRA + FiLM + encoder + config) + optimizer + scheduler + loop state, atomically, no pickle."""
    with atomic_dir(path) as tmp:
        policy.save_pretrained(tmp / POLICY_DIR)
        tensors, extra = optimizer_tensors(optimizer)
        save_tensors(tensors, tmp / "optimizer.safetensors")
        extra["scheduler"] = scheduler.state_dict()
        write_json(extra, tmp / "optimizer.json")
        write_json(trainer_state, tmp / "trainer_state.json")


def load_policy_checkpoint(
    path: Path,
    policy: ConditionalPolicy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore what `save_policy_checkpoint` wrote (the policy strictly) and return the loop state."""
    policy.load_trainable_state_dict(load_tensors(path / POLICY_DIR / TRAINABLE_FILE))
    extra = read_json(path / "optimizer.json")
    load_optimizer_tensors(optimizer, load_tensors(path / "optimizer.safetensors"), extra)
    scheduler.load_state_dict(extra["scheduler"])
    return dict(read_json(path / "trainer_state.json"))


def _check_same_config(out_dir: Path, cfg: DPOTrainConfig) -> None:
    """A resumed run must continue the run it resumes: same config except the progress bar."""
    recorded_path = out_dir / "config.yaml"
    if not recorded_path.is_file():
        return
    recorded, current = read_yaml(recorded_path), to_dict(cfg)
    recorded.pop("progress", None)
    current.pop("progress", None)
    if recorded != current:
        changed = sorted(key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key))
        raise ValueError(
            f"--resume: the config differs from {recorded_path} in section(s) {changed}; resume with the "
            "same config (see that file) or start a new run with another --out."
        )


# ----- the loop ---------------------------------------------------------------------------------------------


def build_policy(
    cfg: DPOTrainConfig, embed_dim: int
) -> tuple[ConditionalPolicy, PreTrainedTokenizerBase, str]:
    """The policy over `cfg.model.base` (LoRA + FiLM + encoder at their init), its tokenizer, base revision."""
    base, tokenizer, revision = load_base(cfg.model.base)
    model = cfg.model
    policy = ConditionalPolicy(
        base,
        embed_dim=embed_dim,
        latent_dim=model.latent_dim,
        encoder_hidden_dim=model.encoder_hidden_dim,
        encoder_attention=model.encoder_attention,
        encoder_num_heads=model.encoder_num_heads,
        lora_r=model.lora_r,
        lora_alpha=model.lora_alpha,
        lora_dropout=model.lora_dropout,
        lora_target_modules=model.lora_target_modules,
        film_layers=model.film_layers,
        embedder_name=cfg.embedder.name if cfg.conditional else "",
        base_model_id=model.base,
        base_model_revision=revision,
        gradient_checkpointing=model.gradient_checkpointing,
        bf16=model.bf16,
    )
    return policy, tokenizer, revision


def train_policy(
    cfg: DPOTrainConfig,
    train_data: PreferenceSet,
    val_data: PreferenceSet | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
) -> DPOTrainResult:
    """Train an NP-DPO (or, with mode=unconditional, a plain DPO) policy and write the run directory.

    Args:
        cfg: the run config.
        train_data / val_data: text preference pairs (validation None: no validation, the last policy is
            kept). Both are filtered to `cfg.data.user_types` here.
        out_dir: the run directory (see the module docstring).
        resume: continue from `out_dir/checkpoint` (the config must be the recorded one).
    """
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    if (out_dir / POLICY_DIR).exists() and not resume:
        raise FileExistsError(
            f"{out_dir} already holds a trained policy; pass --resume or choose another --out."
        )
    if resume:
        if not checkpoint_dir.exists():
            logger.warning("--resume: no checkpoint in %s, starting from scratch", out_dir)
        _check_same_config(out_dir, cfg)
    train_data = filter_user_types(train_data, cfg.data.user_types)
    val_data = None if val_data is None else filter_user_types(val_data, cfg.data.user_types)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process

    # Frozen embeddings of every item, once per dataset, through the on-disk cache.
    embedder_record: dict[str, Any] | None = None
    if cfg.conditional:
        embedder = build_embedder(
            cfg.embedder.name, max_length=cfg.embedder.max_length, device=accelerator.device
        )
        cache = EmbeddingCache.for_embedder(embedding_cache_root(cfg.embedder.cache), embedder)
        batch_size, show = cfg.embedder.batch_size, cfg.progress and is_main
        train_data = embed_items(train_data, embedder, cache, batch_size=batch_size, progress=show)
        if val_data is not None:
            val_data = embed_items(val_data, embedder, cache, batch_size=batch_size, progress=show)
        embedder_record = {
            "name": embedder.name,
            "revision": embedder.revision,
            "dim": embedder.dim,
            "max_length": cfg.embedder.max_length,
        }
        embed_dim = embedder.dim
        del embedder, cache
    else:
        embed_dim = UNCONDITIONAL_EMBED_DIM

    torch.manual_seed(cfg.seed)  # the initial LoRA A and encoder weights
    policy, tokenizer, base_revision = build_policy(cfg, embed_dim)
    episodes = cfg.episodes
    sampler = DPOEpisodeSampler(
        train_data,
        targets=episodes.targets,
        max_context=episodes.max_context,
        min_context=episodes.min_context,
        batch_users=episodes.batch_users,
        seed=derived_seed(cfg.seed, "rank", accelerator.process_index),
    )
    val_sampler = None
    if val_data is not None:
        val_sampler = DPOEpisodeSampler(
            val_data, targets=cfg.eval.targets, max_context=max(cfg.eval.contexts)
        )
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.optim.warmup_steps, cfg.optim.steps, cfg.optim.min_lr_ratio)
    )
    model, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    raw_policy: ConditionalPolicy = accelerator.unwrap_model(model)

    reference_tables: dict[str, Tensor] = {}
    if cfg.dpo.precompute_reference:
        splits = {"train": train_data, **({"validation": val_data} if val_data is not None else {})}
        reference_tables = _reference_tables(
            raw_policy, tokenizer, splits, cfg, base_revision, out_dir / REFERENCE_FILE, is_main
        )

    state: dict[str, Any] = {
        "step": 0,
        "best_val_accuracy": -math.inf,
        "best_val_loss": math.inf,
        "best_step": -1,
    }
    metrics_path = out_dir / "metrics.jsonl"
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(to_dict(cfg), out_dir / "config.yaml")
        run_record = {
            "format_version": RUN_FORMAT_VERSION,
            "mode": cfg.mode,
            "base": {"name": cfg.model.base, "revision": base_revision},
            "embedder": embedder_record,
            "type_names": train_data.type_names,
            "beta": cfg.dpo.beta,
            "max_prompt_length": cfg.data.max_prompt_length,
            "max_response_length": cfg.data.max_response_length,
            "data": {
                "train": cfg.data.train,
                "train_split": cfg.data.train_split,
                "labels": cfg.data.labels,
                "user_types": cfg.data.user_types,
            },
        }
        write_json(run_record, out_dir / RUN_FILE)
    if resume and checkpoint_dir.exists():
        state = load_policy_checkpoint(checkpoint_dir, raw_policy, optimizer, scheduler)
        # Records written after the checkpoint belong to steps that will be replayed.
        truncate_jsonl(metrics_path, lambda record: record["step"] <= state["step"])
        logger.info("resumed from step %d", state["step"])
    elif is_main and metrics_path.exists():
        metrics_path.unlink()

    total, accumulation = cfg.optim.steps, cfg.grad_accumulation
    lengths = {
        "max_prompt_length": cfg.data.max_prompt_length,
        "max_response_length": cfg.data.max_response_length,
    }
    progress = tqdm(
        total=total,
        initial=state["step"],
        desc=f"train-dpo {cfg.mode}",
        disable=not (cfg.progress and is_main),
        dynamic_ncols=True,
    )
    sums: dict[str, float] = {}
    tokens_seen = 0
    started = time.perf_counter()
    first_step = state["step"]
    model.train()
    for step in range(state["step"], total):
        # LoRA dropout: seeded per rank and step, so that a resumed run replays the same masks and the
        # ranks of a multi-process run do not all draw the same ones.
        torch.manual_seed(derived_seed(cfg.seed, "dropout", accelerator.process_index, step))
        for micro in range(accumulation):
            batch = sampler.batch_at(step * accumulation + micro)
            tokens = {
                key: value.to(accelerator.device)
                for key, value in batch.tokenize_targets(tokenizer, **lengths).items()
            }  # (2BT, L) each: chosen rows, then rejected rows
            # Reference first, without gradients: its activations are gone before the policy's are kept.
            reference = _reference_of_batch(
                raw_policy, tokens, batch, reference_tables.get("train")
            )  # (2BT,)
            last = micro == accumulation - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                z = _sequence_z(raw_policy, batch, cfg.conditional, accelerator.device)  # (2BT, Z) or None
                logits = model(tokens["input_ids"], tokens["attention_mask"], z)  # (2BT, L, V)
                logps = sequence_logprobs(logits, tokens["input_ids"], tokens["completion_mask"])  # (2BT,)
                del logits
                policy_chosen, policy_rejected = logps.chunk(2)  # (BT,) each
                reference_chosen, reference_rejected = reference.chunk(2)
                losses, chosen_rewards, rejected_rewards = dpo_loss(
                    policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=cfg.dpo.beta
                )
                loss = losses.mean()
                accelerator.backward(loss / accumulation)
            stats = {
                "loss": float(loss.detach()),
                **dpo_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected),
            }
            for name, value in stats.items():
                sums[name] = sums.get(name, 0.0) + value / accumulation
            tokens_seen += int(tokens["attention_mask"].sum())
        grad_norm = accelerator.clip_grad_norm_(
            raw_policy.trainable_parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)

        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            count = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
            record = {
                "step": done,
                "learning_rate": scheduler.get_last_lr()[0],
                **{name: value / count for name, value in sums.items()},
            }
            sums = {}
            progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
            if is_main:
                append_jsonl(record, metrics_path)
        if val_sampler is not None and (done % cfg.eval.val_every == 0 or done == total):
            record = {
                "step": done,
                **validate(raw_policy, tokenizer, val_sampler, cfg, reference_tables.get("validation")),
            }
            if is_main:
                append_jsonl(record, metrics_path)
                accuracy, loss_value = record["eval_rewards/accuracies"], record["eval_loss"]
                better = accuracy > state["best_val_accuracy"] or (
                    accuracy == state["best_val_accuracy"] and loss_value < state["best_val_loss"]
                )
                if better:
                    state.update(best_val_accuracy=accuracy, best_val_loss=loss_value, best_step=done)
                    raw_policy.save_pretrained(out_dir / POLICY_DIR)
        if is_main and (done % cfg.save_every == 0 or done == total):
            state["step"] = done
            save_policy_checkpoint(checkpoint_dir, raw_policy, optimizer, scheduler, state)
        progress.update(1)
    progress.close()
    seconds = time.perf_counter() - started
    steps_run = max(1, total - first_step)
    if is_main:
        if val_sampler is None:
            raw_policy.save_pretrained(out_dir / POLICY_DIR)
            state["best_step"] = total
        summary = {
            "steps": total,
            "steps_this_run": total - first_step,
            "seconds_this_run": seconds,
            "ms_per_step": 1000 * seconds / steps_run,
            "tokens_per_second": tokens_seen / seconds if seconds > 0 else None,
            "best_step": state["best_step"],
            "best_val_accuracy": state["best_val_accuracy"] if val_sampler is not None else None,
        }
        write_json(summary, out_dir / "summary.json")
    accelerator.wait_for_everyone()
    return DPOTrainResult(
        out_dir,
        total,
        int(state["best_step"]),
        float(state["best_val_accuracy"]),
        seconds,
        1000 * seconds / steps_run,
    )

"""The NP-DPO training loop on accelerate, one readable step (L2, training).

Per optimizer step, `grad_accumulation` micro-batches of B users; each user has m ~ U[min, max] context
pairs and T disjoint target pairs. z = encoder(frozen embeddings of the user's context pairs), one per
user and repeated over that user's 2T target sequences; the loss is DPO (METHOD.md section 4) against the
reference, which is the same weights with LoRA and FiLM off (`policy.reference()`), either run per step or
precomputed once per dataset. `mode: unconditional` trains plain DPO on the same target pairs with no z.

The run directory is `utils/rundir.py`'s: `policy/` holds the policy kept at the best validation step
(the last without validation), and with dpo.precompute_reference `reference_logps.safetensors` holds
log pi_ref of every pair, per split, reused when the pairs are the same.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from npalign.config import PolicyTrainConfig
from npalign.data.dpo_episodes import DPOBatch, DPOEpisodeSampler, filter_user_types
from npalign.data.episodes import context_sweep, derived_seed
from npalign.embedding.embedders import build_embedder
from npalign.embedding.features import FEATURE_CONVENTION, embed_preferences
from npalign.models.bases import native_bfloat16
from npalign.models.losses import (
    chosen_nll,
    dpo_episode_figures,
    dpo_loss,
    dpo_metrics,
    prior_margin_penalty,
    sequence_logprobs,
)
from npalign.models.policy import TRAINABLE_FILE, ConditionalPolicy, load_base
from npalign.training import loop
from npalign.training.reference import REFERENCE_FILE, reference_tables
from npalign.types import PreferenceSet
from npalign.utils.io import load_tensors
from npalign.utils.rundir import POLICY_DIR, relative_to_run, run_record

logger = logging.getLogger(__name__)

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


# ----- validation ------------------------------------------------------------------------------------------


def validate(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    sampler: DPOEpisodeSampler,
    cfg: PolicyTrainConfig,
    reference_table: Tensor | None,
) -> dict[str, float]:
    """eval_* metrics: implicit-reward accuracy (percent) and DPO loss per m and averaged over m."""
    device = policy.encoder.empty_context.device
    lengths = {
        "max_prompt_length": cfg.data.max_prompt_length,
        "max_response_length": cfg.data.max_response_length,
    }

    def score(batch: DPOBatch, generator: torch.Generator) -> dict[str, Tensor]:
        inputs = batch.model_inputs(tokenizer, **lengths, device=device, reference_table=reference_table)
        return dpo_episode_figures(
            **policy.score_targets(inputs, conditional=cfg.conditional, beta=cfg.dpo.beta)
        )

    chunk = max(1, cfg.eval.batch_pairs // sampler.sampler.targets)
    swept = context_sweep(
        sampler, cfg.eval.contexts, cfg.eval.val_episodes, cfg.eval.seed, score, chunk=chunk
    )
    record: dict[str, float] = {}
    accuracies, losses, margins = [], [], []
    for m, scores in swept.items():
        accuracy = 100 * float(scores["accuracy"].mean())
        record[f"eval_rewards/accuracies_m{m}"] = accuracy
        accuracies.append(accuracy)
        losses.append(float(scores["loss"].mean()))
        margins.append(float(scores["margin"].mean()))
    record["eval_rewards/accuracies"] = sum(accuracies) / len(accuracies)
    record["eval_rewards/margins"] = sum(margins) / len(margins)
    record["eval_loss"] = sum(losses) / len(losses)
    return record


# ----- the loop ---------------------------------------------------------------------------------------------


def build_policy(
    cfg: PolicyTrainConfig, embed_dim: int, device: torch.device | str = "cpu"
) -> tuple[ConditionalPolicy, PreTrainedTokenizerBase, str]:
    """The policy over `cfg.model.base` (LoRA + FiLM + encoder at their init), its tokenizer, base revision.

    `device` (where it will train) resolves `model.bf16: auto`; the policy records the dtype it chose.
    """
    base, tokenizer, revision = load_base(cfg.model.base)
    model = cfg.model
    if isinstance(model.bf16, bool):
        bf16 = model.bf16
    else:  # "auto"
        bf16 = native_bfloat16(device)
        dtype = "bfloat16" if bf16 else "float32 (no native bfloat16)"
        logger.info("model.bf16=auto: the base runs in %s on %s", dtype, torch.device(device))
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
        lora_layers=model.lora_layers,
        film_layers=model.film_layers,
        embedder_name=cfg.embedder.name if cfg.conditional else "",
        base_model_id=model.base,
        base_model_revision=revision,
        gradient_checkpointing=model.gradient_checkpointing,
        bf16=bf16,
    )
    return policy, tokenizer, revision


def _embed_splits(
    cfg: PolicyTrainConfig, splits: dict[str, PreferenceSet], accelerator: Accelerator
) -> tuple[dict[str, PreferenceSet], dict[str, Any] | None, int]:
    """Each split with its items' frozen context features attached, the embedder's record, and D."""
    if not cfg.conditional:
        return splits, None, UNCONDITIONAL_EMBED_DIM
    embedder = build_embedder(
        cfg.embedder.name, max_length=cfg.embedder.max_length, device=accelerator.device
    )
    show = cfg.run.progress and accelerator.is_main_process
    embedded = {
        name: embed_preferences(
            data, embedder, cache_dir=cfg.embedder.cache, batch_size=cfg.embedder.batch_size, progress=show
        )
        for name, data in splits.items()
    }
    record = {
        "name": embedder.feature_name,
        "revision": embedder.revision,
        "dim": embedder.dim,
        "max_length": cfg.embedder.max_length,
        "features": FEATURE_CONVENTION,
    }
    return embedded, record, embedder.feature_dim


def policy_run_record(
    cfg: PolicyTrainConfig,
    embedder: dict[str, Any] | None,
    base_revision: str,
    type_names: list[str],
    out_dir: Path,
) -> dict[str, Any]:
    """run.json of a policy run: what `inference.policy.load_policy` needs besides the policy folder."""
    return run_record(
        "policy",
        embedder=embedder,
        base={"name": cfg.model.base, "revision": base_revision},
        type_names=type_names,
        mode=cfg.mode,
        beta=cfg.dpo.beta,
        max_prompt_length=cfg.data.max_prompt_length,
        max_response_length=cfg.data.max_response_length,
        data={
            "train": relative_to_run(cfg.data.train, out_dir),
            "train_split": cfg.data.train_split,
            "labels": cfg.data.labels,
            "user_types": cfg.data.user_types,
        },
    )


def train_policy(
    cfg: PolicyTrainConfig,
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
        out_dir: the run directory (see `utils/rundir.py`).
        resume: continue from `out_dir/checkpoint` (the config must be the recorded one).
    """
    out_dir = Path(out_dir)
    unused = not cfg.conditional or cfg.episodes.min_context == 0  # no z, or a batch of empty contexts
    accelerator = loop.make_accelerator(cfg.run, out_dir, unused_parameters=unused)
    with loop.open_run(out_dir, "policy", cfg, accelerator, resume=resume) as resumable:
        splits = {"train": filter_user_types(train_data, cfg.data.user_types)}
        if val_data is not None:
            splits["validation"] = filter_user_types(val_data, cfg.data.user_types)
        # Frozen embeddings of every item, once per dataset, through the on-disk cache.
        splits, embedder_record, embed_dim = _embed_splits(cfg, splits, accelerator)
        torch.manual_seed(cfg.run.seed)  # the initial LoRA A and encoder weights
        policy, tokenizer, base_revision = build_policy(cfg, embed_dim, accelerator.device)
        if accelerator.is_main_process:
            record = policy_run_record(
                cfg, embedder_record, base_revision, splits["train"].type_names, out_dir
            )
            loop.write_run_files(out_dir, cfg, record)
        return _train(cfg, splits, policy, tokenizer, base_revision, out_dir, accelerator, resumable)


def _step(
    cfg: PolicyTrainConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    raw_policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    sampler: DPOEpisodeSampler,
    reference_table: Tensor | None,
    step: int,
) -> tuple[dict[str, float], int]:
    """One optimizer step's forward and backward passes (grad_accumulation micro-batches of B users).

    Returns the step's statistics averaged over the micro-batches and the tokens it read.
    """
    accumulation, stats, tokens_seen = cfg.optim.grad_accumulation, loop.RunningMeans(), 0
    lengths = {
        "max_prompt_length": cfg.data.max_prompt_length,
        "max_response_length": cfg.data.max_response_length,
    }
    for micro in range(accumulation):
        batch = sampler.batch_at(step * accumulation + micro)
        inputs = batch.model_inputs(
            tokenizer, **lengths, device=accelerator.device, reference_table=reference_table
        )  # tokens (2BT, L) each: chosen rows, then rejected rows; context features (B, C, D)
        # Reference first, without gradients: its activations are gone before the policy's are kept.
        reference = raw_policy.reference_of(inputs)  # (2BT,)
        last = micro == accumulation - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            z = raw_policy.sequence_z(inputs) if cfg.conditional else None  # (2BT, Z) or None
            logits = model(inputs["input_ids"], inputs["attention_mask"], z)  # (2BT, L, V)
            logps = sequence_logprobs(logits, inputs["input_ids"], inputs["completion_mask"])  # (2BT,)
            del logits
            policy_chosen, policy_rejected = logps.chunk(2)  # (BT,) each
            reference_chosen, reference_rejected = reference.chunk(2)
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                policy_chosen,
                policy_rejected,
                reference_chosen,
                reference_rejected,
                beta=cfg.dpo.beta,
                loss_type=cfg.dpo.loss_type,
            )
            loss = losses.mean()
            extra = {}
            sizes = None  # (BT,) each target pair's context size; the chosen rows are user-major, T per user
            if cfg.conditional:
                per_user = inputs["context_mask"].sum(-1)  # (B,)
                sizes = per_user.repeat_interleave(len(policy_chosen) // len(per_user))
            if cfg.dpo.rpo_alpha is not None:
                chosen_tokens = inputs["completion_mask"][: len(policy_chosen), 1:].sum(-1)  # (BT,)
                keep = None
                if sizes is not None and cfg.dpo.rpo_min_context > 0:
                    keep = sizes >= cfg.dpo.rpo_min_context  # (BT,)
                nll = chosen_nll(policy_chosen, chosen_tokens, keep)  # mean NLL per chosen token
                loss = loss + cfg.dpo.rpo_alpha * nll
                extra["nll_loss"] = float(nll.detach())
            if sizes is not None and cfg.dpo.prior_margin_weight > 0:
                margins = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)  # (BT,) h
                prior = prior_margin_penalty(margins, sizes == 0)
                loss = loss + cfg.dpo.prior_margin_weight * prior
                extra["prior_margin_loss"] = float(prior.detach())
            accelerator.backward(loss / accumulation)
        stats.add(
            {
                "loss": float(loss.detach()),
                **extra,
                **dpo_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected),
            },
            1 / accumulation,
        )
        tokens_seen += int(inputs["attention_mask"].sum())
    return stats.sums, tokens_seen


def _samplers(
    cfg: PolicyTrainConfig, splits: dict[str, PreferenceSet], rank: int
) -> tuple[DPOEpisodeSampler, DPOEpisodeSampler | None]:
    """The training sampler (its draws seeded per rank) and the fixed validation episodes' sampler."""
    episodes = cfg.episodes
    with loop.sizes_from("episodes.max_context and episodes.targets"):
        sampler = DPOEpisodeSampler(
            splits["train"],
            targets=episodes.targets,
            max_context=episodes.max_context,
            min_context=episodes.min_context,
            batch_users=episodes.batch_users,
            seed=derived_seed(cfg.run.seed, "rank", rank),
        )
    if "validation" not in splits:
        return sampler, None
    with loop.sizes_from("the largest of eval.contexts and eval.targets, on the validation data"):
        return sampler, DPOEpisodeSampler(
            splits["validation"], targets=cfg.eval.targets, max_context=max(cfg.eval.contexts)
        )


def _train(
    cfg: PolicyTrainConfig,
    splits: dict[str, PreferenceSet],
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    base_revision: str,
    out_dir: Path,
    accelerator: Accelerator,
    resumable: bool,
) -> DPOTrainResult:
    is_main = accelerator.is_main_process
    sampler, val_sampler = _samplers(cfg, splits, accelerator.process_index)
    optimizer, scheduler = loop.build_optimizer(policy.trainable_parameters(), cfg.optim)
    model, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    raw_policy: ConditionalPolicy = accelerator.unwrap_model(model)
    references: dict[str, Tensor] = {}
    if cfg.dpo.precompute_reference:
        references = reference_tables(
            raw_policy, tokenizer, splits, cfg, base_revision, out_dir / REFERENCE_FILE, is_main
        )

    def read_weights(folder: Path) -> None:
        raw_policy.load_trainable_state_dict(load_tensors(folder / POLICY_DIR / TRAINABLE_FILE))

    def write_weights(folder: Path) -> None:
        raw_policy.save_pretrained(folder / POLICY_DIR)

    fresh: dict[str, Any] = {"step": 0, "best_val_accuracy": -math.inf, "best_step": -1}
    state = loop.resume_state(out_dir, resumable, read_weights, optimizer, scheduler, fresh)
    metrics = loop.MetricsLog(out_dir, accelerator, resumed_step=state["step"] if resumable else None)
    total, first_step = cfg.optim.steps, state["step"]
    progress = loop.progress_bar(total, first_step, f"train-dpo {cfg.mode}", cfg.run.progress and is_main)
    means, tokens_seen, started = loop.RunningMeans(), 0, time.perf_counter()
    model.train()
    for step in range(first_step, total):
        with loop.seeded_step(cfg.run.seed, accelerator, step):
            stats, tokens = _step(
                cfg, accelerator, model, raw_policy, tokenizer, sampler, references.get("train"), step
            )
        tokens_seen += tokens
        grad_norm = accelerator.clip_grad_norm_(
            raw_policy.trainable_parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        )
        loop.optimizer_step(optimizer, scheduler)
        means.add({**stats, "grad_norm": float(grad_norm)})
        done = step + 1
        if loop.due(done, cfg.run.log_every, total):
            record = means.record(done, cfg.run.log_every, learning_rate=scheduler.get_last_lr()[0])
            progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
            metrics.write(record)
        if val_sampler is not None and loop.due(done, cfg.eval.val_every, total):
            record = {
                "step": done,
                **validate(raw_policy, tokenizer, val_sampler, cfg, references.get("validation")),
            }
            metrics.write(record)
            # Kept: the best validation accuracy, ties broken by the lower DPO loss.
            score = (-record["eval_rewards/accuracies"], record["eval_loss"])
            if is_main and loop.keep_best(state, "policy", score, done):
                state.update(best_val_accuracy=record["eval_rewards/accuracies"], best_step=done)
                write_weights(out_dir)
        if is_main and loop.due(done, cfg.run.save_every, total):
            state["step"] = done
            loop.save_checkpoint(out_dir, write_weights, optimizer, scheduler, state)
        progress.update(1)
    progress.close()
    seconds = time.perf_counter() - started
    if is_main:
        _finish(
            out_dir,
            state,
            write_weights,
            validated=val_sampler is not None,
            total=total,
            first_step=first_step,
            seconds=seconds,
            tokens_seen=tokens_seen,
        )
    accelerator.wait_for_everyone()
    ms_per_step = 1000 * seconds / max(1, total - first_step)
    return DPOTrainResult(
        out_dir, total, int(state["best_step"]), float(state["best_val_accuracy"]), seconds, ms_per_step
    )


def _finish(
    out_dir: Path,
    state: dict[str, Any],
    write_weights: Callable[[Path], None],
    *,
    validated: bool,
    total: int,
    first_step: int,
    seconds: float,
    tokens_seen: int,
) -> None:
    """Keep the last policy when there was no validation, and write summary.json (main process)."""
    if not validated:
        write_weights(out_dir)
        state["best_step"] = total
    loop.write_summary(
        out_dir,
        total,
        first_step,
        seconds,
        tokens_per_second=tokens_seen / seconds if seconds > 0 else None,
        best_step=state["best_step"],
        best_val_accuracy=state["best_val_accuracy"] if validated else None,
    )

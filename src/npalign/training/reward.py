"""The reward-model training loop (BTL, DPL, NP-BTL) on accelerate, one readable step (L2, training).

The run directory is `utils/rundir.py`'s, with `model.safetensors` the weights kept at the best
validation step by `eval.select_by` (the last ones without validation).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from npalign.config import RewardTrainConfig, to_dict
from npalign.data.episodes import EpisodeSampler, context_sweep, derived_seed
from npalign.embedding.features import FEATURE_CONVENTION
from npalign.models.builders import build_reward_model
from npalign.models.reward import PreferenceModel
from npalign.training.loop import (
    MetricsLog,
    RunningMeans,
    build_optimizer,
    due,
    keep_best,
    make_accelerator,
    open_run,
    optimizer_step,
    progress_bar,
    resume_state,
    save_checkpoint,
    seeded_step,
    sizes_from,
    write_run_files,
    write_summary,
)
from npalign.types import PreferenceSet
from npalign.utils.io import load_state_strict, load_tensors, save_tensors
from npalign.utils.metrics import episode_accuracy, episode_nll
from npalign.utils.rundir import REWARD_WEIGHTS, run_record

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    best_step: int
    best_val_nll: float
    seconds: float
    ms_per_step: float


@torch.no_grad()
def validate(
    model: PreferenceModel, sampler: EpisodeSampler, contexts: list[int], episodes: int, seed: int
) -> dict[str, float]:
    """Mean target NLL and accuracy over fixed validation episodes, for each context size and averaged."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def score(batch: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = batch.to(device)
        latent = model.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
        probs = model.prefer_prob(batch.target_chosen, batch.target_rejected, latent, generator).cpu()
        mask = batch.target_mask.cpu()
        return {"nll": episode_nll(probs, mask), "accuracy": episode_accuracy(probs, mask)}

    record: dict[str, float] = {}
    nlls, accs = [], []
    for m, scores in context_sweep(sampler, contexts, episodes, seed, score, noise_tag="val-noise").items():
        nll, acc = float(scores["nll"].mean()), float(scores["accuracy"].mean())
        record[f"val_accuracy_m{m}"] = 100 * acc
        record[f"val_nll_m{m}"] = nll
        nlls.append(nll)
        accs.append(acc)
    record["val_nll"] = sum(nlls) / len(nlls)
    record["val_accuracy"] = 100 * sum(accs) / len(accs)
    model.train(was_training)
    return record


def selection_score(record: dict[str, float], contexts: list[int], select_by: str, prior_head: bool) -> float:
    """The figure the kept step minimises: validation NLL, or minus accuracy, averaged over context sizes.

    With a prior head the rest of the model never answers an empty context, so it is scored on m > 0
    alone; the prior head is scored on m = 0 alone (see `train_reward_model`).
    """
    if not prior_head:
        return record["val_nll"] if select_by == "nll" else -record["val_accuracy"]
    sizes = [m for m in contexts if m > 0]
    if select_by == "nll":
        return sum(record[f"val_nll_m{m}"] for m in sizes) / len(sizes)
    return -sum(record[f"val_accuracy_m{m}"] for m in sizes) / len(sizes)


def reward_run_record(cfg: RewardTrainConfig, data: PreferenceSet) -> dict[str, Any]:
    """run.json of a reward run: what `npalign.load` needs to rebuild the model, and its provenance."""
    assert data.features is not None
    embedding = data.meta.get("embedding")
    embedder = None
    if cfg.embedder.name:
        embedder = {
            "name": cfg.embedder.name,
            "revision": embedding.get("revision") if embedding else None,
            "dim": int(data.features.shape[1]),
            "max_length": cfg.embedder.max_length,
            "features": FEATURE_CONVENTION,
        }
    return run_record(
        "reward",
        embedder=embedder,
        base=None,
        type_names=data.type_names,
        model=to_dict(cfg.model),
        embed_dim=int(data.features.shape[1]),
    )


def _check_data(cfg: RewardTrainConfig, train: PreferenceSet, val: PreferenceSet | None) -> int:
    """The feature width D; raises on data the model cannot train on."""
    if train.features is None:
        raise ValueError("the training data has no item features; embed the texts first (npalign embed).")
    embed_dim = int(train.features.shape[1])
    if val is not None and (val.features is None or int(val.features.shape[1]) != embed_dim):
        raise ValueError(f"validation features must be {embed_dim}-d like the training features.")
    if (
        cfg.model.prior_head
        and val is not None
        and (0 not in cfg.eval.contexts or max(cfg.eval.contexts) == 0)
    ):
        raise ValueError(
            f"model.prior_head is kept at its best step at m = 0 and the rest of the model at its best over "
            f"m > 0, so eval.contexts must hold 0 and some m > 0; got {cfg.eval.contexts}."
        )
    return embed_dim


def _step(
    cfg: RewardTrainConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    raw_model: PreferenceModel,
    sampler: EpisodeSampler,
    step: int,
) -> dict[str, float]:
    """One optimizer step on the episodes of `step`; returns its loss and the model's statistics."""
    batch = sampler.batch_at(step).to(accelerator.device)
    noise = torch.Generator().manual_seed(derived_seed(cfg.run.seed, "noise", step))
    with seeded_step(cfg.run.seed, accelerator, step), accelerator.autocast():
        loss, stats = model(batch, noise)
    accelerator.backward(loss)
    if cfg.optim.grad_clip > 0 and raw_model.prior_state_keys():
        # Apart, so that the prior head's gradients never scale down the personalised path's.
        accelerator.unscale_gradients()
        for group in raw_model.parameter_groups():
            torch.nn.utils.clip_grad_norm_(group, cfg.optim.grad_clip)
    elif cfg.optim.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    return {"loss": float(loss.detach()), **{name: float(value) for name, value in stats.items()}}


def _keep_best_weights(
    cfg: RewardTrainConfig,
    raw_model: PreferenceModel,
    record: dict[str, float],
    state: dict[str, Any],
    best_weights: dict[str, torch.Tensor],
    out_dir: Path,
    save: bool,
) -> None:
    """Update the kept weights part by part (a prior head is kept at its own best step at m = 0).

    Every process keeps the same record (validation is the same on each), so that all of them agree on a
    plateau; only the main one (`save`) writes the weights.
    """
    prior_keys = raw_model.prior_state_keys()
    done = int(record["step"])
    improved = set()
    score = selection_score(record, cfg.eval.contexts, cfg.eval.select_by, bool(prior_keys))
    if keep_best(state, "rest", (score,), done):
        state.update(best_val_nll=record["val_nll"], best_step=done)
        improved.add("rest")
    if prior_keys:
        prior_score = record["val_nll_m0"] if cfg.eval.select_by == "nll" else -record["val_accuracy_m0"]
        if keep_best(state, "prior", (prior_score,), done):
            state["best_prior_step"] = done
            improved.add("prior")
    if improved:
        for key, value in raw_model.state_dict().items():
            if ("prior" if key in prior_keys else "rest") in improved:
                best_weights[key] = value.detach().clone()
        if save:
            save_tensors(best_weights, out_dir / REWARD_WEIGHTS)


def plateaued(patience: int | None, val_every: int, done: int, best_step: int) -> bool:
    """True once `patience` validations in a row (patience x val_every steps) have not beaten the best."""
    return patience is not None and best_step >= 0 and done - best_step >= patience * val_every


def train_reward_model(
    cfg: RewardTrainConfig,
    train: PreferenceSet,
    val: PreferenceSet | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
) -> TrainResult:
    """Meta-train a reward model over users and write the run directory.

    Each step draws `episodes.batch_users` users, for each a context of m ~ U[min, max] pairs and
    `episodes.targets` disjoint target pairs, and minimises the model's loss on the targets.

    A prior head (`model.prior_head`) is a separate network that only empty contexts reach, so it is
    kept at its own best validation step at m = 0 and its gradients are clipped apart from the rest's;
    the rest is kept at its best step over the context sizes m > 0, the only ones it answers.
    """
    out_dir = Path(out_dir)
    embed_dim = _check_data(cfg, train, val)
    # An all-empty batch of contexts leaves the encoder without gradients.
    accelerator = make_accelerator(cfg.run, out_dir, unused_parameters=cfg.episodes.min_context == 0)
    with open_run(out_dir, "reward", cfg, accelerator, resume=resume) as resumable:
        return _train(cfg, train, val, out_dir, embed_dim, accelerator, resumable)


def _train(
    cfg: RewardTrainConfig,
    train: PreferenceSet,
    val: PreferenceSet | None,
    out_dir: Path,
    embed_dim: int,
    accelerator: Accelerator,
    resumable: bool,
) -> TrainResult:
    is_main = accelerator.is_main_process
    torch.manual_seed(cfg.run.seed)
    model = build_reward_model(cfg.model, embed_dim)
    sampler, val_sampler = _samplers(cfg, train, val, accelerator.process_index)
    optimizer, scheduler = build_optimizer(model.parameters(), cfg.optim)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model: PreferenceModel = accelerator.unwrap_model(model)
    if is_main:
        write_run_files(out_dir, cfg, reward_run_record(cfg, train))

    def read_weights(folder: Path) -> None:
        load_state_strict(raw_model, load_tensors(folder / REWARD_WEIGHTS), f"checkpoint {folder}")

    def write_weights(folder: Path) -> None:
        save_tensors(raw_model.state_dict(), folder / REWARD_WEIGHTS)

    fresh: dict[str, Any] = {"step": 0, "best_val_nll": math.inf, "best_step": -1}
    state = resume_state(out_dir, resumable, read_weights, optimizer, scheduler, fresh)
    # The kept weights so far, part by part (a prior head is kept apart from the rest).
    best_weights = (
        load_tensors(out_dir / REWARD_WEIGHTS) if resumable and (out_dir / REWARD_WEIGHTS).exists() else {}
    )
    metrics = MetricsLog(out_dir, accelerator, resumed_step=state["step"] if resumable else None)
    # A run that stopped on a plateau is finished at that step; resuming it changes nothing.
    total, first_step = state.get("stopped_at", cfg.optim.steps), state["step"]
    progress = progress_bar(total, first_step, f"train {cfg.model.kind}", cfg.run.progress and is_main)
    means, started = RunningMeans(), time.perf_counter()
    model.train()
    for step in range(first_step, total):
        means.add(_step(cfg, accelerator, model, raw_model, sampler, step))
        optimizer_step(optimizer, scheduler)
        done = step + 1
        if due(done, cfg.run.log_every, total):
            record = means.record(done, cfg.run.log_every, lr=scheduler.get_last_lr()[0])
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            metrics.write(record)
        if val_sampler is not None and due(done, cfg.eval.val_every, total):
            scores = validate(raw_model, val_sampler, cfg.eval.contexts, cfg.eval.val_episodes, cfg.eval.seed)
            record = {"step": done, **scores}
            metrics.write(record)
            _keep_best_weights(cfg, raw_model, record, state, best_weights, out_dir, save=is_main)
            if plateaued(cfg.eval.patience, cfg.eval.val_every, done, state["best_step"]):
                state["stopped_at"] = total = done
                logger.info("validation plateau: stopped at step %d, kept step %d", done, state["best_step"])
        if is_main and due(done, cfg.run.save_every, total):
            state["step"] = done
            save_checkpoint(out_dir, write_weights, optimizer, scheduler, state)
        progress.update(1)
        if done == total:
            break
    progress.close()
    seconds = time.perf_counter() - started
    if is_main:
        if val_sampler is None:
            write_weights(out_dir)
            state["best_step"] = total
        extra = {"best_prior_step": state["best_prior_step"]} if "best_prior_step" in state else {}
        extra["stopped"] = "plateau" if "stopped_at" in state else "steps"
        best_nll = state["best_val_nll"] if val_sampler is not None else None
        write_summary(
            out_dir, total, first_step, seconds, best_step=state["best_step"], best_val_nll=best_nll, **extra
        )
    accelerator.wait_for_everyone()
    ms_per_step = 1000 * seconds / max(1, total - first_step)
    return TrainResult(
        out_dir, total, int(state["best_step"]), float(state["best_val_nll"]), seconds, ms_per_step
    )


def _samplers(
    cfg: RewardTrainConfig, train: PreferenceSet, val: PreferenceSet | None, rank: int
) -> tuple[EpisodeSampler, EpisodeSampler | None]:
    """The training sampler (its draws seeded per rank) and the fixed validation episodes' sampler."""
    episodes = cfg.episodes
    with sizes_from("episodes.max_context and episodes.targets"):
        sampler = EpisodeSampler(
            train,
            targets=episodes.targets,
            max_context=episodes.max_context,
            min_context=episodes.min_context,
            batch_users=episodes.batch_users,
            seed=derived_seed(cfg.run.seed, "rank", rank),
        )
    if val is None:
        return sampler, None
    with sizes_from("the largest of eval.contexts and eval.targets, on the validation data"):
        return sampler, EpisodeSampler(val, targets=cfg.eval.targets, max_context=max(cfg.eval.contexts))

"""The reward-model training loop (BTL, DPL, NP-BTL) on accelerate, in one readable function (L2, training).

Run directory:
    config.yaml            the resolved TrainConfig (rerun with --config)
    model_config.json      what `npalign.load` needs to rebuild the model (kind, sizes, embedder, types)
    model.safetensors      the best weights on validation by `eval.select_by` (the last ones without validation)
    metrics.jsonl          training averages every `log_every` steps and every validation
    checkpoint/            the last state (model, optimizer, scheduler, loop) for --resume
    summary.json           wall time and final figures
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
from tqdm.auto import tqdm

from npalign.config import TrainConfig, to_dict
from npalign.data.episodes import EpisodeSampler, derived_seed
from npalign.models.builders import build_reward_model
from npalign.models.reward import PreferenceModel
from npalign.training.loop import load_checkpoint, save_checkpoint, warmup_cosine
from npalign.types import PreferenceSet
from npalign.utils.io import append_jsonl, load_tensors, save_tensors, truncate_jsonl, write_json, write_yaml
from npalign.utils.metrics import episode_accuracy, episode_nll

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1


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
    record: dict[str, float] = {}
    nlls, accs = [], []
    for m in contexts:
        generator = torch.Generator().manual_seed(derived_seed(seed, "val-noise", m))
        per_nll, per_acc = [], []
        for batch in sampler.evaluation_batches(m, episodes, seed):
            batch = batch.to(device)
            latent = model.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
            probs = model.prefer_prob(batch.target_chosen, batch.target_rejected, latent, generator).cpu()
            per_nll.append(episode_nll(probs, batch.target_mask.cpu()))
            per_acc.append(episode_accuracy(probs, batch.target_mask.cpu()))
        nll, acc = float(torch.cat(per_nll).mean()), float(torch.cat(per_acc).mean())
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


def model_config_record(cfg: TrainConfig, embed_dim: int, type_names: list[str]) -> dict[str, Any]:
    """What `npalign.load` needs to rebuild a trained model, and nothing about how it was trained."""
    return {
        "format_version": MODEL_FORMAT_VERSION,
        "model": to_dict(cfg.model),
        "embed_dim": embed_dim,
        "embedder": cfg.embedder,
        "type_names": type_names,
    }


def train_reward_model(
    cfg: TrainConfig,
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
    if train.features is None:
        raise ValueError("the training data has no item features; embed the texts first (npalign embed).")
    checkpoint_dir = out_dir / "checkpoint"
    if (out_dir / "model.safetensors").exists() and not resume:
        raise FileExistsError(
            f"{out_dir} already holds a trained model; pass --resume or choose another --out."
        )
    if resume and not checkpoint_dir.exists():
        logger.warning("--resume: no checkpoint in %s, starting from scratch", out_dir)

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    embed_dim = int(train.features.shape[1])
    model = build_reward_model(cfg.model, embed_dim)
    episodes = cfg.episodes
    sampler = EpisodeSampler(
        train,
        targets=episodes.targets,
        max_context=episodes.max_context,
        min_context=episodes.min_context,
        batch_users=episodes.batch_users,
        seed=derived_seed(cfg.seed, "rank", accelerator.process_index),
    )
    prior_keys = model.prior_state_keys()
    if prior_keys and val is not None and (0 not in cfg.eval.contexts or max(cfg.eval.contexts) == 0):
        raise ValueError(
            f"model.prior_head is kept at its best step at m = 0 and the rest of the model at its best over "
            f"m > 0, so eval.contexts must hold 0 and some m > 0; got {cfg.eval.contexts}."
        )
    val_sampler = None
    if val is not None:
        if val.features is None or int(val.features.shape[1]) != embed_dim:
            raise ValueError(f"validation features must be {embed_dim}-d like the training features.")
        val_sampler = EpisodeSampler(val, targets=cfg.eval.targets, max_context=max(cfg.eval.contexts))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.optim.warmup_steps, cfg.optim.steps, cfg.optim.min_lr_ratio)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model: PreferenceModel = accelerator.unwrap_model(model)

    # best_score: lower is better (val NLL, or minus val accuracy with eval.select_by=accuracy).
    state: dict[str, Any] = {"step": 0, "best_val_nll": math.inf, "best_score": math.inf, "best_step": -1}
    metrics_path = out_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(to_dict(cfg), out_dir / "config.yaml")
        write_json(model_config_record(cfg, embed_dim, train.type_names), out_dir / "model_config.json")
    # The best weights so far, part by part (a prior head is selected apart from the rest).
    best_weights: dict[str, torch.Tensor] = {}
    if resume and checkpoint_dir.exists():
        state = load_checkpoint(checkpoint_dir, raw_model, optimizer, scheduler)
        if (out_dir / "model.safetensors").exists():
            best_weights = load_tensors(out_dir / "model.safetensors")
        # Records written after the checkpoint belong to steps that will be replayed.
        truncate_jsonl(metrics_path, lambda record: record["step"] <= state["step"])
        logger.info("resumed from step %d", state["step"])
    elif accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()

    total = cfg.optim.steps
    progress = tqdm(
        total=total,
        initial=state["step"],
        desc=f"train {cfg.model.kind}",
        disable=not (cfg.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    sums: dict[str, float] = {}
    started = time.perf_counter()
    first_step = state["step"]
    model.train()
    fork_devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    for step in range(state["step"], total):
        batch = sampler.batch_at(step).to(accelerator.device)
        noise = torch.Generator().manual_seed(derived_seed(cfg.seed, "noise", step))
        # Dropout draws from torch's global generators: seed them per step (and rank) inside a fork, so
        # that a resumed run draws the same masks and the caller's random state is left as it was.
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(derived_seed(cfg.seed, "dropout", accelerator.process_index, step))
            with accelerator.autocast():
                loss, stats = model(batch, noise)
        accelerator.backward(loss)
        if cfg.optim.grad_clip > 0 and prior_keys:
            # Apart, so that the prior head's gradients never scale down the personalised path's.
            accelerator.unscale_gradients()
            for group in raw_model.parameter_groups():
                torch.nn.utils.clip_grad_norm_(group, cfg.optim.grad_clip)
        elif cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            count = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
            record = {
                "step": done,
                "lr": scheduler.get_last_lr()[0],
                **{k: v / count for k, v in sums.items()},
            }
            sums = {}
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if accelerator.is_main_process:
                append_jsonl(record, metrics_path)
        if val_sampler is not None and (done % cfg.eval.val_every == 0 or done == total):
            record = {
                "step": done,
                **validate(raw_model, val_sampler, cfg.eval.contexts, cfg.eval.val_episodes, cfg.eval.seed),
            }
            if accelerator.is_main_process:
                append_jsonl(record, metrics_path)
                score = selection_score(record, cfg.eval.contexts, cfg.eval.select_by, bool(prior_keys))
                # Checkpoints from before select_by existed kept the best NLL only.
                fallback = state["best_val_nll"] if cfg.eval.select_by == "nll" else math.inf
                improved = set()
                if score < state.get("best_score", fallback):
                    state.update(best_score=score, best_val_nll=record["val_nll"], best_step=done)
                    improved.add("rest")
                if prior_keys:
                    prior_score = (
                        record["val_nll_m0"] if cfg.eval.select_by == "nll" else -record["val_accuracy_m0"]
                    )
                    if prior_score < state.get("best_prior_score", math.inf):
                        state.update(best_prior_score=prior_score, best_prior_step=done)
                        improved.add("prior")
                if improved:
                    for key, value in raw_model.state_dict().items():
                        if ("prior" if key in prior_keys else "rest") in improved:
                            best_weights[key] = value.detach().clone()
                    save_tensors(best_weights, out_dir / "model.safetensors")
        if accelerator.is_main_process and (done % cfg.save_every == 0 or done == total):
            state["step"] = done
            save_checkpoint(checkpoint_dir, raw_model, optimizer, scheduler, state)
        progress.update(1)
    progress.close()
    seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        if val_sampler is None:
            save_tensors(raw_model.state_dict(), out_dir / "model.safetensors")
            state["best_step"] = total
        steps_run = max(1, total - first_step)
        summary = {
            "steps": total,
            "steps_this_run": total - first_step,
            "seconds_this_run": seconds,
            "ms_per_step": 1000 * seconds / steps_run,
            "best_step": state["best_step"],
            "best_val_nll": state["best_val_nll"] if val_sampler is not None else None,
        }
        if prior_keys and val_sampler is not None:
            summary["best_prior_step"] = state["best_prior_step"]
        write_json(summary, out_dir / "summary.json")
    accelerator.wait_for_everyone()
    return TrainResult(
        out_dir,
        total,
        int(state["best_step"]),
        float(state["best_val_nll"]),
        seconds,
        1000 * seconds / max(1, total - first_step),
    )

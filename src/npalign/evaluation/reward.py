"""Evaluate reward models against context size on unseen targets, beside the Bayes ceiling (L3, evaluation).

For each m, the same fixed episodes (users balanced over types, m context pairs, T disjoint targets)
are scored by every model and by the Bayes-optimal predictor when the data is synthetic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from npalign.data.episodes import EpisodeSampler, context_sweep
from npalign.data.synthetic import BayesOracle, closed_form_ceiling
from npalign.models.reward import PreferenceModel
from npalign.types import EpisodeBatch, PreferenceSet
from npalign.utils.metrics import episode_accuracy, episode_nll, expected_calibration_error, mean_and_sem

logger = logging.getLogger(__name__)


def type_weighted(
    values: torch.Tensor, types: torch.Tensor, type_names: list[str], scale: float = 100.0
) -> dict[str, Any]:
    """Mean and s.e.m. with equal weight per user type, plus the per-type means, all times `scale`.

    Args:
        values: (N,) one number per episode (a fraction, by default reported in percent).
        types: (N,) index into `type_names` of each episode's user type; types with no episode are skipped.
    """
    by_type, sems = {}, []
    for k, name in enumerate(type_names):
        selected = values[types == k]
        if selected.numel() == 0:
            continue
        mean, sem = mean_and_sem(selected)
        by_type[name or "all"] = scale * mean
        sems.append(sem)
    mean = sum(by_type.values()) / len(by_type)
    sem = scale * math.sqrt(sum(s * s for s in sems if not math.isnan(s))) / len(sems)
    return {"mean": mean, "sem": sem, "by_type": by_type}


def evaluation_sampler(data: PreferenceSet, contexts: list[int], targets: int) -> EpisodeSampler:
    return EpisodeSampler(data, targets=targets, max_context=max(contexts))


def check_counts(**counts: int) -> None:
    """Each count (episodes, targets, ...) >= 1, else a ValueError naming the first that is not."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1.")


@torch.no_grad()
def score_episodes(
    data: PreferenceSet,
    predict: Callable[[EpisodeBatch, torch.Generator], torch.Tensor],
    *,
    contexts: list[int],
    episodes: int,
    targets: int,
    seed: int,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Accuracy (mean, s.e.m., per type), NLL and ECE of any predictor at each context size on fixed episodes.

    Args:
        predict: (episode batch, generator) -> (B, T) p(chosen > rejected); the generator (seeded per m)
            is there for predictors that sample.
    Returns:
        {"accuracy": {"<m>": {"mean", "sem", "by_type"}}, "nll": {"<m>": {...}}, "ece": {"<m>": float}}
        with accuracies in percent.
    """
    check_counts(episodes=episodes, targets=targets)
    sampler = evaluation_sampler(data, contexts, targets)

    def score(batch: EpisodeBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        probs = predict(batch, generator)
        return {
            "accuracy": episode_accuracy(probs, batch.target_mask),
            "nll": episode_nll(probs, batch.target_mask),
            "user_type": batch.user_type,
            "probs": probs,
            "mask": batch.target_mask,
        }

    result: dict[str, Any] = {"accuracy": {}, "nll": {}, "ece": {}}
    swept = context_sweep(sampler, contexts, episodes, seed, score, progress=progress, desc=desc)
    for m, scores in swept.items():
        types = scores["user_type"]
        result["accuracy"][str(m)] = type_weighted(scores["accuracy"], types, sampler.type_names)
        result["nll"][str(m)] = type_weighted(scores["nll"], types, sampler.type_names, scale=1.0)
        result["ece"][str(m)] = expected_calibration_error(scores["probs"], scores["mask"])
    return result


def evaluate_reward_model(
    model: PreferenceModel,
    data: PreferenceSet,
    *,
    contexts: list[int],
    episodes: int,
    targets: int,
    seed: int,
    progress: bool = False,
) -> dict[str, Any]:
    """`score_episodes` of a reward model: z from each episode's context, then its targets scored."""
    model.eval()

    def predict(batch: EpisodeBatch, generator: torch.Generator) -> torch.Tensor:
        latent = model.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
        return model.prefer_prob(batch.target_chosen, batch.target_rejected, latent, generator)

    return score_episodes(
        data,
        predict,
        contexts=contexts,
        episodes=episodes,
        targets=targets,
        seed=seed,
        progress=progress,
        desc=f"evaluate {model.kind}",
    )


def bayes_ceiling(
    data: PreferenceSet, *, contexts: list[int], episodes: int, targets: int, seed: int
) -> dict[str, Any] | None:
    """The Bayes-optimal accuracy (percent) at each m, or None when the data is not synthetic.

    Exact where a closed form exists (the paper's 1-D task); otherwise the Bayes predictor's accuracy on
    the very episodes the models are scored on, with its s.e.m.
    """
    spec = data.meta.get("task")
    if spec is None:
        return None
    sampler = evaluation_sampler(data, contexts, targets)
    oracle = BayesOracle(spec, seed=seed)
    ceiling, sems, method = {}, {}, {}
    for m in contexts:
        exact = closed_form_ceiling(spec, m)
        if exact is not None:
            ceiling[str(m)], sems[str(m)], method[str(m)] = 100 * exact, 0.0, "exact"
            continue
        values, types = [], []
        for batch in sampler.evaluation_batches(m, episodes, seed):
            values.append(oracle.episode_accuracy(batch))
            types.append(batch.user_type)
        summary = type_weighted(torch.cat(values), torch.cat(types), sampler.type_names)
        ceiling[str(m)], sems[str(m)] = summary["mean"], summary["sem"]
        method[str(m)] = "bayes-on-episodes" if spec["users"] == "types" else "bayes-particles-on-episodes"
    return {"ceiling": ceiling, "ceiling_sem": sems, "ceiling_method": method}

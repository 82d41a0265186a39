"""Evaluate NP-DPO policies: implicit-reward accuracy on unseen target pairs against m, per user type (L3, evaluation).

For each context size m, fixed episodes (users balanced over types; m context pairs and T target pairs
disjoint from them) are scored: a target pair counts as correct when the implicit reward
beta * (log pi(y | x, z) - log pi_ref(y | x)) of its chosen response exceeds that of its rejected one,
z being inferred from the episode's context. The result has the core results.json shape:

    {"models": {"<name>": {"accuracy": {"<m>": {"mean", "sem", "by_type": {"<type>": mean}}},
                           "margin": {"<m>": {...}}, "loss": {"<m>": {...}}}}}

in percent for accuracy (equal weight per user type, s.e.m. over episodes) and in reward / loss units
for the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from npalign.data.dpo_episodes import DPOBatch, DPOEpisodeSampler
from npalign.data.episodes import context_sweep
from npalign.embedding.features import embed_preferences
from npalign.evaluation.reward import check_counts, type_weighted
from npalign.inference.policy import PolicyRunner
from npalign.models.losses import dpo_episode_figures
from npalign.types import PreferenceSet

logger = logging.getLogger(__name__)


def evaluate_policy(
    runner: PolicyRunner,
    data: PreferenceSet,
    *,
    contexts: list[int],
    episodes: int,
    targets: int,
    seed: int,
    batch_pairs: int = 16,
    embedding_cache: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Implicit-reward accuracy, reward margin and DPO loss at each context size on fixed episodes.

    Args:
        runner: a loaded policy (`inference.policy.load_policy`).
        data: text pairs of held-out prompts or users; every user needs max(contexts) + targets pairs.
        contexts: the context sizes m.
        episodes: episodes per m (one user each, users balanced over types).
        targets: T target pairs per episode, disjoint from its context.
        seed: the same seed gives the same episodes, so models can be compared on identical draws.
        batch_pairs: target pairs per forward pass.
        embedding_cache: root of the embedding cache (default `<npalign cache>/embeddings`).
    Returns:
        {"accuracy": {"<m>": {"mean", "sem", "by_type"}}, "margin": {...}, "loss": {...}}.
    """
    if not contexts or any(m < 0 for m in contexts):
        raise ValueError(f"contexts={contexts} must be a non-empty list of sizes >= 0.")
    check_counts(episodes=episodes, targets=targets)
    if not data.is_text:
        raise ValueError(
            f"{data.meta.get('source', 'the data')} holds feature vectors, but a policy scores text pairs; pass "
            "a file with prompt, chosen and rejected text columns."
        )
    if runner.conditional:
        data = embed_preferences(data, runner.embedder, cache_dir=embedding_cache, progress=progress)
    sampler = DPOEpisodeSampler(data, targets=targets, max_context=max(contexts))
    prompt_length, response_length = (
        int(runner.run["max_prompt_length"]),
        int(runner.run["max_response_length"]),
    )
    beta = float(runner.run["beta"])

    def score(batch: DPOBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = batch.model_inputs(
            runner.tokenizer,
            max_prompt_length=prompt_length,
            max_response_length=response_length,
            device=runner.device,
        )
        scores = runner.policy.score_targets(inputs, conditional=runner.conditional, beta=beta)
        return {**dpo_episode_figures(**scores), "user_type": batch.episodes.user_type}

    chunk = max(1, batch_pairs // targets)
    swept = context_sweep(
        sampler, contexts, episodes, seed, score, chunk=chunk, progress=progress, desc="evaluate-dpo"
    )
    result: dict[str, Any] = {"accuracy": {}, "margin": {}, "loss": {}}
    for m, scores in swept.items():
        types, names = scores["user_type"], sampler.type_names
        result["accuracy"][str(m)] = type_weighted(scores["accuracy"], types, names)
        result["margin"][str(m)] = type_weighted(scores["margin"], types, names, scale=1.0)
        result["loss"][str(m)] = type_weighted(scores["loss"], types, names, scale=1.0)
    return result


def results_record(
    name: str, evaluation: dict[str, Any], *, run_dir: str | Path, data: str
) -> dict[str, Any]:
    """The results.json document for one policy: {"models": {name: evaluation}, "meta": {...}}."""
    return {"models": {name: evaluation}, "meta": {"policy": str(run_dir), "data": data}}

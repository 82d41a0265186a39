"""Active elicitation against random questions: accuracy after k chosen queries, per strategy (L3, evaluation).

Protocol (issue 19, item 3). Each episode is one test user (users balanced over types) with a pool of P
of that user's labelled pairs and T target pairs on prompts disjoint from the pool's (`EpisodeSampler`,
the pool in the context slots). Starting from no choices, a strategy picks one pool pair at a time
(`inference.elicit.score_candidates`, the pairs shown in a random order of their two items), the user's
true answer from the data is revealed and joins the context, and after k = 1, 2, 3, 5, 10 queries the
model scores the targets from that context. Every strategy sees the same users, pools and targets, so
`random` at k is the usual m = k evaluation restricted to the pool.

On synthetic data two Bayes rows come beside the model's:
* `Bayes questioner`: greedy expected information gain about the user's hypothesis under the exact
  posterior (the types; particles for Dirichlet users), I(y; h) = H(E_h p_h) - E_h H(p_h), then the
  Bayes-optimal prediction of the targets under that posterior.
* per strategy, `bayes_on_chosen`: the Bayes-optimal prediction from the pairs that strategy chose, the
  ceiling for those questions (what a perfect model would make of them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from npalign.data.episodes import EpisodeSampler
from npalign.data.synthetic import BayesOracle
from npalign.evaluation.reward import check_counts, type_weighted
from npalign.inference.elicit import STRATEGIES, score_candidates
from npalign.models.reward import PreferenceModel
from npalign.types import PreferenceSet
from npalign.utils.metrics import episode_accuracy

ELICIT_STRATEGIES = ("random", "uncertainty", "info-gain", "d-optimal")
QUERIES = (1, 2, 3, 5, 10)
BAYES_QUESTIONER = "Bayes questioner"


def _bayes_accuracy(
    oracle: BayesOracle, posterior: Tensor, target_chosen: Tensor, target_rejected: Tensor
) -> float:
    """Accuracy of the Bayes prediction under `posterior` (H,) on (T, d) targets; p = 1/2 counts half."""
    predictive = oracle.pair_probs(target_chosen, target_rejected) @ posterior  # (T,)
    correct = (predictive > 0.5 + 1e-12).double() + 0.5 * ((predictive - 0.5).abs() <= 1e-12).double()
    return float(correct.mean())


def _entropy(p: Tensor) -> Tensor:
    p = p.clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def bayes_questions(
    oracle: BayesOracle, pool_a: Tensor, pool_b: Tensor, a_wins: Tensor, steps: int
) -> list[int]:
    """The Bayes questioner's picks: greedy I(answer; hypothesis) under the exact posterior, true answers.

    Args:
        pool_a / pool_b: (P, d) the pool as shown; a_wins: (P,) bool, the user's answers.
    Returns:
        `steps` pool indices in the order asked; ties go to the first.
    """
    probs = oracle.pair_probs(pool_a, pool_b)  # (P, H) p_h(a > b)
    log_posterior = torch.zeros(probs.shape[1], dtype=torch.float64)
    remaining, asked = list(range(pool_a.shape[0])), []
    for _ in range(steps):
        posterior = torch.softmax(log_posterior, -1)
        candidate = probs[remaining]  # (N, H)
        gain = _entropy(candidate @ posterior) - _entropy(candidate) @ posterior  # (N,)
        best = remaining.pop(int((gain >= gain.max() - 1e-12).nonzero()[0]))
        asked.append(best)
        answer = probs[best] if bool(a_wins[best]) else 1 - probs[best]
        log_posterior = log_posterior + answer.clamp(min=1e-300).log()
    return asked


@torch.inference_mode()
def elicitation_curves(
    model: PreferenceModel,
    data: PreferenceSet,
    *,
    strategies: list[str],
    queries: list[int],
    pool: int,
    episodes: int,
    targets: int,
    seed: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy (percent, mean ± s.e.m. over users with equal weight per type) after k queries per strategy.

    Args:
        strategies: names from `ELICIT_STRATEGIES` (any of `inference.elicit.STRATEGIES` works).
        queries: the k to report, each <= pool.
        pool: P, candidate pairs per user; every user needs P + T pairs.
    Returns:
        {"models": {strategy: {"accuracy": {"<k>": {mean, sem, by_type}}, "bayes_on_chosen": {...}}},
         "protocol": {...}} and, on synthetic data, the `BAYES_QUESTIONER` row in "models". The shape is
        `evaluation.report`'s, with k in place of m.
    """
    if not strategies:
        raise ValueError("elicitation needs at least one strategy, e.g. info-gain and random.")
    unknown = [name for name in strategies if name not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown elicitation strategy {unknown}; choose from {list(STRATEGIES)}.")
    check_counts(episodes=episodes, targets=targets, pool=pool)
    if not queries or min(queries) < 1 or max(queries) > pool:
        raise ValueError(f"queries {queries} must each be between 1 and the pool size {pool}.")
    model.eval()
    steps = max(queries)
    spec = data.meta.get("task")
    oracle = BayesOracle(spec, seed=seed) if spec is not None else None
    try:
        sampler = EpisodeSampler(data, targets=targets, max_context=pool)
    except ValueError as error:
        raise ValueError(
            f"{error} (the context here is each user's pool of {pool} candidate pairs)"
        ) from None
    names = [*strategies, *([BAYES_QUESTIONER] if oracle is not None else [])]
    model_acc: dict[str, list[list[float]]] = {name: [] for name in names}  # per episode, per k
    bayes_acc: dict[str, list[list[float]]] = {name: [] for name in names}
    types: list[int] = []
    orientation = torch.Generator().manual_seed(seed)
    draws = torch.Generator().manual_seed(seed + 1)  # the latent kind's z samples when it predicts
    batches = sampler.evaluation_batches(pool, episodes, seed)
    bar = tqdm(total=episodes, desc="elicit", disable=not progress)
    episode = 0
    for batch in batches:
        for b in range(batch.user_type.shape[0]):
            chosen, rejected = batch.context_chosen[b], batch.context_rejected[b]  # (P, D): the pool
            a_wins = torch.rand(pool, generator=orientation) < 0.5  # (P,) True: shown as (chosen, rejected)
            pool_a = torch.where(a_wins[:, None], chosen, rejected)
            pool_b = torch.where(a_wins[:, None], rejected, chosen)
            target_chosen, target_rejected = batch.target_chosen[b], batch.target_rejected[b]  # (T, D)
            for name in names:
                if name == BAYES_QUESTIONER:
                    assert oracle is not None
                    order = bayes_questions(oracle, pool_a, pool_b, a_wins, steps)
                else:
                    order = _model_questions(
                        model, pool_a, pool_b, chosen, rejected, name, steps, seed + episode
                    )
                model_row, bayes_row = [], []
                for k in queries:
                    asked = torch.tensor(order[:k])
                    latent = model.infer(
                        chosen[asked][None], rejected[asked][None], torch.ones(1, k, dtype=torch.bool)
                    )
                    probs = model.prefer_prob(
                        target_chosen[None], target_rejected[None], latent, draws
                    )  # (1, T)
                    model_row.append(
                        float(episode_accuracy(probs, torch.ones_like(probs, dtype=torch.bool))[0])
                    )
                    if oracle is not None:
                        posterior = oracle.posterior(chosen[asked], rejected[asked])
                        bayes_row.append(_bayes_accuracy(oracle, posterior, target_chosen, target_rejected))
                model_acc[name].append(model_row)
                bayes_acc[name].append(bayes_row)
            types.append(int(batch.user_type[b]))
            episode += 1
            bar.update(1)
    bar.close()
    type_index = torch.tensor(types)
    models: dict[str, Any] = {}
    for name in names:
        per_k = torch.tensor(model_acc[name], dtype=torch.float64)  # (E, K)
        record: dict[str, Any] = {}
        if name == BAYES_QUESTIONER:
            # The row is the Bayes prediction; what the model makes of the same questions goes beside it.
            record["model_on_chosen"] = {
                str(k): type_weighted(per_k[:, i], type_index, sampler.type_names)
                for i, k in enumerate(queries)
            }
            per_k = torch.tensor(bayes_acc[name], dtype=torch.float64)
        record["accuracy"] = {
            str(k): type_weighted(per_k[:, i], type_index, sampler.type_names) for i, k in enumerate(queries)
        }
        if oracle is not None and name != BAYES_QUESTIONER:
            ceiling = torch.tensor(bayes_acc[name], dtype=torch.float64)
            record["bayes_on_chosen"] = {
                str(k): type_weighted(ceiling[:, i], type_index, sampler.type_names)
                for i, k in enumerate(queries)
            }
        models[name] = record
    protocol = {
        "queries": list(queries),
        "pool": pool,
        "targets": targets,
        "episodes": episode,
        "seed": seed,
        "model_kind": model.kind,
        "bayes": None if spec is None else spec.get("name"),
    }
    return {"models": models, "protocol": protocol}


def _model_questions(
    model: PreferenceModel,
    pool_a: Tensor,
    pool_b: Tensor,
    chosen: Tensor,
    rejected: Tensor,
    strategy: str,
    steps: int,
    seed: int,
) -> list[int]:
    """A strategy's picks from the pool, each followed by the user's true answer: `steps` pool indices."""
    remaining, asked = list(range(pool_a.shape[0])), list[int]()
    for step in range(steps):
        index = torch.tensor(remaining)
        known = torch.tensor(asked, dtype=torch.long)
        scores = score_candidates(
            model,
            chosen[known],
            rejected[known],
            pool_a[index],
            pool_b[index],
            strategy,
            reference=None,
            seed=seed * 1009 + step,
        )
        asked.append(remaining.pop(int(scores.argmax())))
    return asked


def summary_lines(
    results: dict[str, Any], *, active: str = "info-gain", baseline: str = "random"
) -> list[str]:
    """Issue 19's comparisons in words: active k against random k' and the Bayes questioner, per k."""
    models = results["models"]
    if active not in models or baseline not in models:
        return []
    lines = []
    for k, cell in models[active]["accuracy"].items():
        line = f"{active} k = {k}: {cell['mean']:.2f} ± {cell['sem']:.2f}"
        if BAYES_QUESTIONER in models:
            bayes = models[BAYES_QUESTIONER]["accuracy"][k]["mean"]
            line += f" (Bayes questioner {bayes:.2f}, gap {cell['mean'] - bayes:+.2f})"
        matched = [
            k2 for k2, other in models[baseline]["accuracy"].items() if other["mean"] <= cell["mean"] + 1e-9
        ]
        if matched:
            line += f"; >= {baseline} up to k = {max(matched, key=int)}"
        lines.append(line)
    return lines


def table_view(results: dict[str, Any]) -> dict[str, Any]:
    """`elicitation_curves`' results as `evaluation.report` rows: each strategy, the Bayes questioner, then
    the Bayes prediction from each strategy's pairs and the model's from the Bayes questioner's."""
    rows = {name: {"accuracy": record["accuracy"]} for name, record in results["models"].items()}
    for name, record in results["models"].items():
        if "bayes_on_chosen" in record:
            rows[f"Bayes on {name}'s pairs"] = {"accuracy": record["bayes_on_chosen"]}
        if "model_on_chosen" in record:
            rows[f"{results['protocol']['model_kind']} on {name}'s pairs"] = {
                "accuracy": record["model_on_chosen"]
            }
    return {"models": rows}

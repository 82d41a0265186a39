"""Synthetic heterogeneous-preference tasks and their Bayes-optimal accuracy (L1, data).

A task is a JSON-serialisable spec: items y ~ U(0, 1)^d, K basis reward functions, and users that are
either K discrete types (fixed weight vectors over the basis) or random convex mixtures (Dirichlet
weights). A user's reward is r(y) = sum_k w_k b_k(y); the choice is the higher reward (ties at random)
or, with `noise` > 0, Bradley-Terry sampled: p(a > b) = sigmoid((r_a - r_b) / noise).

The Bayes-optimal accuracy given m context pairs is the ceiling every model is held to: exact for the
paper's 1-D task (1 - 0.25 * 0.5^m), exact per episode for discrete types (enumerate the posterior over
types), and a particle estimate for continuous mixtures.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from npalign.types import EpisodeBatch, PreferenceSet

TASKS: dict[str, dict[str, Any]] = {
    # The paper's task, exactly: two types that agree below 0.5 and disagree above it.
    "paper1d": {
        "dim": 1, "basis": ["paper1d_type0", "paper1d_type1"],
        "types": {"type0": [1.0, 0.0], "type1": [0.0, 1.0]},
        "users": "types", "noise": 0.0, "num_pairs": 20000, "num_users": 400,
    },
    # Three types, each a different mixture of three basis rewards over the unit square.
    "mixture2d": {
        "dim": 2, "basis": ["coord:0", "coord:1", "bump:0.5,0.5"],
        "types": {"east": [1.0, 0.0, 0.5], "north": [0.0, 1.0, 0.5], "centre": [0.25, 0.25, 1.0]},
        "users": "types", "noise": 0.0, "num_pairs": 30000, "num_users": 600,
    },
    # Continuous preferences: every user a random convex mixture of the same three basis rewards.
    "dirichlet2d": {
        "dim": 2, "basis": ["coord:0", "coord:1", "bump:0.5,0.5"],
        "types": {"east": [1.0, 0.0, 0.0], "north": [0.0, 1.0, 0.0], "centre": [0.0, 0.0, 1.0]},
        "users": "dirichlet", "alpha": 0.5, "noise": 0.0, "num_pairs": 30000, "num_users": 600,
    },
}  # fmt: skip

BASIS_HELP = (
    "basis functions: paper1d_type0, paper1d_type1, coord:i (y_i), linear:w1,...,wd (w . y), "
    "bump:c1,...,cd (-||y - c|| / sqrt(d))"
)


def task_spec(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of a named task with overrides applied and checked."""
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r}; choose one of {sorted(TASKS)}.")
    spec = copy.deepcopy(TASKS[name])
    unknown = sorted(
        set(overrides) - {"dim", "basis", "types", "users", "alpha", "noise", "num_pairs", "num_users"}
    )
    if unknown:
        raise ValueError(f"unknown task option(s) {unknown}.")
    spec.update({k: v for k, v in overrides.items() if v is not None})
    spec["name"] = name
    validate_spec(spec)
    return spec


def validate_spec(spec: dict[str, Any]) -> None:
    dim, basis = int(spec["dim"]), list(spec["basis"])
    for name, weights in spec["types"].items():
        if len(weights) != len(basis):
            raise ValueError(
                f"type {name!r} has {len(weights)} weights but there are {len(basis)} basis functions."
            )
    if spec["users"] not in ("types", "dirichlet"):
        raise ValueError(
            f"users={spec['users']!r}: use 'types' (discrete) or 'dirichlet' (continuous mixtures)."
        )
    if "alpha" in spec and not spec["alpha"] > 0:  # 0 or less: no Dirichlet; every user the same mixture
        raise ValueError(f"alpha={spec['alpha']} must be > 0 (the Dirichlet concentration of users' mixtures).")
    if spec["noise"] < 0:
        raise ValueError(f"noise={spec['noise']} must be >= 0 (0 = noiseless choices).")
    if spec["num_users"] < 1 or spec["num_pairs"] < spec["num_users"]:
        raise ValueError(
            f"need num_pairs >= num_users >= 1, got {spec['num_pairs']} and {spec['num_users']}."
        )
    basis_values(basis, torch.zeros(1, dim))  # raises on an unknown basis function


def basis_values(basis: list[str], items: Tensor) -> Tensor:
    """Evaluate basis rewards on items.

    Args:
        basis: names, see BASIS_HELP.
        items: (..., d) points of the unit cube.
    Returns:
        (..., K) basis rewards.
    """
    dim = items.shape[-1]
    columns = []
    for name in basis:
        kind, _, arg = name.partition(":")
        if kind == "paper1d_type0":
            y = items[..., 0]
            columns.append(torch.where(y < 0.5, y, 2 * y))
        elif kind == "paper1d_type1":
            y = items[..., 0]
            columns.append(torch.where(y < 0.5, y, 1 - y))
        elif kind == "coord":
            columns.append(items[..., int(arg)])
        elif kind in ("linear", "bump"):
            values = torch.tensor([float(v) for v in arg.split(",")], dtype=items.dtype)
            if values.shape[0] != dim:
                raise ValueError(f"basis {name!r} has {values.shape[0]} numbers but items are {dim}-d.")
            if kind == "linear":
                columns.append(items @ values)
            else:
                columns.append(-(items - values).norm(dim=-1) / math.sqrt(dim))
        else:
            raise ValueError(f"unknown basis function {name!r}; {BASIS_HELP}.")
    return torch.stack(columns, dim=-1)


def _choice_prob(reward_a: Tensor, reward_b: Tensor, noise: float) -> Tensor:
    """p(a > b) under a user's reward: hard (ties 0.5) or Bradley-Terry with temperature `noise`."""
    if noise > 0:
        return torch.sigmoid((reward_a - reward_b) / noise)
    return (reward_a > reward_b).to(reward_a.dtype) + 0.5 * (reward_a == reward_b).to(reward_a.dtype)


def generate(spec: dict[str, Any], seed: int = 0) -> PreferenceSet:
    """Sample a dataset from a task spec: items, users, and each pair labelled by its user.

    Pairs are dealt to users in contiguous blocks (num_pairs / num_users each); discrete users take
    the types in turn so that every type has the same number of users.
    """
    validate_spec(spec)
    generator = torch.Generator().manual_seed(seed)
    dim, num_pairs, num_users = int(spec["dim"]), int(spec["num_pairs"]), int(spec["num_users"])
    type_names = list(spec["types"])
    type_weights = torch.tensor([spec["types"][t] for t in type_names], dtype=torch.float64)  # (K, basis)
    if spec["users"] == "types":
        user_type = torch.arange(num_users) % len(type_names)  # (U,)
        user_weights = type_weights[user_type]  # (U, basis)
    else:
        mixture = _dirichlet(num_users, len(type_names), float(spec["alpha"]), generator)  # (U, K)
        user_weights = mixture @ type_weights  # (U, basis)
        user_type = mixture.argmax(-1)
    # Items are float32 like the features a model sees, so labels and the oracle use the same values.
    items = torch.rand(num_pairs, 2, dim, generator=generator).double()  # (P, 2, d)
    user = torch.arange(num_pairs) * num_users // num_pairs  # (P,) contiguous blocks
    rewards = (basis_values(spec["basis"], items) * user_weights[user][:, None, :]).sum(-1)  # (P, 2)
    p_first = _choice_prob(rewards[:, 0], rewards[:, 1], float(spec["noise"]))
    first_wins = torch.rand(num_pairs, generator=generator, dtype=torch.float64) < p_first  # ties: coin flip
    chosen_slot = torch.where(first_wins, 0, 1)
    features = items.reshape(2 * num_pairs, dim).float()  # item 2p + slot
    chosen = 2 * torch.arange(num_pairs) + chosen_slot
    rejected = 2 * torch.arange(num_pairs) + (1 - chosen_slot)
    return PreferenceSet(
        chosen=chosen,
        rejected=rejected,
        user=user,
        prompt=torch.arange(num_pairs),
        user_ids=[f"user{u}" for u in range(num_users)],
        user_types=[type_names[int(t)] for t in user_type],
        prompt_ids=[f"pair{p}" for p in range(num_pairs)],
        features=features,
        meta={"task": spec, "user_weights": user_weights.tolist()},
    )


def _dirichlet(count: int, size: int, alpha: float, generator: torch.Generator) -> Tensor:
    """(count, size) draws from a symmetric Dirichlet(alpha), reproducible under `generator`."""
    gamma = torch._standard_gamma(torch.full((count, size), alpha, dtype=torch.float64), generator=generator)
    return gamma / gamma.sum(-1, keepdim=True)


def closed_form_ceiling(spec: dict[str, Any], context_size: int) -> float | None:
    """Exact Bayes accuracy (a fraction) where a formula is known: the paper's noiseless 1-D task."""
    if (
        spec.get("name") == "paper1d"
        and spec["noise"] == 0
        and spec["basis"] == TASKS["paper1d"]["basis"]
        and (spec["types"] == TASKS["paper1d"]["types"])
    ):
        # The types disagree on half of all pairs; once one disagreeing pair is in the context the type
        # is known. With probability 0.5^m none is, and the best guess is then right 75 % of the time.
        return 1.0 - 0.25 * 0.5**context_size
    return None


ORACLE_BLOCK = 1 << 24
"""BayesOracle.episode_accuracy's budget: (episodes x pairs x hypotheses) entries per block (128 MB of float64)."""


class BayesOracle:
    """The Bayes-optimal predictor of a synthetic task, applied to the very episodes a model sees.

    For discrete types the posterior over types is exact; for Dirichlet users it is carried by
    `num_particles` draws from the prior (self-normalised importance weights).
    """

    def __init__(self, spec: dict[str, Any], num_particles: int = 20000, seed: int = 0) -> None:
        self.spec = spec
        type_weights = torch.tensor(list(spec["types"].values()), dtype=torch.float64)  # (K, basis)
        if spec["users"] == "types":
            self.hypotheses = type_weights  # (H, basis), uniform prior (evaluation balances types)
        else:
            generator = torch.Generator().manual_seed(seed)
            mixture = _dirichlet(num_particles, type_weights.shape[0], float(spec["alpha"]), generator)
            self.hypotheses = mixture @ type_weights  # (H, basis)

    def _rewards(self, items: Tensor) -> Tensor:
        """(..., d) items -> (..., H) reward under each hypothesis."""
        return basis_values(self.spec["basis"], items.double()) @ self.hypotheses.T

    def pair_probs(self, first: Tensor, second: Tensor) -> Tensor:
        """p(first > second) under each hypothesis: (..., d) items twice -> (..., H), float64."""
        return _choice_prob(self._rewards(first), self._rewards(second), float(self.spec["noise"]))

    def posterior(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        """The posterior over hypotheses after one user's C choices: (C, d) twice -> (H,); C may be 0."""
        log_lik = self.pair_probs(chosen, rejected).clamp(min=1e-300).log().sum(0)  # (H,)
        return torch.softmax(log_lik, dim=-1)

    def episode_accuracy(self, batch: EpisodeBatch) -> Tensor:
        """Expected accuracy of the Bayes predictor on each episode's targets, (B,) fractions.

        Scoring is against the labels in the data, exactly like a model; a predictive probability of
        exactly 0.5 counts as half right. Episodes are taken a few at a time, so that the (episodes, pairs,
        hypotheses) float64 tensors stay near `ORACLE_BLOCK` entries: with 20,000 particles a whole batch
        of 1,024 episodes needed 16 GB.
        """
        B, C = batch.context_mask.shape
        step = max(1, ORACLE_BLOCK // ((C + batch.target_mask.shape[1]) * self.hypotheses.shape[0]))
        return torch.cat([self._block_accuracy(batch.rows(start, start + step)) for start in range(0, B, step)])

    def _block_accuracy(self, batch: EpisodeBatch) -> Tensor:
        """`episode_accuracy` of a batch small enough to score at once."""
        context_probs = self.pair_probs(batch.context_chosen, batch.context_rejected)  # (B, C, H)
        log_lik = (context_probs.clamp(min=1e-300).log() * batch.context_mask[..., None]).sum(1)  # (B, H)
        posterior = torch.softmax(log_lik, dim=-1)  # (B, H)
        target_probs = self.pair_probs(batch.target_chosen, batch.target_rejected)  # (B, T, H)
        predictive = torch.einsum("bth,bh->bt", target_probs, posterior)  # (B, T) p(chosen > rejected)
        correct = (predictive > 0.5 + 1e-12).double() + 0.5 * ((predictive - 0.5).abs() <= 1e-12).double()
        mask = batch.target_mask.double()
        return (correct * mask).sum(1) / mask.sum(1)

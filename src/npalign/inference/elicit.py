"""Active elicitation: which candidate pair to ask a user next, given the choices seen so far (L2, inference).

    choice = model.next_query(context_chosen, context_rejected, candidates_a, candidates_b)
    choice.index, choice.scores                    # the pair to ask, and (N,) scores; higher = ask first

Strategies (`STRATEGIES`), each a pure function of a `PreferenceModel`, the context (C, D) twice and the
N candidates (N, D) twice, vectorised over candidates:

* `info-gain`  expected predictive information gain (EPIG) on a reference pool of R pairs. The model is
               its own simulator: the user answers a candidate (a, b) with "a" with the model's own
               p(a > b | context), and the model's predictions after that answer are those it makes with
               the answer appended to the context. The score is the mutual information between the
               candidate's answer y and the answers y_r to the reference pairs,
                   I(y; y_r) = sum_y p(y) KL(Bern(p_r | context + y) || Bern(p_r_bar)),
                   p_r_bar = sum_y p(y) p_r(context + y),
               averaged over the pool, in nats. It is >= 0 and is 0 exactly when both answers leave the
               predictions where they are (e.g. two identical items: both answers give the same context).
               Under the assumption that the model's own probabilities are calibrated for this user; a
               deterministic NP-BTL carries no belief over z, so this is the only sense in which it
               "knows what it does not know". The 2N updated contexts share C pairs, so those are encoded
               once and each candidate only adds its own pair to the pooled sum and max (exact for the
               attention-free encoder; with attention every updated context is encoded in full), and the
               reward network runs on the pool's items once, then over the 2N latents in cache-sized
               blocks. The default pool is `MAX_REFERENCE` = 32 candidates (it was 64: the cost is linear
               in R, and 32 pairs still cover the candidates' span); pass `reference=` for another.
* `bald`       latent NP-BTL only: I(y; z) = H(E_z p) - E_z H(p_z) over `num_samples` draws of q(z | context)
               (Houlsby et al. 2011), the information the answer carries about the latent itself.
* `uncertainty` -|p(a > b | context) - 1/2|.
* `d-optimal`  PReF's logistic-bandit rule, a baseline that ignores the user model except through p:
               phi = a - b on the item features (D), A = ridge I + sum_context p(1 - p) phi phi^T, score
               phi^T A^-1 phi.
* `random`     uniform scores from a generator seeded by `seed`.

A candidate that is already in the context (in either order) was answered: users are assumed to answer
consistently, so asking it again tells nothing and it gets the strategy's lowest score (0, or -1/2 for
uncertainty). A pair of two identical items gets it too (its answer is a coin flip, whatever the user);
info-gain and d-optimal give both that score by construction. `random` leaves them as drawn.

Scores are invariant to the order of the context and equivariant to the order of the candidates (for the
latent kind up to its Monte-Carlo draws, which are taken per updated context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from npalign.models.reward import PreferenceModel
from npalign.types import Posterior

STRATEGIES = ("info-gain", "bald", "uncertainty", "d-optimal", "random")
D_OPTIMAL_RIDGE = 1.0
"""lambda of the d-optimal design matrix: the prior precision before any context pair."""
MAX_REFERENCE = 32
"""info-gain's default reference pool: at most this many candidate pairs (`default_reference`). The cost is
2N x 2R (user, item) passes of the reward network, which dominates: 1,000 candidates against 32 pairs is
128 k, the encoder's 2N pair passes beside it."""
REFERENCE_BLOCK = 1 << 19
"""info-gain evaluates the reference pool for this many (user, item, hidden unit) entries at a time: 2 MB of
float32, small enough to stay in cache through the add, the activation and the head. Medians on the idle
2-core machine (2 threads), 1,000 candidates, 10 context pairs, R = 32: 2^17 42-47 ms, 2^18 33-40 ms, 2^19
30-34 ms, 2^20 58 ms."""


@dataclass(frozen=True)
class QueryChoice:
    """The pair to ask next.

    Attributes:
        index: position of the best candidate (the first of the ties).
        scores: (N,) every candidate's score; higher = ask first.
        strategy: the strategy that scored them.
    """

    index: int
    scores: Tensor
    strategy: str


@dataclass(frozen=True)
class Query:
    """What every strategy reads: the model, one user's context and the candidate pairs.

    Attributes:
        context_chosen / context_rejected: (C, D); C may be 0.
        candidates_a / candidates_b: (N, D).
        generator: seeds the strategies that sample.
    """

    model: PreferenceModel
    context_chosen: Tensor
    context_rejected: Tensor
    candidates_a: Tensor
    candidates_b: Tensor
    generator: torch.Generator


def _bernoulli_entropy(p: Tensor) -> Tensor:
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _bernoulli_kl(p: Tensor, q: Tensor) -> Tensor:
    p, q = p.clamp(1e-7, 1 - 1e-7), q.clamp(1e-7, 1 - 1e-7)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def _prefer_prob(
    model: PreferenceModel, a: Tensor, b: Tensor, latent: object, generator: torch.Generator
) -> Tensor:
    """p(a > b) for a batch of users: a, b (1 or U, N, D), latent for U users -> (U, N)."""
    return model.prefer_prob(a, b, latent, generator)  # type: ignore[arg-type]


def _context_latent(model: PreferenceModel, chosen: Tensor, rejected: Tensor) -> object:
    """The latent of one user from (C, D) twice: (1, Z), a Posterior, or None for btl/dpl."""
    mask = torch.ones(1, chosen.shape[0], dtype=torch.bool, device=chosen.device)  # (1, C)
    return model.infer(chosen[None], rejected[None], mask)


def already_known(
    context_chosen: Tensor, context_rejected: Tensor, candidates_a: Tensor, candidates_b: Tensor
) -> Tensor:
    """(N,) True where a candidate's answer is known already: a context pair in either order, or a == b."""
    same = (candidates_a == candidates_b).all(-1)  # (N,)
    if context_chosen.shape[0] == 0:
        return same
    a, b = candidates_a[:, None], candidates_b[:, None]  # (N, 1, D)
    chosen, rejected = context_chosen[None], context_rejected[None]  # (1, C, D)
    forward = ((a == chosen).all(-1) & (b == rejected).all(-1)).any(1)  # (N,)
    backward = ((a == rejected).all(-1) & (b == chosen).all(-1)).any(1)
    return same | forward | backward


def default_reference(
    candidates_a: Tensor, candidates_b: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """info-gain's default pool: every candidate, or `MAX_REFERENCE` of them spread over a random projection.

    Chosen by content, not position, so that permuting the candidates permutes the scores.
    Returns:
        (R, D) twice, R = min(N, MAX_REFERENCE).
    """
    N, D = candidates_a.shape
    if N <= MAX_REFERENCE:
        return candidates_a, candidates_b
    direction = torch.randn(2 * D, generator=generator).to(candidates_a.device)  # (2D,)
    key = torch.cat([candidates_a, candidates_b], -1) @ direction  # (N,)
    order = key.argsort(stable=True)
    keep = order[torch.linspace(0, N - 1, MAX_REFERENCE).round().long().to(order.device)]  # (R,)
    return candidates_a[keep], candidates_b[keep]


def _reference_prob(
    model: PreferenceModel,
    reference_a: Tensor,
    reference_b: Tensor,
    latent: object,
    generator: torch.Generator,
) -> Tensor:
    """p(a_r > b_r) of the R reference pairs for each of M users: (R, D) twice, latent for M -> (M, R).

    The reward network runs on every (user, item) pair, an (M, 2R, H) hidden state that for M = 2,000 and
    R = 32 is 130 MB; taken `REFERENCE_BLOCK` entries at a time it stays in cache and nothing large is
    allocated (`shared_pairs_log_likelihood`). A Posterior is sampled once for all M users before that.
    """
    block = max(1, REFERENCE_BLOCK // (2 * reference_a.shape[0] * model.out.in_features))
    if isinstance(latent, Posterior):
        z = latent.sample(model.num_samples, generator)  # (S, M, Z)
        return model.shared_pairs_log_likelihood(reference_a, reference_b, z, block).exp().mean(0)
    assert isinstance(latent, Tensor)
    return model.shared_pairs_log_likelihood(reference_a, reference_b, latent, block).exp()


def info_gain(query: Query, reference_a: Tensor, reference_b: Tensor) -> Tensor:
    """Expected predictive information gain of each candidate on the reference pool (module docstring).

    Args:
        context_chosen / context_rejected: (C, D).
        candidates_a / candidates_b: (N, D).
        reference_a / reference_b: (R, D).
    Returns:
        (N,) nats, >= 0; all 0 for btl / dpl, whose predictions ignore the context.
    """
    model, context_chosen, context_rejected = query.model, query.context_chosen, query.context_rejected
    candidates_a, candidates_b, generator = query.candidates_a, query.candidates_b, query.generator
    N = candidates_a.shape[0]
    latent = _context_latent(model, context_chosen, context_rejected)
    if latent is None:
        return torch.zeros(N, device=candidates_a.device)
    prob_a = _prefer_prob(model, candidates_a[None], candidates_b[None], latent, generator)[0]  # (N,)
    # 2N updated contexts: rows 0..N-1 append (a, b) (the user answered a), rows N..2N-1 append (b, a). The
    # encoder pools pairs independently, so the C shared pairs are encoded once (`infer_with_each_pair`).
    updated = model.infer_with_each_pair(
        context_chosen,
        context_rejected,
        torch.cat([candidates_a, candidates_b]),
        torch.cat([candidates_b, candidates_a]),
    )  # (2N, Z) or a Posterior over 2N users
    ref_prob = _reference_prob(model, reference_a, reference_b, updated, generator)  # (2N, R)
    after_a, after_b = ref_prob[:N], ref_prob[N:]  # (N, R) each
    weight_a = prob_a[:, None]  # (N, 1)
    mixture = weight_a * after_a + (1 - weight_a) * after_b  # (N, R): p_r_bar
    gain = weight_a * _bernoulli_kl(after_a, mixture) + (1 - weight_a) * _bernoulli_kl(after_b, mixture)
    return gain.mean(-1).clamp_min(0.0)  # (N,)


def bald(query: Query) -> Tensor:
    """I(answer; z) under q(z | context) from `model.num_samples` draws: (N,) nats."""
    model, context_chosen, context_rejected = query.model, query.context_chosen, query.context_rejected
    candidates_a, candidates_b, generator = query.candidates_a, query.candidates_b, query.generator
    latent = _context_latent(model, context_chosen, context_rejected)
    if not isinstance(latent, Posterior):
        raise ValueError(
            f"strategy='bald' needs a latent NP-BTL (a posterior over z); this model is {model.kind!r}. "
            "Use 'info-gain'."
        )
    z = latent.sample(model.num_samples, generator)  # (S, 1, Z)
    per_sample = model.log_likelihood(candidates_a[None], candidates_b[None], z).exp()[:, 0]  # (S, N)
    return (_bernoulli_entropy(per_sample.mean(0)) - _bernoulli_entropy(per_sample).mean(0)).clamp_min(0.0)


def uncertainty(query: Query) -> Tensor:
    """-|p(a > b | context) - 1/2|: (N,) in [-1/2, 0]."""
    model, context_chosen, context_rejected = query.model, query.context_chosen, query.context_rejected
    candidates_a, candidates_b, generator = query.candidates_a, query.candidates_b, query.generator
    latent = _context_latent(model, context_chosen, context_rejected)
    prob = _prefer_prob(model, candidates_a[None], candidates_b[None], latent, generator)[0]  # (N,)
    return -(prob - 0.5).abs()


def d_optimal(query: Query) -> Tensor:
    """phi^T A^-1 phi with phi = a - b on item features and A the logistic design matrix: (N,) >= 0."""
    model, context_chosen, context_rejected = query.model, query.context_chosen, query.context_rejected
    candidates_a, candidates_b, generator = query.candidates_a, query.candidates_b, query.generator
    D = candidates_a.shape[-1]
    design = D_OPTIMAL_RIDGE * torch.eye(D, device=candidates_a.device)  # (D, D)
    if context_chosen.shape[0]:
        latent = _context_latent(model, context_chosen, context_rejected)
        prob = _prefer_prob(model, context_chosen[None], context_rejected[None], latent, generator)[0]  # (C,)
        phi_context = context_chosen - context_rejected  # (C, D)
        design = design + (phi_context * (prob * (1 - prob))[:, None]).T @ phi_context
    phi = candidates_a - candidates_b  # (N, D)
    solved = torch.linalg.solve(design, phi.T).T  # (N, D): A^-1 phi
    return (phi * solved).sum(-1)


def score_candidates(
    model: PreferenceModel,
    context_chosen: Tensor,
    context_rejected: Tensor,
    candidates_a: Tensor,
    candidates_b: Tensor,
    strategy: str,
    *,
    reference: tuple[Tensor, Tensor] | None,
    seed: int,
) -> Tensor:
    """Every candidate's score under `strategy` (inputs already validated, on the model's device).

    Args:
        context_chosen / context_rejected: (C, D); C may be 0.
        candidates_a / candidates_b: (N, D), N >= 1.
        reference: (R, D) twice, info-gain's pool; None takes `default_reference` (seeded by `seed`).
    Returns:
        (N,) scores; higher = ask first.
    """
    generator = torch.Generator().manual_seed(seed)
    N = candidates_a.shape[0]
    if strategy == "random":
        return torch.rand(N, generator=generator).to(candidates_a.device)
    query = Query(model, context_chosen, context_rejected, candidates_a, candidates_b, generator)
    if strategy == "info-gain":
        if reference is None:
            reference = default_reference(candidates_a, candidates_b, generator)
        scores = info_gain(query, *reference)
    elif strategy == "bald":
        scores = bald(query)
    elif strategy == "uncertainty":
        scores = uncertainty(query)
    else:
        assert strategy == "d-optimal", strategy
        scores = d_optimal(query)
    floor = -0.5 if strategy == "uncertainty" else 0.0
    known = already_known(context_chosen, context_rejected, candidates_a, candidates_b)
    return scores.masked_fill(known, floor)

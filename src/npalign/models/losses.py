"""Preference losses as pure functions: BTL, DPL mean-variance, the neural-process objective (L1, models)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from npalign.types import Posterior


def bt_log_likelihood(reward_margin: Tensor) -> Tensor:
    """log p(chosen > rejected) = log sigmoid(r_chosen - r_rejected) (Bradley-Terry; METHOD eq. 1).

    Args:
        reward_margin: (...,) r(chosen) - r(rejected).
    Returns:
        (...,) log-probabilities.
    """
    return F.logsigmoid(reward_margin)


def dpl_standardised_margin(
    mean_chosen: Tensor, mean_rejected: Tensor, var_chosen: Tensor, var_rejected: Tensor
) -> Tensor:
    """t = (mu_chosen - mu_rejected) / sqrt(var_chosen + var_rejected), so that p = Phi(t) (DPL mean-variance)."""
    return (mean_chosen - mean_rejected) / torch.sqrt(var_chosen + var_rejected)


def dpl_log_likelihood(standardised_margin: Tensor, cdf: str = "exact") -> Tensor:
    """log p(chosen > rejected) for DPL.

    Args:
        standardised_margin: (...,) t from `dpl_standardised_margin`.
        cdf: "exact" uses log Phi(t) (torch.special.log_ndtr, stable in the tails); "logistic" is the
            release's stand-in log sigmoid(sqrt(2 pi) t), kept only for comparison.
    """
    if cdf == "exact":
        return torch.special.log_ndtr(standardised_margin)
    if cdf == "logistic":
        return F.logsigmoid(math.sqrt(2 * math.pi) * standardised_margin)
    raise ValueError(f"cdf={cdf!r}: use 'exact' or 'logistic'.")


def gaussian_kl(posterior: Posterior, prior: Posterior) -> Tensor:
    """KL(posterior || prior) between diagonal Gaussians, summed over the last dim: (..., Z) -> (...,)."""
    var_ratio = (posterior.scale / prior.scale) ** 2
    mean_term = ((posterior.mean - prior.mean) / prior.scale) ** 2
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


def masked_mean_nll(log_likelihood: Tensor, mask: Tensor) -> Tensor:
    """Mean negative log-likelihood over real targets.

    Args:
        log_likelihood: (B, T) or (S, B, T).
        mask: (B, T) True on real targets.
    Returns:
        scalar.
    """
    weights = mask.to(log_likelihood.dtype)
    if log_likelihood.dim() == 3:
        log_likelihood = log_likelihood.mean(0)  # Monte Carlo average over z samples
    return -(log_likelihood * weights).sum() / weights.sum()


def neural_process_loss(
    target_log_likelihood: Tensor,
    target_mask: Tensor,
    posterior_full: Posterior,
    posterior_context: Posterior,
    kl_weight: float,
) -> tuple[Tensor, Tensor]:
    """Negative NP objective per target, averaged over the batch (METHOD section 2, latent variant).

    ELBO(user) = E_{z ~ q(z | C u T)}[sum_t log p(y_t | z)] - beta * KL(q(z | C u T) || q(z | C)).
    Both terms are divided by the user's number of targets so that the scale matches the
    deterministic loss.

    Args:
        target_log_likelihood: (S, B, T) log p(target | z_s) for z_s ~ q(z | C u T).
        target_mask: (B, T).
        posterior_full / posterior_context: q(z | C u T) and q(z | C), (B, Z) each.
        kl_weight: beta.
    Returns:
        (loss scalar, mean KL per user scalar).
    """
    weights = target_mask.to(target_log_likelihood.dtype)  # (B, T)
    counts = weights.sum(1)  # (B,)
    expected_ll = (target_log_likelihood.mean(0) * weights).sum(1)  # (B,)
    kl = gaussian_kl(posterior_full, posterior_context)  # (B,)
    loss = (-(expected_ll - kl_weight * kl) / counts).mean()
    return loss, kl.mean()

"""Preference losses as pure functions: BTL, DPL, the neural-process objective and DPO (L1, models).

Tensors in, tensors out; for DPO the conditioning on z happens before, in the policy.
"""

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


# ----- DPO: sequence log-probabilities, the loss and TRL-named metrics -----------------------------------


def sequence_logprobs(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Summed log-probability of each sequence's completion tokens.

    log pi(y | x) = sum_i log pi(y_i | x, y_<i) over the response tokens only (METHOD.md section 4); the
    prompt and padding add nothing (pitfall 6 of the release summed everything *but* the response).

    Args:
        logits: (N, L, V) next-token logits; position i scores token i + 1.
        input_ids: (N, L) prompt + completion + padding.
        completion_mask: (N, L) True on completion tokens only.
    Returns:
        (N,) float32 log-probabilities.
    """
    if logits.shape[:2] != input_ids.shape or input_ids.shape != completion_mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and completion_mask "
            f"{tuple(completion_mask.shape)} must agree on (N, L)."
        )
    next_logits, next_ids = logits[:, :-1], input_ids[:, 1:]  # (N, L-1, V), (N, L-1)
    if next_logits.dtype in (torch.float16, torch.bfloat16):
        # Row by row in float32: a half-precision log-softmax loses the small differences DPO depends
        # on, and upcasting the whole (N, L, V) tensor at once doubles the peak memory.
        token_logps = torch.stack(
            [
                row.float().log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
                for row, ids in zip(next_logits, next_ids, strict=True)
            ]
        )  # (N, L-1)
    else:
        token_logps = (
            next_logits.float().log_softmax(-1).gather(-1, next_ids[..., None]).squeeze(-1)
        )  # (N, L-1)
    # where(), not a product: logits at padding may be non-finite and NaN * 0 is NaN.
    return torch.where(completion_mask[:, 1:].bool(), token_logps, 0.0).sum(-1)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO loss and implicit rewards.

    With h = (log pi(y_w|x,z) - log pi(y_l|x,z)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x)):
    "sigmoid": loss = -log sigma(beta * h) (Rafailov et al. 2023, eq. 7; METHOD.md section 4 with the
    policy conditioned on z).
    "ipo": loss = (beta * h - 1/2)^2, IPO's (h - 1/(2 beta))^2 (Azar et al. 2023, eq. 17, on summed
    log-probabilities as there) times beta^2: the same optimum, h = 1/(2 beta), with a gradient of DPO's
    order, so that `rpo_alpha` weighs the NLL term alike under both. DPO's loss keeps falling as h grows,
    and a user whose choices are deterministic gives it no finite optimum; IPO stops at 1/(2 beta), and
    opposed users on the same pair pull h to 0 with a force that grows with h.
    The implicit reward of a response is beta * (log pi - log pi_ref) under both.

    Args:
        policy_chosen_logps / policy_rejected_logps: (N,) log pi(y | x, z), with gradients.
        reference_chosen_logps / reference_rejected_logps: (N,) log pi_ref(y | x), no gradients needed.
        beta: the KL strength (0.05 in the release).
        loss_type: "sigmoid" (DPO) or "ipo" (TRL's names).
    Returns:
        losses (N,), chosen_rewards (N,), rejected_rewards (N,); the rewards are detached.
    """
    policy_margin = policy_chosen_logps - policy_rejected_logps  # (N,)
    reference_margin = reference_chosen_logps - reference_rejected_logps  # (N,)
    logits = beta * (policy_margin - reference_margin)  # (N,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(logits)
    elif loss_type == "ipo":
        losses = (logits - 0.5) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}: use 'sigmoid' (DPO) or 'ipo'.")
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def chosen_nll(policy_chosen_logps: Tensor, chosen_tokens: Tensor, keep: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood per chosen token: RPO's added term (TRL's `rpo_alpha`, Pang et al. 2024).

    Args:
        policy_chosen_logps: (N,) summed log pi(y_w | x, z), with gradients.
        chosen_tokens: (N,) how many completion tokens each sum covers.
        keep: (N,) bool, the pairs that count (None: all); zero when none does.
    """
    if keep is not None:
        policy_chosen_logps = torch.where(keep, policy_chosen_logps, 0.0)
        chosen_tokens = torch.where(keep, chosen_tokens, 0)
    return -policy_chosen_logps.sum() / chosen_tokens.sum().clamp(min=1)


def prior_margin_penalty(margins: Tensor, keep: Tensor) -> Tensor:
    """Mean squared implicit margin of the kept pairs: the pull of the m = 0 policy to the reference.

    Args:
        margins: (N,) h = (log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l), in nats, with gradients.
        keep: (N,) bool, the pairs that count (the episodes with an empty context); zero when none does.
    """
    squares = torch.where(keep, margins, 0.0).square()
    return squares.sum() / keep.sum().clamp(min=1)


def dpo_metrics(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
) -> dict[str, float]:
    """Batch means under TRL's metric names.

    `rewards/accuracies` is the paper's implicit-reward accuracy:
    mean 1[beta (log pi - log pi_ref)(y_w) > beta (log pi - log pi_ref)(y_l)].

    Args:
        chosen_rewards / rejected_rewards: (N,) from `dpo_loss`.
        policy_chosen_logps / policy_rejected_logps: (N,).
    Returns:
        rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected.
    """
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": policy_chosen_logps.detach().float().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().float().mean().item(),
    }


def dpo_episode_figures(
    chosen_rewards: Tensor, rejected_rewards: Tensor, losses: Tensor
) -> dict[str, Tensor]:
    """Per-episode implicit-reward accuracy, margin and DPO loss of B users' T target pairs.

    Args:
        chosen_rewards / rejected_rewards / losses: (B, T).
    Returns:
        accuracy (B,) fraction of targets with chosen reward > rejected reward; margin (B,) mean reward
        margin; loss (B,) mean DPO loss.
    """
    return {
        "accuracy": (chosen_rewards > rejected_rewards).float().mean(1),
        "margin": (chosen_rewards - rejected_rewards).mean(1),
        "loss": losses.mean(1),
    }

"""DPO for NP-DPO: sequence log-probabilities, the loss and TRL-named metrics (L1, models).

Pure functions, tensors in and tensors out; the conditioning on z happens before, in the policy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO loss and implicit rewards.

    loss = -log sigma(beta * [(log pi(y_w|x,z) - log pi(y_l|x,z)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x))])
    (Rafailov et al. 2023, eq. 7; METHOD.md section 4 with the policy conditioned on z). The implicit reward
    of a response is beta * (log pi - log pi_ref).

    Args:
        policy_chosen_logps / policy_rejected_logps: (N,) log pi(y | x, z), with gradients.
        reference_chosen_logps / reference_rejected_logps: (N,) log pi_ref(y | x), no gradients needed.
        beta: the KL strength (0.05 in the release).
    Returns:
        losses (N,), chosen_rewards (N,), rejected_rewards (N,); the rewards are detached.
    """
    policy_margin = policy_chosen_logps - policy_rejected_logps  # (N,)
    reference_margin = reference_chosen_logps - reference_rejected_logps  # (N,)
    losses = -F.logsigmoid(beta * (policy_margin - reference_margin))
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


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

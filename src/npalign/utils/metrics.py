"""Accuracy, NLL and calibration of pairwise predictions; pure tensor functions (L0, utils)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def episode_accuracy(prob_chosen: Tensor, target_mask: Tensor) -> Tensor:
    """Per-episode accuracy: p(chosen > rejected) > 0.5 is right, exactly 0.5 counts half.

    Args:
        prob_chosen: (B, T) predicted p(chosen > rejected).
        target_mask: (B, T).
    Returns:
        (B,) fractions.
    """
    correct = (prob_chosen > 0.5).double() + 0.5 * (prob_chosen == 0.5).double()
    weights = target_mask.double()
    return (correct * weights).sum(1) / weights.sum(1)


def episode_nll(prob_chosen: Tensor, target_mask: Tensor) -> Tensor:
    """(B,) mean -log p(chosen > rejected) per episode (probabilities clamped at 1e-7)."""
    weights = target_mask.double()
    return (-(prob_chosen.double().clamp(1e-7, 1.0).log()) * weights).sum(1) / weights.sum(1)


def expected_calibration_error(prob_chosen: Tensor, target_mask: Tensor, bins: int = 10) -> float:
    """ECE of the predicted probability of the *first* item, symmetrised over both orders.

    Every target appears as (chosen, rejected) with label 1 and as (rejected, chosen) with label 0,
    so that a model that always says "chosen" cannot look calibrated by construction.
    """
    probs = prob_chosen[target_mask].double()
    scores = torch.cat([probs, 1 - probs])
    labels = torch.cat([torch.ones_like(probs), torch.zeros_like(probs)])
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(scores, edges[1:-1])
    ece = 0.0
    for k in range(bins):
        in_bin = which == k
        if in_bin.any():
            ece += float(in_bin.double().mean() * (scores[in_bin].mean() - labels[in_bin].mean()).abs())
    return ece


def mean_and_sem(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of a 1-D tensor."""
    n = values.numel()
    mean = float(values.double().mean())
    sem = float(values.double().std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return mean, sem

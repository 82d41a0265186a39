"""Reward-model losses against values worked out by hand."""

from __future__ import annotations

import math

import torch

from npalign.models.losses import (
    bt_log_likelihood,
    dpl_log_likelihood,
    dpl_standardised_margin,
    gaussian_kl,
    masked_mean_nll,
    neural_process_loss,
)
from npalign.models.reward import PreferenceModel
from npalign.types import Posterior


def test_bradley_terry_by_hand() -> None:
    """sigma(0) = 1/2, sigma(log 3) = 3/4, sigma(-log 3) = 1/4."""
    margins = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])
    expected = torch.tensor([math.log(0.5), math.log(0.75), math.log(0.25)])
    torch.testing.assert_close(bt_log_likelihood(margins), expected)


def test_dpl_probability_is_the_normal_cdf() -> None:
    """p = Phi((mu_a - mu_b) / sqrt(var_a + var_b)); Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    mean_a, mean_b = torch.tensor([1.0, 0.0, -2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0, -30.0])
    var_a, var_b = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([3.0, 2.0, 0.5, 0.01])
    t = dpl_standardised_margin(mean_a, mean_b, var_a, var_b)
    torch.testing.assert_close(t[:3], torch.tensor([0.5, 0.0, -3.0]))
    phi = [(1 + math.erf(float(x) / math.sqrt(2))) / 2 for x in t]
    torch.testing.assert_close(dpl_log_likelihood(t).exp(), torch.tensor(phi))
    # log Phi stays finite deep in the lower tail where Phi underflows in float32
    assert torch.isfinite(dpl_log_likelihood(torch.tensor([-40.0]))).all()
    # the release's logistic stand-in is a different function, kept only as a named option
    assert not torch.allclose(dpl_log_likelihood(t, "logistic"), dpl_log_likelihood(t))


def test_dpl_model_predicts_normal_cdf_of_its_outputs() -> None:
    torch.manual_seed(0)
    model = PreferenceModel("dpl", 3, 16)
    chosen, rejected = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    out_c, out_r = model.item_outputs(chosen, None), model.item_outputs(rejected, None)
    var = (
        torch.nn.functional.softplus(out_c[..., 1])
        + 1e-4
        + torch.nn.functional.softplus(out_r[..., 1])
        + 1e-4
    )
    t = (out_c[..., 0] - out_r[..., 0]) / var.sqrt()
    expected = 0.5 * (1 + torch.erf(t / math.sqrt(2)))
    torch.testing.assert_close(model.prefer_prob(chosen, rejected, None), expected)


def test_gaussian_kl_by_hand() -> None:
    """KL(N(1, 0.5^2) || N(0, 1)) = (0.25 + 1 - 1 - ln 0.25) / 2 = (0.25 + 1.386294) / 2 = 0.818147 per dim."""
    q = Posterior(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 0.5]]))
    p = Posterior(torch.zeros(1, 2), torch.ones(1, 2))
    torch.testing.assert_close(gaussian_kl(q, p), torch.tensor([2 * 0.818147]), atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_kl(p, p), torch.tensor([0.0]))


def test_masked_nll_ignores_padding() -> None:
    """Targets log(0.5) and log(0.25), the third masked: NLL = (ln 2 + ln 4) / 2 = 1.5 ln 2."""
    log_lik = torch.tensor([[math.log(0.5), math.log(0.25), -100.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean_nll(log_lik, mask), torch.tensor(1.5 * math.log(2)))


def test_neural_process_objective_by_hand() -> None:
    """One user, two targets with log-lik -1 and -3 averaged over 2 samples as -2 each; KL = 0.818147
    per dim (1 dim); beta = 0.5. Loss = -(sum ll - beta KL) / T = (4 + 0.409074) / 2 = 2.204537."""
    log_lik = torch.tensor([[[-1.0, -3.0]], [[-3.0, -1.0]]])  # (S=2, B=1, T=2)
    q_full = Posterior(torch.tensor([[1.0]]), torch.tensor([[0.5]]))
    q_context = Posterior(torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    loss, kl = neural_process_loss(log_lik, torch.ones(1, 2, dtype=torch.bool), q_full, q_context, 0.5)
    torch.testing.assert_close(loss, torch.tensor(2.204537), atol=1e-5, rtol=0)
    torch.testing.assert_close(kl, torch.tensor(0.818147), atol=1e-5, rtol=0)

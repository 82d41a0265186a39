"""Context encoder: permutation and padding invariance, size invariance, m = 0, a working latent."""

from __future__ import annotations

import torch

from npalign.models.encoder import ContextEncoder
from npalign.types import Posterior


def _context(batch: int = 3, size: int = 6, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return (
        torch.randn(batch, size, dim),
        torch.randn(batch, size, dim),
        torch.ones(batch, size, dtype=torch.bool),
    )


def _encoders() -> list[ContextEncoder]:
    torch.manual_seed(1)
    return [
        ContextEncoder(4, 32, 8),
        ContextEncoder(4, 32, 8, pooling="mean+max"),
        ContextEncoder(4, 32, 8, attention=True, num_heads=4, pooling="mean+max"),
        ContextEncoder(4, 32, 8, pooling="mean+max", depth=3),
    ]


def test_z_is_invariant_to_context_order() -> None:
    chosen, rejected, mask = _context()
    order = torch.randperm(chosen.shape[1])
    for encoder in _encoders():
        torch.testing.assert_close(
            encoder(chosen, rejected, mask), encoder(chosen[:, order], rejected[:, order], mask)
        )


def test_z_is_invariant_to_padding_whatever_its_values() -> None:
    chosen, rejected, mask = _context()
    pad = 5
    garbage = torch.full((chosen.shape[0], pad, chosen.shape[2]), 1e3)
    padded_mask = torch.cat([mask, torch.zeros(mask.shape[0], pad, dtype=torch.bool)], 1)
    for encoder in _encoders():
        expected = encoder(chosen, rejected, mask)
        got = encoder(torch.cat([chosen, garbage], 1), torch.cat([rejected, -garbage], 1), padded_mask)
        torch.testing.assert_close(got, expected)


def test_repeating_the_context_leaves_z_unchanged() -> None:
    """Mean pooling: z does not grow with the number of pairs (the release's sum did)."""
    chosen, rejected, mask = _context()
    for encoder in _encoders():
        twice = encoder(chosen.repeat(1, 2, 1), rejected.repeat(1, 2, 1), mask.repeat(1, 2))
        torch.testing.assert_close(twice, encoder(chosen, rejected, mask))


def test_empty_context_gives_the_learned_prior_for_everyone() -> None:
    for encoder in _encoders():
        chosen, rejected, mask = _context(batch=2, size=3)
        z_none = encoder(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
        z_masked = encoder(chosen, rejected, torch.zeros_like(mask))  # all pairs are padding
        assert torch.isfinite(z_none).all()
        torch.testing.assert_close(z_none[0], z_none[1])
        torch.testing.assert_close(z_masked, z_none)
        z_real = encoder(chosen, rejected, mask)
        assert not torch.allclose(z_real, z_none)


def test_mixed_context_sizes_in_one_batch_match_separate_calls() -> None:
    chosen, rejected, mask = _context(batch=2, size=5)
    mask[1, 2:] = False
    for encoder in _encoders():
        together = encoder(chosen, rejected, mask)
        alone = encoder(chosen[1:, :2], rejected[1:, :2], mask[1:, :2])
        torch.testing.assert_close(together[1:], alone)


def test_stochastic_encoder_has_a_scale_floor() -> None:
    torch.manual_seed(0)
    encoder = ContextEncoder(4, 16, 3, stochastic=True, min_scale=0.05)
    with torch.no_grad():
        encoder.head[-1].bias.fill_(-1e4)  # push every raw scale towards -inf
    chosen, rejected, mask = _context()
    posterior = encoder(chosen, rejected, mask)
    assert isinstance(posterior, Posterior)
    assert posterior.mean.shape == (3, 3)
    assert float(posterior.scale.detach().min()) >= 0.05 - 1e-7


def test_appending_each_pair_alone_matches_encoding_every_extended_context() -> None:
    """`with_each_pair` pools the shared pairs once; it must give `forward` on the (M, C + 1, D) stack."""
    chosen, rejected, _ = _context(batch=1, size=5)
    extra_chosen, extra_rejected = torch.randn(2, 7, 4)
    torch.manual_seed(2)
    stochastic = ContextEncoder(4, 32, 8, stochastic=True, pooling="mean+max", depth=3)
    for encoder in [*_encoders(), stochastic]:
        for size in (0, 5):  # an empty context too: the extra pair alone
            context_chosen, context_rejected = chosen[0, :size], rejected[0, :size]
            stacked_chosen = torch.cat([context_chosen.expand(7, size, 4), extra_chosen[:, None]], 1)
            stacked_rejected = torch.cat([context_rejected.expand(7, size, 4), extra_rejected[:, None]], 1)
            expected = encoder(stacked_chosen, stacked_rejected, torch.ones(7, size + 1, dtype=torch.bool))
            got = encoder.with_each_pair(context_chosen, context_rejected, extra_chosen, extra_rejected)
            if isinstance(expected, Posterior):
                assert isinstance(got, Posterior)
                torch.testing.assert_close(got.mean, expected.mean)
                torch.testing.assert_close(got.scale, expected.scale)
            else:
                torch.testing.assert_close(got, expected)

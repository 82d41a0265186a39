"""Context encoder: a user's labelled pairs -> latent z (L1, models)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from npalign.types import Posterior


def mlp(in_dim: int, hidden_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """`depth` linear layers with GELU between them: in -> hidden ... -> out."""
    dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < depth - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over dim 1 of the rows where mask is True.

    Args:
        values: (B, C, H).
        mask: (B, C) bool.
    Returns:
        (B, H) means (zeros where a row has no True entry) and (B,) counts.
    """
    weights = mask.to(values.dtype)  # (B, C)
    counts = weights.sum(1)  # (B,)
    total = torch.einsum("bch,bc->bh", values, weights)  # (B, H)
    return total / counts.clamp(min=1.0)[:, None], counts


class ContextEncoder(nn.Module):
    """Permutation-invariant set encoder over a user's context pairs.

    Each pair becomes h_j = f([e(chosen_j); e(rejected_j)]); optionally the pairs attend to each other;
    then a masked *mean* (never a sum, so z does not grow with the context size), optionally joined by a
    masked max, and an MLP give z.
    An empty context maps to a learned population prior, so m = 0 is a valid input.

    With `stochastic=True` the head returns a diagonal Gaussian q(z | context) whose scale is floored
    at `min_scale`, which keeps the latent NP from collapsing onto a point that ignores the context.
    `depth` is the number of linear layers of the per-pair network f.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        latent_dim: int,
        *,
        stochastic: bool = False,
        attention: bool = False,
        num_heads: int = 8,
        min_scale: float = 0.01,
        pooling: str = "mean",
        depth: int = 2,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "mean+max"):
            raise ValueError(f"pooling={pooling!r}: use 'mean' or 'mean+max'.")
        if attention and hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}.")
        self.embed_dim, self.hidden_dim, self.latent_dim = embed_dim, hidden_dim, latent_dim
        self.stochastic, self.min_scale, self.pooling = stochastic, min_scale, pooling
        # depth >= 3 gives each pair a nonlinearity *after* comparing the two items, so that it can
        # emit a near-binary "this pair rules type k out" feature before pooling.
        self.pair_net = mlp(2 * embed_dim, hidden_dim, hidden_dim, depth=depth)
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True) if attention else None
        self.attention_norm = nn.LayerNorm(hidden_dim) if attention else None
        pooled_dim = 2 * hidden_dim if pooling == "mean+max" else hidden_dim
        self.empty_context = nn.Parameter(torch.zeros(pooled_dim))
        self.head = mlp(pooled_dim, hidden_dim, 2 * latent_dim if stochastic else latent_dim)

    def forward(
        self, context_chosen: Tensor, context_rejected: Tensor, context_mask: Tensor
    ) -> Tensor | Posterior:
        """Encode B users' contexts.

        Args:
            context_chosen: (B, C, D) features of the preferred items; C may be 0.
            context_rejected: (B, C, D).
            context_mask: (B, C) True on real pairs; padding is ignored whatever its values.
        Returns:
            z (B, Z), or a Posterior with mean and scale (B, Z) when stochastic.
        """
        return self._latent(self._pool(context_chosen, context_rejected, context_mask))

    def with_each_pair(
        self, context_chosen: Tensor, context_rejected: Tensor, extra_chosen: Tensor, extra_rejected: Tensor
    ) -> Tensor | Posterior:
        """The latents of M contexts, each one user's context plus one more pair: `forward` on (M, C + 1, D).

        Without attention each pair's h_j does not depend on the others, so the C context pairs go through
        the per-pair network once and each extra pair only joins the pooled sum and max: C + M pair passes
        instead of M (C + 1), the same function up to float rounding. With attention every pair sees the
        new one, so the M contexts are encoded in full.

        Args:
            context_chosen / context_rejected: (C, D), C may be 0.
            extra_chosen / extra_rejected: (M, D).
        Returns:
            z (M, Z), or a Posterior with (M, Z) mean and scale.
        """
        M, C = extra_chosen.shape[0], context_chosen.shape[0]
        if self.attention is not None:
            chosen = torch.cat(
                [context_chosen[None].expand(M, C, -1), extra_chosen[:, None]], 1
            )  # (M, C+1, D)
            rejected = torch.cat([context_rejected[None].expand(M, C, -1), extra_rejected[:, None]], 1)
            mask = torch.ones(M, C + 1, dtype=torch.bool, device=chosen.device)
            return self(chosen, rejected, mask)
        extra = self.pair_net(torch.cat([extra_chosen, extra_rejected], -1))  # (M, H)
        total, peak = extra, extra  # (M, H): the sum and max of the extra pair alone
        if C:
            pairs = self.pair_net(torch.cat([context_chosen, context_rejected], -1))  # (C, H)
            total, peak = pairs.sum(0) + extra, torch.maximum(pairs.amax(0), extra)
        pooled = total / (C + 1)  # (M, H)
        if self.pooling == "mean+max":
            pooled = torch.cat([pooled, peak], -1)  # (M, 2H)
        return self._latent(pooled)

    def _pool(self, context_chosen: Tensor, context_rejected: Tensor, context_mask: Tensor) -> Tensor:
        """The pooled representation (B, H) or (B, 2H) of `forward`'s inputs, before the head."""
        batch = context_mask.shape[0]
        if context_mask.shape[1] == 0:
            pooled = self.empty_context.expand(batch, -1)  # (B, H)
        else:
            pairs = self.pair_net(torch.cat([context_chosen, context_rejected], dim=-1))  # (B, C, H)
            if self.attention is not None:
                assert self.attention_norm is not None
                # Rows with no real pair would make attention NaN; let them attend to slot 0 and
                # discard the result below through the count.
                key_padding = ~context_mask.clone()
                key_padding[:, 0] &= context_mask.any(1)
                attended, _ = self.attention(
                    pairs, pairs, pairs, key_padding_mask=key_padding, need_weights=False
                )
                pairs = self.attention_norm(pairs + attended)  # (B, C, H)
            pooled, counts = masked_mean(pairs, context_mask)  # (B, H), (B,)
            if self.pooling == "mean+max":
                # The max lets one decisive pair count however many uninformative ones surround it;
                # like the mean, it ignores order and repetition and does not grow with m.
                peak = pairs.masked_fill(~context_mask[..., None], float("-inf")).amax(1)  # (B, H)
                pooled = torch.cat([pooled, torch.where(counts[:, None] > 0, peak, 0.0)], -1)  # (B, 2H)
            pooled = torch.where(counts[:, None] > 0, pooled, self.empty_context.expand(batch, -1))
        return pooled

    def _latent(self, pooled: Tensor) -> Tensor | Posterior:
        """The head on a pooled (B, H) or (B, 2H) representation: z (B, Z) or a Posterior."""
        out = self.head(pooled)  # (B, Z) or (B, 2Z)
        if not self.stochastic:
            return out
        loc, raw_scale = out.chunk(2, dim=-1)
        return Posterior(loc, self.min_scale + (1.0 - self.min_scale) * torch.sigmoid(raw_scale))

"""Reward models over item features: BTL, DPL, NP-BTL (deterministic and latent) (L1, models).

All four share one shape: an item network enc(e(y)) -> (B, T, H), optionally shifted by a projection
of the user latent z, then a head to a reward (or DPL's mean and variance). The first decoder layer on
[enc(y); z] is split into W_y enc(y) + W_z z, which is the same function and lets z be projected once
per user instead of once per item. `conditioning="film"` also scales enc(y) by 1 + gamma(z).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from npalign.models.encoder import ContextEncoder, mlp
from npalign.models.losses import (
    bt_log_likelihood,
    dpl_log_likelihood,
    dpl_standardised_margin,
    masked_mean_nll,
    neural_process_loss,
)
from npalign.types import EpisodeBatch, Posterior, UserLatent

KINDS = ("btl", "dpl", "np-btl", "np-btl-latent")
CONDITIONINGS = ("shift", "film")


class PreferenceModel(nn.Module):
    """p(chosen > rejected | user) from item features and, for NP kinds, a user latent z.

    Args:
        kind: "btl" | "dpl" | "np-btl" | "np-btl-latent".
        embed_dim: D, item feature width.
        hidden_dim: H.
        latent_dim: Z (unused by btl/dpl).
        attention / num_heads: self-attention across context pairs before pooling.
        min_scale: floor of the latent posterior's scale.
        pooling: "mean" or "mean+max" over context pairs.
        encoder_depth: linear layers of the encoder's per-pair network.
        decoder_depth: hidden layers of the head after z joins the item representation (1: z shifts the
            pre-activation of a single hidden layer, as in the release).
        item_dropout: dropout on the item features entering the reward network while training (the
            context encoder sees them whole); regularises the rewards on small data.
        kl_weight: beta of the NP objective.
        num_samples: S, z samples when predicting with the latent model.
        dpl_cdf: "exact" (normal CDF) or "logistic" (the release's stand-in).
        conditioning: how z enters the decoder's hidden layer: "shift" adds W_z z to it (the release);
            "film" also scales it, (1 + gamma(z)) * enc(y) + W_z z, with gamma initialised to 0 so that
            training starts from the shift model.
        prior_head: np-btl only. A z-free reward network, trained on every episode's targets (the
            mixed-data BTL objective, items without dropout), answers for users with an empty context;
            the personalised path is trained and used exactly as without it. z then carries one more
            coordinate, 1 when the user gave choices and 0 for the population prior (see `z_dim`).
    """

    def __init__(
        self,
        kind: str,
        embed_dim: int,
        hidden_dim: int = 256,
        latent_dim: int = 64,
        *,
        attention: bool = False,
        num_heads: int = 8,
        min_scale: float = 0.01,
        pooling: str = "mean+max",
        encoder_depth: int = 2,
        decoder_depth: int = 1,
        item_dropout: float = 0.0,
        kl_weight: float = 1.0,
        num_samples: int = 8,
        dpl_cdf: str = "exact",
        prior_head: bool = False,
        conditioning: str = "shift",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}.")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={conditioning!r} is not one of {CONDITIONINGS}.")
        if prior_head and kind != "np-btl":
            raise ValueError(f"prior_head is for kind 'np-btl' (a deterministic z), not {kind!r}.")
        self.kind, self.embed_dim, self.latent_dim = kind, embed_dim, latent_dim
        self.kl_weight, self.num_samples, self.dpl_cdf = kl_weight, num_samples, dpl_cdf
        self.item_dropout = nn.Dropout(item_dropout)
        # enc(e(y)) ends in a linear layer, so it doubles as W_y of the decoder's first layer.
        self.item_net = mlp(embed_dim, hidden_dim, hidden_dim)
        self.encoder: ContextEncoder | None = None
        self.latent_proj: nn.Linear | None = None
        if self.conditional:
            self.encoder = ContextEncoder(
                embed_dim,
                hidden_dim,
                latent_dim,
                stochastic=kind == "np-btl-latent",
                attention=attention,
                num_heads=num_heads,
                min_scale=min_scale,
                pooling=pooling,
                depth=encoder_depth,
            )
            self.latent_proj = nn.Linear(latent_dim, hidden_dim, bias=False)
        # Extra hidden layers between the conditioned representation and the output.
        self.head = nn.Sequential(
            *[nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, hidden_dim)) for _ in range(decoder_depth - 1)]
        )
        self.out = nn.Linear(hidden_dim, 2 if kind == "dpl" else 1)
        # Built last, so that every other module draws the same initial weights with or without it.
        self.prior_net: nn.Sequential | None = None
        if prior_head:
            self.prior_net = nn.Sequential(
                mlp(embed_dim, hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1)
            )
        # Also built after the others; zero, so a FiLM model starts as the shift model it extends.
        self.latent_scale: nn.Linear | None = None
        if conditioning == "film" and self.conditional:
            self.latent_scale = nn.Linear(latent_dim, hidden_dim, bias=False)
            nn.init.zeros_(self.latent_scale.weight)

    @property
    def conditional(self) -> bool:
        return self.kind.startswith("np-")

    @property
    def z_dim(self) -> int:
        """Width of the z that `infer` returns: latent_dim, plus the has-context flag with a prior head."""
        return self.latent_dim + (self.prior_net is not None)

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """The prior head's parameters and the rest's, the groups whose gradients are clipped apart."""
        prior = [] if self.prior_net is None else list(self.prior_net.parameters())
        ids = {id(p) for p in prior}
        groups = [[p for p in self.parameters() if id(p) not in ids], prior]
        return [group for group in groups if group]

    def prior_state_keys(self) -> set[str]:
        """The state-dict keys of the prior head (empty without one), which training selects on m = 0 alone."""
        if self.prior_net is None:
            return set()
        return {f"prior_net.{key}" for key in self.prior_net.state_dict()}

    # ------------------------------------------------------------------ building blocks
    def infer(
        self, context_chosen: Tensor, context_rejected: Tensor, context_mask: Tensor
    ) -> UserLatent | None:
        """The user latent from (B, C, D) context features and a (B, C) mask; None for btl/dpl."""
        if self.encoder is None:
            return None
        latent = self.encoder(context_chosen, context_rejected, context_mask)
        if self.prior_net is None:
            return latent
        assert isinstance(latent, Tensor)
        has_context = context_mask.any(1, keepdim=True).to(latent.dtype)  # (B, 1)
        return torch.cat([latent, has_context], -1)  # (B, Z + 1)

    def infer_with_each_pair(
        self, context_chosen: Tensor, context_rejected: Tensor, extra_chosen: Tensor, extra_rejected: Tensor
    ) -> UserLatent | None:
        """`infer` on M contexts, each one user's (C, D) context plus one of M (M, D) extra pairs.

        The same latents as `infer` on the (M, C + 1, D) stack, without encoding the shared C pairs M times
        (`ContextEncoder.with_each_pair`). Returns (M, Z), a Posterior over M users, or None for btl/dpl.
        """
        if self.encoder is None:
            return None
        latent = self.encoder.with_each_pair(context_chosen, context_rejected, extra_chosen, extra_rejected)
        if self.prior_net is None:
            return latent
        assert isinstance(latent, Tensor)
        return torch.cat([latent, torch.ones_like(latent[:, :1])], -1)  # (M, Z + 1): every context has a pair

    def item_outputs(self, items: Tensor, z: Tensor | None) -> Tensor:
        """Head outputs for items.

        Args:
            items: (B, T, D) features.
            z: None, (B, Z), or (S, B, Z) samples; (..., Z + 1) with a prior head, whose rows with a
                last coordinate of 0 get the prior head's rewards.
        Returns:
            (B, T, O) or (S, B, T, O), O = 1 (reward) or 2 (DPL mean, raw scale).
        """
        return self._conditioned_outputs(items, self.item_net(self.item_dropout(items)), z)

    def _conditioned_outputs(self, items: Tensor, hidden: Tensor, z: Tensor | None) -> Tensor:
        """`item_outputs` from the item network's output `hidden` (B, T, H) on: z joins, then the head."""
        if z is not None:
            assert self.latent_proj is not None
            personal = z[..., : self.latent_dim]
            if self.latent_scale is not None:
                hidden = hidden * (1 + self.latent_scale(personal).unsqueeze(-2))
            hidden = hidden + self.latent_proj(personal).unsqueeze(-2)  # (B, T, H) or (S, B, T, H)
        out = self.out(F.gelu(self.head(hidden)))
        if self.prior_net is None or z is None:
            return out
        has_context = z[..., -1:].unsqueeze(-2) > 0.5  # (B, 1, 1)
        if bool(has_context.all()):
            return out
        return torch.where(has_context, out, self.prior_net(items))

    def reward(self, items: Tensor, z: Tensor | None) -> Tensor:
        """Scalar reward (the DPL mean for dpl): (B, T, D) -> (B, T), or (S, B, T) with sampled z."""
        return self.item_outputs(items, z)[..., 0]

    def log_likelihood(self, chosen: Tensor, rejected: Tensor, z: Tensor | None) -> Tensor:
        """log p(chosen > rejected): (B, T, D) twice -> (B, T), or (S, B, T) with sampled z."""
        # One pass over both items of every pair: (2, B, T, D) -> (2, [S,] B, T, O).
        stacked = torch.stack([chosen, rejected])  # (2, B, T, D)
        if z is not None and z.dim() == 3:
            stacked = stacked.unsqueeze(1)  # (2, 1, B, T, D) against S samples of z
        return self._pair_log_likelihood(self.item_outputs(stacked, None if z is None else z.unsqueeze(0)))

    def shared_pairs_log_likelihood(self, chosen: Tensor, rejected: Tensor, z: Tensor, block: int) -> Tensor:
        """log p(chosen > rejected) of the same T pairs for each of M users: `log_likelihood` with the item
        network run once and the users taken `block` at a time, so the (M, 2T, H) hidden state is never
        allocated whole. The same values as `log_likelihood(chosen[None], rejected[None], z)`.

        Args:
            chosen / rejected: (T, D).
            z: (M, Z), or (S, M, Z) samples.
            block: users per step.
        Returns:
            (M, T), or (S, M, T).
        """
        stacked = torch.stack([chosen, rejected])[:, None]  # (2, 1, T, D)
        if z.dim() == 3:
            stacked = stacked.unsqueeze(1)  # (2, 1, 1, T, D) against S samples
        hidden = self.item_net(self.item_dropout(stacked))  # (2, 1, [1,] T, H)
        parts = []
        for start in range(0, z.shape[-2], block):
            z_block = z[..., start : start + block, :].unsqueeze(0)  # (1, [S,] block, Z)
            parts.append(self._pair_log_likelihood(self._conditioned_outputs(stacked, hidden, z_block)))
        return torch.cat(parts, -2)  # users are the second-last dimension

    def _pair_log_likelihood(self, both: Tensor) -> Tensor:
        """log p(chosen > rejected) from head outputs (2, ..., O) of the chosen and rejected items -> (...)."""
        out_chosen, out_rejected = both[0], both[1]
        if self.kind == "dpl":
            var_chosen = F.softplus(out_chosen[..., 1]) + 1e-4
            var_rejected = F.softplus(out_rejected[..., 1]) + 1e-4
            margin = dpl_standardised_margin(
                out_chosen[..., 0], out_rejected[..., 0], var_chosen, var_rejected
            )
            return dpl_log_likelihood(margin, self.dpl_cdf)
        return bt_log_likelihood(out_chosen[..., 0] - out_rejected[..., 0])

    def prefer_prob(
        self,
        chosen: Tensor,
        rejected: Tensor,
        latent: UserLatent | None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """p(chosen > rejected) (B, T); a Posterior latent is averaged over `num_samples` draws."""
        if isinstance(latent, Posterior):
            z = latent.sample(self.num_samples, generator)  # (S, B, Z)
            return self.log_likelihood(chosen, rejected, z).exp().mean(0)
        return self.log_likelihood(chosen, rejected, latent).exp()

    # ------------------------------------------------------------------ training
    def forward(
        self, batch: EpisodeBatch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss; going through forward lets accelerate's DDP wrapper sync gradients."""
        return self.loss(batch, generator)

    def loss(
        self, batch: EpisodeBatch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss on an episode batch and detached statistics.

        Deterministic models: mean negative log-likelihood of the targets given z(context).
        Latent NP: the standard NP objective with q(z | C u T) inside and KL to q(z | C).
        """
        if self.kind != "np-btl-latent":
            latent = self.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
            assert not isinstance(latent, Posterior)
            if self.prior_net is not None:
                assert latent is not None
                # The personalised path learns from every episode, empty contexts included, as it would
                # without a prior head; the prior head learns the pooled objective beside it.
                latent = torch.cat([latent[:, :-1], torch.ones_like(latent[:, -1:])], -1)
            log_lik = self.log_likelihood(batch.target_chosen, batch.target_rejected, latent)  # (B, T)
            loss = masked_mean_nll(log_lik, batch.target_mask)
            accuracy = (
                (log_lik > -0.6931471805599453).float() * batch.target_mask
            ).sum() / batch.target_mask.sum()
            stats = {"nll": loss.detach(), "accuracy": accuracy.detach()}
            if self.prior_net is None:
                return loss, stats
            prior_rewards = self.prior_net(torch.stack([batch.target_chosen, batch.target_rejected]))[..., 0]
            prior_nll = masked_mean_nll(
                bt_log_likelihood(prior_rewards[0] - prior_rewards[1]), batch.target_mask
            )
            return loss + prior_nll, stats | {"prior_nll": prior_nll.detach()}
        posterior_context = self.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
        posterior_full = self.infer(
            torch.cat([batch.context_chosen, batch.target_chosen], 1),
            torch.cat([batch.context_rejected, batch.target_rejected], 1),
            torch.cat([batch.context_mask, batch.target_mask], 1),
        )
        assert isinstance(posterior_context, Posterior) and isinstance(posterior_full, Posterior)
        z = posterior_full.sample(1, generator)  # (1, B, Z)
        log_lik = self.log_likelihood(batch.target_chosen, batch.target_rejected, z)  # (1, B, T)
        loss, kl = neural_process_loss(
            log_lik, batch.target_mask, posterior_full, posterior_context, self.kl_weight
        )
        nll = masked_mean_nll(log_lik, batch.target_mask)
        return loss, {"nll": nll.detach(), "kl": kl.detach()}

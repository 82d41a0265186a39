"""Shared dataclasses: preference data, episodes, user latents (L0, types).

`data` and `models` never import each other; they meet here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PreferenceSet:
    """Pairwise choices of many users over a table of items.

    Every pair is one user's choice between two items of the table. Items are either numeric feature
    vectors (`features`) or texts (`prompts[i]`, `responses[i]`) that an embedder turns into features.

    Attributes:
        chosen: (P,) long, index into the item table of the preferred item of each pair.
        rejected: (P,) long, index of the other item.
        user: (P,) long, index into `user_ids`.
        prompt: (P,) long, index into `prompt_ids`; splits go by this, never by pair.
        user_ids: names of the users; `user_ids[u]` is user u.
        user_types: `user_types[u]` is the type of user u ("" when the data names none).
        prompt_ids: names of the prompts.
        features: (N, D) float32 item features, or None for text items not yet embedded.
        item_prompts / item_responses: the texts of item i (text data only).
        meta: free-form provenance (e.g. the synthetic task spec), kept through splits and saves.
    """

    chosen: Tensor
    rejected: Tensor
    user: Tensor
    prompt: Tensor
    user_ids: list[str]
    user_types: list[str]
    prompt_ids: list[str]
    features: Tensor | None = None
    item_prompts: list[str] | None = None
    item_responses: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_pairs(self) -> int:
        return int(self.chosen.shape[0])

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        if self.features is not None:
            return int(self.features.shape[0])
        assert self.item_responses is not None
        return len(self.item_responses)

    @property
    def is_text(self) -> bool:
        return self.item_responses is not None

    @property
    def type_names(self) -> list[str]:
        """Sorted distinct user types ("" if the data names none)."""
        return sorted(set(self.user_types))

    def pair_types(self) -> list[str]:
        """The user type of every pair."""
        return [self.user_types[u] for u in self.user.tolist()]

    def with_features(self, features: Tensor) -> PreferenceSet:
        """The same pairs with item features attached, e.g. after embedding texts; (N, D)."""
        if features.shape[0] != self.num_items:
            raise ValueError(
                f"features has {features.shape[0]} rows but the data has {self.num_items} items."
            )
        return replace(self, features=features.float())

    def subset(self, pair_mask: Tensor) -> PreferenceSet:
        """Keep the pairs where `pair_mask` (P,) is True, and the users/prompts/items they use.

        Indices are compacted so that the result is self-contained.
        """
        keep = pair_mask.nonzero().squeeze(-1)
        chosen, rejected = self.chosen[keep], self.rejected[keep]
        user, prompt = self.user[keep], self.prompt[keep]
        item_ids, item_inv = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
        user_ids, user_inv = torch.unique(user, return_inverse=True)
        prompt_ids, prompt_inv = torch.unique(prompt, return_inverse=True)
        n = keep.shape[0]
        items = item_ids.tolist()
        return PreferenceSet(
            chosen=item_inv[:n],
            rejected=item_inv[n:],
            user=user_inv,
            prompt=prompt_inv,
            user_ids=[self.user_ids[u] for u in user_ids.tolist()],
            user_types=[self.user_types[u] for u in user_ids.tolist()],
            prompt_ids=[self.prompt_ids[p] for p in prompt_ids.tolist()],
            features=None if self.features is None else self.features[item_ids],
            item_prompts=None if self.item_prompts is None else [self.item_prompts[i] for i in items],
            item_responses=None if self.item_responses is None else [self.item_responses[i] for i in items],
            meta=dict(self.meta),
        )


@dataclass
class EpisodeBatch:
    """B users, each with C context pairs (padded, masked) and T target pairs disjoint from them.

    Attributes:
        context_chosen / context_rejected: (B, C, D) item features; padding rows are zeros.
        context_mask: (B, C) True on real context pairs.
        target_chosen / target_rejected: (B, T, D).
        target_mask: (B, T) True on real targets.
        user_type: (B,) long index into `type_names`.
        user: (B,) long index of the user in the source PreferenceSet.
        context_pairs / target_pairs: (B, C) / (B, T) long pair indices into the source set, -1 on
            padding; kept so that tests and the Bayes ceiling can see exactly what was drawn.
    """

    context_chosen: Tensor
    context_rejected: Tensor
    context_mask: Tensor
    target_chosen: Tensor
    target_rejected: Tensor
    target_mask: Tensor
    user_type: Tensor
    user: Tensor
    context_pairs: Tensor
    target_pairs: Tensor
    type_names: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> EpisodeBatch:
        moved: dict[str, Any] = {
            name: value.to(device) if isinstance(value, Tensor) else value for name, value in self.__dict__.items()
        }
        return EpisodeBatch(**moved)

    def rows(self, start: int, stop: int) -> EpisodeBatch:
        """Users start .. stop - 1 of the batch (every per-user tensor sliced on its first dimension)."""
        sliced: dict[str, Any] = {
            name: value[start:stop] if isinstance(value, Tensor) else value for name, value in self.__dict__.items()
        }
        return EpisodeBatch(**sliced)


@dataclass
class Posterior:
    """A diagonal Gaussian over z: the latent NP's belief about a user.

    Attributes:
        mean: (..., Z).
        scale: (..., Z), strictly positive (floored by the encoder).
    """

    mean: Tensor
    scale: Tensor

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """(S, ..., Z) reparameterised samples."""
        noise = torch.randn(
            (num_samples, *self.mean.shape), generator=generator, dtype=self.mean.dtype, device="cpu"
        ).to(self.mean.device)
        return self.mean + self.scale * noise


UserLatent = Tensor | Posterior
"""What `infer_user` returns: a point z (..., Z) for deterministic models, a Posterior otherwise."""

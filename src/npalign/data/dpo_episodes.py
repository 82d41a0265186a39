"""NP-DPO episodes: per user, context pairs and disjoint target pairs, as features and as texts (L1, data).

The draws are `EpisodeSampler`'s (per-user disjoint context/target, a pure function of seed and step,
users reshuffled every epoch); this module adds the texts: the context pairs as (prompt, chosen, rejected)
triples, which the frozen embedder turned into the features the context encoder reads, and the target
pairs as texts for chat-template tokenisation. Target pairs are laid out user-major: pair t of user b is
row b * T + t, so one z per user is repeated T times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from npalign.data.dpo_tokenize import tokenize_preference_pairs
from npalign.data.episodes import EpisodeSampler, SamplingArgs, derived_seed
from npalign.types import EpisodeBatch, PreferenceSet

ContextTriple = tuple[str, str, str]
"""One context pair as texts: (prompt, chosen, rejected)."""


def _require_text(data: PreferenceSet, what: str) -> None:
    if not data.is_text or data.item_prompts is None or data.item_responses is None:
        raise ValueError(
            f"{what} holds feature vectors, not texts; NP-DPO trains on (prompt, chosen, rejected) texts. "
            "Use a user-grouped file whose chosen/rejected columns are strings."
        )


def pair_texts(data: PreferenceSet, pairs: Sequence[int] | Tensor) -> list[ContextTriple]:
    """(prompt, chosen, rejected) texts of pairs of `data` (pair ids in the order given)."""
    _require_text(data, "the data")
    assert data.item_prompts is not None and data.item_responses is not None
    ids = pairs.tolist() if isinstance(pairs, Tensor) else list(pairs)
    out = []
    for pair in ids:
        chosen, rejected = int(data.chosen[pair]), int(data.rejected[pair])
        # Both items of a pair answer the same prompt; the item table stores it with each item.
        out.append((data.item_prompts[chosen], data.item_responses[chosen], data.item_responses[rejected]))
    return out


def filter_user_types(data: PreferenceSet, user_types: Sequence[str] | None) -> PreferenceSet:
    """The pairs of users whose type is in `user_types` (None keeps everything).

    Raises:
        ValueError: a named type that the data does not have.
    """
    if user_types is None:
        return data
    unknown = sorted(set(user_types) - set(data.type_names))
    if unknown:
        raise ValueError(
            f"data.user_types names {unknown}, which the data does not have; its user types are "
            f"{data.type_names}."
        )
    keep = torch.tensor([t in set(user_types) for t in data.pair_types()], dtype=torch.bool)
    return data.subset(keep)


def user_context(
    data: PreferenceSet,
    user_type: str,
    size: int,
    *,
    seed: int = 0,
    user_id: str | None = None,
) -> list[ContextTriple]:
    """`size` context pairs of one user of type `user_type`, as texts.

    The user (when `user_id` is None) and the pairs are drawn from `seed`, so the same call gives the same
    context.

    Raises:
        ValueError: no user of that type (naming the types there are), an unknown user id, or a user
            with fewer than `size` pairs.
    """
    _require_text(data, "the context data")
    if size < 0:
        raise ValueError(f"context size {size} must be >= 0.")
    members = [u for u, t in enumerate(data.user_types) if t == user_type]
    if not members:
        raise ValueError(f"no user of type {user_type!r} in the data; its user types are {data.type_names}.")
    generator = torch.Generator().manual_seed(derived_seed(seed, "user-context", user_type))
    if user_id is None:
        user = members[int(torch.randint(len(members), (1,), generator=generator))]
    else:
        if user_id not in data.user_ids:
            raise ValueError(f"user_id {user_id!r} is not in the data.")
        user = data.user_ids.index(user_id)
        if data.user_types[user] != user_type:
            raise ValueError(f"user {user_id!r} has type {data.user_types[user]!r}, not {user_type!r}.")
    own = (data.user == user).nonzero().squeeze(-1)  # (P_u,)
    if len(own) < size:
        raise ValueError(
            f"user {data.user_ids[user]!r} has {len(own)} pairs; cannot draw a context of {size}."
        )
    picked = own[torch.randperm(len(own), generator=generator)[:size]]
    return pair_texts(data, picked)


@dataclass
class DPOBatch:
    """B users' episodes: the sampler's EpisodeBatch plus the texts of its pairs.

    Attributes:
        episodes: context features (B, C, D) and mask (B, C), pair ids (B, C) / (B, T), user and type (B,).
        target_prompts / target_chosen / target_rejected: B * T texts, user-major (row b * T + t).
        context_texts: per user, its real context pairs as (prompt, chosen, rejected).
    """

    episodes: EpisodeBatch
    target_prompts: list[str]
    target_chosen: list[str]
    target_rejected: list[str]
    context_texts: list[list[ContextTriple]]

    @property
    def num_users(self) -> int:
        """B."""
        return int(self.episodes.target_pairs.shape[0])

    @property
    def num_targets(self) -> int:
        """T."""
        return int(self.episodes.target_pairs.shape[1])

    def tokenize_targets(
        self, tokenizer: PreTrainedTokenizerBase, *, max_prompt_length: int, max_response_length: int
    ) -> dict[str, Tensor]:
        """The target pairs as one LM batch: chosen rows then rejected rows.

        Returns:
            input_ids, attention_mask, completion_mask: (2 * B * T, L); rows 0 .. BT-1 are the chosen
            responses (user-major), rows BT .. 2BT-1 the rejected ones in the same order.
        """
        tokens = tokenize_preference_pairs(
            tokenizer,
            self.target_prompts,
            self.target_chosen,
            self.target_rejected,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
        )
        return {
            key: torch.cat([tokens[f"chosen_{key}"], tokens[f"rejected_{key}"]])  # (2BT, L)
            for key in ("input_ids", "attention_mask", "completion_mask")
        }

    def model_inputs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_prompt_length: int,
        max_response_length: int,
        device: torch.device,
        reference_table: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """What `ConditionalPolicy.score_targets` reads, on `device`.

        Args:
            reference_table: (P, 2) precomputed log pi_ref (chosen, rejected) of the sampler's source
                pairs, or None (the policy then runs its reference).
        Returns:
            input_ids / attention_mask / completion_mask: (2BT, L), as `tokenize_targets`;
            context_chosen / context_rejected: (B, C, D) context features, context_mask: (B, C);
            reference_logps: (2BT,) looked up in `reference_table` (only when one is given).
        """
        inputs = self.tokenize_targets(
            tokenizer, max_prompt_length=max_prompt_length, max_response_length=max_response_length
        )
        episodes = self.episodes
        inputs.update(
            context_chosen=episodes.context_chosen,
            context_rejected=episodes.context_rejected,
            context_mask=episodes.context_mask,
        )
        if reference_table is not None:
            pairs = reference_table[episodes.target_pairs.flatten()]  # (BT, 2): chosen, rejected
            inputs["reference_logps"] = torch.cat([pairs[:, 0], pairs[:, 1]])  # (2BT,)
        return {key: value.to(device) for key, value in inputs.items()}


class DPOEpisodeSampler:
    """Draws NP-DPO episodes from a text PreferenceSet.

    Args:
        data: text pairs; with `features` (N, D) attached (frozen embeddings of the items) the context
            features come with each batch, without them (the unconditional mode) the features are (N, 0).
        batch_users: B (fewer than the reward sampler's default: each user brings 2T sequences).
        **sampling: targets, max_context, min_context and seed, as `EpisodeSampler` takes them.
    """

    def __init__(
        self, data: PreferenceSet, *, batch_users: int = 2, **sampling: Unpack[SamplingArgs]
    ) -> None:
        _require_text(data, "the episode data")
        if data.features is None:
            data = data.with_features(torch.zeros(data.num_items, 0))  # index-only draws
        self.data = data
        self.sampler = EpisodeSampler(data, batch_users=batch_users, **sampling)

    @property
    def type_names(self) -> list[str]:
        return self.sampler.type_names

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def _with_texts(self, episodes: EpisodeBatch) -> DPOBatch:
        targets = pair_texts(self.data, episodes.target_pairs.flatten())  # B * T, user-major
        contexts = [
            pair_texts(self.data, row[row >= 0]) for row in episodes.context_pairs
        ]  # per user, real pairs only
        return DPOBatch(
            episodes=episodes,
            target_prompts=[prompt for prompt, _, _ in targets],
            target_chosen=[chosen for _, chosen, _ in targets],
            target_rejected=[rejected for _, _, rejected in targets],
            context_texts=contexts,
        )

    def batch_at(self, step: int) -> DPOBatch:
        """The training batch of global step `step` (a pure function of seed and step)."""
        return self._with_texts(self.sampler.batch_at(step))

    def evaluation_batches(
        self, context_size: int, episodes: int, seed: int, chunk: int = 8
    ) -> Iterator[DPOBatch]:
        """Fixed episodes with exactly `context_size` context pairs, users balanced over types.

        Args:
            context_size: m.
            episodes: how many (one user each).
            seed: the same seed gives the same episodes.
            chunk: users per yielded batch.
        """
        for batch in self.sampler.evaluation_batches(context_size, episodes, seed, chunk=chunk):
            yield self._with_texts(batch)

"""Episode sampling: per user, m context pairs and T disjoint target pairs, vectorised (L1, data).

All pairs live in preloaded tensors; a batch is a handful of index operations. Draws are a pure
function of (seed, step), so training resumes on exactly the batches it would have seen, and the user
order is reshuffled every epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, Protocol, Required, TypedDict

import torch
from torch import Tensor
from tqdm.auto import tqdm

from npalign.types import EpisodeBatch, PreferenceSet


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts, stable across runs and platforms."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SamplingArgs(TypedDict, total=False):
    """`EpisodeSampler`'s keyword arguments but `batch_users`, for samplers that wrap it."""

    targets: Required[int]
    max_context: Required[int]
    min_context: int
    seed: int


class EpisodeSampler:
    """Draws context/target episodes from one PreferenceSet.

    Args:
        data: pairs with item features attached.
        targets: T, target pairs per user.
        max_context: C, the largest context; every user needs at least C + T pairs.
        min_context: smallest context drawn in training (context sizes are uniform in [min, max]).
        batch_users: B, users per training batch.
        seed: all draws derive from it.
    """

    def __init__(
        self,
        data: PreferenceSet,
        *,
        targets: int,
        max_context: int,
        min_context: int = 0,
        batch_users: int = 64,
        seed: int = 0,
    ) -> None:
        if data.features is None:
            raise ValueError("the data has text items without features; embed it first (npalign embed).")
        self.features = data.features.float().contiguous()  # (N, D)
        self.chosen, self.rejected = data.chosen, data.rejected  # (P,)
        self.pair_prompt = data.prompt  # (P,)
        self.targets, self.max_context, self.min_context = targets, max_context, min_context
        self.batch_users, self.seed = batch_users, seed
        self.type_names = data.type_names
        self.user_ids = data.user_ids
        type_index = {name: k for k, name in enumerate(self.type_names)}
        self.user_type = torch.tensor([type_index[t] for t in data.user_types], dtype=torch.long)  # (U,)

        counts = torch.bincount(data.user, minlength=data.num_users)  # (U,)
        needed = max_context + targets
        short = (counts < needed).nonzero().squeeze(-1).tolist()
        if short:
            names = ", ".join(f"{data.user_ids[u]!r} ({int(counts[u])} pairs)" for u in short[:5])
            raise ValueError(
                f"{len(short)} user(s) have fewer pairs than context + targets = {max_context} + {targets} = "
                f"{needed}: {names}{' ...' if len(short) > 5 else ''}. Lower the context size or the number of "
                "targets, or remove these users from the data."
            )
        order = torch.argsort(data.user, stable=True)  # pairs grouped by user
        self.counts = counts
        starts = torch.cumsum(counts, 0) - counts  # (U,)
        width = int(counts.max())
        slot = torch.arange(width)  # (W,)
        index = starts[:, None] + slot[None, :]  # (U, W)
        valid = slot[None, :] < counts[:, None]
        self.user_pairs = torch.where(
            valid, order[index.clamp(max=len(order) - 1)], -1
        )  # (U, W) pair ids, -1 pad
        self.num_users = data.num_users
        self.steps_per_epoch = max(1, -(-data.num_pairs // (batch_users * targets)))

    # ---------------------------------------------------------------- core draw
    def draw(
        self, users: Tensor, context_sizes: Tensor, generator: torch.Generator, max_context: int | None = None
    ) -> EpisodeBatch:
        """One batch for the given users.

        Args:
            users: (B,) user indices.
            context_sizes: (B,) m per user, each <= max_context.
            generator: the source of randomness for which pairs are drawn.
            max_context: C, the padded context width (default: the sampler's).
        Returns:
            An EpisodeBatch with C context slots (the first m real) and T targets, disjoint per user.
        """
        width_c = self.max_context if max_context is None else max_context
        pool = self.user_pairs[users]  # (B, W)
        keys = torch.rand(pool.shape, generator=generator)
        keys.masked_fill_(pool < 0, 2.0)  # padding sorts last
        order = keys.argsort(1)
        # Targets are the first T slots of a random order of the user's own pairs. The context comes
        # from the rest, skipping every pair that shares a prompt with a target: context and targets
        # never share a pair, nor a prompt (with text, the same prompt would leak the user's answer).
        target_pairs = pool.gather(1, order[:, : self.targets])  # (B, T)
        target_prompts = self.pair_prompt[target_pairs]  # (B, T)
        pool_prompts = self.pair_prompt[pool.clamp(min=0)]  # (B, W)
        clash = (pool_prompts[:, :, None] == target_prompts[:, None, :]).any(-1)  # (B, W)
        keys = keys.masked_fill(clash, 2.0)  # targets themselves clash too
        eligible = (keys < 2.0).sum(1)  # (B,)
        if width_c and bool((eligible < context_sizes).any()):
            short = int(users[(eligible < context_sizes).nonzero()[0]])
            raise ValueError(
                f"user {self.user_ids[short]!r} has too few pairs on prompts other than its targets' for a context of "
                f"{int(context_sizes.max())}; lower the context size or the number of targets."
            )
        context_pairs = pool.gather(1, keys.argsort(1)[:, :width_c])  # (B, C)
        context_mask = torch.arange(width_c)[None, :] < context_sizes[:, None]  # (B, C)
        context_pairs = context_pairs.masked_fill(~context_mask, -1)
        safe = context_pairs.clamp(min=0)
        keep = context_mask[..., None].to(self.features.dtype)
        return EpisodeBatch(
            context_chosen=self.features[self.chosen[safe]] * keep,  # (B, C, D)
            context_rejected=self.features[self.rejected[safe]] * keep,
            context_mask=context_mask,
            target_chosen=self.features[self.chosen[target_pairs]],  # (B, T, D)
            target_rejected=self.features[self.rejected[target_pairs]],
            target_mask=torch.ones(target_pairs.shape, dtype=torch.bool),
            user_type=self.user_type[users],
            user=users,
            context_pairs=context_pairs,
            target_pairs=target_pairs,
            type_names=self.type_names,
        )

    # ---------------------------------------------------------------- training
    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per run; caches the current epoch's order
    def _epoch_users(self, epoch: int) -> Tensor:
        """Users in a fresh random order for this epoch, repeated to fill every step's batch."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
        needed = self.steps_per_epoch * self.batch_users
        rounds = -(-needed // self.num_users)
        return torch.cat([torch.randperm(self.num_users, generator=generator) for _ in range(rounds)])[
            :needed
        ]

    def batch_at(self, step: int) -> EpisodeBatch:
        """The training batch of global step `step` (a pure function of seed and step)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        users = self._epoch_users(epoch)[index * self.batch_users : (index + 1) * self.batch_users]
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "step", step))
        sizes = torch.randint(self.min_context, self.max_context + 1, (len(users),), generator=generator)
        return self.draw(users, sizes, generator)

    # ---------------------------------------------------------------- evaluation
    def evaluation_batches(
        self, context_size: int, episodes: int, seed: int, chunk: int = 1024
    ) -> Iterator[EpisodeBatch]:
        """Fixed evaluation episodes with exactly `context_size` context pairs each.

        Users are drawn so that every user type gets the same number of episodes (episode i has type
        i mod K), which makes the type-averaged accuracy an equal-weight average.
        """
        if context_size > self.max_context:
            raise ValueError(
                f"context size {context_size} exceeds the sampler's max_context={self.max_context}."
            )
        generator = torch.Generator().manual_seed(derived_seed(seed, "eval", context_size))
        num_types = len(self.type_names)
        users_of_type = [(self.user_type == k).nonzero().squeeze(-1) for k in range(num_types)]
        episode_type = torch.arange(episodes) % num_types
        users = torch.empty(episodes, dtype=torch.long)
        for k, members in enumerate(users_of_type):
            slots = (episode_type == k).nonzero().squeeze(-1)
            users[slots] = members[torch.randint(len(members), (len(slots),), generator=generator)]
        for start in range(0, episodes, chunk):
            batch_users = users[start : start + chunk]
            sizes = torch.full((len(batch_users),), context_size, dtype=torch.long)
            yield self.draw(batch_users, sizes, generator, max_context=context_size)


class _EvaluationEpisodes(Protocol):
    def evaluation_batches(
        self, context_size: int, episodes: int, seed: int, chunk: int = ...
    ) -> Iterator[Any]: ...


def context_sweep(
    sampler: _EvaluationEpisodes,
    contexts: list[int],
    episodes: int,
    seed: int,
    score: Callable[[Any, torch.Generator], dict[str, Tensor]],
    *,
    noise_tag: str = "eval-noise",
    chunk: int | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[int, dict[str, Tensor]]:
    """The one sweep over context sizes that validation and evaluation of both jobs run.

    For each m in `contexts`, the sampler's fixed evaluation episodes (users balanced over types) are
    scored batch by batch and the per-episode figures concatenated.

    Args:
        sampler: an `EpisodeSampler` or a `DPOEpisodeSampler`.
        score: (batch, generator) -> {name: (B,) per-episode figure}; the generator, seeded per m from
            (seed, noise_tag, m), is there for predictors that sample.
        chunk: users per batch (the sampler's default when None).
    Returns:
        {m: {name: (E,) figures of the E episodes, in episode order}}.
    """
    swept: dict[int, dict[str, Tensor]] = {}
    for m in tqdm(contexts, desc=desc, disable=not progress):
        generator = torch.Generator().manual_seed(derived_seed(seed, noise_tag, m))
        parts: dict[str, list[Tensor]] = {}
        kwargs = {} if chunk is None else {"chunk": chunk}
        for batch in sampler.evaluation_batches(m, episodes, seed, **kwargs):
            for name, values in score(batch, generator).items():
                parts.setdefault(name, []).append(values)
        swept[m] = {name: torch.cat(values) for name, values in parts.items()}
    return swept

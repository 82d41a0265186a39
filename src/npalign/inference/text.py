"""Text-level inference: a reward model trained on embedded texts, called with texts (L2, inference).

    model = npalign.load("runs/np_btl_dsp")            # a TextRewardPredictor: the run recorded "minilm"
    z = model.infer_user(prompts, chosen, rejected)    # C texts each; C = 0 gives the population prior
    model.reward(prompts, responses, z)                # N texts each -> (N,)
    model.prefer_prob(prompts, a, b, z)                # p(a > b) for the user, (N,)
    model.next_query(prompts, chosen, rejected, candidate_prompts, candidate_a, candidate_b)

Texts are embedded on the fly by the embedder the run recorded (built once, on first use), through
the disk cache when `cache_dir` is given. The feature-level `RewardPredictor` stays reachable as
`model.features` for callers that hold vectors already.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from npalign.embedding.cache import StorageDtype
from npalign.embedding.embedders import Embedder, build_embedder
from npalign.embedding.features import embed_texts, to_item_features
from npalign.inference.api import RewardPredictor
from npalign.inference.elicit import QueryChoice
from npalign.types import UserLatent


def _texts(value: Sequence[str], name: str) -> list[str]:
    """A list of texts from any sequence of them; a single str (a sequence of characters) is refused."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be a list of strings, not a single str; wrap it in a list.")
    return list(value)


class TextRewardPredictor:
    """A `RewardPredictor` plus the embedder its training features came from.

    Args:
        predictor: the feature-level model; `predictor.embedder` names the embedder.
        embedder: an already built embedder to use instead of building `predictor.embedder` (its
            width must match the model's); None builds the recorded one on first use.
        cache_dir: embed through the disk cache under this root; None embeds without caching.
        cache_dtype: storage dtype of that cache.
        batch_size: texts per forward pass of the embedder.
    Attributes:
        features: the feature-level `RewardPredictor`.
        kind / latent_dim / type_names / embed_dim: as on `RewardPredictor`.
        embedder_name: the embedder recorded at training time, e.g. "minilm".
    """

    def __init__(
        self,
        predictor: RewardPredictor,
        *,
        embedder: Embedder | None = None,
        cache_dir: str | Path | None = None,
        cache_dtype: StorageDtype = "float32",
        batch_size: int = 32,
    ) -> None:
        if not predictor.embedder:
            raise ValueError(
                "this model was trained on feature vectors (no embedder recorded); use RewardPredictor "
                "and pass features, not texts."
            )
        if embedder is not None and embedder.feature_dim != predictor.embed_dim:
            raise ValueError(
                f"embedder {embedder.feature_name!r} gives {embedder.feature_dim}-d features but the model expects "
                f"{predictor.embed_dim}-d ones from {predictor.embedder!r}."
            )
        self.features = predictor
        self.embedder_name = predictor.embedder
        self.kind = predictor.kind
        self.latent_dim = predictor.latent_dim
        self.type_names = predictor.type_names
        self.embed_dim = predictor.embed_dim
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_dtype: StorageDtype = cache_dtype
        self.batch_size = batch_size
        self._embedder = embedder

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        embedder: Embedder | None = None,
    ) -> TextRewardPredictor:
        """Load a run directory trained on text (its run.json names the embedder)."""
        return cls(RewardPredictor.from_pretrained(path, seed=seed), embedder=embedder, cache_dir=cache_dir)

    def to(self, device: str | torch.device) -> TextRewardPredictor:
        """Move the reward model to `device` (the embedder stays where it was built); returns self."""
        self.features.to(device)
        return self

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model as a run directory (`RewardPredictor.save_pretrained`); its run.json names the
        embedder, so `npalign.load` gives a TextRewardPredictor back."""
        self.features.save_pretrained(directory)

    def __repr__(self) -> str:
        return (
            f"TextRewardPredictor(kind={self.kind!r}, embedder={self.embedder_name!r}, "
            f"embed_dim={self.embed_dim}, latent_dim={self.latent_dim})"
        )

    @property
    def embedder(self) -> Embedder:
        """The embedder, built from the recorded name on first use."""
        if self._embedder is None:
            embedder = build_embedder(self.embedder_name)
            if embedder.feature_dim != self.embed_dim:
                raise ValueError(
                    f"embedder {self.embedder_name!r} now gives {embedder.feature_dim}-d features but the model was "
                    f"trained on {self.embed_dim}-d ones; the embedder's model changed since training."
                )
            self._embedder = embedder
        return self._embedder

    def embed(self, prompts: Sequence[str], responses: Sequence[str], what: str = "responses") -> Tensor:
        """Features of N (prompt, response) items, as training saw them (`embedding.to_item_features`): (N, D).

        Args:
            prompts: N prompts, or one prompt (a str) shared by every response.
            responses: N responses.
            what: the argument's name, for error messages.
        """
        responses = _texts(responses, what)
        prompt_list = [prompts] * len(responses) if isinstance(prompts, str) else list(prompts)
        if len(prompt_list) != len(responses):
            raise ValueError(
                f"got {len(prompt_list)} prompts for {len(responses)} {what}; pass one prompt per item "
                "(or a single str for all)."
            )
        if self.cache_dir is None:
            vectors = self.embedder.embed(prompt_list, responses, batch_size=self.batch_size)
            return to_item_features(self.embedder, responses, vectors)
        features, _ = embed_texts(
            prompt_list,
            responses,
            self.embedder,
            cache_dir=self.cache_dir,
            dtype=self.cache_dtype,
            batch_size=self.batch_size,
        )
        return features

    def infer_user(
        self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
    ) -> UserLatent:
        """The user latent from C of the user's choices, given as texts.

        Args:
            prompts: C prompts (or one str for all); pair j is `chosen[j]` preferred to `rejected[j]`
                as answers to `prompts[j]`.
            chosen: C preferred responses.
            rejected: C other responses.
        Returns:
            z (`latent_dim`,), a Posterior for the latent model, or a (0,) tensor for btl / dpl. C = 0 gives the
            population prior.
        """
        chosen, rejected = _texts(chosen, "chosen"), _texts(rejected, "rejected")
        if len(chosen) != len(rejected):
            raise ValueError(
                f"got {len(chosen)} chosen but {len(rejected)} rejected responses; pair them up."
            )
        chosen_features = self.embed(prompts, chosen, "chosen")  # (C, D)
        rejected_features = self.embed(prompts, rejected, "rejected")  # (C, D)
        return self.features.infer_user(chosen_features, rejected_features)

    def reward(self, prompts: Sequence[str], responses: Sequence[str], z: UserLatent) -> Tensor:
        """Rewards of N responses for the user z: (N,). A Posterior z gives the mean over samples."""
        return self.features.reward(self.embed(prompts, responses), z)

    def prefer_prob(
        self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], z: UserLatent
    ) -> Tensor:
        """p(a[i] > b[i]) as answers to prompts[i] for the user z: (N,)."""
        a, b = _texts(a, "a"), _texts(b, "b")
        if len(a) != len(b):
            raise ValueError(f"got {len(a)} responses in a but {len(b)} in b; pair them up.")
        return self.features.prefer_prob(self.embed(prompts, a, "a"), self.embed(prompts, b, "b"), z)

    def next_query(
        self,
        prompts: Sequence[str],
        chosen: Sequence[str],
        rejected: Sequence[str],
        candidate_prompts: Sequence[str],
        candidate_a: Sequence[str],
        candidate_b: Sequence[str],
        *,
        strategy: str = "info-gain",
        reference: tuple[Sequence[str], Sequence[str], Sequence[str]] | None = None,
        seed: int = 0,
    ) -> QueryChoice:
        """Which of N candidate pairs to ask this user next, given C choices, all as texts.

        Args:
            prompts / chosen / rejected: the user's C choices so far (prompts may be one str); C = 0 is allowed.
            candidate_prompts / candidate_a / candidate_b: the N pairs one could ask (prompts may be one str).
            strategy / seed: as `RewardPredictor.next_query`.
            reference: info-gain's pool as (prompts, a, b) texts; None uses the candidates.
        Returns:
            QueryChoice(index, scores (N,), strategy); higher scores = ask first.
        """
        chosen, rejected = _texts(chosen, "chosen"), _texts(rejected, "rejected")
        candidate_a, candidate_b = _texts(candidate_a, "candidate_a"), _texts(candidate_b, "candidate_b")
        if len(chosen) != len(rejected):
            raise ValueError(
                f"got {len(chosen)} chosen but {len(rejected)} rejected responses; pair them up."
            )
        if len(candidate_a) != len(candidate_b):
            raise ValueError(
                f"got {len(candidate_a)} responses in candidate_a but {len(candidate_b)} in candidate_b; "
                "pair them up."
            )
        if len(candidate_a) == 0:
            raise ValueError("candidate_a and candidate_b are empty; pass at least one candidate pair.")
        pool = None
        if reference is not None:
            if not isinstance(reference, tuple | list) or len(reference) != 3:
                raise ValueError("reference must be three sequences (prompts, a, b) of texts, or None.")
            pool = (
                self.embed(reference[0], reference[1], "reference a"),
                self.embed(reference[0], reference[2], "reference b"),
            )
        return self.features.next_query(
            self.embed(prompts, chosen, "chosen") if chosen else [],
            self.embed(prompts, rejected, "rejected") if rejected else [],
            self.embed(candidate_prompts, candidate_a, "candidate_a"),
            self.embed(candidate_prompts, candidate_b, "candidate_b"),
            strategy=strategy,
            reference=pool,
            seed=seed,
        )

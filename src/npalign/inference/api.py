"""The inference API: infer a user's z from a few choices, then score items for that user (L2, inference).

    model = npalign.load("runs/np_btl")           # a policy run gives a PolicyRunner (inference/policy.py)
    z = model.infer_user(chosen, rejected)        # (C, D) each; C may be 0
    model.reward(items, z)                         # (N, D) -> (N,)
    model.prefer_prob(a, b, z)                     # (N, D) twice -> (N,)
    model.next_query(chosen, rejected, a, b)       # which of N candidate pairs to ask next (inference/elicit.py)

Everything also takes a leading batch dimension of B users.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from npalign.inference.elicit import STRATEGIES, QueryChoice, score_candidates
from npalign.models.builders import load_reward_model
from npalign.models.reward import PreferenceModel
from npalign.types import Posterior, UserLatent
from npalign.utils.io import save_tensors, write_json
from npalign.utils.rundir import REWARD_WEIGHTS, RUN_FILE, check_new_run_directory, read_run

if TYPE_CHECKING:
    from npalign.inference.policy import PolicyRunner
    from npalign.inference.text import TextRewardPredictor


def _as_tensor(value: Any, name: str, width: int) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.dim() == 1 and tensor.numel() == 0:
        tensor = tensor.reshape(0, width)
    if tensor.dim() not in (2, 3) or tensor.shape[-1] != width:
        raise ValueError(
            f"{name} must have shape (N, {width}) or (B, N, {width}); got {tuple(tensor.shape)}."
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or inf.")
    return tensor


class RewardPredictor:
    """A trained reward model for inference: no optimizer, no accelerate, no data pipeline.

    Attributes:
        kind: btl | dpl | np-btl | np-btl-latent.
        embed_dim: D, the item feature width the model expects.
        latent_dim: the width of z (0 for models without a user latent); Z + 1 for an NP-BTL with a
            prior head, whose last coordinate is 1 for a user with choices and 0 for the population prior.
        type_names: the user types seen in training.
        embedder: the name of the text embedder the features came from ("" for feature data).
    """

    def __init__(self, model: PreferenceModel, record: dict[str, Any], *, seed: int = 0) -> None:
        self.model = model.eval()
        self.record = record
        self.kind: str = record["model"]["kind"]
        self.embed_dim: int = int(record["embed_dim"])
        self.latent_dim: int = model.z_dim if model.conditional else 0
        self.type_names: list[str] = list(record.get("type_names", []))
        self.embedder: str = (record.get("embedder") or {}).get("name", "")
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, seed: int = 0) -> RewardPredictor:
        model, record = load_reward_model(path)
        return cls(model, record, seed=seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> RewardPredictor:
        """Move the model to `device` (inputs follow it; results come back on it); returns self."""
        self.model.to(torch.device(device))
        return self

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model as a run directory `npalign.load` reads: run.json and model.safetensors.

        The weights are written from the CPU and atomically; an existing run there is refused.
        """
        directory = Path(directory)
        check_new_run_directory(directory)
        save_tensors(self.model.state_dict(), directory / REWARD_WEIGHTS)
        write_json(self.record, directory / RUN_FILE)

    @torch.inference_mode()
    def infer_user(self, chosen: Any, rejected: Any) -> UserLatent:
        """The user latent from a user's choices.

        Args:
            chosen: (C, D) or (B, C, D) features of the preferred items; C = 0 is allowed and gives
                the population prior.
            rejected: same shape, the other items.
        Returns:
            z (latent_dim,) or (B, latent_dim) (a Posterior for the latent model; (0,) wide for btl/dpl).
        """
        chosen_t = _as_tensor(chosen, "chosen", self.embed_dim).to(self.device)
        rejected_t = _as_tensor(rejected, "rejected", self.embed_dim).to(self.device)
        if chosen_t.shape != rejected_t.shape:
            raise ValueError(
                f"chosen {tuple(chosen_t.shape)} and rejected {tuple(rejected_t.shape)} differ in shape."
            )
        single = chosen_t.dim() == 2
        if single:
            chosen_t, rejected_t = chosen_t[None], rejected_t[None]  # (1, C, D)
        mask = torch.ones(chosen_t.shape[:2], dtype=torch.bool, device=self.device)  # (B, C)
        latent = self.model.infer(chosen_t, rejected_t, mask)
        if latent is None:
            latent = torch.zeros(chosen_t.shape[0], 0, device=self.device)
        if single:
            return Posterior(latent.mean[0], latent.scale[0]) if isinstance(latent, Posterior) else latent[0]
        return latent

    def _prepare(self, items: Tensor, latent: UserLatent) -> tuple[Tensor, UserLatent | None, bool]:
        """Give items a batch dim (B, N, D) and the latent a matching (B, Z); remember to squeeze."""
        single = items.dim() == 2
        if single:
            items = items[None]
        batch = items.shape[0]
        if isinstance(latent, Posterior):
            if self.kind != "np-btl-latent":
                raise TypeError(
                    f"z is a Posterior, which only np-btl-latent infers; pass this {self.kind} model the z "
                    "tensor its infer_user returns."
                )
            scale = self._latent_rows(latent.scale, "z.scale", batch)
            if not bool((scale > 0).all()):
                raise ValueError("z.scale must be > 0 everywhere (a Posterior's standard deviations).")
            return items, Posterior(self._latent_rows(latent.mean, "z.mean", batch), scale), single
        z = self._latent_rows(latent, "z", batch)
        return items, (z if self.latent_dim else None), single

    def _latent_rows(self, value: Any, name: str, batch: int) -> Tensor:
        """z as (B, Z) rows for B item sets, from a (Z,) or (B, Z) z; a ValueError naming `name` otherwise."""
        wanted = f"({self.latent_dim},) or ({batch}, {self.latent_dim})"
        try:
            z = torch.as_tensor(value, dtype=torch.float32).to(self.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be a tensor of shape {wanted}, as infer_user returns; got {type(value).__name__}."
            ) from None
        rows = z[None] if z.dim() == 1 else z
        if rows.dim() != 2 or rows.shape[-1] != self.latent_dim or rows.shape[0] not in (1, batch):
            raise ValueError(
                f"{name} has shape {tuple(z.shape)}; this {self.kind} model takes {wanted} for {batch} set(s) "
                f"of items (its latent is {self.latent_dim}-d)."
            )
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(f"{name} contains NaN or inf.")
        return rows.expand(batch, -1)

    @torch.inference_mode()
    def reward(self, items: Any, z: UserLatent) -> Tensor:
        """Rewards of items for a user: (N, D) -> (N,), or (B, N, D) -> (B, N). Posterior z: mean reward."""
        batch, latent, single = self._prepare(_as_tensor(items, "items", self.embed_dim).to(self.device), z)
        if isinstance(latent, Posterior):
            rewards = self.model.reward(batch, latent.sample(self.model.num_samples, self.generator)).mean(0)
        else:
            rewards = self.model.reward(batch, latent)
        return rewards[0] if single else rewards

    @torch.inference_mode()
    def prefer_prob(self, a: Any, b: Any, z: UserLatent) -> Tensor:
        """p(a > b) for a user: (N, D) twice -> (N,), or (B, N, D) -> (B, N)."""
        a_t = _as_tensor(a, "a", self.embed_dim).to(self.device)
        b_t = _as_tensor(b, "b", self.embed_dim).to(self.device)
        if a_t.shape != b_t.shape:
            raise ValueError(f"a {tuple(a_t.shape)} and b {tuple(b_t.shape)} differ in shape.")
        a_batch, latent, single = self._prepare(a_t, z)
        b_batch = b_t[None] if single else b_t
        probs = self.model.prefer_prob(a_batch, b_batch, latent, self.generator)
        return probs[0] if single else probs

    @torch.inference_mode()
    def next_query(
        self,
        context_chosen: Any,
        context_rejected: Any,
        candidates_a: Any,
        candidates_b: Any,
        *,
        strategy: str = "info-gain",
        reference: tuple[Any, Any] | None = None,
        seed: int = 0,
    ) -> QueryChoice:
        """Which candidate pair to ask this user next, and every candidate's score (`inference/elicit.py`).

        Args:
            context_chosen: (C, D) the user's preferred items so far; C = 0 is allowed.
            context_rejected: (C, D) the other items.
            candidates_a / candidates_b: (N, D) the N pairs one could ask, N >= 1.
            strategy: one of `elicit.STRATEGIES`: info-gain (expected predictive information gain, with
                the model as its own simulator), bald (latent kind only), uncertainty, d-optimal, random.
            reference: info-gain's pool of (R, D) pairs whose predictions the answer should move; None
                uses the candidates (at most `elicit.MAX_REFERENCE` of them).
            seed: seeds `random`, the default reference pool and the latent kind's z draws.
        Returns:
            QueryChoice(index, scores (N,), strategy); higher scores = ask first.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}.")
        chosen = self._pairs(context_chosen, context_rejected, "context_chosen", "context_rejected")
        a, b = self._pairs(candidates_a, candidates_b, "candidates_a", "candidates_b")
        if a.shape[0] == 0:
            raise ValueError("candidates_a and candidates_b are empty; pass at least one candidate pair.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int; got {seed!r}.")
        pool = None
        if reference is not None:
            if strategy != "info-gain":
                raise ValueError(
                    f"reference is info-gain's pool; strategy={strategy!r} has none, leave it out."
                )
            if not isinstance(reference, tuple | list) or len(reference) != 2:
                raise ValueError("reference must be a pair (reference_a, reference_b) of (R, D) features.")
            pool = self._pairs(reference[0], reference[1], "reference[0]", "reference[1]")
            if pool[0].shape[0] == 0:
                raise ValueError("reference is empty; pass at least one pair or None for the candidates.")
        scores = score_candidates(self.model, *chosen, a, b, strategy, reference=pool, seed=seed)
        return QueryChoice(int(scores.argmax()), scores, strategy)

    def _pairs(self, first: Any, second: Any, first_name: str, second_name: str) -> tuple[Tensor, Tensor]:
        """Validate one user's pairs: (N, D) features twice, finite, equal shapes; on the model's device."""
        first_t = _as_tensor(first, first_name, self.embed_dim).to(self.device)
        second_t = _as_tensor(second, second_name, self.embed_dim).to(self.device)
        if first_t.dim() != 2:
            raise ValueError(
                f"{first_name} must be (N, {self.embed_dim}) for one user; got {tuple(first_t.shape)}."
            )
        if first_t.shape != second_t.shape:
            raise ValueError(
                f"{first_name} {tuple(first_t.shape)} and {second_name} {tuple(second_t.shape)} differ "
                "in shape; pair them up."
            )
        return first_t, second_t


def load(
    path: str | Path,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> RewardPredictor | TextRewardPredictor | PolicyRunner:
    """Load any npalign run directory for inference (strictly; no pickle), by the kind its run.json names.

    * a reward model trained on feature vectors -> `RewardPredictor`;
    * a reward model trained on texts (its run names an embedder) -> `TextRewardPredictor`, which embeds
      prompts and responses on the fly (through the disk cache under `cache_dir` if given);
    * a policy (`npalign train-dpo`) -> `PolicyRunner` (`inference.policy.load_policy`).
    """
    from npalign.inference.policy import load_policy  # policy.py and text.py build on this module
    from npalign.inference.text import TextRewardPredictor

    if read_run(path)["kind"] == "policy":
        return load_policy(path, device=device)
    predictor = RewardPredictor.from_pretrained(path, seed=seed).to(device)
    if predictor.embedder:
        return TextRewardPredictor(predictor, cache_dir=cache_dir)
    return predictor

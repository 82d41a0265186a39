"""The models a server answers with: the predictors `npalign.load` returns, plus each user's cached z (L3, serve).

    served = ServedModel(npalign.load(MODEL_DIR), policy=npalign.load(POLICY_DIR))
    z, num_choices = served.user_latent("alice", store)     # cached until alice's choices change
    served.reward(prompts, responses, z)

No model logic lives here: items are checked against the model (texts or D-wide vectors, naming the
field), then handed to `RewardPredictor` / `TextRewardPredictor` / `PolicyRunner`. A user's z is cached
with the store's revision token for that user, so a server process recomputes it as soon as any process
changed the user's choices.

Texts (responses to score and users' choices alike) are embedded directly, with an in-memory LRU in
front, never through the disk cache: writing each request's handful of vectors as a new cache shard
made every later cache open slower, without end (a z from an inline context took 5 ms on an empty
cache, 230 ms once it held 1,200 shards). A user's choices are embedded again only when their z is
recomputed with the vectors evicted, or after a restart.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from npalign.embedding.cache import text_key
from npalign.embedding.features import to_item_features
from npalign.inference.api import RewardPredictor
from npalign.inference.elicit import QueryChoice
from npalign.inference.policy import PolicyRunner
from npalign.inference.text import TextRewardPredictor
from npalign.serve.schemas import FLOAT32_MAX, Choice, FieldError, check_text
from npalign.serve.store import StoredChoice, UserStore
from npalign.types import Posterior, UserLatent


def _refuse_overflow(values: torch.Tensor, field: str) -> None:
    """A 422 naming the first item whose score overflowed (huge feature values), instead of a null."""
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        raise FieldError(
            f"{field}[{int(bad[0][-1])}]",
            "overflows the model (its score is not finite); send features on the scale the model was trained on.",
        )


class UnknownUser(LookupError):
    """A user_id the store does not hold."""


class ServedModel:
    """A reward model (and optionally a policy) ready for requests.

    Args:
        predictor: a `RewardPredictor` (feature items) or `TextRewardPredictor` (text items).
        policy: a `PolicyRunner` for /v1/generate, or None.
        cache_size: users whose z is kept in memory (least recently used first out).
    """

    def __init__(
        self,
        predictor: RewardPredictor | TextRewardPredictor,
        policy: PolicyRunner | None = None,
        *,
        cache_size: int = 10_000,
    ) -> None:
        if isinstance(predictor, PolicyRunner):
            raise ValueError(
                "--model is a policy run; pass a reward model with --model and the policy with --policy."
            )
        self.predictor = predictor
        self.text = isinstance(predictor, TextRewardPredictor)
        self.policy = policy
        self.cache_size = cache_size
        # torch modules and the embedding cache are used from one thread at a time; the store is not locked.
        self.lock = threading.Lock()
        self._latents: OrderedDict[tuple[str, str], tuple[str, Any]] = OrderedDict()
        self._features: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # text_key(prompt, response) -> (D,)
        self.feature_cache_size = 4096
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def kind(self) -> str:
        return self.predictor.kind

    # ----- items -----------------------------------------------------------------------------------------

    def check_items(self, values: Sequence[Any], field: str) -> list[Any]:
        """Each value as the model reads items: a non-empty str (text model) or D finite numbers."""
        checked = []
        for index, value in enumerate(values):
            where = f"{field}[{index}]"
            checked.append(self.check_item(value, where))
        return checked

    def check_item(self, value: Any, field: str) -> Any:
        if self.text:
            if not isinstance(value, str):
                raise FieldError(
                    field, f"this server's model reads texts; got {type(value).__name__}, send a string."
                )
            check_text(value, field)
            if not value.strip():
                raise FieldError(field, "is empty; the embedder needs some text.")
            return value
        width = self.predictor.embed_dim
        if not isinstance(value, list) or len(value) != width:
            got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
            raise FieldError(field, f"this server's model reads {width}-d feature vectors; got {got}.")
        for position, number in enumerate(value):
            # abs() <= FLOAT32_MAX also refuses NaN and inf, and compares a huge int exactly (no overflow);
            # a float64 past float32's range would become inf in the model, and break a stored user for good.
            number_ok = isinstance(number, int | float) and not isinstance(number, bool)
            if not number_ok or not abs(number) <= FLOAT32_MAX:
                shown = repr(number) if len(repr(number)) <= 40 else f"{repr(number)[:20]}... (too large)"
                raise FieldError(
                    f"{field}[{position}]",
                    f"must be a finite number within float32's range (|x| <= 3.4e38); got {shown}.",
                )
        return [float(number) for number in value]

    def check_choices(self, choices: Sequence[Choice], field: str) -> list[StoredChoice]:
        stored = []
        for index, choice in enumerate(choices):
            where = f"{field}[{index}]"
            check_text(choice.prompt, f"{where}.prompt")
            if self.text and not choice.prompt.strip():
                raise FieldError(
                    f"{where}.prompt", "is empty; a text model needs the prompt the choice answered."
                )
            stored.append(
                StoredChoice(
                    choice.prompt if self.text else "",
                    self.check_item(choice.chosen, f"{where}.chosen"),
                    self.check_item(choice.rejected, f"{where}.rejected"),
                    choice.choice_id,
                )
            )
        # A vector in range may still overflow inside the encoder: never store one that does.
        if not self.text and stored:
            assert isinstance(self.predictor, RewardPredictor)
            width = self.predictor.embed_dim
            chosen = torch.tensor([c.chosen for c in stored], dtype=torch.float32).reshape(-1, 1, width)
            rejected = torch.tensor([c.rejected for c in stored], dtype=torch.float32).reshape(-1, 1, width)
            with self.lock:
                latent = self.predictor.infer_user(chosen, rejected)  # each choice alone: (C, Z)
            rows = torch.cat([latent.mean, latent.scale], -1) if isinstance(latent, Posterior) else latent
            bad = (~torch.isfinite(rows).all(-1)).nonzero()
            if len(bad):
                raise FieldError(
                    f"{field}[{int(bad[0])}]", "overflows the model (its z is not finite); send features on the "
                    "scale the model was trained on.",
                )  # fmt: skip
        return stored

    def prompts_for(self, prompt: str | None, prompts: list[str] | None, count: int, field: str) -> list[str]:
        """One prompt per item: text models need `prompt` or `prompts` (as many as items); features none."""
        if not self.text:
            if prompt is not None or prompts is not None:
                raise FieldError(
                    "prompt", "this server's model reads feature vectors, which hold no prompt; leave it out."
                )
            return [""] * count
        if (prompt is None) == (prompts is None):
            raise FieldError("prompt", "send either prompt (one for all items) or prompts (one per item).")
        if prompts is None:
            assert prompt is not None
            prompts = [prompt] * count
        if len(prompts) != count:
            raise FieldError("prompts", f"has {len(prompts)} entries for {count} {field}; send one per item.")
        for index, text in enumerate(prompts):
            if not text.strip():
                raise FieldError("prompt" if prompt is not None else f"prompts[{index}]", "is empty.")
        return prompts

    # ----- z ---------------------------------------------------------------------------------------------

    def latent(self, choices: Sequence[StoredChoice]) -> UserLatent:
        """The reward model's z from a user's choices (C = 0: the population prior)."""
        with self.lock:
            if isinstance(self.predictor, TextRewardPredictor):
                prompts = [c.prompt for c in choices]
                chosen_features = self.features(prompts, [c.chosen for c in choices])  # (C, D)
                rejected_features = self.features(prompts, [c.rejected for c in choices])  # (C, D)
                return self.predictor.features.infer_user(chosen_features, rejected_features)
            width = self.predictor.embed_dim
            chosen = torch.tensor([c.chosen for c in choices], dtype=torch.float32).reshape(-1, width)
            rejected = torch.tensor([c.rejected for c in choices], dtype=torch.float32).reshape(-1, width)
            return self.predictor.infer_user(chosen, rejected)

    def policy_latent(self, choices: Sequence[StoredChoice]) -> torch.Tensor | None:
        """The policy's z (Z,) from the user's choices; None for an unconditional policy."""
        policy = self._need_policy()
        if not policy.conditional:
            return None
        if not self.text:
            raise FieldError(
                "user_id", "the stored choices are feature vectors; a policy needs text choices."
            )
        with self.lock:
            return policy.infer_z([(c.prompt, c.chosen, c.rejected) for c in choices])

    def _need_policy(self) -> PolicyRunner:
        if self.policy is None:
            raise FieldError("policy", "this server has no policy; start it with --policy DIR.", status=404)
        return self.policy

    def cached(self, job: str, user_id: str, store: UserStore) -> tuple[Any, int]:
        """(z, number of choices) of a stored user for `job` ("reward" or "policy"), cached per revision.

        Raises:
            UnknownUser: the store does not hold the user.
        """
        value, _ = self.cached_with_revision(job, user_id, store)
        return value

    def cached_with_revision(self, job: str, user_id: str, store: UserStore) -> tuple[tuple[Any, int], str]:
        """`cached`, and the store revision that z and count were computed from."""
        record = store.user(user_id)
        if record is None:
            raise UnknownUser(user_id)
        key = (job, user_id)
        with self.lock:
            hit = self._latents.get(key)
            if hit is not None and hit[0] == record.revision:
                self._latents.move_to_end(key)
                self.cache_hits += 1
                return hit[1], hit[0]
            self.cache_misses += 1
        record, choices = store.choices(user_id)  # the revision again: the choices may have changed since
        if record is None:
            raise UnknownUser(user_id)
        value = (self.latent(choices) if job == "reward" else self.policy_latent(choices), len(choices))
        with self.lock:
            self._latents[key] = (record.revision, value)
            self._latents.move_to_end(key)
            while len(self._latents) > self.cache_size:
                self._latents.popitem(last=False)
        return value, record.revision

    # ----- answers ---------------------------------------------------------------------------------------

    def features(self, prompts: Sequence[str], items: Sequence[Any]) -> torch.Tensor:
        """(N, D) model features of N items: the vectors themselves, or texts embedded (LRU, no disk).

        Call with `self.lock` held.
        """
        if not isinstance(self.predictor, TextRewardPredictor):
            return torch.tensor(items, dtype=torch.float32).reshape(len(items), self.predictor.embed_dim)
        keys = [text_key(p, r) for p, r in zip(prompts, items, strict=True)]  # 32 bytes, not the texts
        texts = dict(zip(keys, zip(prompts, items, strict=True), strict=True))
        missing = list(dict.fromkeys(key for key in keys if key not in self._features))
        if missing:
            vectors = self.predictor.embedder.embed(
                [texts[k][0] for k in missing],
                [texts[k][1] for k in missing],
                batch_size=self.predictor.batch_size,
            )  # (M, D)
            features = to_item_features(self.predictor.embedder, [texts[k][1] for k in missing], vectors)
            for key, row in zip(missing, features, strict=True):
                self._features[key] = row.clone()  # a view would keep the whole (M, D) batch alive
        rows = []
        for key in keys:
            self._features.move_to_end(key)
            rows.append(self._features[key])
        while len(self._features) > max(self.feature_cache_size, len(keys)):
            self._features.popitem(last=False)
        return torch.stack(rows) if rows else torch.zeros(0, self.predictor.embed_dim)

    def reward(self, prompts: Sequence[str], items: Sequence[Any], z: UserLatent) -> list[float]:
        with self.lock:
            model = (
                self.predictor.features if isinstance(self.predictor, TextRewardPredictor) else self.predictor
            )
            rewards = model.reward(self.features(prompts, items), z)
        _refuse_overflow(rewards, "responses")
        return [float(r) for r in rewards]

    def prefer(
        self, prompts: Sequence[str], a: Sequence[Any], b: Sequence[Any], z: UserLatent
    ) -> list[float]:
        with self.lock:
            model = (
                self.predictor.features if isinstance(self.predictor, TextRewardPredictor) else self.predictor
            )
            probs = model.prefer_prob(self.features(prompts, a), self.features(prompts, b), z)
        _refuse_overflow(probs, "a")
        return [float(p) for p in probs]

    def next_query(
        self,
        choices: Sequence[StoredChoice],
        prompts: Sequence[str],
        a: Sequence[Any],
        b: Sequence[Any],
        strategy: str,
        seed: int,
    ) -> QueryChoice:
        """Which of the candidate pairs (a[i], b[i]) to ask a user with these choices next."""
        with self.lock:
            context_prompts = [c.prompt for c in choices]
            chosen = self.features(context_prompts, [c.chosen for c in choices])  # (C, D)
            rejected = self.features(context_prompts, [c.rejected for c in choices])
            model = (
                self.predictor.features if isinstance(self.predictor, TextRewardPredictor) else self.predictor
            )
            picked = model.next_query(chosen, rejected, self.features(prompts, a), self.features(prompts, b),
                                      strategy=strategy, seed=seed)  # fmt: skip
        _refuse_overflow(picked.scores, "a")
        return picked

    def generate(self, prompts: Sequence[str], z: torch.Tensor | None, **settings: Any) -> list[str]:
        policy = self._need_policy()
        with self.lock:
            return policy.generate(list(prompts), z=z, **settings)

    @staticmethod
    def describe_latent(z: UserLatent) -> tuple[list[float], list[float] | None]:
        """(z or its mean, the posterior scale or None) as lists, for GET /v1/users/{user_id}."""
        if isinstance(z, Posterior):
            return z.mean.tolist(), z.scale.tolist()
        return torch.as_tensor(z).tolist(), None

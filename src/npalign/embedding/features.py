"""Item features: the texts of a PreferenceSet -> frozen embeddings, through the disk cache (L1, embedding).

    data = embed_preferences(data, "minilm")            # (N, D) features attached, texts kept
    data.meta["embedding"]                              # what was embedded now, read from cache, truncated

Every (prompt, response) item goes through `EmbeddingCache.get_or_compute`, keyed by embedder,
revision and text hash, so no text is embedded twice across splits, runs or commands, and a killed job
resumes where its last shard ended. The default cache lives under `hub.cache_root() / "embeddings"`.

One feature convention for both jobs (`FEATURE_CONVENTION`, recorded in every run.json): the
embedder's vectors rescaled to unit RMS, `v * sqrt(D) / ||v||` (`to_features`). Sentence embedders
L2-normalise (minilm's coordinates are ~0.05), and at that scale NP-BTL's z pathway, which acts through
products of small first-layer activations, never leaves its saddle: on DSP with minilm it used no context
after 2,000 steps, and learnt to within 200 once the inputs were rescaled. Unit-RMS inputs are what the
models' default initialisation expects, the NP-DPO context encoder's included. Both jobs read them
through `embed_preferences`; the cache keeps raw vectors. An embedder named "<name>+style" appends four
style statistics of the response (length, sentences, list lines; `style_stats`) to those features.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from npalign.embedding.cache import EmbeddingCache, StorageDtype
from npalign.embedding.embedders import Embedder, build_embedder
from npalign.embedding.hub import cache_root
from npalign.embedding.style_stats import style_statistics
from npalign.types import PreferenceSet

logger = logging.getLogger(__name__)

EMBEDDINGS_DIR = "embeddings"
# The item features of both jobs (`to_features`); run.json records it, and loading checks it.
FEATURE_CONVENTION = "unit-rms"


def default_cache_dir() -> Path:
    """Where embeddings are cached when no directory is given: `<npalign cache>/embeddings`."""
    return cache_root() / EMBEDDINGS_DIR


@dataclass
class EmbeddingReport:
    """What one embedding call did, for logs and for `npalign embed` to print.

    Attributes:
        embedder / revision / dim: which vectors these are (the cache's identity).
        dtype: the cache's storage dtype ("float32" or "float16").
        items: N, the (prompt, response) items asked for.
        distinct: distinct (prompt, response) texts among them.
        embedded: distinct texts run through the model in this call.
        from_cache: distinct texts that the cache already held.
        truncated: items longer than `max_length` tokens (cut to fit; see `Embedder`).
        max_length: the embedder's token budget per item.
        cache_dir: the cache folder of this embedder and revision.
        seconds: wall time of the call, model loading excluded.
    """

    embedder: str
    revision: str
    dim: int
    dtype: str
    items: int
    distinct: int
    embedded: int
    from_cache: int
    truncated: int
    max_length: int
    cache_dir: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_features(vectors: Tensor) -> Tensor:
    """Embedder vectors -> reward-model features: each row rescaled to unit RMS, (N, D) -> (N, D) float32.

    Raises:
        ValueError: a zero vector (its direction, and so its feature, is undefined).
    """
    norms = vectors.float().norm(dim=-1, keepdim=True)  # (N, 1)
    if bool((norms == 0).any()):
        row = int((norms[:, 0] == 0).nonzero()[0])
        raise ValueError(
            f"the embedder returned an all-zero vector for item {row}; its features are undefined."
        )
    return vectors.float() * (vectors.shape[-1] ** 0.5) / norms


def to_item_features(embedder: Embedder, responses: Sequence[str], vectors: Tensor) -> Tensor:
    """The features of N items from their embedder vectors: `to_features(vectors)`, (N, D), followed by the
    responses' style statistics (N, 4) when the embedder has them (names ending in "+style", `style_stats`)."""
    features = to_features(vectors)
    if not embedder.style:
        return features
    return torch.cat([features, style_statistics(responses)], dim=-1)


def resolve_embedder(embedder: str | Embedder) -> Embedder:
    """An `Embedder` from a name ("minilm", "smollm2", "smollm2-mean", "smollm2-mean64", a model folder, any of
    them + "+style") or as is."""
    if isinstance(embedder, Embedder):
        return embedder
    if not isinstance(embedder, str) or not embedder.strip():
        raise ValueError(
            f"embedder={embedder!r}: name an embedder (minilm, smollm2, smollm2-mean, smollm2-mean64 or a model folder)."
        )
    return build_embedder(embedder)


def embed_texts(
    prompts: list[str],
    responses: list[str],
    embedder: str | Embedder,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    dtype: StorageDtype = "float32",
    batch_size: int = 32,
) -> tuple[Tensor, EmbeddingReport]:
    """Embed N (prompt, response) items through the disk cache.

    Args:
        prompts: N prompts; `responses[i]` answers `prompts[i]`.
        responses: N responses.
        embedder: a name for `build_embedder`, or an already built `Embedder` (reused, not reloaded).
        cache_dir: cache root (default `default_cache_dir()`); one folder per embedder and revision.
        progress: show a progress bar over the texts still to embed.
        dtype: storage dtype of the cache ("float32" or "float16"); a cache folder holds one dtype and
            opening it with the other raises, so keep float16 caches under their own `cache_dir`.
        batch_size: items per forward pass.
    Returns:
        (N, D) float32 features (`to_item_features` of the vectors) in the order of the inputs, and the report.
    Raises:
        ValueError: a bad text (empty, not UTF-8; naming its index), or a cache folder made by another
            embedder, revision or dtype.
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(responses)} responses; pass one of each per item."
        )
    model = resolve_embedder(embedder)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    started = time.perf_counter()
    cache = EmbeddingCache.for_embedder(root, model, dtype)
    distinct = set(zip(prompts, responses, strict=True))
    cached = sum(pair in cache for pair in distinct)
    lengths = model.token_lengths(prompts, responses) if prompts else []
    vectors = cache.get_or_compute(model, prompts, responses, batch_size=batch_size, progress=progress)
    report = EmbeddingReport(
        embedder=model.name,
        revision=model.revision,
        dim=model.dim,
        dtype=dtype,
        items=len(prompts),
        distinct=len(distinct),
        embedded=len(distinct) - cached,
        from_cache=cached,
        truncated=sum(length > model.max_length for length in lengths),
        max_length=model.max_length,
        cache_dir=str(cache.folder),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "%s: %d items (%d distinct): %d embedded now, %d from the cache, %d truncated to %d tokens, %.1f s",
        report.embedder,
        report.items,
        report.distinct,
        report.embedded,
        report.from_cache,
        report.truncated,
        report.max_length,
        report.seconds,
    )
    return to_item_features(model, responses, vectors), report


def embed_preferences(
    data: PreferenceSet,
    embedder: str | Embedder,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    dtype: StorageDtype = "float32",
    batch_size: int = 32,
) -> PreferenceSet:
    """The same pairs with every text item embedded: features (N, D) attached (see `to_features`), texts kept.

    Data that already has features (feature-vector files, or texts embedded before) passes through
    unchanged. Otherwise `meta["embedding"]` of the result holds the `EmbeddingReport` as a dict.

    Args:
        data: a PreferenceSet with `item_prompts` / `item_responses` (N each).
        embedder: a name for `build_embedder` ("minilm", "smollm2", "smollm2-mean", "smollm2-mean64", a model folder),
            or a built `Embedder` to reuse across calls.
        cache_dir / progress / dtype / batch_size: see `embed_texts`.
    Raises:
        ValueError: an item without a prompt (the embedders take (prompt, response) pairs), a bad text,
            or a cache of another embedder.
    """
    if data.features is not None:
        return data
    if data.item_prompts is None or data.item_responses is None:
        raise ValueError("the data has neither features nor texts; nothing to embed.")
    missing = [i for i, prompt in enumerate(data.item_prompts) if not prompt.strip()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {data.num_items} text items have no prompt (first: item {missing[0]}, "
            f"response {data.item_responses[missing[0]][:60]!r}); the embedders encode (prompt, response) "
            "pairs, so give every row a 'prompt'."
        )
    features, report = embed_texts(
        list(data.item_prompts),
        list(data.item_responses),
        embedder,
        cache_dir=cache_dir,
        progress=progress,
        dtype=dtype,
        batch_size=batch_size,
    )
    # A fresh meta dict: `with_features` shares the caller's, which must not change under it.
    return replace(data.with_features(features), meta={**data.meta, "embedding": report.to_dict()})

"""Disk cache of text-pair embeddings, resumable and pickle-free (L1, embedding).

Layout under `root` (one folder per embedder and revision):

    <root>/<embedder slug>/<revision slug>-<hash8>/
        index.json                 identity (embedder, revision, dim, dtype) and the list of shards
        shard-<32 hex>.safetensors "keys" (n, 32) uint8 sha256 of each (prompt, response),
                                   "vectors" (n, D) float32|float16; identity in the header metadata

A key is sha256 of the JSON array `[prompt, response]`. `get_or_compute` embeds only the keys no
shard holds yet, deduplicated, in chunks of `shard_size`; after each chunk it writes one shard and
then the index, each atomically (temporary file + rename). A job killed at any moment therefore loses
at most the chunk in flight: a shard that was written but not yet listed in the index is adopted the
next time the folder is opened. Writers never share a shard file, so two jobs filling the same folder
at once only risk embedding some texts twice, never corrupting it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from npalign.embedding.base import TextInputError, check_texts
from npalign.utils.io import read_json, save_tensors, write_json

logger = logging.getLogger(__name__)

StorageDtype = Literal["float32", "float16"]
INDEX_FILE = "index.json"
CACHE_FORMAT = 1
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
_KEY_BYTES = 32


class SupportsEmbed(Protocol):
    """What the cache needs from an embedder (`base.Embedder` has it, and so may a test double)."""

    name: str
    revision: str
    dim: int

    def embed(self, prompts: list[str], responses: list[str], *, batch_size: int) -> Tensor:
        """(n, D) vectors of n checked pairs; the cache asks for nothing more."""


def text_key(prompt: str, response: str) -> bytes:
    """sha256 (32 bytes) of one (prompt, response) pair; unambiguous for any two strings."""
    return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode("utf-8")).digest()


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-.")[:limit] or "x"


class EmbeddingCache:
    """Embeddings of (prompt, response) pairs for one embedder revision, stored on disk.

    Args:
        root: cache root; the folder used is `root/<embedder>/<revision>-<hash>` (see `folder`).
        embedder_name: `Embedder.name`.
        revision: `Embedder.revision`.
        dim: D, the vector width.
        dtype: storage dtype, "float32" or "float16"; vectors are always returned as float32.
        shard_size: texts embedded and written per shard (the most a killed job loses).
    Raises:
        ValueError: the folder holds vectors recorded with another embedder, revision, dim or dtype.
    """

    def __init__(
        self,
        root: str | Path,
        embedder_name: str,
        revision: str,
        dim: int,
        dtype: StorageDtype = "float32",
        *,
        shard_size: int = 512,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}; use 'float32' or 'float16'.")
        if dim < 1 or shard_size < 1:
            raise ValueError(f"dim={dim} and shard_size={shard_size} must both be at least 1.")
        self.embedder_name, self.revision, self.dim, self.dtype = embedder_name, revision, int(dim), dtype
        self.shard_size = shard_size
        digest = hashlib.sha256(f"{embedder_name}\0{revision}".encode()).hexdigest()[:8]
        self.folder = Path(root) / _slug(embedder_name) / f"{_slug(revision)}-{digest}"
        self._identity: dict[str, Any] = {
            "embedder": embedder_name,
            "revision": revision,
            "dim": self.dim,
            "dtype": dtype,
        }
        self._shards: list[dict[str, Any]] = []  # [{"file": name, "count": n}], as in index.json
        self._rows: dict[bytes, tuple[str, int]] = {}  # key -> (shard file, row)
        self._open()

    @classmethod
    def for_embedder(
        cls,
        root: str | Path,
        embedder: SupportsEmbed,
        dtype: StorageDtype = "float32",
        *,
        shard_size: int = 512,
    ) -> EmbeddingCache:
        """The cache folder for `embedder` (its name, revision and dim) under `root`."""
        return cls(root, embedder.name, embedder.revision, embedder.dim, dtype, shard_size=shard_size)

    def __len__(self) -> int:
        """Distinct text pairs stored."""
        return len(self._rows)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return text_key(*pair) in self._rows

    # -- opening --------------------------------------------------------------------------------

    def _check_identity(self, recorded: dict[str, Any], where: Path) -> None:
        mismatch = [k for k in self._identity if str(recorded.get(k)) != str(self._identity[k])]
        if mismatch:
            raise ValueError(
                f"embedding cache at {self.folder} ({where.name}) was made by embedder "
                f"{recorded.get('embedder')!r} revision {recorded.get('revision')!r} "
                f"(dim {recorded.get('dim')}, {recorded.get('dtype')}), but this run asks for embedder "
                f"{self.embedder_name!r} revision {self.revision!r} (dim {self.dim}, {self.dtype}); "
                "use another --cache dir or delete it."
            )

    def _open(self) -> None:
        """Read the index, adopt complete shards it does not list yet, and load every shard's keys."""
        index_path = self.folder / INDEX_FILE
        self._remove_abandoned_temporaries()
        listed: list[str] = []
        if index_path.is_file():
            index = read_json(index_path)
            self._check_identity(index, index_path)
            listed = [shard["file"] for shard in index.get("shards", [])]
        on_disk = sorted(p.name for p in self.folder.glob("shard-*.safetensors"))
        missing = sorted(set(listed) - set(on_disk))
        if missing:
            raise ValueError(
                f"embedding cache at {self.folder} lists shards that are gone ({missing[:3]}); "
                "delete the folder (or use another --cache dir) and embed again."
            )
        orphans = [name for name in on_disk if name not in set(listed)]
        for name in [*listed, *orphans]:
            self._load_keys(name)
        if orphans:
            logger.info("adopted %d shard(s) an interrupted job wrote into %s", len(orphans), self.folder)
        if orphans or not index_path.is_file():
            self._write_index()
        logger.debug("embedding cache %s: %d vectors in %d shards", self.folder, len(self), len(self._shards))

    def _remove_abandoned_temporaries(self, older_than_s: float = 3600.0) -> None:
        """Delete half-written temporary files of killed jobs (never a live writer's: those are fresh)."""
        now = time.time()
        for path in self.folder.glob(".*.tmp"):
            if path.is_file() and now - path.stat().st_mtime > older_than_s:
                path.unlink(missing_ok=True)

    def _load_keys(self, name: str) -> None:
        path = self.folder / name
        with safe_open(str(path), framework="pt") as handle:
            self._check_identity(handle.metadata() or {}, path)
            keys = handle.get_tensor("keys")  # (n, 32) uint8
        if keys.ndim != 2 or keys.shape[1] != _KEY_BYTES:
            raise ValueError(
                f"{path} holds keys of shape {tuple(keys.shape)}, not (n, 32); delete the folder."
            )
        raw = keys.numpy().tobytes()
        for row in range(keys.shape[0]):
            self._rows.setdefault(raw[row * _KEY_BYTES : (row + 1) * _KEY_BYTES], (name, row))
        self._shards.append({"file": name, "count": int(keys.shape[0])})

    def _write_index(self) -> None:
        index = {"format": CACHE_FORMAT, **self._identity, "count": len(self._rows), "shards": self._shards}
        write_json(index, self.folder / INDEX_FILE)

    # -- reading and writing --------------------------------------------------------------------

    def _write_shard(self, keys: list[bytes], vectors: Tensor) -> None:
        """Store (n, D) vectors for n new keys: the shard first, then the index, each atomically."""
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        key_tensor = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(
            len(keys), _KEY_BYTES
        )
        stored = vectors.to(_DTYPES[self.dtype])  # (n, D)
        if not torch.isfinite(stored).all():
            raise ValueError(
                f"vectors of {self.embedder_name!r} reach |x| = {vectors.abs().max().item():.3g}, beyond "
                f"{self.dtype}'s range; open the cache with dtype='float32'."
            )
        metadata = {k: str(v) for k, v in self._identity.items()}
        save_tensors({"keys": key_tensor, "vectors": stored}, self.folder / name, metadata)
        for row, key in enumerate(keys):
            self._rows.setdefault(key, (name, row))
        self._shards.append({"file": name, "count": len(keys)})
        self._write_index()

    def _read(self, keys: list[bytes]) -> Tensor:
        """(n, D) float32 vectors of n stored keys, reading each shard once."""
        out = torch.empty(len(keys), self.dim)
        by_shard: dict[str, list[tuple[int, int]]] = defaultdict(list)  # shard -> [(position, row)]
        for position, key in enumerate(keys):
            shard, row = self._rows[key]
            by_shard[shard].append((position, row))
        for shard, wanted in by_shard.items():
            with safe_open(str(self.folder / shard), framework="pt") as handle:
                stored = handle.get_tensor("vectors")  # (count, D)
            positions, rows = zip(*wanted, strict=True)
            out[list(positions)] = stored[list(rows)].float()
        return out

    def get_or_compute(
        self,
        embedder: SupportsEmbed,
        prompts: Sequence[str | bytes],
        responses: Sequence[str | bytes],
        batch_size: int = 32,
        progress: bool = False,
    ) -> Tensor:
        """Vectors of N (prompt, response) pairs, embedding only the pairs not stored yet.

        Repeated pairs are embedded once. Stored and fresh vectors pass through the storage dtype
        alike, so a rerun returns exactly what the first run returned.

        Args:
            embedder: the embedder this cache was made for (same name, revision, dim).
            prompts / responses: N texts each (see `base.check_texts`).
            batch_size: pairs per forward pass.
            progress: show a tqdm bar over the pairs still to embed.
        Returns:
            (N, D) float32.
        Raises:
            ValueError: another embedder, or a bad text (naming its index in `prompts`/`responses`).
        """
        ours = (self.embedder_name, self.revision, self.dim)
        theirs = (embedder.name, embedder.revision, embedder.dim)
        if theirs != ours:
            raise ValueError(
                f"embedding cache at {self.folder} belongs to embedder {ours[0]!r} revision {ours[1]!r} "
                f"(dim {ours[2]}), but got embedder {theirs[0]!r} revision {theirs[1]!r} (dim {theirs[2]}); "
                "open the cache with EmbeddingCache.for_embedder(root, embedder)."
            )
        prompts = check_texts(prompts, "prompts")
        responses = check_texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(responses)} responses; pass one of each per pair."
            )
        keys = [text_key(p, r) for p, r in zip(prompts, responses, strict=True)]
        todo: dict[bytes, int] = {}  # key -> first index that needs it, in input order
        for index, key in enumerate(keys):
            if key not in self._rows and key not in todo:
                todo[key] = index
        if todo:
            logger.info(
                "%s: %d of %d pairs cached; embedding %d into %s",
                self.embedder_name,
                len(keys) - sum(k in todo for k in keys),
                len(keys),
                len(todo),
                self.folder,
            )
        # Responses to one prompt side by side, so that a chunk holds them together: a causal-LM
        # embedder runs a prompt shared by several responses once.
        prompt_rank: dict[str, int] = {}
        for index in todo.values():
            prompt_rank.setdefault(prompts[index], len(prompt_rank))
        pending = sorted(todo.items(), key=lambda item: prompt_rank[prompts[item[1]]])
        with tqdm(
            total=len(pending), desc=f"embed {self.embedder_name}", unit="text", disable=not progress
        ) as bar:
            for start in range(0, len(pending), self.shard_size):
                chunk = pending[start : start + self.shard_size]
                indices = [index for _, index in chunk]
                vectors = self._embed_checked(embedder, prompts, responses, indices, batch_size)  # (n, D)
                self._write_shard([key for key, _ in chunk], vectors)
                bar.update(len(chunk))
        return self._read(keys)

    def _embed_checked(
        self,
        embedder: SupportsEmbed,
        prompts: list[str],
        responses: list[str],
        indices: list[int],
        batch_size: int,
    ) -> Tensor:
        """(n, D) vectors of the pairs at `indices`, refused unless every one is finite and of width D.

        A bad text is named by its index in the caller's `prompts` / `responses`.
        """
        try:
            vectors = embedder.embed(
                [prompts[i] for i in indices], [responses[i] for i in indices], batch_size=batch_size
            )
        except TextInputError as exc:
            raise exc.at(indices[exc.index]) from exc
        if tuple(vectors.shape) != (len(indices), self.dim):
            raise ValueError(
                f"embedder {embedder.name!r} returned shape {tuple(vectors.shape)} for {len(indices)} "
                f"pairs; expected ({len(indices)}, {self.dim})."
            )
        bad_rows = (~torch.isfinite(vectors).all(-1)).nonzero().flatten().tolist()
        if bad_rows:  # never store them: a cached NaN would come back on every later run
            raise ValueError(
                f"embedder {embedder.name!r} returned non-finite vectors for pairs "
                f"{[indices[r] for r in bad_rows[:5]]}; check the model's dtype (float16 overflows) "
                "or its weights."
            )
        return vectors

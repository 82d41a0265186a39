"""The encoder embedder (e.g. `minilm`): mean-pooled `[CLS] prompt [SEP] response [SEP]` (L1, embedding).

The pair is encoded as one sequence with the tokenizer's own pair template, every token in segment 0,
because sentence-transformers models are fine-tuned on single segments; the final hidden states are
mean-pooled over the attention mask, then L2-normalised when the model folder says so
(sentence-transformers `Normalize` module, as all-MiniLM-L6-v2 does). When the pair is too long, the
prompt keeps its *end* and the response its *start*, and the response keeps at least half the budget:
truncating the joined text from the right would drop the response of a long multi-turn prompt
entirely, making chosen and rejected identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from npalign.embedding.base import Embedder, OnTooLong, TokenizedPair


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

    def _tokenize(self, prompts: list[str], responses: list[str]) -> list[TokenizedPair]:
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
            pairs.append(TokenizedPair(ids, [True] * len(ids), full_length))
        return pairs

    def _hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # No token_type_ids: every token in segment 0, like the single-segment fine-tuning.
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _embed_batch(self, pairs: list[TokenizedPair]) -> Tensor:
        pooled = super()._embed_batch(pairs)  # (n, D)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def sentence_transformers_settings(folder: str) -> tuple[int | None, bool]:
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

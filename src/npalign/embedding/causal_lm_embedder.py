"""The causal-LM embedder (e.g. `smollm2`): chat-templated, last-token or response-mean pooled (L1, embedding).

The model's chat template renders the prompt as the user turn and the response as the assistant turn.
`pooling="last"` takes the final-layer (post-norm) hidden state of the last token of the rendered
conversation; `pooling="mean"` averages the final-layer states over the assistant turn (the response
tokens and the template's end-of-turn tokens), or with `response_tokens=N` over its first N tokens only:
later tokens cannot change the states of earlier ones in a causal LM, so they are dropped before the
forward pass and the vector is exactly that of the full conversation's first N response tokens, at a
fraction of the compute. Batches are left-padded with explicit position ids, so the last token sits at
index -1 of every row and a text embeds the same alone or in a padded batch. Too-long conversations lose
their *start* (system and user text first), which keeps the response and the last token.

Responses to the same prompt share their rendered prefix (system and user turn), so by default the prefix
runs once and its key/value cache serves every response to it in the batch, wherever that computes fewer
tokens than the whole conversations: the same vectors (to float rounding), with the prompt computed once
instead of once per response (`smollm2-mean64` on DSP, five responses per query: 1.3-1.5x the texts per
second; `benchmarks/results/dsp_smollm2-mean64/embedding.md`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from npalign.embedding.base import Embedder, OnTooLong, Pooling, TokenizedPair

logger = logging.getLogger(__name__)


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword that takes a key/value cache.

    transformers 5.25 takes `cache` and warns that `past_key_values` goes in 5.40; after that, `**kwargs`
    would swallow the old name and the step would run without its prefix. Older versions know only it.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward pass returned (None if none), under either of its names."""
    return output.cache if "cache" in getattr(output, "__dataclass_fields__", {}) else output.past_key_values


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

    def _tokenize(self, prompts: list[str], responses: list[str]) -> list[TokenizedPair]:
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
            pairs.append(TokenizedPair(list(ids[keep]), kept_mask, len(ids), kept_mask.index(True)))
        return pairs

    def _embed_rows(
        self, pairs: list[TokenizedPair], rows: list[int], vectors: Tensor, batch_size: int, bar: tqdm
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
        self, pairs: list[TokenizedPair], units: list[tuple[tuple[int, ...], list[int]]]
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
        cache = returned_cache(
            base(
                input_ids=prefix_ids.to(self.device),
                attention_mask=prefix_mask.to(self.device),
                position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
                use_cache=True,
            )
        )
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
            use_cache=True,
            **{cache_keyword(base): cache},
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

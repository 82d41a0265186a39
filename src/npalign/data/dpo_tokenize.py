"""Tokenise preference pairs through a chat template, with masks that mark the response tokens (L1, data).

The response tokens are found from the template itself: render the user turn with the generation prompt,
render the whole conversation, and take everything after the prompt as the completion (the assistant's
reply plus whatever end-of-turn tokens the template appends). The token-level prefix property is checked,
not assumed. Keys follow TRL's conventions (`*_input_ids`, `*_attention_mask`, `*_completion_mask`).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad token id; clear errors for tokenizers that cannot be used here."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat_template; use an instruct/chat tokenizer or set "
            "tokenizer.chat_template before tokenising preference pairs."
        )
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token; set one first, e.g. tokenizer.pad_token = tokenizer.eos_token "
            "(padding is masked out, so which token it is does not matter)."
        )
    return int(tokenizer.pad_token_id)


def _user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of the user turn plus the template's generation prompt (e.g. `<|im_start|>assistant\\n`).

    Tokenised without `add_special_tokens`: templates that want a BOS token write it themselves.
    """
    text = tokenizer.apply_chat_template(_user_turn(prompt), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_completion_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, prompt_ids: list[int] | None = None
) -> list[int]:
    """Token ids the template produces after the prompt when `response` is the assistant's reply.

    That is the response plus the end-of-turn token(s) the template appends (for ChatML `<|im_end|>` and
    its newline).

    Raises:
        ValueError: when the full conversation does not start with the rendered prompt, token for token --
            the template renders the user turn differently once a reply follows, so no mask taken from it
            would be right.
    """
    if prompt_ids is None:
        prompt_ids = render_prompt_ids(tokenizer, prompt)
    conversation = [*_user_turn(prompt), {"role": "assistant", "content": response}]
    full_text = tokenizer.apply_chat_template(conversation, tokenize=False)
    full_ids = list(tokenizer(full_text, add_special_tokens=False)["input_ids"])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        prompt_text = tokenizer.apply_chat_template(
            _user_turn(prompt), tokenize=False, add_generation_prompt=True
        )
        raise ValueError(
            "The chat template breaks the prefix property: the conversation with the reply does not start "
            "with the prompt rendered with add_generation_prompt=True, so the response tokens cannot be "
            f"located.\n prompt render: {prompt_text!r}\n full render:   {full_text!r}\n"
            "Fix the template (its generation prompt must equal the start of an assistant turn) or use "
            "another tokenizer."
        )
    completion_ids = full_ids[len(prompt_ids) :]
    if not completion_ids:
        raise ValueError(f"The template rendered no tokens for the response {response!r} after the prompt.")
    return completion_ids


def _pad(
    rows: list[list[int]], masks: list[list[int]], length: int, pad_id: int, side: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Pad token rows and their completion masks to `length`; returns ids, attention, completion (N, L)."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    completion = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention[i, span] = 1
        completion[i, span] = torch.tensor(mask, dtype=torch.bool)
    return ids, attention, completion


def _check_pair_arguments(
    prompts: int, chosen: int, rejected: int, max_prompt_length: int, max_response_length: int
) -> None:
    """Raise unless there are as many prompts as chosen and rejected texts and both budgets are >= 1."""
    if not prompts == chosen == rejected:
        raise ValueError(
            f"prompts, chosen and rejected must have one entry per pair; got {prompts}, {chosen}, {rejected}."
        )
    if max_prompt_length < 1 or max_response_length < 1:
        raise ValueError(
            f"max_prompt_length={max_prompt_length} and max_response_length={max_response_length} must be >= 1."
        )


def tokenize_preference_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    chosen: list[str],
    rejected: list[str],
    *,
    max_prompt_length: int,
    max_response_length: int,
    padding_side: Literal["left", "right"] = "right",
) -> dict[str, Tensor]:
    """Tokenise N (prompt, chosen, rejected) triples into padded chosen and rejected sequences.

    Each sequence is prompt tokens + completion tokens. Prompts longer than `max_prompt_length` lose tokens
    on the left (the generation prompt at the end survives); completions longer than `max_response_length`
    lose tokens on the right (the end-of-turn token then goes). Truncations are counted and logged.
    Chosen and rejected are padded to one common length L so that they can be stacked into one forward pass.

    Args:
        tokenizer: a tokenizer with a chat template and a pad token.
        prompts / chosen / rejected: N texts each; chosen[i] and rejected[i] answer prompts[i].
        max_prompt_length: the most prompt tokens kept, >= 1.
        max_response_length: the most completion tokens kept, >= 1.
        padding_side: where padding goes; log-probs do not depend on it when positions are taken from
            the attention mask (as `ConditionalPolicy` does).
    Returns:
        chosen_input_ids, chosen_attention_mask (long), chosen_completion_mask (bool), and the same three
        for rejected; each (N, L). The completion mask is True on every kept response token and False on
        prompt tokens and padding.
    """
    _check_pair_arguments(len(prompts), len(chosen), len(rejected), max_prompt_length, max_response_length)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right'; got {padding_side!r}.")
    pad_id = _check_tokenizer(tokenizer)

    rows: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
    masks: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
    truncated = {"prompt": 0, "chosen": 0, "rejected": 0}
    for prompt, chosen_text, rejected_text in zip(prompts, chosen, rejected, strict=True):
        prompt_ids = render_prompt_ids(tokenizer, prompt)
        # Completions are located on the untruncated prompt; truncation only drops tokens afterwards.
        completions = {
            "chosen": render_completion_ids(tokenizer, prompt, chosen_text, prompt_ids),
            "rejected": render_completion_ids(tokenizer, prompt, rejected_text, prompt_ids),
        }
        if len(prompt_ids) > max_prompt_length:
            truncated["prompt"] += 1
            prompt_ids = prompt_ids[-max_prompt_length:]
        for side, completion_ids in completions.items():
            if len(completion_ids) > max_response_length:
                truncated[side] += 1
                completion_ids = completion_ids[:max_response_length]
            rows[side].append(prompt_ids + completion_ids)
            masks[side].append([0] * len(prompt_ids) + [1] * len(completion_ids))
    if any(truncated.values()):
        logger.warning(
            "Truncated %d of %d prompts (left, to %d tokens), %d chosen and %d rejected responses "
            "(right, to %d tokens).",
            truncated["prompt"],
            len(prompts),
            max_prompt_length,
            truncated["chosen"],
            truncated["rejected"],
            max_response_length,
        )

    length = max((len(row) for side in rows.values() for row in side), default=0)
    batch: dict[str, Tensor] = {}
    for side in ("chosen", "rejected"):
        ids, attention, completion = _pad(rows[side], masks[side], length, pad_id, padding_side)
        batch[f"{side}_input_ids"] = ids
        batch[f"{side}_attention_mask"] = attention
        batch[f"{side}_completion_mask"] = completion
    return batch


def tokenize_prompts_for_generation(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, max_prompt_length: int | None = None
) -> dict[str, Tensor]:
    """Left-padded prompts (user turn + generation prompt) ready for `generate`.

    Args:
        tokenizer: a tokenizer with a chat template and a pad token.
        prompts: N texts.
        max_prompt_length: keep at most this many tokens, dropping from the left; None keeps all.
    Returns:
        input_ids (N, L) long and attention_mask (N, L) long, padding on the left so that every row's
        last column is its last prompt token.
    """
    pad_id = _check_tokenizer(tokenizer)
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1 or None; got {max_prompt_length}.")
    rows = [render_prompt_ids(tokenizer, prompt) for prompt in prompts]
    if max_prompt_length is not None:
        num_truncated = sum(len(row) > max_prompt_length for row in rows)
        if num_truncated:
            logger.warning(
                "Truncated %d of %d prompts to their last %d tokens.",
                num_truncated,
                len(rows),
                max_prompt_length,
            )
        rows = [row[-max_prompt_length:] for row in rows]
    length = max((len(row) for row in rows), default=0)
    ids, attention, _ = _pad(rows, [[0] * len(row) for row in rows], length, pad_id, "left")
    return {"input_ids": ids, "attention_mask": attention}

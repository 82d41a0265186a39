"""DPO pieces: completion log-probs, the loss and metrics, and chat-template tokenisation with masks."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from npalign.data.dpo_tokenize import (
    render_prompt_ids,
    tokenize_preference_pairs,
    tokenize_prompts_for_generation,
)
from npalign.models.losses import chosen_nll, dpo_loss, dpo_metrics, prior_margin_penalty, sequence_logprobs

# ----- sequence_logprobs ----------------------------------------------------------------------------------


def _random_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 10, generator=generator)
    input_ids = torch.randint(0, 10, (3, 6), generator=generator)
    completion_mask = torch.tensor(
        [
            [0, 0, 0, 1, 1, 0],  # right padding after the completion
            [0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 1],  # a single response token at the end
        ],
        dtype=torch.bool,
    )
    return logits, input_ids, completion_mask


def test_sequence_logprobs_equals_manual_loop() -> None:
    logits, input_ids, completion_mask = _random_batch()
    expected = torch.zeros(3)
    for n in range(3):
        for i in range(1, 6):  # token i is scored by the logits at position i - 1
            if completion_mask[n, i]:
                expected[n] += torch.log_softmax(logits[n, i - 1], -1)[input_ids[n, i]]
    torch.testing.assert_close(sequence_logprobs(logits, input_ids, completion_mask), expected)


def test_sequence_logprobs_ignores_prompt_and_padding_even_if_not_finite() -> None:
    logits, input_ids, completion_mask = _random_batch()
    expected = sequence_logprobs(logits, input_ids, completion_mask)
    poisoned = logits.clone()
    poisoned[:, :-1][~completion_mask[:, 1:]] = float("nan")  # logits that score prompt or padding tokens
    poisoned[:, -1] = float("nan")  # the last position scores nothing
    changed_ids = torch.where(completion_mask, input_ids, (input_ids + 1) % 10)  # other prompt tokens
    torch.testing.assert_close(sequence_logprobs(poisoned, changed_ids, completion_mask), expected)


def test_sequence_logprobs_in_bf16_matches_float32() -> None:
    logits, input_ids, completion_mask = _random_batch()
    half = logits.to(torch.bfloat16)
    result = sequence_logprobs(half, input_ids, completion_mask)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, sequence_logprobs(half.float(), input_ids, completion_mask))


def test_sequence_logprobs_rejects_mismatched_shapes() -> None:
    logits, input_ids, completion_mask = _random_batch()
    with pytest.raises(ValueError, match="must agree"):
        sequence_logprobs(logits, input_ids[:, :-1], completion_mask[:, :-1])


# ----- dpo_loss and metrics -------------------------------------------------------------------------------


def test_dpo_loss_matches_hand_computation() -> None:
    """beta = 0.5.

    Pair 0: policy (-1, -3), reference (-2, -2): margin 2 - 0 = 2, loss = -log sigma(1) = log(1 + e^-1)
    = 0.3132617; rewards 0.5 * (-1 + 2) = 0.5 and 0.5 * (-3 + 2) = -0.5.
    Pair 1: policy (-2, -1), reference (-1, -1): margin -1 - 0 = -1, loss = -log sigma(-0.5) = log(1 + e^0.5)
    = 0.9740770; rewards -0.5 and 0.
    """
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        torch.tensor([-1.0, -2.0]),
        torch.tensor([-3.0, -1.0]),
        torch.tensor([-2.0, -1.0]),
        torch.tensor([-2.0, -1.0]),
        beta=0.5,
    )
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-1)), math.log1p(math.exp(0.5))]))
    torch.testing.assert_close(losses, torch.tensor([0.3132617, 0.9740770]))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.0]))

    metrics = dpo_metrics(
        chosen_rewards, rejected_rewards, torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    )
    # accuracy: pair 0 ranks right (0.5 > -0.5), pair 1 wrong (-0.5 < 0); margins 1 and -0.5.
    assert metrics == pytest.approx(
        {
            "rewards/chosen": 0.0,
            "rewards/rejected": -0.25,
            "rewards/accuracies": 0.5,
            "rewards/margins": 0.25,
            "logps/chosen": -1.5,
            "logps/rejected": -2.0,
        }
    )


def test_ipo_loss_is_the_squared_distance_of_beta_h_from_one_half() -> None:
    """beta = 0.5 and the pairs of the test above: h = 2 gives (1 - 0.5)^2 = 0.25; h = -1, (-0.5 - 0.5)^2 = 1.

    IPO's optimum is h = 1/(2 beta) = 1: there the loss and its gradient vanish, where DPO's still pulls.
    The implicit rewards do not depend on the loss.
    """
    args = (
        torch.tensor([-1.0, -2.0]),
        torch.tensor([-3.0, -1.0]),
        torch.tensor([-2.0, -1.0]),
        torch.tensor([-2.0, -1.0]),
    )
    losses, chosen_rewards, rejected_rewards = dpo_loss(*args, beta=0.5, loss_type="ipo")
    torch.testing.assert_close(losses, torch.tensor([0.25, 1.0]))
    _, dpo_chosen, dpo_rejected = dpo_loss(*args, beta=0.5)
    torch.testing.assert_close((chosen_rewards, rejected_rewards), (dpo_chosen, dpo_rejected))

    at_optimum = torch.tensor([-1.0], requires_grad=True)  # h = -1 - (-2) - 0 = 1
    for loss_type, vanishes in (("ipo", True), ("sigmoid", False)):
        at_optimum.grad = None
        loss, _, _ = dpo_loss(at_optimum, torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
                              beta=0.5, loss_type=loss_type)  # fmt: skip
        loss.sum().backward()
        assert at_optimum.grad is not None and (at_optimum.grad.abs().item() < 1e-7) == vanishes
    with pytest.raises(ValueError, match="loss_type='hinge'"):
        dpo_loss(*args, beta=0.5, loss_type="hinge")


def test_prior_margin_penalty_is_the_mean_square_of_the_kept_margins() -> None:
    margins = torch.tensor([2.0, -1.0, 3.0, 100.0], requires_grad=True)
    keep = torch.tensor([True, True, True, False])
    penalty = prior_margin_penalty(margins, keep)
    torch.testing.assert_close(penalty, torch.tensor((4.0 + 1.0 + 9.0) / 3))
    penalty.backward()  # d/dh of h^2 / 3: towards h = 0 on the kept pairs, nothing on the others
    assert margins.grad is not None
    torch.testing.assert_close(margins.grad, torch.tensor([4.0, -2.0, 6.0, 0.0]) / 3)
    assert prior_margin_penalty(margins, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_dpo_loss_gradient_reaches_policy_only_and_rewards_are_detached() -> None:
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    policy_rejected = torch.tensor([-3.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    losses.sum().backward()
    assert policy_chosen.grad is not None and policy_chosen.grad.item() < 0  # raising chosen lowers the loss
    assert policy_rejected.grad is not None and policy_rejected.grad.item() > 0
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


# ----- tokenisation ---------------------------------------------------------------------------------------


def _tokens(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def test_chosen_nll_is_the_mean_per_token_over_the_pairs_kept() -> None:
    logps = torch.tensor([-6.0, -10.0, -3.0], requires_grad=True)  # summed over 3, 5 and 1 tokens
    tokens = torch.tensor([3, 5, 1])
    assert chosen_nll(logps, tokens).item() == pytest.approx(19.0 / 9)
    kept = chosen_nll(logps, tokens, torch.tensor([True, False, True]))
    assert kept.item() == pytest.approx(9.0 / 4)
    kept.backward()
    assert logps.grad.tolist() == pytest.approx([-0.25, 0.0, -0.25])  # nothing flows to the pair left out
    assert chosen_nll(logps, tokens, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_completion_mask_chatml_by_hand(tiny_chatml_tokenizer: PreTrainedTokenizerFast) -> None:
    """ChatML renders the prompt as <|im_start|> user hello world <|im_end|> <|im_start|> assistant
    (positions 0-6; the whitespace tokenizer drops newlines); the completion is the reply plus the
    <|im_end|> the template appends: positions 7-9 for "good answer", 7-8 for "bad"."""
    batch = tokenize_preference_pairs(
        tiny_chatml_tokenizer,
        ["hello world"],
        ["good answer"],
        ["bad"],
        max_prompt_length=32,
        max_response_length=8,
    )
    prompt = ["<|im_start|>", "user", "hello", "world", "<|im_end|>", "<|im_start|>", "assistant"]
    assert _tokens(tiny_chatml_tokenizer, batch["chosen_input_ids"][0]) == [
        *prompt,
        "good",
        "answer",
        "<|im_end|>",
    ]
    assert _tokens(tiny_chatml_tokenizer, batch["rejected_input_ids"][0]) == [
        *prompt,
        "bad",
        "<|im_end|>",
        "<pad>",
    ]
    assert batch["chosen_completion_mask"][0].nonzero().squeeze(-1).tolist() == [7, 8, 9]
    assert batch["rejected_completion_mask"][0].nonzero().squeeze(-1).tolist() == [7, 8]
    assert batch["chosen_attention_mask"][0].tolist() == [1] * 10
    assert batch["rejected_attention_mask"][0].tolist() == [1] * 9 + [0]
    assert batch["chosen_completion_mask"].dtype == torch.bool


def test_completion_mask_zephyr_by_hand(tiny_zephyr_tokenizer: PreTrainedTokenizerFast) -> None:
    """Zephyr renders <|user|> hello world </s> <|assistant|> (positions 0-4), then the reply and </s>;
    with a longer second prompt the completion starts later: <|user|> tell me about cats </s>
    <|assistant|> is positions 0-6."""
    batch = tokenize_preference_pairs(
        tiny_zephyr_tokenizer,
        ["hello world", "tell me about cats"],
        ["good answer", "yes"],
        ["bad", "no no"],
        max_prompt_length=32,
        max_response_length=8,
    )
    assert _tokens(tiny_zephyr_tokenizer, batch["chosen_input_ids"][0])[:8] == [
        "<|user|>", "hello", "world", "</s>", "<|assistant|>", "good", "answer", "</s>"
    ]  # fmt: skip
    assert batch["chosen_completion_mask"][0].nonzero().squeeze(-1).tolist() == [5, 6, 7]
    assert batch["rejected_completion_mask"][0].nonzero().squeeze(-1).tolist() == [5, 6]
    assert batch["chosen_completion_mask"][1].nonzero().squeeze(-1).tolist() == [7, 8]
    assert batch["rejected_completion_mask"][1].nonzero().squeeze(-1).tolist() == [7, 8, 9]
    # chosen and rejected share one length so they can be stacked into one forward pass
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape == (2, 10)


def test_left_and_right_padding_hold_the_same_tokens(tiny_chatml_tokenizer: PreTrainedTokenizerFast) -> None:
    args = (["hello world", "tell me about cats please"], ["good answer", "yes"], ["bad", "no no no"])
    right = tokenize_preference_pairs(
        tiny_chatml_tokenizer, *args, max_prompt_length=32, max_response_length=8
    )
    left = tokenize_preference_pairs(
        tiny_chatml_tokenizer, *args, max_prompt_length=32, max_response_length=8, padding_side="left"
    )
    for side in ("chosen", "rejected"):
        for row in range(2):
            real_right = right[f"{side}_attention_mask"][row].bool()
            real_left = left[f"{side}_attention_mask"][row].bool()
            assert real_left[-1] and (real_right[0])  # padding only on the requested side
            for key in ("input_ids", "completion_mask"):
                assert torch.equal(
                    right[f"{side}_{key}"][row][real_right], left[f"{side}_{key}"][row][real_left]
                )
            assert not right[f"{side}_completion_mask"][row][~real_right].any()


def test_truncation_drops_prompt_left_and_response_right(
    tiny_chatml_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        batch = tokenize_preference_pairs(
            tiny_chatml_tokenizer,
            ["hello world"],
            ["one two three four five"],
            ["six"],
            max_prompt_length=3,
            max_response_length=2,
        )
    assert _tokens(tiny_chatml_tokenizer, batch["chosen_input_ids"][0]) == [
        "<|im_end|>", "<|im_start|>", "assistant", "one", "two"
    ]  # fmt: skip
    assert batch["chosen_completion_mask"][0].tolist() == [False, False, False, True, True]
    assert _tokens(tiny_chatml_tokenizer, batch["rejected_input_ids"][0])[:5] == [
        "<|im_end|>", "<|im_start|>", "assistant", "six", "<|im_end|>"
    ]  # fmt: skip
    assert "Truncated 1 of 1 prompts" in caplog.text and "1 chosen and 0 rejected" in caplog.text


def test_template_breaking_the_prefix_property_raises(tiny_chatml_tokenizer: PreTrainedTokenizerFast) -> None:
    # The generation prompt says "system" but an assistant turn starts with "assistant".
    tiny_chatml_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ' ' + m['content'] + ' . ' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'system' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix property"):
        tokenize_preference_pairs(
            tiny_chatml_tokenizer, ["hello"], ["yes"], ["no"], max_prompt_length=8, max_response_length=8
        )


def test_tokenizer_without_template_or_pad_raises(tiny_chatml_tokenizer: PreTrainedTokenizerFast) -> None:
    tiny_chatml_tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        tokenize_prompts_for_generation(tiny_chatml_tokenizer, ["hello"])


def test_generation_prompts_are_left_padded(tiny_chatml_tokenizer: PreTrainedTokenizerFast) -> None:
    prompts = ["hello", "tell me about cats"]
    batch = tokenize_prompts_for_generation(tiny_chatml_tokenizer, prompts)
    assistant = tiny_chatml_tokenizer.convert_tokens_to_ids("assistant")
    assert batch["input_ids"][:, -1].tolist() == [assistant, assistant]
    for row, prompt in enumerate(prompts):
        real = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][real].tolist() == render_prompt_ids(tiny_chatml_tokenizer, prompt)
    assert batch["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]  # 6 vs 9 prompt tokens

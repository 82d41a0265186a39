"""ConditionalPolicy: what trains, what the reference is, padding, generation, z steering, save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from npalign.data.dpo_tokenize import tokenize_preference_pairs, tokenize_prompts_for_generation
from npalign.models.film import sequence_latents
from npalign.models.losses import dpo_loss, sequence_logprobs
from npalign.models.policy import CONFIG_FILE, TRAINABLE_FILE, ConditionalPolicy, positions_from_mask
from npalign.utils.io import load_tensors, read_json, save_tensors

EMBED_DIM, LATENT_DIM = 8, 4
PAD, EOS = 0, 3  # ids of <pad> and <|im_end|> in tiny_chatml_tokenizer, also set in the tiny model configs

# Two users with two target pairs each; user 0 prefers "yes" answers, user 1 "no" answers.
PROMPTS = ["hello world", "tell me about cats", "what is good", "tell me about dogs please"]
CHOSEN = ["yes good answer", "yes", "no", "no no"]
REJECTED = ["no", "no bad", "yes very good", "yes"]


def make_policy(base: PreTrainedModel, **overrides: object) -> ConditionalPolicy:
    torch.manual_seed(0)
    settings: dict[str, object] = dict(
        embed_dim=EMBED_DIM,
        latent_dim=LATENT_DIM,
        encoder_hidden_dim=16,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        embedder_name="tiny-embedder",
    )
    settings.update(overrides)
    return ConditionalPolicy(base, **settings)  # type: ignore[arg-type]


def perturb_trainable(policy: ConditionalPolicy, seed: int = 0) -> None:
    """Move LoRA (B starts at 0), FiLM (starts at the identity) and the encoder off their init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def contexts(seed: int = 0, users: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Random frozen-embedder features for `users` users with 3 context pairs each."""
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(users, 3, EMBED_DIM, generator=generator),
        torch.randn(users, 3, EMBED_DIM, generator=generator),
        torch.ones(users, 3, dtype=torch.bool),
    )


@pytest.fixture
def pair_batch(tiny_chatml_tokenizer: PreTrainedTokenizerFast) -> dict[str, Tensor]:
    """The 4 target pairs, chosen stacked over rejected: (8, L) ids / attention / completion masks."""
    batch = tokenize_preference_pairs(
        tiny_chatml_tokenizer, PROMPTS, CHOSEN, REJECTED, max_prompt_length=32, max_response_length=8
    )
    return {
        key: torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])
        for key in ("input_ids", "attention_mask", "completion_mask")
    }


def dpo_step(policy: ConditionalPolicy, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer) -> float:
    """One NP-DPO step: z per user from the context, repeated over the user's 2 pairs (chosen and rejected)."""
    z = policy.encode_context(*contexts())  # (2, Z)
    z_pairs = z.repeat_interleave(2, dim=0)  # (4, Z): pairs 0-1 are user 0's, 2-3 user 1's
    logps = policy.sequence_logprobs(
        batch["input_ids"], batch["attention_mask"], batch["completion_mask"], torch.cat([z_pairs, z_pairs])
    )  # (8,)
    reference = policy.reference_logprobs(
        batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    losses, _, _ = dpo_loss(*logps.chunk(2), *reference.chunk(2), beta=0.5)
    optimizer.zero_grad()
    losses.mean().backward()
    optimizer.step()
    return losses.mean().item()


def test_dpo_steps_move_only_lora_film_and_encoder(
    tiny_llama: PreTrainedModel, pair_batch: dict[str, Tensor]
) -> None:
    policy = make_policy(tiny_llama).train()
    trainable = policy.trainable_parameters()
    assert {id(p) for p in policy.parameters() if p.requires_grad} == {id(p) for p in trainable}
    before = {name: t.clone() for name, t in policy.state_dict().items()}
    trainable_before = {name: t.clone() for name, t in policy.trainable_state_dict().items()}
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    # Two steps: FiLM weights start at 0, so z (hence the encoder) gets no gradient until FiLM has moved.
    for _ in range(2):
        dpo_step(policy, pair_batch, optimizer)

    trainable_ids = {id(t) for t in policy._trainable_tensors().values()}
    base = {name: t for name, t in policy.state_dict(keep_vars=True).items() if id(t) not in trainable_ids}
    assert base and all(torch.equal(t, before[name]) for name, t in base.items())
    moved = {
        name.split(".")[0]
        for name, t in policy.trainable_state_dict().items()
        if not torch.equal(t, trainable_before[name])
    }
    assert moved == {"lora", "film", "encoder"}


def test_after_a_step_z_steers_the_policy_but_the_reference_stays_the_base(
    tiny_llama: PreTrainedModel, pair_batch: dict[str, Tensor]
) -> None:
    pristine = copy.deepcopy(tiny_llama)
    policy = make_policy(tiny_llama).train()
    args = (pair_batch["input_ids"], pair_batch["attention_mask"], pair_batch["completion_mask"])
    reference_before = policy.reference_logprobs(*args)
    z_a, z_b = policy.encode_context(*contexts(seed=1, users=2)).detach().chunk(2)
    with torch.no_grad():  # at init FiLM is the identity: z makes no difference yet
        torch.testing.assert_close(
            policy.sequence_logprobs(*args, z_a.expand(8, -1)),
            policy.sequence_logprobs(*args, z_b.expand(8, -1)),
        )

    dpo_step(policy, pair_batch, torch.optim.Adam(policy.trainable_parameters(), lr=1e-2))

    policy.eval()
    with torch.no_grad():
        steered_a = policy.sequence_logprobs(*args, z_a.expand(8, -1))
        steered_b = policy.sequence_logprobs(*args, z_b.expand(8, -1))
        assert (steered_a - steered_b).abs().max() > 1e-4
        torch.testing.assert_close(policy.reference_logprobs(*args), reference_before, rtol=0, atol=0)
        # The reference is the base model itself, and a bound z cannot leak into it.
        base_logits = pristine(
            input_ids=args[0], attention_mask=args[1], position_ids=positions_from_mask(args[1])
        ).logits
        torch.testing.assert_close(reference_before, sequence_logprobs(base_logits, args[0], args[2]))
        with policy.reference():  # even with z bound, neither FiLM nor LoRA acts
            torch.testing.assert_close(policy.sequence_logprobs(*args, z_a.expand(8, -1)), reference_before)


@pytest.mark.parametrize("architecture", ["tiny_llama", "tiny_qwen2", "tiny_gpt2"])
def test_left_and_right_padding_give_the_same_logprobs(
    architecture: str, request: pytest.FixtureRequest, tiny_chatml_tokenizer: PreTrainedTokenizerFast
) -> None:
    policy = make_policy(request.getfixturevalue(architecture)).eval()
    perturb_trainable(policy)
    z = torch.randn(4, LATENT_DIM, generator=torch.Generator().manual_seed(3))
    result = {}
    for side in ("left", "right"):
        batch = tokenize_preference_pairs(
            tiny_chatml_tokenizer, PROMPTS, CHOSEN, REJECTED, max_prompt_length=32, max_response_length=8,
            padding_side=side,
        )  # fmt: skip
        with torch.no_grad():
            result[side] = policy.sequence_logprobs(
                batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_completion_mask"], z
            )
    assert not torch.equal(batch["chosen_attention_mask"][:, 0], batch["chosen_attention_mask"][:, -1])
    torch.testing.assert_close(result["left"], result["right"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["tiny_llama", "tiny_gpt2"])
def test_greedy_generation_with_z_equals_stepwise_argmax(
    architecture: str, request: pytest.FixtureRequest, tiny_chatml_tokenizer: PreTrainedTokenizerFast
) -> None:
    """HF generate (KV cache, decode steps of shape (N, 1, H)) under z = full forward passes under z."""
    policy = make_policy(request.getfixturevalue(architecture)).eval()
    perturb_trainable(policy)
    prompts = tokenize_prompts_for_generation(
        tiny_chatml_tokenizer, ["hello world", "tell me about cats please"]
    )
    z = torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(4))
    new_tokens = 6
    generated = policy.generate(
        prompts["input_ids"], prompts["attention_mask"], z,
        max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD, eos_token_id=EOS,
    )  # fmt: skip

    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    finished = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(new_tokens):
            next_ids = policy(ids, mask, z)[:, -1].argmax(-1)  # (2,)
            next_ids = torch.where(finished, PAD, next_ids)  # finished rows are padded, as HF does
            ids, mask = (
                torch.cat([ids, next_ids[:, None]], 1),
                torch.cat([mask, torch.ones_like(mask[:, :1])], 1),
            )
            finished |= next_ids == EOS
            if finished.all():
                break
    assert torch.equal(generated, ids)
    unconditioned = policy.generate(
        prompts["input_ids"], prompts["attention_mask"], None,
        max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD, eos_token_id=EOS,
    )  # fmt: skip
    assert generated.shape[0] == unconditioned.shape[0] == 2


def test_generate_repeats_z_over_returned_sequences(
    tiny_llama: PreTrainedModel, tiny_chatml_tokenizer: PreTrainedTokenizerFast
) -> None:
    """num_return_sequences=k expands prompt b into rows b*k .. b*k+k-1; z must follow the same layout."""
    policy = make_policy(tiny_llama).eval()
    perturb_trainable(policy)
    prompts = tokenize_prompts_for_generation(
        tiny_chatml_tokenizer, ["hello world", "tell me about cats please"]
    )
    z = torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(5))
    settings = dict(max_new_tokens=5, do_sample=True, pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(0)
    expanded_by_policy = policy.generate(
        prompts["input_ids"], prompts["attention_mask"], z, num_return_sequences=2, **settings
    )
    torch.manual_seed(0)
    expanded_by_hand = policy.generate(
        prompts["input_ids"].repeat_interleave(2, 0),
        prompts["attention_mask"].repeat_interleave(2, 0),
        z.repeat_interleave(2, 0),
        **settings,
    )
    assert expanded_by_policy.shape[0] == 4
    assert torch.equal(expanded_by_policy, expanded_by_hand)
    with pytest.raises(ValueError, match="one z per prompt"):
        policy.generate(prompts["input_ids"], prompts["attention_mask"], z[:1], max_new_tokens=2)


def test_sequence_latents_puts_each_users_z_on_their_rows() -> None:
    """Row b*k + t is user b's; with pairs, the chosen block (B*k rows) comes first, then the rejected."""
    users, per_user = 3, 2
    z = torch.randn(users, LATENT_DIM)
    rows = sequence_latents(z, per_user)
    assert rows.shape == (users * per_user, LATENT_DIM)
    for b in range(users):
        for t in range(per_user):
            assert torch.equal(rows[b * per_user + t], z[b])
    pair_rows = sequence_latents(z, per_user, pairs=True)
    assert pair_rows.shape == (2 * users * per_user, LATENT_DIM)
    for side in range(2):
        for b in range(users):
            for t in range(per_user):
                assert torch.equal(pair_rows[side * users * per_user + b * per_user + t], z[b])
    with pytest.raises(ValueError, match="shape"):
        sequence_latents(z[0], per_user)


def test_implicit_rewards_are_beta_times_the_logprob_gap(
    tiny_llama: PreTrainedModel, pair_batch: dict[str, Tensor]
) -> None:
    """r = beta * (log pi(y | x, z) - log pi_ref(y | x)) per row, loss = -log sigma(r_chosen - r_rejected).

    Computed by hand from the policy's logits and `sequence_logprobs` for 2 users x 2 pairs.
    """
    policy = make_policy(tiny_llama).eval()
    perturb_trainable(policy)
    beta = 0.5
    ids, attention, completion = (
        pair_batch["input_ids"],
        pair_batch["attention_mask"],
        pair_batch["completion_mask"],
    )
    z = sequence_latents(policy.encode_context(*contexts()), 2, pairs=True).detach()  # (8, Z)
    reference = policy.reference_logprobs(ids, attention, completion)  # (8,)
    chosen_rewards, rejected_rewards, losses = policy.implicit_rewards(
        ids, attention, completion, z, reference, beta=beta
    )
    logps = sequence_logprobs(policy(ids, attention, z), ids, completion)  # (8,)
    rewards = beta * (logps - reference)  # (8,): chosen rows 0-3, rejected rows 4-7
    torch.testing.assert_close(chosen_rewards, rewards[:4].detach())
    torch.testing.assert_close(rejected_rewards, rewards[4:].detach())
    torch.testing.assert_close(losses, -torch.nn.functional.logsigmoid(rewards[:4] - rewards[4:]))
    assert losses.requires_grad and not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    assert bool((chosen_rewards != rejected_rewards).any())  # the check is not vacuous
    with pytest.raises(ValueError, match="reference_logps"):
        policy.implicit_rewards(ids, attention, completion, z, reference[:4], beta=beta)


def test_interpolation_endpoints_are_the_users() -> None:
    z_a, z_b = torch.randn(3, LATENT_DIM), torch.randn(3, LATENT_DIM)
    torch.testing.assert_close(ConditionalPolicy.interpolate(z_a, z_b, 0.0), z_a, rtol=0, atol=0)
    torch.testing.assert_close(ConditionalPolicy.interpolate(z_a, z_b, 1.0), z_b, rtol=0, atol=0)
    torch.testing.assert_close(ConditionalPolicy.interpolate(z_a, z_b, 0.5), (z_a + z_b) / 2)


def test_save_then_load_gives_identical_logprobs(
    tiny_gpt2: PreTrainedModel, pair_batch: dict[str, Tensor], tmp_path: Path
) -> None:
    fresh_base = copy.deepcopy(tiny_gpt2)
    policy = make_policy(tiny_gpt2, film_layers=[1]).eval()
    perturb_trainable(policy)
    policy.save_pretrained(tmp_path / "policy")

    state = load_tensors(tmp_path / "policy" / TRAINABLE_FILE)
    assert {name.split(".")[0] for name in state} == {"lora", "film", "encoder"}
    assert len(state) == len(policy.trainable_state_dict())  # no base weight is written
    config = read_json(tmp_path / "policy" / CONFIG_FILE)
    assert config["film"]["layers"] == [1] and config["lora"]["target_modules"] == ["c_attn"]
    assert config["encoder"]["embed_dim"] == EMBED_DIM and config["embedder_name"] == "tiny-embedder"

    loaded = ConditionalPolicy.from_pretrained(tmp_path / "policy", base_model=fresh_base)
    args = (pair_batch["input_ids"], pair_batch["attention_mask"], pair_batch["completion_mask"])
    with torch.no_grad():
        z = policy.encode_context(*contexts(users=8))
        torch.testing.assert_close(loaded.encode_context(*contexts(users=8)), z, rtol=0, atol=0)
        torch.testing.assert_close(
            loaded.sequence_logprobs(*args, z), policy.sequence_logprobs(*args, z), rtol=0, atol=0
        )
    torch.testing.assert_close(
        loaded.reference_logprobs(*args), policy.reference_logprobs(*args), rtol=0, atol=0
    )


def test_from_pretrained_loads_the_base_by_its_recorded_id(
    tiny_llama: PreTrainedModel, pair_batch: dict[str, Tensor], tmp_path: Path
) -> None:
    tiny_llama.save_pretrained(tmp_path / "base")  # a local "hub id": nothing is downloaded
    policy = make_policy(tiny_llama, base_model_id=str(tmp_path / "base")).eval()
    perturb_trainable(policy)
    policy.save_pretrained(tmp_path / "policy")
    loaded = ConditionalPolicy.from_pretrained(tmp_path / "policy")
    args = (pair_batch["input_ids"], pair_batch["attention_mask"], pair_batch["completion_mask"])
    z = torch.randn(8, LATENT_DIM)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sequence_logprobs(*args, z), policy.sequence_logprobs(*args, z))


def test_loading_without_the_encoder_or_with_an_extra_key_raises(
    tiny_llama: PreTrainedModel, tmp_path: Path
) -> None:
    fresh_base = copy.deepcopy(tiny_llama)
    policy = make_policy(tiny_llama)
    policy.save_pretrained(tmp_path / "policy")
    path = tmp_path / "policy" / TRAINABLE_FILE
    full = load_tensors(path)

    save_tensors({k: v for k, v in full.items() if not k.startswith("encoder.")}, path)
    with pytest.raises(ValueError, match=r"absent entirely: \['encoder'\]"):
        ConditionalPolicy.from_pretrained(tmp_path / "policy", base_model=copy.deepcopy(fresh_base))

    save_tensors({**full, "film.gamma.7.weight": torch.zeros(16, LATENT_DIM)}, path)
    with pytest.raises(ValueError, match=r"Unexpected keys \(1\): \['film.gamma.7.weight'\]"):
        ConditionalPolicy.from_pretrained(tmp_path / "policy", base_model=copy.deepcopy(fresh_base))

    wrong_shape = dict(full)
    name = next(k for k in full if k.startswith("film."))
    wrong_shape[name] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        policy.load_trainable_state_dict(wrong_shape)


def test_from_pretrained_rejects_another_base_model(
    tiny_llama: PreTrainedModel, tiny_gpt2: PreTrainedModel, tmp_path: Path
) -> None:
    make_policy(tiny_llama).save_pretrained(tmp_path / "policy")
    with pytest.raises(ValueError, match="does not match"):
        ConditionalPolicy.from_pretrained(tmp_path / "policy", base_model=tiny_gpt2)
    with pytest.raises(ValueError, match="no base model id"):
        ConditionalPolicy.from_pretrained(tmp_path / "policy")


def test_gradient_checkpointing_keeps_film_and_gradients(
    tiny_llama: PreTrainedModel, pair_batch: dict[str, Tensor]
) -> None:
    """Backward runs after `conditioned_on` has exited; recomputed blocks must still see z."""
    policy = make_policy(tiny_llama).train()
    perturb_trainable(policy)
    args = (pair_batch["input_ids"], pair_batch["attention_mask"], pair_batch["completion_mask"])

    def gradients() -> dict[str, Tensor]:
        policy.zero_grad()
        z = policy.encode_context(*contexts(users=8))
        policy.sequence_logprobs(*args, z).sum().backward()
        return {name: t.grad.clone() for name, t in policy._trainable_tensors().items() if t.grad is not None}

    plain = gradients()
    policy.set_gradient_checkpointing(True)
    assert policy.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any(name.startswith("film.") for name in plain)
    assert any(name.startswith("encoder.") for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_bf16_base_with_float32_trainable_parts(
    tiny_llama: PreTrainedModel, pair_batch: dict[str, Tensor]
) -> None:
    policy = make_policy(tiny_llama, bf16=True).train()
    assert policy.base_model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    z = policy.encode_context(*contexts(users=8))
    logps = policy.sequence_logprobs(
        pair_batch["input_ids"], pair_batch["attention_mask"], pair_batch["completion_mask"], z
    )
    assert logps.dtype == torch.float32 and torch.isfinite(logps).all()
    logps.sum().backward()
    film_grad = policy.film.gamma["0"].weight.grad
    assert film_grad is not None and film_grad.dtype == torch.float32 and film_grad.abs().sum() > 0


def test_lora_layers_adapt_only_those_blocks_and_survive_save_and_load(
    tiny_gpt2: PreTrainedModel, pair_batch: dict[str, Tensor], tmp_path: Path
) -> None:
    fresh_base = copy.deepcopy(tiny_gpt2)
    policy = make_policy(tiny_gpt2, film_layers=[1], lora_layers=[1]).eval()
    targets = policy.config["lora"]["target_modules"]
    assert targets == ["transformer.h.1.attn.c_attn"]  # explicit names: peft matches them exactly
    assert policy._lora_names and all(".h.1." in name for name in policy._lora_names)
    perturb_trainable(policy)
    policy.save_pretrained(tmp_path / "policy")
    loaded = ConditionalPolicy.from_pretrained(tmp_path / "policy", base_model=fresh_base)
    args = (pair_batch["input_ids"], pair_batch["attention_mask"], pair_batch["completion_mask"])
    with torch.no_grad():
        z = policy.encode_context(*contexts(users=8))
        torch.testing.assert_close(
            loaded.sequence_logprobs(*args, z), policy.sequence_logprobs(*args, z), rtol=0, atol=0
        )
    with pytest.raises(ValueError, match=r"lora_layers \[7\] are outside the model's 2 decoder blocks"):
        make_policy(copy.deepcopy(fresh_base), lora_layers=[7])

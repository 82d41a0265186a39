"""FiLM hooks: identity at init, inert outside `conditioned_on`, h <- gamma(z) * h + beta(z) inside."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointError, checkpoint
from transformers import PreTrainedModel

from npalign.embedding.causal_lm_embedder import cache_keyword, returned_cache
from npalign.models.film import FiLM, attach_film, decoder_blocks

ARCHITECTURES = ["tiny_llama", "tiny_qwen2", "tiny_gpt2"]
LATENT_DIM = 4


@pytest.fixture(params=ARCHITECTURES)
def tiny_model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return request.getfixturevalue(request.param)


@pytest.fixture
def token_batch() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(4, 40, (2, 7), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def randomise(film: FiLM, seed: int = 0) -> None:
    """Move FiLM away from the identity so that z visibly changes the LM."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in film.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))


def test_decoder_blocks_are_found_for_each_family(tiny_model: PreTrainedModel) -> None:
    blocks = decoder_blocks(tiny_model)
    assert len(blocks) == tiny_model.config.num_hidden_layers == 2


def test_decoder_blocks_reject_unknown_architectures() -> None:
    with pytest.raises(TypeError, match="Cannot find the decoder blocks"):
        decoder_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_film_is_identity_at_init(tiny_model: PreTrainedModel, token_batch: dict[str, Tensor]) -> None:
    expected = tiny_model(**token_batch).logits
    film = attach_film(tiny_model, latent_dim=LATENT_DIM)
    with film.conditioned_on(torch.randn(2, LATENT_DIM)):
        torch.testing.assert_close(tiny_model(**token_batch).logits, expected, rtol=0, atol=0)


def test_hooks_do_nothing_outside_conditioned_on(
    tiny_model: PreTrainedModel, token_batch: dict[str, Tensor]
) -> None:
    expected = tiny_model(**token_batch).logits
    film = attach_film(tiny_model, latent_dim=LATENT_DIM)
    randomise(film)
    z = torch.randn(2, LATENT_DIM)
    torch.testing.assert_close(tiny_model(**token_batch).logits, expected, rtol=0, atol=0)
    with film.conditioned_on(z):
        assert not torch.allclose(tiny_model(**token_batch).logits, expected)
        with film.disabled():
            torch.testing.assert_close(tiny_model(**token_batch).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(tiny_model(**token_batch).logits, expected, rtol=0, atol=0)
    film.detach()
    with film.conditioned_on(z):
        torch.testing.assert_close(tiny_model(**token_batch).logits, expected, rtol=0, atol=0)


def test_block_output_is_modulated_affinely(
    tiny_model: PreTrainedModel, token_batch: dict[str, Tensor]
) -> None:
    """The hooked block's output equals gamma_l(z) * h + beta_l(z), with h the unmodulated output.

    Hooks run in registration order, so one registered before FiLM sees h and one after sees FiLM's result.
    """
    block = decoder_blocks(tiny_model)[1]
    seen: dict[str, Tensor] = {}

    def capture(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            seen[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    block.register_forward_hook(capture("before"))
    film = attach_film(tiny_model, latent_dim=LATENT_DIM, layers=[1])
    block.register_forward_hook(capture("after"))
    randomise(film)
    z = torch.randn(2, LATENT_DIM)
    with film.conditioned_on(z):
        tiny_model(**token_batch)
    gamma, beta = film.modulation(1, z)  # (2, H) each
    torch.testing.assert_close(seen["after"], gamma[:, None] * seen["before"] + beta[:, None])
    assert film.layers == [1] and set(film.gamma) == {"1"}


def test_repeat_matches_explicit_expansion_and_mismatch_raises(
    tiny_llama: PreTrainedModel, token_batch: dict[str, Tensor]
) -> None:
    film = attach_film(tiny_llama, latent_dim=LATENT_DIM)
    randomise(film)
    z = torch.randn(1, LATENT_DIM)  # one user with both sequences of the batch
    with film.conditioned_on(z.expand(2, -1)):
        expected = tiny_llama(**token_batch).logits
    with film.conditioned_on(z, repeat=2):
        torch.testing.assert_close(tiny_llama(**token_batch).logits, expected, rtol=0, atol=0)
    with film.conditioned_on(torch.randn(3, LATENT_DIM)), pytest.raises(ValueError, match="repeat=k"):
        tiny_llama(**token_batch)
    with pytest.raises(ValueError, match="shape"), film.conditioned_on(torch.randn(2, LATENT_DIM + 1)):
        pass


def test_kv_cache_decode_step_matches_full_forward(tiny_model: PreTrainedModel) -> None:
    """At a decode step the block sees (N, 1, H); FiLM must broadcast z over it exactly as over a prompt."""
    film = attach_film(tiny_model, latent_dim=LATENT_DIM)
    randomise(film)
    z = torch.randn(2, LATENT_DIM)
    input_ids = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(2))
    with film.conditioned_on(z):
        full = tiny_model(input_ids=input_ids).logits[:, -1]
        prefix = tiny_model(input_ids=input_ids[:, :-1], use_cache=True)
        cache = {cache_keyword(tiny_model): returned_cache(prefix)}
        step = tiny_model(input_ids=input_ids[:, -1:], use_cache=True, **cache)
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=1e-5)


def test_checkpoint_contexts_rebind_z_when_hooks_are_recomputed(tiny_gpt2: PreTrainedModel) -> None:
    """If the hooks sit inside a checkpointed region (transformers < 5 checkpointed a block's __call__),
    backward recomputes them after `conditioned_on` has exited; `checkpoint_contexts` re-binds the z of
    the forward pass, so the gradients equal those without checkpointing."""
    film = attach_film(tiny_gpt2, latent_dim=LATENT_DIM, layers=[0])
    randomise(film)
    block = decoder_blocks(tiny_gpt2)[0]
    z = torch.randn(2, LATENT_DIM)
    hidden = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))

    def gradients(checkpointed: bool) -> list[Tensor]:
        film.zero_grad()
        inputs = hidden.clone().requires_grad_(True)
        with film.conditioned_on(z):
            if checkpointed:
                output = checkpoint(block, inputs, use_reentrant=False, context_fn=film.checkpoint_contexts)
            else:
                output = block(inputs)
        output = output[0] if isinstance(output, tuple) else output
        output.pow(2).sum().backward()  # outside the binding, like a training loop's loss.backward()
        assert inputs.grad is not None
        return [inputs.grad, *(p.grad for p in film.parameters() if p.grad is not None)]

    plain, checkpointed = gradients(False), gradients(True)
    assert len(plain) == len(checkpointed) == 1 + 4  # the input, gamma_0 and beta_0 weights and biases
    for expected, seen in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(seen, expected)
    # Without the context the recomputed hook sees no z and torch refuses the mismatched recomputation.
    with film.conditioned_on(z):
        output = checkpoint(block, hidden.clone().requires_grad_(True), use_reentrant=False)
    output = output[0] if isinstance(output, tuple) else output
    with pytest.raises(CheckpointError):
        output.pow(2).sum().backward()

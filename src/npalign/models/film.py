"""FiLM: steer a causal LM's decoder blocks with a user latent z through forward hooks (L1, models).

Each chosen decoder block l gets h_l <- gamma_l(z) * h_l + beta_l(z) (METHOD.md section 4), with gamma_l and
beta_l linear in z and initialised to the identity. The hooks read z only while it is bound by
`with film.conditioned_on(z):`; outside that block (or inside `film.disabled()`) they return the block's
output untouched, so the unconditioned LM -- and with LoRA off, the reference -- is the same object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# Where each architecture family keeps its list of decoder blocks, tried in order.
_BLOCK_PATHS: tuple[tuple[str, ...], ...] = (
    ("model", "layers"),  # Llama, Qwen2, Mistral, Gemma, Phi-3, ...
    ("transformer", "h"),  # GPT-2, GPT-J, Falcon, Bloom
    ("gpt_neox", "layers"),  # Pythia / GPT-NeoX
    ("model", "decoder", "layers"),  # OPT
)


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a HF causal LM (also through a peft wrapper), in order.

    Raises:
        TypeError: when the architecture keeps its blocks somewhere this function does not know.
    """
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):  # a peft PeftModel: the blocks live in the wrapped model
        model = get_base_model()
    for path in _BLOCK_PATHS:
        found: Any = model
        for attribute in path:
            found = getattr(found, attribute, None)
            if found is None:
                break
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    tried = ", ".join("model." + ".".join(path) for path in _BLOCK_PATHS)
    raise TypeError(
        f"Cannot find the decoder blocks of {type(model).__name__}: tried {tried}. "
        "Add the attribute path of this architecture's block list to _BLOCK_PATHS in npalign/models/film.py."
    )


def sequence_latents(z: Tensor, per_user: int, *, pairs: bool = False) -> Tensor:
    """User latents -> one row per LM sequence, in the row order FiLM reads (the one place z is expanded).

    Each user's sequences are adjacent. Without `pairs`, row b*k + t carries z[b] (k = `per_user`,
    t < k): the layout HF `generate` uses for num_return_sequences and beams. With `pairs`, the B*k pairs
    have a chosen and a rejected sequence each, laid out as `DPOBatch.tokenize_targets` does: chosen rows
    b*k .. b*k + k - 1 for user b, then the rejected rows in the same order (row B*k + b*k + t).

    Args:
        z: (B, Z) user latents.
        per_user: k >= 0, sequences (or pairs, with `pairs`) per user.
        pairs: lay out chosen rows, then rejected rows.
    Returns:
        (B*k, Z), or (2*B*k, Z) with `pairs`.
    """
    if z.dim() != 2:
        raise ValueError(f"z must have shape (B, Z); got {tuple(z.shape)}.")
    if per_user < 0:
        raise ValueError(f"per_user must be >= 0; got {per_user}.")
    rows = z.repeat_interleave(per_user, dim=0)  # (B*k, Z): user b's z on rows b*k .. b*k + k - 1
    return torch.cat([rows, rows]) if pairs else rows  # chosen rows, then rejected rows


class FiLM(nn.Module):
    """Per-block feature-wise affine maps of z, applied through forward hooks.

    State dict names are `gamma.<block index>.weight/bias` and `beta.<block index>.weight/bias`, so a
    checkpoint says which blocks it modulates.

    Args:
        latent_dim: Z.
        hidden_size: H, the width of the blocks' hidden states.
        layers: indices of the modulated decoder blocks.
    """

    def __init__(self, latent_dim: int, hidden_size: int, layers: list[int]) -> None:
        super().__init__()
        self.latent_dim, self.hidden_size, self.layers = latent_dim, hidden_size, list(layers)
        self.gamma = nn.ModuleDict({str(layer): nn.Linear(latent_dim, hidden_size) for layer in self.layers})
        self.beta = nn.ModuleDict({str(layer): nn.Linear(latent_dim, hidden_size) for layer in self.layers})
        self.reset_parameters()
        self._z: Tensor | None = None
        self._enabled = True
        self._handles: list[RemovableHandle] = []

    def reset_parameters(self) -> None:
        """The identity map: weights 0, gamma bias 1, beta bias 0, so a fresh FiLM changes nothing."""
        for layer in self.layers:
            gamma, beta = self._maps(layer)
            nn.init.zeros_(gamma.weight)
            nn.init.ones_(gamma.bias)
            nn.init.zeros_(beta.weight)
            nn.init.zeros_(beta.bias)

    def _maps(self, layer: int) -> tuple[nn.Linear, nn.Linear]:
        gamma, beta = self.gamma[str(layer)], self.beta[str(layer)]
        assert isinstance(gamma, nn.Linear) and isinstance(beta, nn.Linear)
        return gamma, beta

    @property
    def attached(self) -> bool:
        """True while hooks are registered on a model."""
        return bool(self._handles)

    @property
    def active(self) -> bool:
        """True when a forward pass would be modulated right now."""
        return self._enabled and self._z is not None

    def attach(self, model: nn.Module) -> None:
        """Register one forward hook per modulated block of `model` (raises if already attached)."""
        if self._handles:
            raise RuntimeError("This FiLM is already attached to a model; call film.detach() first.")
        blocks = decoder_blocks(model)
        bad = [layer for layer in self.layers if not 0 <= layer < len(blocks)]
        if bad:
            raise ValueError(f"FiLM layers {bad} do not exist: the model has {len(blocks)} decoder blocks.")
        for layer in self.layers:
            self._handles.append(blocks[layer].register_forward_hook(self._make_hook(layer)))

    def detach(self) -> None:
        """Remove the hooks; the model is then exactly as before `attach_film`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def conditioned_on(self, z: Tensor | None, repeat: int = 1) -> Iterator[None]:
        """Bind z for every forward pass inside the block.

        The LM batch must line up with z row by row: sequence i is modulated by z[i]. When each user has
        several consecutive sequences, either expand z yourself with `sequence_latents` or pass `repeat=k`,
        which applies `sequence_latents(z, k)` -- user b's z then steers sequences b*k .. b*k + k - 1 (the
        layout HF `generate` uses for num_return_sequences and beams). Any other batch size raises
        ValueError in the forward pass rather than silently broadcasting. `z=None` binds nothing (the hooks
        do nothing), which lets callers write `with film.conditioned_on(maybe_z):`. Bindings nest; the
        inner one wins.

        Args:
            z: (N, Z) user latents, or None.
            repeat: k >= 1, copies of each row of z, kept adjacent.
        """
        if z is not None:
            if z.dim() != 2 or z.shape[1] != self.latent_dim:
                raise ValueError(f"z must have shape (N, {self.latent_dim}); got {tuple(z.shape)}.")
            if repeat < 1:
                raise ValueError(f"repeat must be >= 1; got {repeat}.")
            if repeat > 1:
                z = sequence_latents(z, repeat)  # (N * repeat, Z)
        previous = self._z
        self._z = z
        try:
            yield
        finally:
            self._z = previous

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Switch modulation off inside the block, even where a z is bound (used by the reference)."""
        previous = self._enabled
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = previous

    def checkpoint_contexts(self) -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
        """`context_fn` for torch.utils.checkpoint(use_reentrant=False).

        torch calls it at forward time; the second context re-binds the z (and on/off state) seen then
        while a block is recomputed during backward, which usually runs after `conditioned_on` has exited.
        Needed when the hooks sit inside the checkpointed region (transformers < 5 checkpointed
        `__call__`); harmless when they sit outside it (transformers 5 checkpoints `forward`).
        """
        z, enabled = self._z, self._enabled
        return nullcontext(), self._rebound(z, enabled)

    @contextmanager
    def _rebound(self, z: Tensor | None, enabled: bool) -> Iterator[None]:
        previous = self._z, self._enabled
        self._z, self._enabled = z, enabled
        try:
            yield
        finally:
            self._z, self._enabled = previous

    def modulation(self, layer: int, z: Tensor) -> tuple[Tensor, Tensor]:
        """gamma_l(z), beta_l(z): each (N, H)."""
        gamma, beta = self._maps(layer)
        z = z.to(gamma.weight.dtype)
        return gamma(z), beta(z)

    def _make_hook(self, layer: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.active:
                return None  # None keeps the block's output as it is
            return self._modulate(layer, output)

        return hook

    def _modulate(self, layer: int, output: Any) -> Any:
        # transformers 5 blocks return the hidden states as a bare tensor; older ones a tuple led by them.
        hidden = output[0] if isinstance(output, tuple) else output
        if not isinstance(hidden, Tensor) or hidden.dim() != 3:
            raise TypeError(
                f"FiLM expects decoder block {layer} to return a (N, L, H) tensor or a tuple starting with "
                f"one; got {type(hidden).__name__}."
            )
        z = self._z
        assert z is not None
        if hidden.shape[0] != z.shape[0]:
            raise ValueError(
                f"FiLM: the LM batch has {hidden.shape[0]} sequences but the bound z has {z.shape[0]} rows. "
                "Expand z to one row per sequence, or pass repeat=k to film.conditioned_on when each user "
                "has k consecutive sequences."
            )
        gamma, beta = self.modulation(layer, z.to(hidden.device))  # (N, H) each
        # Broadcast over the sequence: (N, 1, H) also covers KV-cache decode steps with L = 1.
        modulated = gamma.to(hidden.dtype)[:, None, :] * hidden + beta.to(hidden.dtype)[:, None, :]
        if isinstance(output, tuple):
            return (modulated, *output[1:])
        return modulated


def attach_film(model: PreTrainedModel | nn.Module, latent_dim: int, layers: list[int] | None = None) -> FiLM:
    """Build an identity-initialised FiLM for `model` and hook it onto the chosen decoder blocks.

    Args:
        model: a HF causal LM (or a peft wrapper around one).
        latent_dim: Z.
        layers: decoder block indices to modulate; None means every block.
    Returns:
        The FiLM, float32, on the model's device; it does nothing until a z is bound with
        `film.conditioned_on(z)`. `film.detach()` removes the hooks.
    """
    blocks = decoder_blocks(model)
    layers = list(range(len(blocks))) if layers is None else sorted(set(layers))
    if not layers:
        raise ValueError("layers is empty; pass None to modulate every decoder block.")
    config: Any = model.config
    if hasattr(config, "get_text_config"):  # multimodal configs nest the LM's
        config = config.get_text_config()
    device = next(model.parameters()).device
    film = FiLM(latent_dim, int(config.hidden_size), layers).to(device=device, dtype=torch.float32)
    film.attach(model)
    return film

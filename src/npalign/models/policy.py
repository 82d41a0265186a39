"""NP-DPO policy: a causal LM with LoRA and FiLM, steered by z from a context encoder (L1, models).

pi_theta(y | x, z) is the base LM with LoRA adapters and one FiLM per decoder block, h_l <- gamma_l(z) *
h_l + beta_l(z); z = encoder(frozen embeddings of the user's context pairs). The reference pi_ref is the
same module under `policy.reference()`: LoRA disabled through peft and FiLM switched off, so there is no
second copy of the weights (the release deep-copied the model, and first kept it FiLM-modulated).

Only LoRA, FiLM and encoder weights train and are saved; the base model is frozen and referenced by id and
revision in `policy_config.json`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedModel

from npalign.models.bases import inject_lora, lora_targets
from npalign.models.bases import load_base as load_base  # re-exported: training/dpo.py imports it from here
from npalign.models.encoder import ContextEncoder
from npalign.models.film import FiLM, attach_film, sequence_latents
from npalign.models.losses import dpo_loss, sequence_logprobs
from npalign.models.policy_files import (
    CONFIG_FILE,
    TRAINABLE_FILE,
    check_same_base,
    check_trainable_state,
    load_recorded_base,
    policy_record,
    policy_settings,
    read_policy_record,
)
from npalign.utils.io import atomic_dir, load_tensors, save_tensors, write_json


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count real tokens only, so left and right padding see the same positions.

    Args:
        attention_mask: (N, L) 1 on tokens, 0 on padding.
    Returns:
        (N, L) long; 0 on left padding.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ConditionalPolicy(nn.Module):
    """pi_theta(y | x, z): a HF causal LM + LoRA + FiLM + a context encoder producing z.

    Args:
        base_model: the causal LM; it is modified in place (LoRA layers are injected) and frozen.
        embed_dim: D, the width of the frozen text embedder's features of context items.
        embedder_name: id of the frozen embedder that made the context features (recorded, not loaded).
        base_model_id / base_model_revision: where `from_pretrained` reloads the base from; default to
            `base_model.config._name_or_path` and None.
        latent_dim: Z.
        encoder_hidden_dim / encoder_attention / encoder_num_heads: the ContextEncoder's settings.
        film_layers: decoder blocks to modulate; None means all.
        lora_r / lora_alpha / lora_dropout: peft LoRA settings (release: 128 / 256 / 0.1).
        lora_target_modules: module names to adapt; None means the q/v projections of the architecture.
        lora_layers: decoder blocks whose target modules get LoRA; None means every block. Blocks below
            the lowest LoRA and FiLM block then need no backward pass.
        gradient_checkpointing: recompute blocks in backward (non-reentrant; FiLM keeps working).
        bf16: cast the frozen base to bfloat16; LoRA, FiLM and encoder stay float32.
    """

    def __init__(
        self,
        base_model: PreTrainedModel,
        *,
        embed_dim: int,
        embedder_name: str = "",
        base_model_id: str | None = None,
        base_model_revision: str | None = None,
        latent_dim: int = 256,
        encoder_hidden_dim: int = 256,
        encoder_attention: bool = False,
        encoder_num_heads: int = 8,
        film_layers: list[int] | None = None,
        lora_r: int = 128,
        lora_alpha: int = 256,
        lora_dropout: float = 0.1,
        lora_target_modules: list[str] | None = None,
        lora_layers: list[int] | None = None,
        gradient_checkpointing: bool = False,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(base_model, PeftModel):
            raise TypeError("base_model already carries peft adapters; pass the plain transformers model.")
        targets = lora_targets(base_model, lora_target_modules, lora_layers)
        base_model.requires_grad_(False)
        if bf16:
            base_model.to(torch.bfloat16)  # type: ignore[arg-type]  # transformers wraps `to` opaquely
        self.model: PeftModel = inject_lora(base_model, lora_r, lora_alpha, lora_dropout, targets)
        # Everything peft left trainable is LoRA; record the names now so that freezing later (for
        # inference) does not change what a checkpoint must contain.
        self._lora_names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        if not self._lora_names:
            raise ValueError(f"LoRA found no modules named {targets} in {type(base_model).__name__}.")
        self.film: FiLM = attach_film(self.model, latent_dim, film_layers)
        # The encoder's settings, as ContextEncoder takes them and as policy_config.json records them.
        encoder: dict[str, Any] = {
            "embed_dim": embed_dim,
            "hidden_dim": encoder_hidden_dim,
            "latent_dim": latent_dim,
            "attention": encoder_attention,
            "num_heads": encoder_num_heads,
        }
        self.encoder = ContextEncoder(**encoder).to(next(base_model.parameters()).device)
        # The id from_pretrained reloads the base from: a hub id, or whatever path the caller loaded it from.
        base_id = str(base_model.config._name_or_path or "") if base_model_id is None else base_model_id
        self.config: dict[str, Any] = policy_record(
            base_model,
            base_id=base_id,
            base_revision=base_model_revision,
            lora={"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": targets},
            film_layers=list(self.film.layers),
            encoder=encoder,
            embedder_name=embedder_name,
            bf16=bf16,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.set_gradient_checkpointing(gradient_checkpointing)

    # ----- structure -------------------------------------------------------------------------------------

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model (with LoRA layers injected by peft)."""
        base = self.model.get_base_model()
        assert isinstance(base, PreTrainedModel)
        return base

    @property
    def latent_dim(self) -> int:
        return self.film.latent_dim

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the base model's blocks are checkpointed (in train mode)."""
        base = self.base_model
        if hasattr(base, "is_activation_checkpointing"):  # transformers >= 5
            return bool(base.is_activation_checkpointing)
        return bool(base.is_gradient_checkpointing)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Turn activation checkpointing of the decoder blocks on or off (it acts in train mode only).

        Non-reentrant, with FiLM's `checkpoint_contexts` as torch's `context_fn`: a recomputed block sees
        the z that was bound in its forward pass even though backward runs outside `conditioned_on`.
        """
        base = self.base_model
        if not enabled:
            if self.gradient_checkpointing:
                disable = (
                    getattr(base, "activation_checkpointing_disable", None)
                    or base.gradient_checkpointing_disable
                )
                disable()
            self.config["gradient_checkpointing"] = False
            return
        kwargs = {"use_reentrant": False, "context_fn": self.film.checkpoint_contexts}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.config["gradient_checkpointing"] = True

    # ----- z -----------------------------------------------------------------------------------------------

    def encode_context(
        self, context_chosen: Tensor, context_rejected: Tensor, context_mask: Tensor
    ) -> Tensor:
        """z for B users from frozen embeddings of their context pairs.

        Args:
            context_chosen / context_rejected: (B, C, D); C may be 0 (z is then the learned prior).
            context_mask: (B, C) True on real pairs.
        Returns:
            z (B, Z).
        """
        z = self.encoder(context_chosen, context_rejected, context_mask)
        assert isinstance(z, Tensor)  # the policy's encoder is deterministic
        return z

    @staticmethod
    def interpolate(z_a: Tensor, z_b: Tensor, t: float | Tensor) -> Tensor:
        """(1 - t) * z_a + t * z_b: steer between two users. z_a, z_b (..., Z); t scalar or broadcastable."""
        return (1 - t) * z_a + t * z_b

    # ----- scoring -----------------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor, z: Tensor | None = None) -> Tensor:
        """Next-token logits, FiLM-modulated by z when given.

        Positions come from the attention mask, so left- and right-padded batches give the same logits
        on their real tokens.

        Args:
            input_ids: (N, L).
            attention_mask: (N, L).
            z: (N, Z), one row per sequence (repeat a user's z over their sequences), or None for no FiLM.
        Returns:
            (N, L, V) logits.
        """
        with self.film.conditioned_on(z):
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask),
                use_cache=False,
            ).logits

    def sequence_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, z: Tensor | None
    ) -> Tensor:
        """log pi_theta(y | x, z): summed log-probs of the completion tokens, LoRA on, FiLM on z.

        Args:
            input_ids / attention_mask / completion_mask: (N, L).
            z: (N, Z), or None to run without FiLM.
        Returns:
            (N,) float32.
        """
        return sequence_logprobs(self(input_ids, attention_mask, z), input_ids, completion_mask)

    def implicit_rewards(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_mask: Tensor,
        z: Tensor | None,
        reference_logps: Tensor,
        *,
        beta: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """DPO implicit rewards and per-pair losses of N preference pairs under z.

        r(y) = beta * (log pi_theta(y | x, z) - log pi_ref(y | x)); loss = -log sigma(r(y_w) - r(y_l))
        (Rafailov et al. 2023, eq. 7; computed by `losses.dpo_loss`).

        Args:
            input_ids / attention_mask / completion_mask: (2N, L), the N chosen sequences, then the N
                rejected ones: pair i is rows i and N + i.
            z: (2N, Z), one row per sequence (`film.sequence_latents(z, T, pairs=True)` for B users with T
                pairs each, N = BT), or None to run without FiLM.
            reference_logps: (2N,) log pi_ref of the same rows (e.g. from `reference_logprobs`).
            beta: the KL strength.
        Returns:
            chosen_rewards (N,), rejected_rewards (N,), both detached, and losses (N,), with gradients
            when they are enabled.
        """
        rows = input_ids.shape[0]
        if rows % 2 or tuple(reference_logps.shape) != (rows,):
            raise ValueError(
                f"input_ids has {rows} rows and reference_logps shape {tuple(reference_logps.shape)}; pass "
                "2N rows (N chosen, then N rejected) and one reference log-prob per row."
            )
        logps = self.sequence_logprobs(input_ids, attention_mask, completion_mask, z)  # (2N,)
        policy_chosen, policy_rejected = logps.chunk(2)  # (N,) each
        reference_chosen, reference_rejected = reference_logps.chunk(2)  # (N,) each
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta
        )
        return chosen_rewards, rejected_rewards, losses

    def sequence_z(self, inputs: dict[str, Tensor]) -> Tensor:
        """z of B users from their context features, one row per target sequence: (2BT, Z).

        Args:
            inputs: `DPOBatch.model_inputs`: context_chosen / context_rejected (B, C, D), context_mask
                (B, C), and input_ids (2BT, L) for T.
        """
        users = inputs["context_mask"].shape[0]
        z = self.encode_context(inputs["context_chosen"], inputs["context_rejected"], inputs["context_mask"])
        return sequence_latents(z, inputs["input_ids"].shape[0] // (2 * users), pairs=True)  # (2BT, Z)

    def reference_of(self, inputs: dict[str, Tensor]) -> Tensor:
        """log pi_ref of the 2BT target sequences: the precomputed `reference_logps`, else the reference run."""
        if "reference_logps" in inputs:
            return inputs["reference_logps"]
        return self.reference_logprobs(
            inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        )

    @torch.no_grad()
    def score_targets(
        self, inputs: dict[str, Tensor], *, conditional: bool, beta: float
    ) -> dict[str, Tensor]:
        """Implicit rewards and DPO losses of B users' T target pairs under each user's z, in eval mode.

        Args:
            inputs: `DPOBatch.model_inputs` of the batch.
            conditional: False scores the policy without z (unconditional runs).
        Returns:
            chosen_rewards, rejected_rewards, losses: (B, T) each, float32 on the CPU;
            implicit reward = beta * (log pi(y | x, z) - log pi_ref(y | x)).
        """
        was_training = self.training
        self.eval()
        try:
            chosen_rewards, rejected_rewards, losses = self.implicit_rewards(
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["completion_mask"],
                self.sequence_z(inputs) if conditional else None,  # (2BT, Z) or None
                self.reference_of(inputs),  # (2BT,)
                beta=beta,
            )  # (BT,) each
        finally:
            self.train(was_training)
        shape = (inputs["context_mask"].shape[0], -1)
        return {
            "chosen_rewards": chosen_rewards.float().cpu().view(shape),
            "rejected_rewards": rejected_rewards.float().cpu().view(shape),
            "losses": losses.float().cpu().view(shape),
        }

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Inside the block the policy *is* pi_ref: LoRA disabled by peft and FiLM off, whatever z is bound."""
        with self.model.disable_adapter(), self.film.disabled():
            yield

    @torch.no_grad()
    def reference_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
    ) -> Tensor:
        """log pi_ref(y | x) without gradients, in eval mode (no dropout) so it is a fixed target.

        Args:
            input_ids / attention_mask / completion_mask: (N, L).
        Returns:
            (N,) float32.
        """
        was_training = self.training
        self.eval()
        try:
            with self.reference():
                return self.sequence_logprobs(input_ids, attention_mask, completion_mask, z=None)
        finally:
            self.train(was_training)

    # ----- generation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, z: Tensor | None = None, **generate_kwargs: Any
    ) -> Tensor:
        """HF `generate` with z bound for the whole call (KV cache on unless told otherwise).

        HF expands each prompt into k adjacent rows (k = num_beams for beam search, else
        num_return_sequences); z is expanded the same way, so pass one row per prompt.

        Args:
            input_ids / attention_mask: (N, L), left-padded prompts.
            z: (N, Z), or None for the unconditioned policy.
            generate_kwargs: passed to `generate` (max_new_tokens, do_sample, ...).
        Returns:
            (N * k, L + new tokens) ids, prompts included.
        """
        generation_config = generate_kwargs.get("generation_config", self.base_model.generation_config)
        num_beams = int(generate_kwargs.get("num_beams", getattr(generation_config, "num_beams", 1) or 1))
        num_returns = int(
            generate_kwargs.get(
                "num_return_sequences", getattr(generation_config, "num_return_sequences", 1) or 1
            )
        )
        repeat = num_beams if num_beams > 1 else num_returns
        if z is not None and z.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"z has {z.shape[0]} rows for {input_ids.shape[0]} prompts; pass one z per prompt."
            )
        generate_kwargs.setdefault("use_cache", True)
        with self.film.conditioned_on(z, repeat=repeat):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    # ----- trainable parts, saving and loading --------------------------------------------------------------

    def _trainable_tensors(self) -> dict[str, Tensor]:
        lora = dict(self.model.named_parameters())
        tensors: dict[str, Tensor] = {f"lora.{name}": lora[name] for name in self._lora_names}
        tensors.update({f"film.{name}": t for name, t in self.film.state_dict(keep_vars=True).items()})
        tensors.update({f"encoder.{name}": t for name, t in self.encoder.state_dict(keep_vars=True).items()})
        return tensors

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA + FiLM + encoder parameters, for the optimiser."""
        return [t for t in self._trainable_tensors().values() if isinstance(t, nn.Parameter)]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Exactly the LoRA, FiLM and encoder tensors, under `lora.`, `film.` and `encoder.` (detached)."""
        return {name: t.detach() for name, t in self._trainable_tensors().items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strictly load LoRA + FiLM + encoder tensors.

        Raises:
            ValueError: naming missing keys (and any part that is absent as a whole, e.g. the encoder,
                which the release's non-strict loading silently left random), unexpected keys, or shapes.
        """
        expected = self._trainable_tensors()
        check_trainable_state(state, expected)
        with torch.no_grad():
            for name, tensor in state.items():
                expected[name].copy_(tensor)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `trainable.safetensors` and `policy_config.json` into `directory`, atomically.

        The directory is replaced as a whole, so give the policy its own (e.g. `run_dir / "policy"`).
        Base weights are not written; the config records their id and revision.
        """
        with atomic_dir(directory) as tmp:
            save_tensors(
                self.trainable_state_dict(), tmp / TRAINABLE_FILE, metadata={"format": "npalign-policy"}
            )
            write_json(self.config, tmp / CONFIG_FILE)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, base_model: PreTrainedModel | None = None, **load_kwargs: Any
    ) -> ConditionalPolicy:
        """Rebuild a saved policy: the base by its recorded id (unless given), then a strict load.

        Args:
            directory: written by `save_pretrained`.
            base_model: the base LM to use instead of loading it (it is modified in place); must match the
                recorded architecture.
            load_kwargs: extra arguments for `AutoModelForCausalLM.from_pretrained` (e.g. device_map).
        Returns:
            The policy, in eval mode.
        """
        directory = Path(directory)
        config = read_policy_record(directory)
        if base_model is None:
            base_model = load_recorded_base(directory, config, **load_kwargs)
        check_same_base(config, base_model)
        policy = cls(base_model, **policy_settings(config))
        policy.load_trainable_state_dict(load_tensors(directory / TRAINABLE_FILE))
        return policy.eval()

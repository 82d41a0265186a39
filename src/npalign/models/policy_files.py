"""What a saved NP-DPO policy records about itself, and reading it back (L1, models).

A policy directory holds `trainable.safetensors` (LoRA, FiLM and encoder tensors) and
`policy_config.json`: the base model by id, revision and shape (never its weights), and the settings
`ConditionalPolicy` was built with, so `ConditionalPolicy.from_pretrained` can rebuild it exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from npalign.utils.io import read_json

TRAINABLE_FILE = "trainable.safetensors"
CONFIG_FILE = "policy_config.json"
FORMAT_VERSION = 1
_PARTS = ("lora", "film", "encoder")


def base_shape(model: PreTrainedModel) -> dict[str, Any]:
    """The architecture facts a policy checkpoint must match: model type, hidden size, layers, vocabulary."""
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {
        "model_type": str(getattr(model.config, "model_type", "")),
        "hidden_size": int(text_config.hidden_size),
        "num_hidden_layers": int(text_config.num_hidden_layers),
        "vocab_size": int(text_config.vocab_size),
    }


def policy_record(
    base_model: PreTrainedModel,
    *,
    base_id: str,
    base_revision: str | None,
    lora: dict[str, Any],
    film_layers: list[int],
    encoder: dict[str, Any],
    embedder_name: str,
    bf16: bool,
    gradient_checkpointing: bool,
) -> dict[str, Any]:
    """The contents of `policy_config.json` for a policy built on `base_model` with these settings.

    Args:
        lora: r, alpha, dropout, target_modules.
        encoder: embed_dim, hidden_dim, latent_dim, attention, num_heads.
    """
    return {
        "format_version": FORMAT_VERSION,
        "base_model": {"id": base_id, "revision": base_revision, **base_shape(base_model)},
        "lora": lora,
        "film": {"layers": film_layers, "latent_dim": encoder["latent_dim"]},
        "encoder": encoder,
        "embedder_name": embedder_name,
        "bf16": bf16,
        "gradient_checkpointing": gradient_checkpointing,
    }


def read_policy_record(directory: Path) -> dict[str, Any]:
    """`policy_config.json` of a policy directory, checked for the format this version writes."""
    config = read_json(directory / CONFIG_FILE)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / CONFIG_FILE} has format_version {config.get('format_version')}; expected {FORMAT_VERSION}."
        )
    return config


def load_recorded_base(directory: Path, config: dict[str, Any], **load_kwargs: Any) -> PreTrainedModel:
    """The base LM a saved policy records, by id and revision (in bfloat16 if it trained so)."""
    base_info = config["base_model"]
    if not base_info["id"]:
        raise ValueError(
            f"{directory / CONFIG_FILE} records no base model id (the policy was built on a model "
            "without one); pass base_model= explicitly."
        )
    if config["bf16"]:
        load_kwargs.setdefault("dtype", torch.bfloat16)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        base_info["id"], revision=base_info["revision"], **load_kwargs
    )
    return model


def check_same_base(config: dict[str, Any], base_model: PreTrainedModel) -> None:
    """Raise unless `base_model` has the architecture the saved policy was trained on."""
    base_info = config["base_model"]
    seen = base_shape(base_model)
    mismatched = {key: (base_info[key], value) for key, value in seen.items() if base_info[key] != value}
    if mismatched:
        raise ValueError(
            f"The base model does not match the one the policy was trained on (recorded, given): {mismatched}. "
            f"Use {base_info['id']!r} at revision {base_info['revision']!r}."
        )


def policy_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `ConditionalPolicy` (all but the base model) that a record was made with."""
    base_info, encoder, lora = config["base_model"], config["encoder"], config["lora"]
    return {
        "embed_dim": encoder["embed_dim"],
        "latent_dim": encoder["latent_dim"],
        "encoder_hidden_dim": encoder["hidden_dim"],
        "encoder_attention": encoder["attention"],
        "encoder_num_heads": encoder["num_heads"],
        "lora_r": lora["r"],
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "lora_target_modules": lora["target_modules"],
        "film_layers": config["film"]["layers"],
        "embedder_name": config["embedder_name"],
        "base_model_id": base_info["id"],
        "base_model_revision": base_info["revision"],
        "gradient_checkpointing": config["gradient_checkpointing"],
        "bf16": config["bf16"],
    }


def check_trainable_state(state: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Raise unless `state` holds exactly the tensors of `expected`, each of the same shape.

    Raises:
        ValueError: naming missing keys (and any part that is absent as a whole, e.g. the encoder,
            which the release's non-strict loading silently left random), unexpected keys, or shapes.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        absent = [part for part in _PARTS if not any(key.startswith(f"{part}.") for key in state)]
        raise ValueError(
            "Policy checkpoint does not match the model. "
            f"Parts absent entirely: {absent or 'none'}. Missing keys ({len(missing)}): {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}. Unexpected keys ({len(unexpected)}): {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. The checkpoint is incomplete or from another "
            "configuration; it must hold exactly trainable_state_dict()."
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"Tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[name].shape)} in the model."
            )

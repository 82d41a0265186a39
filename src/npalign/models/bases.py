"""Base causal LMs: loaded by name (random test bases or real ones), their dtype per device, LoRA adapters (L1, models)."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from npalign.embedding import hub
from npalign.models.film import decoder_blocks
from npalign.models.random_bases import RANDOM_BASE_SEED, RANDOM_BASES, build_random_base, weights_digest


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether `device` computes bfloat16 matmuls natively (`model.bf16: auto`).

    True for a CUDA GPU that supports bfloat16 and for a CPU with AVX512-BF16 or AMX (oneDNN's own test);
    False on an AVX2-only CPU, where torch emulates them about 100x slower than float32. Other device
    types are trusted to support bfloat16.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch built without oneDNN
            return False
    return True


def load_base(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The float32 base LM, its tokenizer (with a pad token and a chat template) and its revision.

    Args:
        name: a random base of `random_bases.RANDOM_BASES` (e.g. "tiny-random-llama"), a default of
            `npalign.embedding.hub` (e.g. "smollm2"), a local model folder, or a hub id.
    Returns:
        (model in eval mode, tokenizer, revision); the revision changes whenever the weights would.
    """
    if name in RANDOM_BASES:
        model, tokenizer = build_random_base(name)
        return model, tokenizer, f"random-init:seed={RANDOM_BASE_SEED}:sha256:{weights_digest(model)}"
    model = hub.load_causal_lm(name)
    tokenizer = hub.load_tokenizer(name)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of base model {name!r} has no chat template; NP-DPO renders prompts and "
            "responses through it. Use an instruct/chat model (e.g. smollm2)."
        )
    return model, tokenizer, hub.model_revision(name)


# LoRA targets when none are given: the attention query/value projections, as in the release.
_DEFAULT_LORA_TARGETS: dict[str, list[str]] = {"gpt2": ["c_attn"]}
_FALLBACK_LORA_TARGETS = ["q_proj", "v_proj"]


def default_lora_targets(model_type: str) -> list[str]:
    """The q/v projection module names of an architecture (GPT-2 fuses them in `c_attn`)."""
    return list(_DEFAULT_LORA_TARGETS.get(model_type, _FALLBACK_LORA_TARGETS))


def lora_targets(
    base_model: PreTrainedModel, modules: list[str] | None, layers: list[int] | None
) -> list[str]:
    """The module names LoRA adapts: `modules` (None: the architecture's q/v projections), anywhere, or
    with `layers` only inside those decoder blocks, as full names.

    Explicit names keep LoRA, and so its backward pass, to those blocks; peft matches them exactly, and
    the policy's record holds them, so loading needs nothing more.

    Raises:
        ValueError: a layer index outside the model's blocks, or no such module in those blocks.
    """
    model_type = str(getattr(base_model.config, "model_type", ""))
    targets = default_lora_targets(model_type) if modules is None else list(modules)
    if layers is None:
        return targets
    blocks = decoder_blocks(base_model)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(
            f"lora_layers {bad} are outside the model's {len(blocks)} decoder blocks (0..{len(blocks) - 1})."
        )
    block_names = {id(module): name for name, module in base_model.named_modules()}
    names = []
    for index in sorted(set(layers)):
        prefix = block_names[id(blocks[index])]
        names += [
            f"{prefix}.{name}" for name, _ in blocks[index].named_modules() if name.split(".")[-1] in targets
        ]
    if not names:
        raise ValueError(f"LoRA found no modules named {targets} in decoder blocks {sorted(set(layers))}.")
    return names


def inject_lora(
    base_model: PreTrainedModel, r: int, alpha: int, dropout: float, targets: list[str]
) -> PeftModel:
    """`base_model` with peft LoRA adapters on the modules named `targets` (modified in place)."""
    model_type = str(getattr(base_model.config, "model_type", ""))
    lora_config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft probes the deprecated `is_gradient_checkpointing` of transformers 5; nothing to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base_model, lora_config)

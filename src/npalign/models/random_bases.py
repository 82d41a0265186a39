"""Randomly initialised causal-LM bases built offline from code, for tests and the tiny configs (L1, models).

`configs/tiny/np_dpo.yaml` trains on `base: tiny-random-llama`, so these are resolved at run time by
`models.bases.load_base`, not only in tests.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

# Randomly initialised bases that are built from a config offline, for tests and cost benchmarks. Their
# weights are a pure function of (shape, seed); the revision records a digest of them so that a run
# trained on one never silently reloads onto other weights (e.g. after transformers changes its init).
RANDOM_BASES: dict[str, dict[str, Any]] = {
    "tiny-random-llama": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
}
RANDOM_BASE_SEED = 0
_CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_chat_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level ChatML tokenizer built offline: one token per UTF-8 byte plus pad and two specials.

    Ids: 0 `<pad>`, 1 `<|im_start|>`, 2 `<|im_end|>` (also eos), then the 256 bytes; 259 in all. Any text
    round-trips through encode/decode, and the chat template's prefix property holds token for token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate([*specials, *alphabet])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = _CHATML_TEMPLATE
    return tokenizer


def weights_digest(model: nn.Module) -> str:
    """sha256 (16 hex) over every tensor of `model.state_dict()`, by name; identifies exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def build_random_base(
    name: str, seed: int = RANDOM_BASE_SEED
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised base of a shape in `RANDOM_BASES`, with the byte-level ChatML tokenizer.

    The global RNG is left untouched (the init runs under a forked RNG seeded with `seed`).
    """
    if name not in RANDOM_BASES:
        raise ValueError(f"unknown random base {name!r}; choose one of {sorted(RANDOM_BASES)}.")
    from transformers import AutoConfig

    tokenizer = byte_chat_tokenizer()
    shape = dict(RANDOM_BASES[name])
    config = AutoConfig.for_model(
        shape.pop("model_type"),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **shape,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer

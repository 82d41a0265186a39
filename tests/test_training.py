"""Training, saving, loading and resuming reward models; behaviour of a trained NP-BTL."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import npalign
from helpers import RELEASE_SHAPE, kill_once_checkpointed, synth_command
from npalign.config import RewardTrainConfig, load_config
from npalign.data.episodes import EpisodeSampler
from npalign.data.loaders import split_by_user
from npalign.data.synthetic import generate, task_spec
from npalign.models.builders import load_reward_model
from npalign.models.reward import PreferenceModel
from npalign.training.reward import train_reward_model, validate
from npalign.utils.io import load_tensors

SMALL = [
    *RELEASE_SHAPE,
    "model.hidden_dim=32",
    "model.latent_dim=8",
    "episodes.batch_users=32",
    "optim.warmup_steps=20",
    "eval.val_episodes=64",
    "run.progress=false",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="module")
def paper_splits():  # noqa: ANN201
    data = generate(task_spec("paper1d", num_pairs=8000, num_users=160), seed=0)
    return split_by_user(data, (0.8, 0.1, 0.1), seed=0)


@pytest.fixture(scope="module")
def trained_np(paper_splits, tmp_path_factory) -> Path:  # noqa: ANN001
    train, val, _ = paper_splits
    out = tmp_path_factory.mktemp("np") / "run"
    cfg = load_config(
        RewardTrainConfig,
        overrides=[
            *SMALL,
            "model.kind=np-btl",
            "optim.steps=600",
            "eval.val_every=300",
            "run.save_every=300",
        ],
    )
    train_reward_model(cfg, train, val, out)
    return out


def _disagreement_pairs(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs with both items above 0.5, where type0 prefers the larger and type1 the smaller."""
    generator = torch.Generator().manual_seed(5)
    items = 0.55 + 0.4 * torch.rand(count, 2, generator=generator)
    larger, smaller = items.max(1).values, items.min(1).values
    return larger[:, None], smaller[:, None]


def test_run_directory_holds_everything_and_no_pickle(trained_np: Path) -> None:
    names = {p.name for p in trained_np.iterdir()}
    assert {"config.yaml", "run.json", "model.safetensors", "metrics.jsonl", "checkpoint"} <= names
    assert (
        not list(trained_np.rglob("*.pt"))
        and not list(trained_np.rglob("*.bin"))
        and not list(trained_np.rglob("*.pkl"))
    )
    records = [json.loads(line) for line in (trained_np / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in records) and any("loss" in r for r in records)


def test_flipping_every_context_choice_flips_predictions_where_types_disagree(trained_np: Path) -> None:
    model = npalign.load(str(trained_np))
    larger, smaller = _disagreement_pairs(200)
    context_chosen, context_rejected = larger[:5], smaller[:5]  # a type0 user's choices
    targets_a, targets_b = larger[5:], smaller[5:]
    z_type0 = model.infer_user(context_chosen, context_rejected)
    z_type1 = model.infer_user(context_rejected, context_chosen)  # every choice flipped
    assert not torch.allclose(z_type0, z_type1)  # z depends on the user
    p_type0 = model.prefer_prob(targets_a, targets_b, z_type0)
    p_type1 = model.prefer_prob(targets_a, targets_b, z_type1)
    assert float((p_type0 > 0.5).float().mean()) > 0.9
    assert float((p_type1 < 0.5).float().mean()) > 0.9
    # where the types agree (both items below 0.5, larger preferred by both) the prediction does not flip
    low_a, low_b = targets_a - 0.5, targets_b - 0.5
    assert float((model.prefer_prob(low_a, low_b, z_type1) > 0.5).float().mean()) > 0.9


def test_inference_api_shapes_and_empty_context(trained_np: Path) -> None:
    model = npalign.load(str(trained_np))
    z0 = model.infer_user(torch.zeros(0, 1), torch.zeros(0, 1))
    assert z0.shape == (8,) and torch.isfinite(z0).all()
    z_batch = model.infer_user(torch.rand(3, 4, 1), torch.rand(3, 4, 1))
    assert z_batch.shape == (3, 8)
    items = torch.rand(1000, 1)
    assert model.reward(items, z0).shape == (1000,)
    assert model.reward(items[None].expand(3, -1, -1), z_batch).shape == (3, 1000)
    probs = model.prefer_prob(items[:10], items[10:20], z0)
    torch.testing.assert_close(probs + model.prefer_prob(items[10:20], items[:10], z0), torch.ones(10))
    with pytest.raises(ValueError, match="shape"):
        model.infer_user(torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        model.reward(torch.tensor([[float("nan")]]), z0)


def test_save_load_gives_identical_outputs(trained_np: Path, paper_splits) -> None:  # noqa: ANN001
    _, _, test = paper_splits
    model, _ = load_reward_model(trained_np)
    again, _ = load_reward_model(trained_np)
    batch = next(EpisodeSampler(test, targets=20, max_context=5).evaluation_batches(5, 64, seed=0))
    z = model.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
    z_again = again.infer(batch.context_chosen, batch.context_rejected, batch.context_mask)
    assert torch.equal(
        model.prefer_prob(batch.target_chosen, batch.target_rejected, z),
        again.prefer_prob(batch.target_chosen, batch.target_rejected, z_again),
    )


def test_loading_is_strict(trained_np: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text((trained_np / "run.json").read_text())
    state = load_tensors(trained_np / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if not k.startswith("encoder.")}, str(broken / "model.safetensors")
    )
    with pytest.raises(ValueError, match="Missing keys.*encoder"):
        load_reward_model(broken)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("btl", []),
        ("dpl", []),
        ("np-btl-latent", []),
        ("np-btl", ["model.encoder_depth=3", "model.decoder_depth=2", "model.item_dropout=0.3"]),
        ("np-btl", ["model.conditioning=film"]),
    ],
)
def test_every_kind_trains_saves_and_loads(kind: str, extra: list[str], paper_splits, tmp_path: Path) -> None:  # noqa: ANN001
    train, val, _ = paper_splits
    cfg = load_config(
        RewardTrainConfig,
        overrides=[
            *SMALL,
            *extra,
            f"model.kind={kind}",
            "optim.steps=100",
            "eval.val_every=50",
            "run.save_every=50",
            "model.kl_weight=0.1",
        ],
    )
    result = train_reward_model(cfg, train, val, tmp_path / kind)
    assert result.best_step in (50, 100)
    model = npalign.load(str(tmp_path / kind))
    z = model.infer_user(torch.rand(3, 1), torch.rand(3, 1))
    probs = model.prefer_prob(torch.rand(10, 1), torch.rand(10, 1), z)
    assert probs.shape == (10,) and bool(((probs > 0) & (probs < 1)).all())
    if (
        "model.encoder_depth=3" in extra
    ):  # the depths come back from the saved config: a strict load needs them
        pair_net = model.model.encoder.pair_net
        assert sum(isinstance(layer, torch.nn.Linear) for layer in pair_net) == 3
        assert len(model.model.head) == 1
        assert model.model.item_dropout.p == 0.3
    assert (model.model.latent_scale is not None) == ("model.conditioning=film" in extra)  # so does FiLM


def test_film_conditioning_starts_as_the_shift_model_and_then_scales_by_z() -> None:
    torch.manual_seed(0)
    shift = PreferenceModel("np-btl", 6, 16, 4, prior_head=True).eval()
    torch.manual_seed(0)
    film = PreferenceModel("np-btl", 6, 16, 4, prior_head=True, conditioning="film").eval()
    state = film.state_dict()
    assert state.keys() - shift.state_dict().keys() == {"latent_scale.weight"}
    assert all(torch.equal(state[k], v) for k, v in shift.state_dict().items())  # same initial weights
    items, z = torch.randn(2, 5, 6), torch.cat([torch.randn(2, 4), torch.ones(2, 1)], -1)
    assert torch.equal(film.reward(items, z), shift.reward(items, z))  # gamma starts at 0
    with torch.no_grad():
        film.latent_scale.weight.normal_()
    moved = film.reward(items, z)
    assert not torch.allclose(moved, shift.reward(items, z))
    personal = z[:, :4].unsqueeze(1)
    hidden = film.item_net(items) * (1 + film.latent_scale(personal)) + film.latent_proj(personal)
    assert torch.allclose(moved, film.out(torch.nn.functional.gelu(hidden))[..., 0])
    with pytest.raises(ValueError, match="conditioning"):
        PreferenceModel("np-btl", 6, 16, 4, conditioning="concat")


def test_item_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    dropped = PreferenceModel("np-btl", 6, 16, 4, item_dropout=0.5)
    plain = PreferenceModel("np-btl", 6, 16, 4)
    plain.load_state_dict(dropped.state_dict())  # dropout adds no weights
    items, z = torch.randn(2, 5, 6), torch.randn(2, 4)
    dropped.eval(), plain.eval()
    assert torch.equal(dropped.reward(items, z), plain.reward(items, z))
    dropped.train()
    assert not torch.equal(dropped.reward(items, z), plain.reward(items, z))


@pytest.mark.parametrize("select_by", ["nll", "accuracy"])
def test_the_kept_weights_are_the_best_validation_step_by_the_chosen_figure(
    select_by: str,
    paper_splits,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    train, val, _ = paper_splits
    cfg = load_config(
        RewardTrainConfig,
        overrides=[
            *SMALL,
            "optim.steps=120",
            "eval.val_every=20",
            "run.log_every=20",
            "run.save_every=20",
            "eval.contexts=[0,3]",
            f"eval.select_by={select_by}",
        ],
    )
    out = tmp_path / select_by
    result = train_reward_model(cfg, train, val, out)
    validations = [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_nll" in r
    ]
    assert len(validations) == 6
    if select_by == "nll":
        best = min(validations, key=lambda r: r["val_nll"])
    else:
        best = max(validations, key=lambda r: r["val_accuracy"])  # the first of equals, like the loop
    assert result.best_step == best["step"] and result.best_val_nll == pytest.approx(best["val_nll"])
    sampler = EpisodeSampler(val, targets=cfg.eval.targets, max_context=3)
    again = validate(load_reward_model(out)[0], sampler, [0, 3], cfg.eval.val_episodes, cfg.eval.seed)
    assert again["val_accuracy"] == pytest.approx(best["val_accuracy"])
    with pytest.raises(ValueError, match="select_by='loss'"):
        load_config(RewardTrainConfig, overrides=["eval.select_by=loss"])


def test_patience_stops_on_a_validation_plateau_and_resuming_adds_nothing(
    paper_splits,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    train, val, _ = paper_splits
    settings = ["optim.steps=3000", "eval.val_every=20", "run.log_every=20", "run.save_every=20"]
    cfg = load_config(RewardTrainConfig, overrides=[*SMALL, *settings, "eval.contexts=[0,3]", "eval.patience=3"])
    out = tmp_path / "plateau"
    result = train_reward_model(cfg, train, val, out)
    validations = [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_nll" in r
    ]
    best = min(validations, key=lambda r: r["val_nll"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "plateau" and result.steps == summary["steps"] < 3000
    # Stopped at the third validation in a row that did not beat the kept one, and not before.
    assert result.best_step == best["step"] and validations[-1]["step"] == best["step"] + 3 * 20
    for step in range(40, result.steps, 20):
        seen = [r for r in validations if r["step"] <= step]
        assert step - min(seen, key=lambda r: r["val_nll"])["step"] < 60 or step == result.steps
    metrics = (out / "metrics.jsonl").read_text()
    again = train_reward_model(cfg, train, val, out, resume=True)
    assert again.steps == result.steps and (out / "metrics.jsonl").read_text() == metrics
    with pytest.raises(ValueError, match="eval.patience=0"):
        load_config(RewardTrainConfig, overrides=["eval.patience=0"])


def test_refuses_to_overwrite_a_trained_run(trained_np: Path, paper_splits) -> None:  # noqa: ANN001
    train, val, _ = paper_splits
    with pytest.raises(FileExistsError, match="--resume"):
        train_reward_model(load_config(RewardTrainConfig, overrides=SMALL), train, val, trained_np)


def _train_command(data: Path, val: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "npalign.cli.main",
        "train",
        "--data",
        str(data),
        "--val",
        str(val),
        "--model",
        "np-btl-latent",
        "--out",
        str(out),
        *extra,
        *SMALL,
        "model.hidden_dim=16",
        "model.item_dropout=0.2",  # dropout masks, too, must not depend on where the run was cut
        f"optim.steps={steps}",
        "run.save_every=50",
        "run.log_every=25",
        "eval.val_every=100",
        "eval.val_episodes=32",
    ]


@pytest.mark.slow
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """A real SIGKILL mid-run, then --resume: the metrics and the weights equal an uninterrupted run."""
    from npalign.cli.main import main

    data = tmp_path / "paper.jsonl"
    assert main(synth_command(str(data), 4000, 80, "--write-splits")) == 0
    train, val = tmp_path / "paper.train.jsonl", tmp_path / "paper.validation.jsonl"
    steps = 1500
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "uninterrupted"
    subprocess.run(_train_command(train, val, reference, steps), check=True, env=env, capture_output=True)

    crashed = tmp_path / "crashed"
    command = _train_command(train, val, crashed, steps)
    killed_at = kill_once_checkpointed(command, crashed, 100, env=env, poll_s=0.02)
    assert 100 <= killed_at < steps
    subprocess.run(
        _train_command(train, val, crashed, steps, "--resume"), check=True, env=env, capture_output=True
    )

    assert (crashed / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    for name in ("model.safetensors", "checkpoint/model.safetensors"):
        expected, got = load_tensors(reference / name), load_tensors(crashed / name)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected)


# ----------------------------------------------------------------------------- prior head


def test_a_prior_head_answers_for_empty_contexts_only() -> None:
    torch.manual_seed(0)
    model = PreferenceModel("np-btl", 6, 16, 4, prior_head=True).eval()
    torch.manual_seed(0)
    plain = PreferenceModel("np-btl", 6, 16, 4).eval()
    rest = {k: v for k, v in model.state_dict().items() if k not in model.prior_state_keys()}
    assert model.prior_state_keys() and rest.keys() == plain.state_dict().keys()
    assert all(torch.equal(rest[k], v) for k, v in plain.state_dict().items())  # same initial weights

    chosen, rejected = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [False, False, False]])  # user 1 gave no choices
    z = model.infer(chosen, rejected, mask)
    assert z.shape == (2, model.z_dim) == (2, 5) and z[:, -1].tolist() == [1.0, 0.0]
    a, b = torch.randn(2, 7, 6), torch.randn(2, 7, 6)
    probs = model.prefer_prob(a, b, z)
    assert torch.allclose(probs[0], plain.prefer_prob(a, b, plain.infer(chosen, rejected, mask))[0])
    prior = model.prior_net
    assert torch.allclose(probs[1], torch.sigmoid(prior(a[1]) - prior(b[1]))[:, 0])
    with torch.no_grad():
        model.prior_net[-1].bias += 1.0
        model.prior_net[-1].weight.mul_(-1.0)
    moved = model.prefer_prob(a, b, z)
    assert torch.equal(moved[0], probs[0]) and not torch.allclose(moved[1], probs[1])
    with pytest.raises(ValueError, match="prior_head"):
        PreferenceModel("np-btl-latent", 6, 16, 4, prior_head=True)
    with pytest.raises(ValueError, match="prior_head"):
        load_config(RewardTrainConfig, overrides=["model.kind=btl", "model.prior_head=true"])


def test_a_prior_head_leaves_the_personalised_path_as_it_was(paper_splits, tmp_path: Path) -> None:  # noqa: ANN001
    train, _, _ = paper_splits
    runs = {}
    for name, flag in (("plain", "false"), ("prior", "true")):
        overrides = [
            *SMALL,
            "optim.steps=60",
            "run.save_every=60",
            "run.log_every=20",
            "model.item_dropout=0.3",
            "optim.grad_clip=0.05",  # clipping on every step: the two parts must be clipped apart
            f"model.prior_head={flag}",
        ]
        train_reward_model(load_config(RewardTrainConfig, overrides=overrides), train, None, tmp_path / name)
        runs[name] = load_tensors(tmp_path / name / "model.safetensors")
    prior_keys = {k for k in runs["prior"] if k.startswith("prior_net.")}
    assert prior_keys and runs["prior"].keys() - prior_keys == runs["plain"].keys()
    # Same draws, same gradients, clipped apart: the rest of the model ends bit for bit where it would.
    assert all(torch.equal(runs["prior"][k], v) for k, v in runs["plain"].items())


def test_a_prior_head_is_kept_at_its_own_best_step_at_m0(paper_splits, tmp_path: Path) -> None:  # noqa: ANN001
    train, val, _ = paper_splits
    overrides = [
        *SMALL,
        "model.prior_head=true",
        "optim.steps=240",
        "eval.val_every=20",
        "run.log_every=20",
        "run.save_every=20",
        "eval.contexts=[0,3]",
        "eval.select_by=accuracy",
    ]
    out = tmp_path / "prior"
    cfg = load_config(RewardTrainConfig, overrides=overrides)
    result = train_reward_model(cfg, train, val, out)
    validations = [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_nll" in r
    ]
    best = max(validations, key=lambda r: r["val_accuracy_m3"])  # the rest answers m > 0 only
    best_prior = max(validations, key=lambda r: r["val_accuracy_m0"])
    summary = json.loads((out / "summary.json").read_text())
    assert result.best_step == best["step"] and summary["best_prior_step"] == best_prior["step"]
    # The checks below can only tell the selections apart if the rest's step differs both from the
    # head's and from the step that is best on the average over every m.
    best_on_average = max(validations, key=lambda r: r["val_accuracy"])
    assert best["step"] != best_prior["step"] and best["step"] != best_on_average["step"]
    sampler = EpisodeSampler(val, targets=cfg.eval.targets, max_context=3)
    again = validate(load_reward_model(out)[0], sampler, [0, 3], cfg.eval.val_episodes, cfg.eval.seed)
    assert again["val_accuracy_m0"] == pytest.approx(best_prior["val_accuracy_m0"])
    assert again["val_accuracy_m3"] == pytest.approx(best["val_accuracy_m3"])

    model = npalign.load(str(out))
    z = model.infer_user(torch.empty(0, 1), torch.empty(0, 1))
    assert z.shape == (model.latent_dim,) == (9,) and z[-1] == 0
    items = torch.rand(5, 1)
    assert torch.allclose(model.reward(items, z), model.model.prior_net(items)[:, 0])
    for contexts in ("[3]", "[0]"):
        with pytest.raises(ValueError, match="eval.contexts must hold 0 and some m > 0"):
            train_reward_model(
                load_config(RewardTrainConfig, overrides=[*overrides, f"eval.contexts={contexts}"]),
                train,
                val,
                tmp_path / "bad",
            )


def test_a_resumed_run_keeps_the_prior_heads_best_weights(
    paper_splits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Stopped right after a checkpoint, then resumed: the saved parts equal an uninterrupted run's."""
    import npalign.training.reward as loop

    train, val, _ = paper_splits
    overrides = [*SMALL, "model.prior_head=true", "optim.steps=160", "eval.val_every=20", "run.log_every=20"]
    cfg = load_config(
        RewardTrainConfig,
        overrides=[*overrides, "run.save_every=40", "eval.contexts=[0,3]", "eval.select_by=accuracy"],
    )
    train_reward_model(cfg, train, val, tmp_path / "uninterrupted")

    class Stopped(Exception):
        pass

    real_save = loop.save_checkpoint

    def save_then_stop(directory, model, optimizer, scheduler, state):  # noqa: ANN001, ANN202
        real_save(directory, model, optimizer, scheduler, state)
        if state["step"] == 80:
            raise Stopped

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    with pytest.raises(Stopped):
        train_reward_model(cfg, train, val, tmp_path / "stopped")
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train_reward_model(cfg, train, val, tmp_path / "stopped", resume=True)

    summaries = [
        json.loads((tmp_path / run / "summary.json").read_text()) for run in ("uninterrupted", "stopped")
    ]
    assert [s["best_step"] for s in summaries] == [summaries[0]["best_step"]] * 2
    assert [s["best_prior_step"] for s in summaries] == [summaries[0]["best_prior_step"]] * 2
    steps = sorted([summaries[0]["best_step"], summaries[0]["best_prior_step"]])
    assert steps[0] <= 80 < steps[1], steps  # one part kept from before the stop, one from after
    reference = load_tensors(tmp_path / "uninterrupted" / "model.safetensors")
    resumed = load_tensors(tmp_path / "stopped" / "model.safetensors")
    assert reference.keys() == resumed.keys() and all(
        torch.equal(reference[k], resumed[k]) for k in reference
    )


def test_save_pretrained_and_to_round_trip_through_npalign_load(trained_np: Path, tmp_path: Path) -> None:
    """A predictor saved with save_pretrained loads back through npalign.load and answers identically."""
    import npalign

    predictor = npalign.load(str(trained_np))
    assert predictor.to("cpu") is predictor
    predictor.save_pretrained(tmp_path / "copy")
    again = npalign.load(str(tmp_path / "copy"))
    generator = torch.Generator().manual_seed(0)
    chosen, rejected, items = (torch.rand(n, predictor.embed_dim, generator=generator) for n in (4, 4, 7))
    z, z_again = predictor.infer_user(chosen, rejected), again.infer_user(chosen, rejected)
    assert torch.equal(z, z_again)
    assert torch.equal(predictor.reward(items, z), again.reward(items, z_again))
    with pytest.raises(FileExistsError, match="already holds a run"):
        predictor.save_pretrained(tmp_path / "copy")


def test_a_second_writer_is_refused_and_a_bad_resume_rewrites_nothing(
    paper_splits,
    trained_np: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """The run directory's guarantees: a lock against a concurrent writer, no second run over a first one,
    and a --resume that asks for another model leaves every file of the good run as it was."""
    from npalign.utils.rundir import run_lock

    train, val, _ = paper_splits
    cfg = load_config(
        RewardTrainConfig, overrides=[*SMALL, "model.kind=btl", "optim.steps=5", "optim.warmup_steps=1"]
    )
    with (
        run_lock(tmp_path / "busy"),
        pytest.raises(FileExistsError, match=r"another npalign process \(pid \d+\)"),
    ):
        train_reward_model(cfg, train, val, tmp_path / "busy")
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_reward_model(cfg, train, val, trained_np)
    before = {p: p.read_bytes() for p in trained_np.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(ValueError, match=r"differs from .*config.yaml in section\(s\) \[.*'model'"):
        train_reward_model(cfg, train, val, trained_np, resume=True)
    after = {p: p.read_bytes() for p in trained_np.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_run_files_get_normal_permissions(trained_np: Path) -> None:
    """Atomic writes go through owner-only temporaries; the files they leave are readable like any other."""
    mask = os.umask(0)
    os.umask(mask)
    for path in trained_np.rglob("*"):
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_new_run_that_fails_before_its_first_record_can_be_rerun_into_the_same_out(
    paper_splits,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Bad data found at the first draw (every pair of a user on three prompts, so no context avoids the
    targets' prompts) leaves no config.yaml / run.json behind: the mended command runs into the same --out
    instead of meeting "already holds a run"."""
    train, val, _ = paper_splits
    overrides = [*SMALL, "model.kind=np-btl", "optim.steps=2", "optim.warmup_steps=1"]
    cfg = load_config(RewardTrainConfig, overrides=overrides)
    crowded = dataclasses.replace(train, prompt=train.prompt % 3)
    with pytest.raises(ValueError, match="too few pairs on prompts other than its targets'"):
        train_reward_model(cfg, crowded, val, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "run.json").exists()
    result = train_reward_model(cfg, train, val, tmp_path / "run")
    assert result.steps == 2 and (tmp_path / "run" / "run.json").is_file()

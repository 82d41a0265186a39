"""Synthetic tasks: the paper's 1-D task exactly, generalisations, and the Bayes ceiling."""

from __future__ import annotations

import pytest
import torch

from npalign.data.episodes import EpisodeSampler
from npalign.data.synthetic import BayesOracle, basis_values, closed_form_ceiling, generate, task_spec


def test_paper_task_is_the_papers() -> None:
    spec = task_spec("paper1d")
    data = generate(spec, seed=0)
    assert data.num_pairs == 20000 and data.features is not None and data.features.shape == (40000, 1)
    assert float(data.features.min()) >= 0 and float(data.features.max()) < 1
    y = torch.tensor([[0.2], [0.7]])
    torch.testing.assert_close(basis_values(spec["basis"], y), torch.tensor([[0.2, 0.2], [1.4, 0.3]]))
    weights = torch.tensor(data.meta["user_weights"])  # (U, 2)
    rewards = basis_values(spec["basis"], data.features.double()) @ weights.T.double()  # (N, U)
    pair_user = data.user
    chosen_r = rewards[data.chosen, pair_user]
    rejected_r = rewards[data.rejected, pair_user]
    assert bool((chosen_r >= rejected_r).all())  # the choice is the higher reward
    # the types disagree on about half of all pairs
    both = basis_values(spec["basis"], data.features.double())
    disagree = (
        (both[data.chosen, 0] - both[data.rejected, 0]) * (both[data.chosen, 1] - both[data.rejected, 1])
    ) < 0
    assert abs(float(disagree.double().mean()) - 0.5) < 0.02


def test_closed_form_ceiling() -> None:
    spec = task_spec("paper1d")
    expected = {0: 75.0, 1: 87.5, 3: 96.875, 5: 99.21875, 10: 99.9755859375}
    for m, value in expected.items():
        assert closed_form_ceiling(spec, m) * 100 == pytest.approx(value)
    assert closed_form_ceiling(task_spec("paper1d", noise=0.1), 1) is None
    assert closed_form_ceiling(task_spec("mixture2d"), 1) is None


def test_bayes_oracle_agrees_with_the_closed_form() -> None:
    spec = task_spec("paper1d")
    sampler = EpisodeSampler(generate(spec, seed=0), targets=20, max_context=5)
    oracle = BayesOracle(spec)
    for m in (0, 1, 3):
        accuracy = torch.cat(
            [oracle.episode_accuracy(b) for b in sampler.evaluation_batches(m, 4000, seed=1)]
        )
        sem = float(accuracy.std()) / 4000**0.5
        assert abs(float(accuracy.mean()) - closed_form_ceiling(spec, m)) < 4 * sem + 1e-3


def test_generalised_tasks_noise_and_mixtures() -> None:
    noisy = generate(task_spec("mixture2d", noise=0.05, num_pairs=3000, num_users=30), seed=0)
    clean = generate(task_spec("mixture2d", num_pairs=3000, num_users=30), seed=0)
    assert noisy.features is not None and noisy.features.shape == (6000, 2)
    assert not torch.equal(noisy.chosen, clean.chosen)  # Bradley-Terry sampling flips some choices
    mixture = generate(task_spec("dirichlet2d", num_pairs=3000, num_users=30), seed=0)
    weights = torch.tensor(mixture.meta["user_weights"])
    assert weights.shape == (30, 3) and torch.allclose(weights.sum(1), torch.ones(30, dtype=weights.dtype))
    assert len({tuple(w) for w in weights.tolist()}) == 30  # continuous: every user differs
    oracle = BayesOracle(mixture.meta["task"], num_particles=2000)
    sampler = EpisodeSampler(mixture, targets=20, max_context=10)
    acc = {
        m: float(
            torch.cat([oracle.episode_accuracy(b) for b in sampler.evaluation_batches(m, 600, 0)]).mean()
        )
        for m in (0, 10)
    }
    assert acc[10] > acc[0] + 0.05  # context helps the Bayes predictor


def test_the_bayes_oracle_gives_the_same_accuracy_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    mixture = generate(task_spec("dirichlet2d", num_pairs=3000, num_users=30), seed=0)
    oracle = BayesOracle(mixture.meta["task"], num_particles=500)
    (batch,) = EpisodeSampler(mixture, targets=20, max_context=5).evaluation_batches(5, 50, 0)
    whole = oracle.episode_accuracy(batch)  # 50 x 25 x 500 entries: one block
    monkeypatch.setattr("npalign.data.synthetic.ORACLE_BLOCK", 3 * 25 * 500)  # blocks of 3 episodes
    assert torch.equal(oracle.episode_accuracy(batch), whole) and whole.shape == (50,)


def test_custom_basis_and_bad_specs() -> None:
    spec = task_spec(
        "mixture2d",
        dim=3,
        basis=["coord:2", "linear:1,0,0"],
        types={"a": [1, 0], "b": [0, 1]},
        num_pairs=200,
        num_users=4,
    )
    data = generate(spec, seed=0)
    assert data.features is not None and data.features.shape[1] == 3
    with pytest.raises(ValueError, match="unknown basis function 'wiggle'"):
        task_spec("mixture2d", basis=["wiggle", "coord:0", "coord:1"])
    with pytest.raises(ValueError, match="type 'a' has 1 weights but there are 3"):
        task_spec("mixture2d", types={"a": [1.0]})
    with pytest.raises(ValueError, match="unknown synthetic task"):
        task_spec("nope")

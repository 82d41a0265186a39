"""Active elicitation (`RewardPredictor.next_query`): which pair a trained NP-BTL asks a new user next."""

from __future__ import annotations

import pytest
import torch

import npalign
from helpers import train_small_paper1d
from npalign.data.synthetic import BayesOracle, task_spec
from npalign.evaluation.elicit import bayes_questions
from npalign.evaluation.report import markdown_table
from npalign.inference.api import RewardPredictor
from npalign.inference.elicit import STRATEGIES, Query, info_gain
from npalign.models.reward import PreferenceModel
from npalign.types import Posterior

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on a busy machine

@pytest.fixture(scope="module")
def paper_np(tmp_path_factory: pytest.TempPathFactory) -> RewardPredictor:
    """A small NP-BTL on the paper's two-type 1-D task: the types agree below 0.5 and disagree above."""
    out = train_small_paper1d(tmp_path_factory.mktemp("elicit") / "run", 4000, 80, steps=500)
    model = npalign.load(str(out))
    assert isinstance(model, RewardPredictor)
    return model


def _pairs(low: float, high: float, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` pairs of distinct items drawn uniformly from [low, high], as (count, 1) twice."""
    items = low + (high - low) * torch.rand(count, 2, generator=torch.Generator().manual_seed(seed))
    return items[:, :1], items[:, 1:]


def _type0_context(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A type0 user's choices on pairs the types disagree on (both items above 0.5: type0 picks the larger)."""
    a, b = _pairs(0.55, 0.95, count, seed=1)
    return torch.maximum(a, b), torch.minimum(a, b)


def test_a_pair_whose_answer_cannot_change_the_prediction_scores_lowest(paper_np: RewardPredictor) -> None:
    chosen, rejected = _type0_context(2)
    a, b = _pairs(0.0, 1.0, 30, seed=2)
    a = torch.cat([a, chosen[:1], rejected[1:], torch.tensor([[0.7]])])  # duplicate, reversed duplicate,
    b = torch.cat([b, rejected[:1], chosen[1:], torch.tensor([[0.7]])])  # and two identical items
    uninformative = [30, 31, 32]
    for strategy in ("info-gain", "d-optimal"):
        scores = paper_np.next_query(chosen, rejected, a, b, strategy=strategy).scores
        assert (scores[uninformative] == scores.min()).all(), strategy
        assert (scores[:30] > scores.min()).all(), strategy
    scores = paper_np.next_query(chosen, rejected, a, b, strategy="uncertainty").scores
    assert scores[32] == scores.min()  # p = 1/2 exactly, yet the answer says nothing about the user
    # Identical items score 0 under info-gain by construction (both answers give one context), not by the
    # rule that floors known answers.
    gain = info_gain(Query(paper_np.model, chosen, rejected, a[32:], b[32:], torch.Generator()), a, b)
    assert gain.item() == pytest.approx(0.0, abs=1e-6)


def test_after_no_choices_a_pair_the_types_disagree_on_beats_pairs_they_agree_on(
    paper_np: RewardPredictor,
) -> None:
    conflict_a = torch.tensor([[0.95], [0.9], [0.85], [0.8], [0.75]])  # type0 prefers these, type1 ...
    conflict_b = conflict_a - 0.2  # ... these (both items above 0.5)
    agree_a, agree_b = _pairs(0.05, 0.45, 20, seed=4)  # both types prefer the larger
    a, b = torch.cat([conflict_a, agree_a]), torch.cat([conflict_b, agree_b])
    empty = torch.zeros(0, 1)
    targets = _pairs(0.0, 1.0, 64, seed=9)  # what the answer should help predict: pairs over all items
    choice = paper_np.next_query(empty, empty, a, b, strategy="info-gain", reference=targets)
    assert choice.index < 5
    assert choice.scores[:5].min() > choice.scores[5:].max()


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "bald"])
def test_scores_ignore_the_context_order_and_follow_the_candidate_order(
    paper_np: RewardPredictor, strategy: str
) -> None:
    chosen, rejected = _type0_context(4)
    a, b = _pairs(0.0, 1.0, 80, seed=5)  # more than MAX_REFERENCE: the default pool must not depend on order
    scores = paper_np.next_query(chosen, rejected, a, b, strategy=strategy).scores
    context_order = torch.tensor([2, 0, 3, 1])
    reordered = paper_np.next_query(chosen[context_order], rejected[context_order], a, b, strategy=strategy)
    torch.testing.assert_close(reordered.scores, scores, rtol=1e-4, atol=1e-6)
    if strategy == "random":
        return  # uniform draws in candidate order: reproducible, not equivariant
    order = torch.randperm(80, generator=torch.Generator().manual_seed(6))
    permuted = paper_np.next_query(chosen, rejected, a[order], b[order], strategy=strategy)
    torch.testing.assert_close(permuted.scores, scores[order], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("np-btl", {"prior_head": True, "conditioning": "film", "decoder_depth": 2}),
        ("np-btl", {"attention": True, "num_heads": 4}),
        ("np-btl-latent", {}),
    ],
)
def test_info_gains_shortcuts_give_what_the_plain_model_calls_give(kind: str, options: dict) -> None:
    """info-gain encodes the shared context once and runs the reward network over users in blocks; both
    must reproduce `infer` on the stacked contexts and `log_likelihood` on the broadcast pool."""
    torch.manual_seed(0)
    model = PreferenceModel(kind, 3, 16, 4, **options).eval()
    chosen, rejected, extra_a, extra_b = torch.randn(4, 5, 3)
    stacked = [
        torch.cat([side[None].expand(5, 5, 3), extra[:, None]], 1)
        for side, extra in ((chosen, extra_a), (rejected, extra_b))
    ]
    expected = model.infer(*stacked, torch.ones(5, 6, dtype=torch.bool))
    got = model.infer_with_each_pair(chosen, rejected, extra_a, extra_b)
    if isinstance(expected, Posterior):
        assert isinstance(got, Posterior)
        torch.testing.assert_close(got.mean, expected.mean)
        z = expected.sample(3, torch.Generator().manual_seed(0))  # (S, M, Z)
    else:
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, expected)
        z = expected
    pool_a, pool_b = torch.randn(2, 7, 3)
    whole = model.log_likelihood(pool_a[None], pool_b[None], z)  # (M, R) or (S, M, R)
    for block in (1, 2, 5, 9):
        torch.testing.assert_close(model.shared_pairs_log_likelihood(pool_a, pool_b, z, block), whole)


def test_random_is_reproducible_by_seed(paper_np: RewardPredictor) -> None:
    a, b = _pairs(0.0, 1.0, 50, seed=7)
    empty = torch.zeros(0, 1)
    first = paper_np.next_query(empty, empty, a, b, strategy="random", seed=3)
    again = paper_np.next_query(empty, empty, a, b, strategy="random", seed=3)
    other = paper_np.next_query(empty, empty, a, b, strategy="random", seed=4)
    torch.testing.assert_close(first.scores, again.scores)
    assert not torch.equal(first.scores, other.scores)


def test_bald_is_for_the_latent_kind_only(paper_np: RewardPredictor) -> None:
    a, b = _pairs(0.0, 1.0, 5, seed=8)
    with pytest.raises(ValueError, match="latent NP-BTL"):
        paper_np.next_query([], [], a, b, strategy="bald")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"candidates_a": torch.zeros(0, 1), "candidates_b": torch.zeros(0, 1)}, "empty"),
        (
            {"candidates_a": torch.zeros(4, 2), "candidates_b": torch.zeros(4, 2)},
            r"candidates_a must .*\(N, 1\)",
        ),
        ({"context_chosen": torch.zeros(2, 3), "context_rejected": torch.zeros(2, 3)}, "context_chosen must"),
        ({"candidates_a": torch.tensor([[float("nan")]] * 4)}, "candidates_a contains NaN"),
        ({"context_rejected": torch.tensor([[float("inf")]] * 2)}, "context_rejected contains NaN or inf"),
        ({"candidates_b": torch.zeros(3, 1)}, "differ in shape"),
        ({"context_chosen": torch.zeros(1, 2, 1), "context_rejected": torch.zeros(1, 2, 1)}, "for one user"),
        ({"strategy": "greedy"}, "strategy='greedy' is not one of"),
        ({"reference": (torch.zeros(0, 1), torch.zeros(0, 1))}, "reference is empty"),
        ({"reference": (torch.zeros(3, 1), torch.zeros(2, 1))}, "reference.* differ in shape"),
        ({"reference": (torch.zeros(3, 1), torch.zeros(3, 1)), "strategy": "random"}, "info-gain's pool"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(
    paper_np: RewardPredictor, change: dict, match: str
) -> None:
    arguments = {
        "context_chosen": torch.full((2, 1), 0.8),
        "context_rejected": torch.full((2, 1), 0.6),
        "candidates_a": torch.rand(4, 1),
        "candidates_b": torch.rand(4, 1),
    } | change
    with pytest.raises(ValueError, match=match):
        paper_np.next_query(**arguments)


def test_a_z_that_does_not_fit_the_items_is_refused_naming_it(paper_np: RewardPredictor) -> None:
    """reward / prefer_prob: z (Z,) or (B, Z) for B item sets, finite; a Posterior only for the latent kind."""
    items = torch.rand(5, 1)
    z = paper_np.infer_user(torch.full((2, 1), 0.8), torch.full((2, 1), 0.6))
    width = paper_np.latent_dim
    for bad, match in [
        (torch.zeros(3, width), r"z has shape \(3, "),  # three users' z for one set of items
        (torch.zeros(1, 1, width), r"z has shape \(1, 1, "),
        (torch.tensor(0.0), r"z has shape \(\)"),
        (torch.full((width,), float("nan")), "z contains NaN or inf"),
    ]:
        with pytest.raises(ValueError, match=match):
            paper_np.reward(items, bad)
    with pytest.raises(TypeError, match="z must be a tensor"):
        paper_np.prefer_prob(items, items, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only np-btl-latent"):
        paper_np.reward(items, Posterior(z, torch.ones_like(z)))
    assert paper_np.reward(torch.rand(2, 5, 1), torch.stack([z, z])).shape == (2, 5)


def test_the_bayes_questioner_asks_the_pair_the_types_disagree_on_first_then_nothing_is_worth_asking() -> (
    None
):
    oracle = BayesOracle(task_spec("paper1d"))
    pool_a = torch.tensor([[0.1], [0.3], [0.9], [0.2]])  # both types prefer the larger item below 0.5 ...
    pool_b = torch.tensor([[0.2], [0.4], [0.7], [0.45]])  # ... and disagree on (0.9, 0.7)
    a_wins = pool_a[:, 0] > pool_b[:, 0]  # a type0 user: prefers the larger item everywhere
    assert bayes_questions(oracle, pool_a, pool_b, a_wins, steps=3) == [2, 0, 1]  # then ties: first in order
    posterior = oracle.posterior(pool_a[2:3], pool_b[2:3])  # (0.9 > 0.7) rules type1 out
    torch.testing.assert_close(posterior, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_the_report_gives_the_ece_of_every_model_at_every_m() -> None:
    """Elicitation trusts the model's probabilities, so results.md shows their calibration per m."""
    cell = {"mean": 90.0, "sem": 1.0}
    results = {
        "models": {
            "np-btl": {"accuracy": {"0": cell, "3": cell}, "ece": {"0": 0.031, "3": 0.0123}},
            "btl": {"accuracy": {"0": cell, "3": cell}, "ece": {"0": 0.2, "3": 0.25}},
        }
    }
    table = markdown_table(results)
    assert "| np-btl | 0.0310 | 0.0123 |" in table and "| btl | 0.2000 | 0.2500 |" in table
    assert "ECE" not in markdown_table({"models": {"x": {"accuracy": {"0": cell}}}})

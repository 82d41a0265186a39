"""Episode sampling: disjoint context/targets, determinism, reshuffling, clear errors."""

from __future__ import annotations

import pytest
import torch

from npalign.data.episodes import EpisodeSampler
from npalign.data.synthetic import generate, task_spec
from npalign.types import PreferenceSet


@pytest.fixture(scope="module")
def paper_data() -> PreferenceSet:
    return generate(task_spec("paper1d", num_pairs=4000, num_users=80), seed=0)


def test_context_and_targets_never_overlap(paper_data: PreferenceSet) -> None:
    sampler = EpisodeSampler(paper_data, targets=20, max_context=10, batch_users=64, seed=0)
    for step in range(50):
        batch = sampler.batch_at(step)
        for b in range(batch.user.shape[0]):
            context = set(batch.context_pairs[b][batch.context_mask[b]].tolist())
            targets = set(batch.target_pairs[b].tolist())
            assert not context & targets
            assert len(targets) == 20
            user = int(batch.user[b])
            assert all(int(paper_data.user[p]) == user for p in context | targets)
    for m in (0, 1, 5, 10):
        for batch in sampler.evaluation_batches(m, 300, seed=3):
            assert int(batch.context_mask.sum(1).min()) == m == batch.context_mask.shape[1]
            for b in range(batch.user.shape[0]):
                assert not set(batch.context_pairs[b].tolist()) & set(batch.target_pairs[b].tolist())


def test_features_match_the_pairs_drawn(paper_data: PreferenceSet) -> None:
    sampler = EpisodeSampler(paper_data, targets=5, max_context=4, batch_users=8, seed=1)
    batch = sampler.batch_at(0)
    assert paper_data.features is not None
    real = batch.context_mask
    expected = paper_data.features[paper_data.chosen[batch.context_pairs[real]]]
    torch.testing.assert_close(batch.context_chosen[real], expected)
    assert (batch.context_chosen[~real] == 0).all()
    torch.testing.assert_close(
        batch.target_rejected, paper_data.features[paper_data.rejected[batch.target_pairs]]
    )


def test_sampling_is_deterministic_and_reshuffled_every_epoch(paper_data: PreferenceSet) -> None:
    first = EpisodeSampler(paper_data, targets=20, max_context=10, batch_users=16, seed=7)
    second = EpisodeSampler(paper_data, targets=20, max_context=10, batch_users=16, seed=7)
    for step in (0, 3, 11):
        a, b = first.batch_at(step), second.batch_at(step)
        assert torch.equal(a.target_pairs, b.target_pairs) and torch.equal(a.context_mask, b.context_mask)
    other_seed = EpisodeSampler(paper_data, targets=20, max_context=10, batch_users=16, seed=8)
    assert not torch.equal(first.batch_at(0).target_pairs, other_seed.batch_at(0).target_pairs)
    per_epoch = first.steps_per_epoch
    epoch0 = torch.cat([first.batch_at(s).user for s in range(per_epoch)])
    epoch1 = torch.cat([first.batch_at(per_epoch + s).user for s in range(per_epoch)])
    assert not torch.equal(epoch0, epoch1)  # the release replayed the same user order every epoch
    # every user appears within an epoch (the order is a permutation, repeated to fill the steps)
    assert set(epoch0.tolist()) == set(range(paper_data.num_users))


def test_context_sizes_cover_the_training_range(paper_data: PreferenceSet) -> None:
    sampler = EpisodeSampler(paper_data, targets=20, min_context=2, max_context=6, batch_users=64, seed=0)
    sizes = torch.cat([sampler.batch_at(s).context_mask.sum(1) for s in range(20)])
    assert int(sizes.min()) == 2 and int(sizes.max()) == 6


def test_evaluation_balances_user_types(paper_data: PreferenceSet) -> None:
    sampler = EpisodeSampler(paper_data, targets=20, max_context=10)
    types = torch.cat([b.user_type for b in sampler.evaluation_batches(3, 1001, seed=0, chunk=100)])
    counts = torch.bincount(types)
    assert counts.tolist() == [501, 500]


def test_user_with_too_few_pairs_is_a_clear_error(paper_data: PreferenceSet) -> None:
    with pytest.raises(
        ValueError, match=r"fewer pairs than context \+ targets = 10 \+ 45 = 55.*'user0' \(50 pairs\)"
    ):
        EpisodeSampler(paper_data, targets=45, max_context=10)


def test_text_items_without_features_are_refused() -> None:
    data = PreferenceSet(
        chosen=torch.tensor([0]),
        rejected=torch.tensor([1]),
        user=torch.tensor([0]),
        prompt=torch.tensor([0]),
        user_ids=["u"],
        user_types=[""],
        prompt_ids=["p"],
        item_prompts=["p", "p"],
        item_responses=["a", "b"],
    )
    with pytest.raises(ValueError, match="embed it first"):
        EpisodeSampler(data, targets=1, max_context=0)


def test_context_never_shares_a_prompt_with_the_targets() -> None:
    """Text data: several pairs per prompt; a context pair on a target's prompt would leak the answer."""
    pairs = 600
    data = PreferenceSet(
        chosen=torch.arange(pairs) * 2, rejected=torch.arange(pairs) * 2 + 1,
        user=torch.arange(pairs) % 3, prompt=(torch.arange(pairs) // 3) % 40,  # 40 prompts, 5 pairs each per user
        user_ids=["a", "b", "c"], user_types=["x", "y", "z"], prompt_ids=[f"q{i}" for i in range(40)],
        features=torch.randn(2 * pairs, 2),
    )
    sampler = EpisodeSampler(data, targets=10, max_context=10, batch_users=3, seed=0)
    for step in range(30):
        batch = sampler.batch_at(step)
        for b in range(3):
            context = batch.context_pairs[b][batch.context_mask[b]]
            assert not set(data.prompt[context].tolist()) & set(data.prompt[batch.target_pairs[b]].tolist())

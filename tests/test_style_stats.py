"""Style statistics beside the sentence embedding ("<embedder>+style", embedding.style_stats)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from npalign.embedding.embedders import build_embedder
from npalign.embedding.features import embed_texts
from npalign.embedding.style_stats import (
    STYLE_GAIN,
    STYLE_STATISTICS,
    list_lines,
    num_sentences,
    split_style_suffix,
    style_statistics,
)

SHORT = "Cats sleep a lot. They nap in the sun."
LONG = SHORT + " Kittens sleep even more. Old cats like warm places. Some cats sleep twenty hours a day."
LISTED = "- Cats sleep a lot.\n- They nap in the sun.\n- Kittens sleep even more."
PROSE = "Cats sleep a lot. They nap in the sun. Kittens sleep even more."


def test_statistics_on_hand_written_texts() -> None:
    assert split_style_suffix("minilm+style") == ("minilm", True)
    assert split_style_suffix("minilm") == ("minilm", False)
    assert num_sentences(SHORT) == 2 and num_sentences(LONG) == 5 and num_sentences(LISTED) == 3
    assert num_sentences("no end mark") == 1 and list_lines(LISTED) == 3 and list_lines(PROSE) == 0
    stats = style_statistics([SHORT, LONG, LISTED, PROSE]) / STYLE_GAIN  # (4, 4)
    assert stats.shape == (4, len(STYLE_STATISTICS))
    words, sentences, share, lines = stats.T
    assert words[1] > words[0] and sentences[1] > sentences[0]  # length: long over short
    assert share[2] == pytest.approx(1.0) and share[3] == pytest.approx(-1.0)  # format: list vs prose
    assert lines[2] == pytest.approx(torch.log1p(torch.tensor(3.0)).item() - 1.0)
    # The list and its paragraph have the same words: only the format statistics tell them apart.
    assert words[2] == pytest.approx(words[3].item())


def test_style_embedder_appends_statistics_and_shares_the_plain_cache(tmp_path: Path) -> None:
    plain, styled = build_embedder("minilm"), build_embedder("minilm+style")
    assert (styled.name, styled.feature_name, styled.revision) == ("minilm", "minilm+style", plain.revision)
    assert styled.feature_dim == plain.dim + len(STYLE_STATISTICS) and plain.feature_dim == plain.dim
    prompts, responses = ["Tell me about cats."] * 2, [LISTED, PROSE]
    base, _ = embed_texts(prompts, responses, plain, cache_dir=tmp_path)
    features, report = embed_texts(prompts, responses, styled, cache_dir=tmp_path)
    assert report.from_cache == 2 and report.embedded == 0  # the same vectors, from the same folder
    assert features.shape == (2, plain.dim + len(STYLE_STATISTICS))
    assert torch.equal(features[:, : plain.dim], base)
    assert torch.equal(features[:, plain.dim :], style_statistics(responses))
    share = plain.dim + STYLE_STATISTICS.index("list_share")
    assert features[0, share] - features[1, share] == pytest.approx(2 * STYLE_GAIN)  # all lines vs none

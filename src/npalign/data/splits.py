"""The prompt hash that assigns splits, shared by the dataset builders and `split_by_prompt` (L1, data)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLIT_NAMES = ("train", "validation", "test")


def prompt_position(prompt: str, seed: int) -> float:
    """A stable position in [0, 1) of a prompt under a seed: the first 8 bytes of sha256("seed:prompt")."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prompt_part(prompt: str, seed: int, fractions: Sequence[float]) -> int:
    """Index of the part a prompt falls in: the first k with position < fractions[0] + ... + fractions[k].

    A position within rounding of 1.0 (fractions that sum to 1 - 1e-12) falls in the last part.
    """
    position = prompt_position(prompt, seed)
    bound = 0.0
    for part, fraction in enumerate(fractions):
        bound += fraction
        if position < bound:
            return part
    return len(fractions) - 1


def prompt_split(prompt: str, *, seed: int, fractions: Sequence[float]) -> str:
    """The split ("train", "validation" or "test") of a prompt under (train, validation, test) fractions.

    The same assignment as `npalign.data.loaders.split_by_prompt(..., fractions, seed)`, so a
    builder's split column and a later split of the same fractions agree.
    """
    if len(fractions) != len(SPLIT_NAMES):
        raise ValueError(f"fractions={list(fractions)} must be three (train, validation, test) fractions.")
    return SPLIT_NAMES[prompt_part(prompt, seed, fractions)]

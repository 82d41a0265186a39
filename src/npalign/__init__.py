"""npalign: few-shot steerable alignment with neural processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from npalign.inference.api import RewardPredictor
    from npalign.inference.policy import PolicyRunner
    from npalign.inference.text import TextRewardPredictor


def load(path: str, **kwargs: Any) -> RewardPredictor | TextRewardPredictor | PolicyRunner:
    """Load any run directory for inference; see `npalign.inference.api.load`.

    A reward model comes back as a RewardPredictor (a TextRewardPredictor, which embeds prompts and
    responses itself, when it was trained on text); a policy as a PolicyRunner.
    """
    from npalign.inference.api import load as _load

    return _load(path, **kwargs)

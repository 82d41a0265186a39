"""npalign: few-shot steerable alignment with neural processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from npalign.inference.api import RewardPredictor
    from npalign.inference.text import TextRewardPredictor


def load(path: str, **kwargs: Any) -> RewardPredictor | TextRewardPredictor:
    """Load a trained reward model directory for inference; see `npalign.inference.api.load`.

    Models trained on text come back as a TextRewardPredictor that embeds prompts and responses itself.
    """
    from npalign.inference.api import load as _load

    return _load(path, **kwargs)

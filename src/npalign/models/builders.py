"""Build models from configs; configs stay at the edges (L1, models)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from npalign.config import ModelConfig, from_dict
from npalign.models.reward import PreferenceModel
from npalign.utils.io import load_state_strict, load_tensors
from npalign.utils.rundir import REWARD_WEIGHTS, read_run


def build_reward_model(cfg: ModelConfig, embed_dim: int) -> PreferenceModel:
    """A PreferenceModel of `cfg.kind` over `embed_dim`-wide item features."""
    options = asdict(cfg)  # the model section's keys are PreferenceModel's arguments, by name
    return PreferenceModel(options.pop("kind"), embed_dim, **options)


RELEASE_SHAPE = {"encoder_depth": 2, "decoder_depth": 1}
"""The depths of a run whose run.json predates them (the defaults were these until issue 19)."""


def load_reward_model(path: str | Path) -> tuple[PreferenceModel, dict[str, Any]]:
    """Rebuild a trained reward model from its run directory and load its weights strictly.

    Returns:
        The model in eval mode and the run.json record (model settings, embed_dim, embedder, types).
    """
    path = Path(path)
    record = read_run(path, "reward")
    # Runs written before the depths were settings had the release's shape, not today's defaults.
    settings = {**RELEASE_SHAPE, **record["model"]}
    model = build_reward_model(from_dict(ModelConfig, settings), int(record["embed_dim"]))
    load_state_strict(model, load_tensors(path / REWARD_WEIGHTS), f"reward model {path}")
    return model.eval(), record

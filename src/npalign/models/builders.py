"""Build models from configs; configs stay at the edges (L1, models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npalign.config import ModelConfig, from_dict
from npalign.models.reward import PreferenceModel
from npalign.utils.io import load_state_strict, load_tensors, read_json


def build_reward_model(cfg: ModelConfig, embed_dim: int) -> PreferenceModel:
    """A PreferenceModel of `cfg.kind` over `embed_dim`-wide item features."""
    return PreferenceModel(
        cfg.kind,
        embed_dim,
        cfg.hidden_dim,
        cfg.latent_dim,
        attention=cfg.attention,
        num_heads=cfg.num_heads,
        min_scale=cfg.min_scale,
        pooling=cfg.pooling,
        encoder_depth=cfg.encoder_depth,
        decoder_depth=cfg.decoder_depth,
        item_dropout=cfg.item_dropout,
        kl_weight=cfg.kl_weight,
        num_samples=cfg.num_samples,
        dpl_cdf=cfg.dpl_cdf,
        prior_head=cfg.prior_head,
        conditioning=cfg.conditioning,
    )


def load_reward_model(path: str | Path) -> tuple[PreferenceModel, dict[str, Any]]:
    """Rebuild a trained reward model from its run directory and load its weights strictly.

    Returns:
        The model in eval mode and the `model_config.json` record (kind, embed_dim, embedder, types).
    """
    path = Path(path)
    record_path = path / "model_config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; pass the --out directory of `npalign train`.")
    if not record_path.is_file():
        policy = (
            " (it holds an NP-DPO policy: use evaluate-dpo or generate)"
            if (path / "run.json").is_file()
            else ""
        )
        raise FileNotFoundError(
            f"{record_path} is missing; {path} is not an npalign reward-model directory{policy}. Pass the --out "
            "directory of `npalign train`."
        )
    record = read_json(record_path)
    if record.get("format_version") != 1:
        raise ValueError(f"{record_path}: unsupported format_version {record.get('format_version')!r}.")
    model = build_reward_model(from_dict(ModelConfig, record["model"]), int(record["embed_dim"]))
    load_state_strict(model, load_tensors(path / "model.safetensors"), f"reward model {path}")
    return model.eval(), record

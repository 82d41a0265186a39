"""Typed run configs for both jobs, filled from YAML and key=value overrides (L0, config).

    npalign train-reward --config configs/reward/np_btl_dsp.yaml optim.lr=3e-4
    npalign train-dpo --config configs/dpo/np_dpo_dsp_smollm2.yaml dpo.beta=0.1

Shared sections (`data`, `embedder`, `episodes`, `optim`, `eval`, `run`) compose the reward config
(`RewardTrainConfig`, plus `model`) and the policy config (`PolicyTrainConfig`, plus `model`, `dpo` and
`mode`); a job's own defaults are subclasses of the shared sections. Unknown keys and wrong types stop
the run; cross-field checks say how to fix the problem. Paths in a config file are relative to that file.
"""

from npalign.config.jobs import (
    DPO_MODES,
    MODEL_KINDS,
    DPOLossConfig,
    ModelConfig,
    PolicyDataConfig,
    PolicyEmbedderConfig,
    PolicyEpisodeConfig,
    PolicyEvalConfig,
    PolicyModelConfig,
    PolicyOptimConfig,
    PolicyRunConfig,
    PolicyTrainConfig,
    RewardEvalConfig,
    RewardOptimConfig,
    RewardTrainConfig,
)
from npalign.config.loading import PATH_KEYS, from_dict, load_config, merge, parse_overrides, to_dict
from npalign.config.sections import (
    TRACKERS,
    DataConfig,
    EmbedderConfig,
    EpisodeConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
)

__all__ = [
    "DPO_MODES",
    "MODEL_KINDS",
    "PATH_KEYS",
    "TRACKERS",
    "DPOLossConfig",
    "DataConfig",
    "EmbedderConfig",
    "EpisodeConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "PolicyDataConfig",
    "PolicyEmbedderConfig",
    "PolicyEpisodeConfig",
    "PolicyEvalConfig",
    "PolicyModelConfig",
    "PolicyOptimConfig",
    "PolicyRunConfig",
    "PolicyTrainConfig",
    "RewardEvalConfig",
    "RewardOptimConfig",
    "RewardTrainConfig",
    "RunConfig",
    "from_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "to_dict",
]

"""Scratch sweep used to pick the NP-BTL demo settings (kept so the choice can be rerun)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from npalign.config import TrainConfig, load_config
from npalign.data.loaders import split_by_user
from npalign.data.synthetic import closed_form_ceiling, generate, task_spec
from npalign.evaluation.reward import evaluate_reward_model
from npalign.models.builders import load_reward_model
from npalign.training.reward import train_reward_model

parser = argparse.ArgumentParser()
parser.add_argument("overrides", nargs="*")
parser.add_argument("--episodes", type=int, default=10000)
args = parser.parse_args()
spec = task_spec("paper1d")
train, val, _ = split_by_user(generate(spec, seed=0), (0.8, 0.1, 0.1), seed=0)
test = generate(spec, seed=1)
cfg = load_config(TrainConfig, overrides=["progress=false", *args.overrides])
with tempfile.TemporaryDirectory() as tmp:
    result = train_reward_model(cfg, train, val, tmp + "/run")
    model, _ = load_reward_model(tmp + "/run")
    acc = evaluate_reward_model(model, test, contexts=[0, 1, 3, 5, 10], episodes=args.episodes, targets=20, seed=1234)
gaps = {m: round(v["mean"] - 100 * closed_form_ceiling(spec, int(m)), 2) for m, v in acc["accuracy"].items()}
print(json.dumps({"overrides": args.overrides, "seconds": round(result.seconds, 1), "ms_per_step": round(result.ms_per_step, 1),
                  "best_step": result.best_step, "gap": gaps}), file=sys.stdout)

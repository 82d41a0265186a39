"""Sweep used to pick NP-BTL settings (kept so each choice can be rerun).

    python benchmarks/tune_np.py model.kind=np-btl optim.steps=3000 optim.lr=3e-3
    python benchmarks/tune_np.py --task mixture2d --task-option num_pairs=60000 --task-option num_users=1200 model.decoder_depth=3

Prints one JSON line: the overrides, training time, best step and the gap to the Bayes ceiling per m.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from npalign.config import RewardTrainConfig, load_config
from npalign.data.loaders import split_by_user
from npalign.data.synthetic import generate, task_spec
from npalign.evaluation.reward import bayes_ceiling, evaluate_reward_model
from npalign.models.builders import load_reward_model
from npalign.training.reward import train_reward_model

parser = argparse.ArgumentParser()
parser.add_argument("overrides", nargs="*")
parser.add_argument("--episodes", type=int, default=10000)
parser.add_argument("--task", default="paper1d")
parser.add_argument("--task-option", action="append", default=[], help="key=value (an integer) overriding the task; repeatable")
args = parser.parse_args()
spec = task_spec(args.task, **{k: int(v) for k, v in (o.split("=", 1) for o in args.task_option)})
train, val, _ = split_by_user(generate(spec, seed=0), (0.8, 0.1, 0.1), seed=0)
test = generate(spec, seed=1)
cfg = load_config(RewardTrainConfig, overrides=["run.progress=false", *args.overrides])
with tempfile.TemporaryDirectory() as tmp:
    result = train_reward_model(cfg, train, val, tmp + "/run")
    model, _ = load_reward_model(tmp + "/run")
    acc = evaluate_reward_model(model, test, contexts=[0, 1, 3, 5, 10], episodes=args.episodes, targets=20, seed=1234)
ceiling = bayes_ceiling(test, contexts=[0, 1, 3, 5, 10], episodes=args.episodes, targets=20, seed=1234)
assert ceiling is not None
gaps = {m: round(v["mean"] - ceiling["ceiling"][m], 2) for m, v in acc["accuracy"].items()}
print(json.dumps({"overrides": args.overrides, "seconds": round(result.seconds, 1), "ms_per_step": round(result.ms_per_step, 1),
                  "best_step": result.best_step, "gap": gaps}), file=sys.stdout)

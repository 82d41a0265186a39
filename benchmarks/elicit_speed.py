"""Time `next_query` choosing among 1,000 candidate pairs with 10 context pairs, per strategy (issue 19: <= 50 ms).

Trains the paper1d NP-BTL at its release sizes (hidden 256, latent 64; `configs/reward/np_btl_paper1d.yaml`)
for a few steps (speed does not depend on how well it is trained) unless `--model DIR` names a run, then
prints the median wall-clock ms of each strategy over `--repeats` calls.

    python benchmarks/elicit_speed.py                   # or --model runs/np_btl_paper1d
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import npalign
from npalign.config import RewardTrainConfig, load_config
from npalign.data.loaders import split_by_user
from npalign.data.synthetic import generate, task_spec
from npalign.inference.api import RewardPredictor
from npalign.inference.elicit import STRATEGIES
from npalign.training.reward import train_reward_model


def paper1d_model(steps: int) -> RewardPredictor:
    data = generate(task_spec("paper1d", num_pairs=2000, num_users=40), seed=0)
    train, val, _ = split_by_user(data, (0.8, 0.1, 0.1), seed=0)
    out = Path(tempfile.mkdtemp()) / "run"
    overrides = [
        f"optim.steps={steps}",
        "optim.warmup_steps=0",
        f"eval.val_every={steps}",
        "eval.val_episodes=8",
        "run.progress=false",
    ]
    cfg = load_config(RewardTrainConfig, Path("configs/reward/np_btl_paper1d.yaml"), overrides=overrides)
    train_reward_model(cfg, train, val, out)
    model = npalign.load(str(out))
    assert isinstance(model, RewardPredictor)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a feature-level reward run; default: train a paper1d NP-BTL briefly")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = npalign.load(args.model) if args.model else paper1d_model(args.steps)
    assert isinstance(model, RewardPredictor)
    generator = torch.Generator().manual_seed(0)
    D = model.embed_dim
    chosen, rejected = torch.rand(2, args.context, D, generator=generator)
    a, b = torch.rand(2, args.candidates, D, generator=generator)
    print(
        f"{model.kind}, D={D}, N={args.candidates} candidates, C={args.context}, threads={torch.get_num_threads()}"
    )
    for strategy in STRATEGIES:
        if strategy == "bald" and model.kind != "np-btl-latent":
            continue
        model.next_query(chosen, rejected, a, b, strategy=strategy)  # warm-up
        times, cpu_times = [], []
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            model.next_query(chosen, rejected, a, b, strategy=strategy)
            times.append(1000 * (time.perf_counter() - start))
            cpu_times.append(1000 * (time.process_time() - cpu_start))
        # CPU time (all threads) beside wall time: on a shared machine the wall clock also counts waiting.
        print(
            f"{strategy:12s} median {statistics.median(times):7.2f} ms  (min {min(times):.2f}; "
            f"CPU median {statistics.median(cpu_times):.2f} ms)"
        )


if __name__ == "__main__":
    main()

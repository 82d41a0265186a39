"""Time `next_query` choosing among 1,000 candidate pairs with 10 context pairs, per strategy (issue 19: <= 50 ms).

Trains the paper1d NP-BTL at its release sizes (hidden 256, latent 64; `configs/reward/np_btl_paper1d.yaml`)
for a few steps (speed does not depend on how well it is trained) unless `--model DIR` names a run, then
prints the median wall-clock ms of each strategy over `--repeats` calls, with 2 and then 1 torch threads;
writes them to benchmarks/results/elicit/speed.json. Time it on an idle machine: other jobs' threads
count in the wall clock.

    python benchmarks/elicit_speed.py                   # or --model runs/np_btl_paper1d
"""

from __future__ import annotations

import argparse
import os
import platform
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
from npalign.utils.io import write_json

RESULT = Path(__file__).parent / "results" / "elicit" / "speed.json"


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
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts to time")
    parser.add_argument("--out", default=str(RESULT), help="JSON of the medians (\"\" = print only)")
    args = parser.parse_args()
    model = npalign.load(args.model) if args.model else paper1d_model(args.steps)
    assert isinstance(model, RewardPredictor)
    generator = torch.Generator().manual_seed(0)
    D = model.embed_dim
    chosen, rejected = torch.rand(2, args.context, D, generator=generator)
    a, b = torch.rand(2, args.candidates, D, generator=generator)
    record: dict = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "torch": torch.__version__,
        "model": {"kind": model.kind, "embed_dim": D},
        "candidates": args.candidates,
        "context": args.context,
        "repeats": args.repeats,
        "median_ms": {},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"{model.kind}, D={D}, N={args.candidates} candidates, C={args.context}, threads={threads}")
        medians = record["median_ms"][str(threads)] = {}
        for strategy in STRATEGIES:
            if strategy == "bald" and model.kind != "np-btl-latent":
                continue
            for _ in range(3):  # warm-up: the allocator settles on its buffers
                model.next_query(chosen, rejected, a, b, strategy=strategy)
            times, cpu_times = [], []
            for _ in range(args.repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                model.next_query(chosen, rejected, a, b, strategy=strategy)
                times.append(1000 * (time.perf_counter() - start))
                cpu_times.append(1000 * (time.process_time() - cpu_start))
            medians[strategy] = round(statistics.median(times), 2)
            # CPU time (all threads) beside wall time: on a shared machine the wall clock also counts waiting.
            print(
                f"{strategy:12s} median {statistics.median(times):7.2f} ms  (min {min(times):.2f}; "
                f"CPU median {statistics.median(cpu_times):.2f} ms)"
            )
    if args.out:
        write_json(record, Path(args.out))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

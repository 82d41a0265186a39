"""Speed figures of the core issue, on this machine.

1. ms per optimisation step at the paper's configuration (64 users x 20 targets, hidden 256, context
   0-10 pairs), data sampling included, for each model kind (median over timed steps).
2. Inferring z from 10 pairs and scoring 1,000 items through the public API (median over many runs).

    python benchmarks/speed.py [--steps 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

import npalign
from npalign.config import RewardTrainConfig, load_config
from npalign.data.episodes import EpisodeSampler
from npalign.data.synthetic import generate, task_spec
from npalign.models.builders import build_reward_model
from npalign.training.reward import train_reward_model


def step_times(kind: str, steps: int) -> list[float]:
    """Wall time of full steps (sample a batch, forward, backward, AdamW) at the paper's configuration."""
    data = generate(task_spec("paper1d"), seed=0)
    # The paper's configuration: the release's shape (the library's default depths are 4 and 3).
    shape = ["model.encoder_depth=2", "model.decoder_depth=1"]
    cfg = load_config(RewardTrainConfig, overrides=[f"model.kind={kind}", "model.hidden_dim=256", *shape])
    sampler = EpisodeSampler(data, targets=cfg.episodes.targets, max_context=cfg.episodes.max_context,
                             min_context=cfg.episodes.min_context, batch_users=cfg.episodes.batch_users)
    torch.manual_seed(0)
    model = build_reward_model(cfg.model, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 20):
        start = time.perf_counter()
        batch = sampler.batch_at(step)
        loss, _ = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[20:]  # warm-up excluded


def inference_times(runs: int) -> list[float]:
    data = generate(task_spec("paper1d", num_pairs=4000, num_users=80), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(RewardTrainConfig, overrides=["model.kind=np-btl", "optim.steps=10", "optim.warmup_steps=1",
                                                  "model.encoder_depth=2", "model.decoder_depth=1",
                                                  "run.progress=false", "run.save_every=10", "run.log_every=10"])
        train_reward_model(cfg, data, None, tmp)
        model = npalign.load(tmp)
        chosen, rejected, items = torch.rand(10, 1), torch.rand(10, 1), torch.rand(1000, 1)
        times = []
        for _ in range(runs + 20):
            start = time.perf_counter()
            z = model.infer_user(chosen, rejected)
            model.reward(items, z)
            times.append(time.perf_counter() - start)
    return times[20:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    figures: dict[str, float] = {"torch_threads": torch.get_num_threads()}
    for kind in ("btl", "dpl", "np-btl", "np-btl-latent"):
        times = step_times(kind, args.steps)
        figures[f"{kind}_ms_per_step_median"] = 1000 * statistics.median(times)
        figures[f"{kind}_ms_per_step_p90"] = 1000 * statistics.quantiles(times, n=10)[-1]
    times = inference_times(args.runs)
    figures["infer_10_pairs_score_1000_items_ms_median"] = 1000 * statistics.median(times)
    for name, value in figures.items():
        print(f"{name:45s} {value:8.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()

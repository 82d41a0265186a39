"""Validation-only sweep on DSP (how the settings of benchmarks/dsp.py were chosen).

    python benchmarks/dsp.py --embedder smollm2-mean      # once: builds the data and fills the cache
    python benchmarks/tune_dsp.py --embedder smollm2-mean --tag E optim.steps=2000 episodes.max_context=30
    python benchmarks/tune_dsp.py --embedder smollm2-mean64 --model oracle --tag O1 model.item_dropout=0.5
    python benchmarks/tune_dsp.py --embedder smollm2-mean64 --data out/bench/splits/mean64_3/dsp.jsonl \
        --tag FILM_s3 model.conditioning=film    # on split seed 3's validation prompts

Trains a model with dsp.py's settings (configs/benchmarks/dsp.yaml, or --settings) plus the given overrides on the train split, keeps the best
validation step, and prints one JSON line with validation accuracy per m (800 episodes per m). `--model`
picks NP-BTL (default), BTL (mixed) or the oracle (one BTL per domain, each scored on its own domain's
validation episodes). The test split is never read. Needs the dataset file and embedding cache that
benchmarks/dsp.py leaves behind.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from pipeline import (
    REPO,
    TextBenchmarkSettings,
    add_settings_argument,
    embedded_splits,
    load_settings,
    train_oracles,
    train_run,
    type_subset,
)

from npalign.evaluation.reward import evaluate_reward_model
from npalign.models.builders import load_reward_model
from npalign.types import PreferenceSet

EVAL_SEED = 99  # validation episodes of every tuning run (not dsp.py's test episodes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="key=value on top of dsp.py's settings for --model")
    add_settings_argument(parser, "dsp")
    parser.add_argument("--model", choices=("np-btl", "btl", "oracle"), default="np-btl")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--tag", default="run", help="names the run folder under out/bench/tune_dsp/")
    parser.add_argument("--episodes", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0, help="training seed (NP-BTL is seed-sensitive on DSP)")
    parser.add_argument(
        "--data",
        default=None,
        help="the dataset file dsp.py built (default: the published split's); another --split-seed's file "
        "tunes on that split's validation prompts",
    )
    args = parser.parse_args()
    settings = load_settings(args.settings, TextBenchmarkSettings)
    torch.set_num_threads(1)
    data_file = (
        Path(args.data) if args.data else REPO / "out" / "bench" / f"dsp_{args.embedder}" / "dsp.jsonl"
    )
    if not data_file.exists():
        raise SystemExit(
            f"{data_file} is missing: run `python benchmarks/dsp.py --embedder {args.embedder}` first."
        )
    train, val = embedded_splits(data_file, args.embedder, ("train", "validation")).values()
    run_dir = REPO / "out" / "bench" / "tune_dsp" / f"{args.embedder}_{args.tag}_seed{args.seed}"
    if args.model == "oracle":
        print(
            json.dumps(
                {
                    "tag": args.tag,
                    "seed": args.seed,
                    "overrides": args.overrides,
                    **oracle(args, settings, train, val, run_dir),
                }
            )
        )
        return
    overrides = settings.models["NP-BTL" if args.model == "np-btl" else "BTL (mixed)"]
    cfg = settings.config(args.embedder, [*overrides, *args.overrides], seed=args.seed)
    info = train_run(cfg, train, val, run_dir)
    model, _ = load_reward_model(run_dir)
    accuracy = evaluate_reward_model(
        model,
        val,
        contexts=settings.contexts,
        episodes=args.episodes,
        targets=settings.targets,
        seed=EVAL_SEED,
    )["accuracy"]
    print(
        json.dumps(
            {
                "tag": args.tag,
                "seed": args.seed,
                "overrides": args.overrides,
                "best_step": info["best_step"],
                "val_nll": info["val_nll_at_best"],
                "val_accuracy": {m: round(v["mean"], 1) for m, v in accuracy.items()},
                "val_accuracy_m10_by_type": {k: round(v, 1) for k, v in accuracy["10"]["by_type"].items()},
            }
        )
    )


def oracle(
    args: argparse.Namespace,
    settings: TextBenchmarkSettings,
    train: PreferenceSet,
    val: PreferenceSet,
    run_dir: Path,
) -> dict:
    """One BTL per domain, each trained on its domain and scored on its domain's validation episodes."""
    cfg = settings.config(args.embedder, [*settings.oracle, *args.overrides], seed=args.seed)
    models, records = train_oracles(cfg, train, val, run_dir)
    by_type = {}
    for name, model in models.items():
        scored = evaluate_reward_model(
            model,
            type_subset(val, name),
            contexts=[0],
            episodes=args.episodes,
            targets=settings.targets,
            seed=EVAL_SEED,
        )
        by_type[name] = round(scored["accuracy"]["0"]["mean"], 1)
    return {
        "best_step": {name: record["best_step"] for name, record in records.items()},
        "val_accuracy": {"0": round(sum(by_type.values()) / len(by_type), 1)},
        "val_accuracy_by_type": by_type,
    }


if __name__ == "__main__":
    main()

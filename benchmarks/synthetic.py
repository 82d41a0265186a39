"""Synthetic benchmark: every reward model against the Bayes ceiling on a task (issue: npalign core).

    python benchmarks/synthetic.py --task paper1d     # BTL, DPL, NP-BTL, latent NP-BTL on the 1-D task
    python benchmarks/synthetic.py --task mixture2d   # the 3-type 2-D task

Writes results.json, results.md and accuracy.png under benchmarks/results/<task>/ and prints the
table with each model's largest gap to the ceiling.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from npalign.cli.demo import run_synthetic_benchmark
from npalign.evaluation.report import markdown_table

MODELS = {
    "paper1d": {
        "btl": ["model.kind=btl", "optim.steps=300"],
        "dpl": ["model.kind=dpl", "optim.steps=300"],
        "np-btl": ["model.kind=np-btl", "optim.steps=3000", "optim.lr=3e-3"],
        "np-btl-latent": ["model.kind=np-btl-latent", "optim.steps=4000", "optim.lr=3e-3", "model.kl_weight=1.0"],
    },
    # Deeper per-pair encoder (a pair can say "this rules type k out" before pooling) and decoder (the
    # bump reward's kink), trained longer: the gap at m = 3 went -2.6 -> -0.8 (sweep: benchmarks/tune_np.py).
    "mixture2d": {
        "btl": ["model.kind=btl", "optim.steps=500"],
        "np-btl": [
            "model.kind=np-btl",
            "optim.steps=8000",
            "optim.lr=1e-3",
            "model.encoder_depth=4",
            "model.decoder_depth=3",
        ],
    },
    "dirichlet2d": {
        "btl": ["model.kind=btl", "optim.steps=500"],
        "np-btl": ["model.kind=np-btl", "optim.steps=4000", "optim.lr=1e-3"],
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="paper1d", choices=sorted(MODELS))
    parser.add_argument("--out", default=None, help="default benchmarks/results/<task>")
    parser.add_argument("--episodes", type=int, default=10000)
    parser.add_argument("--only", nargs="+", default=None, help="a subset of the models")
    args = parser.parse_args()
    models = {k: v for k, v in MODELS[args.task].items() if args.only is None or k in args.only}
    out = Path(args.out or Path(__file__).parent / "results" / args.task)
    run = run_synthetic_benchmark(out, task=args.task, models=models, episodes=args.episodes, progress=False)
    print(markdown_table(run.results))
    ceiling = run.results.get("ceiling", {})
    for name, record in run.results["models"].items():
        gaps = {m: record["accuracy"][m]["mean"] - ceiling[m] for m in ceiling}
        worst_sem = max(v["sem"] for v in record["accuracy"].values())
        print(f"{name}: gap to ceiling per m {({m: round(g, 2) for m, g in gaps.items()})}, largest s.e.m. {worst_sem:.3f}, "
              f"train {run.results['timings'][name]['train_seconds']:.1f} s")
    print(f"total {run.seconds:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()

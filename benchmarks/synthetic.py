"""Synthetic benchmark: every reward model against the Bayes ceiling on a task (issue: npalign core).

    python benchmarks/synthetic.py --task paper1d     # BTL, DPL, NP-BTL, latent NP-BTL on the 1-D task
    python benchmarks/synthetic.py --task mixture2d   # the 3-type 2-D task

Writes results.json, results.md and accuracy.png under benchmarks/results/<task>/ and prints the
table with each model's largest gap to the ceiling. Each task's models and step budgets:
configs/benchmarks/synthetic.yaml (`--settings FILE` for another).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import SyntheticSettings, add_settings_argument, load_settings

from npalign.cli.demo import run_synthetic_benchmark
from npalign.evaluation.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_argument(parser, "synthetic")
    parser.add_argument(
        "--task", default="paper1d", help="a task of the settings (paper1d, mixture2d, dirichlet2d)"
    )
    parser.add_argument("--out", default=None, help="default benchmarks/results/<task>")
    parser.add_argument("--episodes", type=int, default=None, help="test episodes per m (default: settings)")
    parser.add_argument("--only", nargs="+", default=None, help="a subset of the models")
    args = parser.parse_args()
    settings = load_settings(args.settings, SyntheticSettings)
    if args.task not in settings.tasks:
        parser.error(f"--task {args.task}: {args.settings} has {sorted(settings.tasks)}.")
    episodes = settings.episodes if args.episodes is None else args.episodes
    models = {k: v for k, v in settings.tasks[args.task].items() if args.only is None or k in args.only}
    out = Path(args.out or Path(__file__).parent / "results" / args.task)
    run = run_synthetic_benchmark(out, task=args.task, models=models, episodes=episodes, progress=False)
    print(markdown_table(run.results))
    ceiling = run.results.get("ceiling", {})
    for name, record in run.results["models"].items():
        gaps = {m: record["accuracy"][m]["mean"] - ceiling[m] for m in ceiling}
        worst_sem = max(v["sem"] for v in record["accuracy"].values())
        print(
            f"{name}: gap to ceiling per m { ({m: round(g, 2) for m, g in gaps.items()}) }, largest s.e.m. {worst_sem:.3f}, "
            f"train {run.results['timings'][name]['train_seconds']:.1f} s"
        )
    print(f"total {run.seconds:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()

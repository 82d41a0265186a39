"""Relabelled HH end to end: the DSP table (BTL mixed, BTL per type, DPL, NP-BTL against m) on helpful vs harmless.

    python benchmarks/hh_relabeled.py --embedder minilm     # ~8,000 texts to embed: ~10-17 min on 2 cores

The HH-RLHF test pairs relabelled by GPT-3.5 under one objective each (`build_dataset("hh-relabeled")`,
the DPL paper's data): two users, `helpful` and `harmless`, split by prompt 80/10/10. Models, settings
and the evaluation protocol are those of `benchmarks/dsp.py` (this script reuses its `run_pipeline`);
only the per-type oracle's name changes.

What the data allows: each pair was labelled under one objective only, so the two types never disagree
on the same pair; a single reward can fit both labellings at once, and a context can help only through
how the two types' pairs and labelling rules differ, not by resolving a conflict on shared pairs.

Writes results.json, results.md and accuracy.png under benchmarks/results/hh_relabeled_<embedder>/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: reuse dsp.py beside it

from dsp import MODELS, ORACLE_OVERRIDES, REPO, run_pipeline  # noqa: E402

from npalign.evaluation.report import markdown_table  # noqa: E402

ORACLE = "BTL per type (oracle)"
NOTE = (
    "Each pair is labelled under one objective only (helpful or harmless), so the two user types never "
    "disagree on the same pair: one reward can fit both labellings, and a context can only help through "
    "how the types' pairs and labelling rules differ, not by resolving conflicts on shared pairs."
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embedder", default="minilm", help="minilm, smollm2, smollm2-mean or a model folder"
    )
    parser.add_argument("--out", default=None, help="default benchmarks/results/hh_relabeled_<embedder>")
    parser.add_argument("--runs", default=None, help="run directories (default out/bench/hh_<embedder>)")
    parser.add_argument("--cache", default=None, help="embedding cache root (default: the npalign cache)")
    parser.add_argument(
        "--fresh-cache",
        action="store_true",
        help="embed into an empty cache under --runs (times the embedding)",
    )
    parser.add_argument("--episodes", type=int, default=4000, help="evaluation episodes per m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training and evaluation (0: torch's default)",
    )
    args = parser.parse_args()
    slug = Path(args.embedder).name
    out_dir = Path(args.out or REPO / "benchmarks" / "results" / f"hh_relabeled_{slug}")
    runs_dir = Path(args.runs or REPO / "out" / "bench" / f"hh_{slug}")
    cache_dir = Path(args.cache) if args.cache else None
    if args.fresh_cache:
        cache_dir = runs_dir / "fresh_cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
    results = run_pipeline(
        dataset="hh-relabeled",
        embedder=args.embedder,
        out_dir=out_dir,
        runs_dir=runs_dir,
        cache_dir=cache_dir,
        episodes=args.episodes,
        seed=args.seed,
        models=MODELS,
        oracle_overrides=ORACLE_OVERRIDES,
        oracle_name=ORACLE,
        title=f"Relabelled HH ({args.embedder}): accuracy on held-out prompts",
        notes=[NOTE],
        train_threads=args.threads or None,
    )
    print(markdown_table(results))
    print(json.dumps({"targets": results["targets"], "timings": results["timings"]}, indent=2))
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()

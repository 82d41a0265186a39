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

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: reuse dsp.py beside it

from dsp import MODELS, ORACLE_OVERRIDES, pipeline_arguments, run_pipeline  # noqa: E402

from npalign.evaluation.report import markdown_table  # noqa: E402

ORACLE = "BTL per type (oracle)"
NOTE = (
    "Each pair is labelled under one objective only (helpful or harmless), so the two user types never "
    "disagree on the same pair: one reward can fit both labellings, and a context can only help through "
    "how the types' pairs and labelling rules differ, not by resolving conflicts on shared pairs."
)


def main() -> None:
    args, out_dir, runs_dir, cache_dir = pipeline_arguments(__doc__ or "", "hh_relabeled", "hh")
    results = run_pipeline(
        dataset="hh-relabeled",
        embedder=args.embedder,
        out_dir=out_dir,
        runs_dir=runs_dir,
        cache_dir=cache_dir,
        episodes=args.episodes,
        seed=args.seed,
        split_seed=args.split_seed,
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

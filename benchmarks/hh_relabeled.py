"""Relabelled HH end to end: the DSP table (BTL mixed, BTL per type, DPL, NP-BTL against m) on helpful vs harmless.

    python benchmarks/hh_relabeled.py --embedder minilm     # ~8,000 texts to embed: ~10-17 min on 2 cores

The HH-RLHF test pairs relabelled by GPT-3.5 under one objective each (`build_dataset("hh-relabeled")`,
the DPL paper's data): two users, `helpful` and `harmless`, split by prompt 80/10/10. Models, settings
and the evaluation protocol are those of `benchmarks/dsp.py` (configs/benchmarks/hh_relabeled.yaml starts
from dsp.yaml; both run `run_pipeline` of benchmarks/pipeline.py); only the per-type oracle's name changes.

What the data allows: each pair was labelled under one objective only, so the two types never disagree
on the same pair; a single reward can fit both labellings at once, and a context can help only through
how the two types' pairs and labelling rules differ, not by resolving a conflict on shared pairs.

Writes results.json, results.md and accuracy.png under benchmarks/results/hh_relabeled_<embedder>/.
"""

from __future__ import annotations

from pipeline import text_benchmark_main

NOTE = (
    "Each pair is labelled under one objective only (helpful or harmless), so the two user types never "
    "disagree on the same pair: one reward can fit both labellings, and a context can only help through "
    "how the types' pairs and labelling rules differ, not by resolving conflicts on shared pairs."
)


def main() -> None:
    text_benchmark_main(
        __doc__ or "",
        "hh_relabeled",
        "hh",
        title="Relabelled HH ({embedder}): accuracy on held-out prompts",
        notes=[NOTE],
    )


if __name__ == "__main__":
    main()

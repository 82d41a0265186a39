"""DSP end to end: build -> embed -> BTL (mixed), BTL per domain (oracle), DPL, NP-BTL -> accuracy against m.

    python benchmarks/dsp.py --embedder minilm                 # about 4-6 min on a 2-core CPU
    python benchmarks/dsp.py --embedder smollm2-mean64         # about 8 min, 4.5 of them embedding
    python benchmarks/dsp.py --embedder smollm2-mean           # about 20 min, 16 of them embedding
    python benchmarks/dsp.py --embedder minilm --fresh-cache   # time the embedding stage from scratch
    python benchmarks/dsp.py --embedder smollm2-mean64 --split-seed 1 --out out/splits/mean64_1 \
        --runs out/bench/splits/mean64_1                       # another split of the prompts

The Domain-Specific Preference data (`build_dataset("dsp")`, all four pairs per domain and query, the
Alpaca `normal` response included) is split by query into train / validation / test (80/10/10). Each
of the four domains is one user who prefers its own response to every other response to the same query,
so the domains disagree on the same prompts. Models, all on frozen text embeddings:

* BTL (mixed): one reward for everyone, trained on every domain's pairs.
* BTL per domain (oracle): four BTLs, each trained on one domain's pairs and scored on that domain's
  test pairs; the model that knows the user.
* DPL: mean and variance per response on the mixed data.
* NP-BTL: infers z from m of the user's own test pairs on other queries (context and targets never share
  a query), then scores the targets.
* Per-type BTLs, type inferred (Bayes): the oracle's four models *not* told the domain: the posterior
  over domains from the likelihood of the same m context pairs, and the posterior-weighted prediction.
  It has exactly NP-BTL's information, so it shows how much of the oracle m pairs of these embeddings
  can reach.

Every model is scored on the very same episodes (per m: users balanced over domains, m context pairs,
20 disjoint targets), the oracle by sending each episode to its domain's BTL, so differences between
models are paired. Each run keeps the weights of its best validation step. The s.e.m. is over episodes
and does not include the luck of which ~185 test pairs per domain exist; see `setup` in results.json.

Settings (models, overrides, seeds, episode counts): configs/benchmarks/dsp.yaml (`--settings FILE` for
another; `--check` validates and prints them). The pipeline is `run_pipeline` in benchmarks/pipeline.py,
which `benchmarks/hh_relabeled.py` reuses for the relabelled HH data. Writes results.json (with the wall
time of every stage), results.md and accuracy.png under benchmarks/results/dsp_<embedder>/; run directories
go under out/bench/ (git-ignored).
"""

from __future__ import annotations

from pipeline import text_benchmark_main


def main() -> None:
    text_benchmark_main(__doc__ or "", "dsp", "dsp", title="DSP ({embedder}): accuracy on held-out queries")


if __name__ == "__main__":
    main()

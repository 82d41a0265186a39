"""Spread over training seeds of a text benchmark: mean, min and max accuracy per model and m.

    python benchmarks/dsp.py --embedder minilm --seed 1 --out out/seeds/minilm_1 --runs out/bench/seeds/minilm_1
    python benchmarks/dsp.py --embedder minilm --seed 2 --out out/seeds/minilm_2 --runs out/bench/seeds/minilm_2
    python benchmarks/seed_table.py benchmarks/results/dsp_minilm out/seeds/minilm_1 out/seeds/minilm_2

Each argument is a results folder (or results.json) written by benchmarks/dsp.py or hh_relabeled.py on
the same data and evaluation episodes with a different `--seed`. Prints a markdown table, and the
issue's two gaps (NP-BTL at m = 10 against the oracle, at m = 0 against mixed BTL) per seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean


def load(path: str) -> dict:
    file = Path(path)
    return json.loads((file / "results.json" if file.is_dir() else file).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results folders or results.json files, one per seed")
    args = parser.parse_args()
    runs = [load(p) for p in args.results]
    models = list(runs[0]["models"])
    contexts = list(runs[0]["models"][models[0]]["accuracy"])
    for run, path in zip(runs, args.results, strict=True):
        if list(run["models"]) != models:
            raise SystemExit(f"{path}: models {list(run['models'])} differ from the first run's {models}.")
    print(f"{len(runs)} seeds: mean (min-max) accuracy, %\n")
    print("| model | " + " | ".join(f"m = {m}" for m in contexts) + " |")
    print("|---|" + "---|" * len(contexts))
    for model in models:
        cells = []
        for m in contexts:
            values = [run["models"][model]["accuracy"][m]["mean"] for run in runs]
            cells.append(f"{mean(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {model} | " + " | ".join(cells) + " |")
    if all("np_m10_minus_oracle_m10" in run["targets"] for run in runs):
        print()
        for run, path in zip(runs, args.results, strict=True):  # the gaps dsp.py's target_checks wrote
            m10, m0 = run["targets"]["np_m10_minus_oracle_m10"], run["targets"]["np_m0_minus_btl_mixed_m0"]
            print(f"{path}: NP-BTL m=10 minus oracle {m10:+.2f}; NP-BTL m=0 minus mixed BTL {m0:+.2f}")


if __name__ == "__main__":
    main()

"""Spread over training seeds or splits of a text benchmark: mean, min and max accuracy per model and m.

    python benchmarks/dsp.py --embedder minilm --seed 1 --out out/seeds/minilm_1 --runs out/bench/seeds/minilm_1
    python benchmarks/dsp.py --embedder minilm --seed 2 --out out/seeds/minilm_2 --runs out/bench/seeds/minilm_2
    python benchmarks/seed_table.py benchmarks/results/dsp_minilm out/seeds/minilm_1 out/seeds/minilm_2

Each argument is a results folder (or results.json) written by benchmarks/dsp.py or hh_relabeled.py with
the same models and another `--seed` (training) or `--split-seed` (which prompts are held out). Prints a
markdown table, then the issue's two gaps (NP-BTL at m = 10 against the oracle, at m = 0 against mixed
BTL), the type-inferred reference's m = 10 gap to the oracle and the oracle's accuracy, per run and as
mean ± s.e.m. over the runs. `--out FILE.md` also writes it all to a file.
"""

from __future__ import annotations

import argparse
from statistics import mean

from pipeline import load_results, spread, write_tables

COLUMNS = {  # results.json's targets entry -> (what it measures, its format)
    "np_m10_minus_oracle_m10": ("NP-BTL m = 10 minus oracle", "+.2f"),
    "type_inferred_m10_minus_oracle_m10": ("type inferred (Bayes) m = 10 minus oracle", "+.2f"),
    "np_m0_minus_btl_mixed_m0": ("NP-BTL m = 0 minus mixed BTL", "+.2f"),
    "oracle_accuracy_mean_over_m": ("oracle (mean over m)", ".2f"),
}

CHECKS = {  # results.json's targets entry -> the target it checks
    "np_m10_within_1_point_of_oracle": "NP-BTL m = 10 within 1 point of the oracle",
    "np_m0_within_1_point_of_btl": "NP-BTL m = 0 within 1 point of mixed BTL",
    "oracle_at_least_80": "oracle at least 80 %",
}


def table(runs: list[dict], paths: list[str]) -> list[str]:
    """The markdown lines: accuracy per model and m over the runs, then the gaps per run and on average."""
    models = list(runs[0]["models"])
    contexts = list(runs[0]["models"][models[0]]["accuracy"])
    for run, path in zip(runs, paths, strict=True):
        if list(run["models"]) != models:
            raise SystemExit(f"{path}: models {list(run['models'])} differ from the first run's {models}.")
    lines = [f"{len(runs)} runs: mean (min-max) accuracy, %", ""]
    lines += [
        "| model | " + " | ".join(f"m = {m}" for m in contexts) + " |",
        "|---|" + "---|" * len(contexts),
    ]
    for model in models:
        cells = []
        for m in contexts:
            values = [run["models"][model]["accuracy"][m]["mean"] for run in runs]
            cells.append(f"{mean(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    keys = [key for key in COLUMNS if all(key in run["targets"] for run in runs)]  # what target_checks wrote
    if keys:
        lines += [
            "",
            "| run | " + " | ".join(COLUMNS[key][0] for key in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for run, path in zip(runs, paths, strict=True):
            cells = [format(run["targets"][key], COLUMNS[key][1]) for key in keys]
            lines.append(f"| {path} | " + " | ".join(cells) + " |")
        cells = [spread([run["targets"][key] for run in runs], COLUMNS[key][1]) for key in keys]
        lines.append("| **mean ± s.e.m. over the runs** | " + " | ".join(cells) + " |")
    met = [
        f"{label} {sum(bool(run['targets'][key]) for run in runs)} of {len(runs)}"
        for key, label in CHECKS.items()
        if all(key in run["targets"] for run in runs)
    ]
    if met:
        lines += ["", "Runs that meet each target: " + "; ".join(met) + "."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="results folders or results.json files, one per run")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    parser.add_argument("--title", default=None, help="the markdown file's heading")
    parser.add_argument("--note", default=None, help="a paragraph for the file: how the runs were made")
    args = parser.parse_args()
    lines = table([load_results(p) for p in args.results], args.results)
    print("\n".join(lines))
    if args.out:
        write_tables(args.out, lines, heading=args.title, note=args.note)


if __name__ == "__main__":
    main()

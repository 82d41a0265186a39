"""The style benchmark's targets over training seeds: each seed's figure, their mean ± s.e.m., met on the mean.

    python benchmarks/dpo_style.py                                          # seed 0 (the recipe's)
    python benchmarks/dpo_style.py --train-seed 1 --policy-only --work out/dpo_style_seed1 \\
        --out benchmarks/results/dpo_style_seed1
    python benchmarks/dpo_style_seeds.py benchmarks/results/dpo_style benchmarks/results/dpo_style_seed1 \\
        --out benchmarks/results/dpo_style_seeds.md

Each argument is a results folder of benchmarks/dpo_style.py (its REPORT.json), one per training seed, with
the same settings: the same data, contexts and prompts, so that only the training differs. A target is met
when it holds on the mean over the seeds (the issue's numbers; the brief's rule on noise). A seed run with
--policy-only has no baseline: the baseline's column averages the seeds that have one and says how many.
"""

from __future__ import annotations

import argparse
from statistics import mean
from typing import Any

from dpo_style import monotone
from pipeline import load_results, spread, write_tables


def _row(label: str, values: list[float], fmt: str, target: str, met: bool | None) -> str:
    cells = " | ".join(format(v, fmt) for v in values)
    verdict = "-" if met is None else ("met" if met else "**not met**")
    return f"| {label} | {cells} | {spread(values, fmt)} | {target} | {verdict} |"


def table(reports: list[dict[str, Any]], paths: list[str]) -> list[str]:
    """Markdown lines: one row per figure, a column per seed, the mean ± s.e.m. and the verdict on the mean."""
    users = reports[0]["users"]
    for report, path in zip(reports, paths, strict=True):
        if report["users"] != users or report["quick"]:
            raise SystemExit(f"{path}: not a full run with the users {users}; compare like with like.")
    seeds = [str(r.get("train_seed", "?")) for r in reports]
    checks = [r["summary"]["checks"] for r in reports]
    lines = [
        f"{len(reports)} training seeds ({', '.join(seeds)}); greedy answers unless said. Kept steps: "
        + ", ".join(str(r["policy"].get("best_step")) for r in reports)
        + "; training minutes: "
        + ", ".join(f"{r['policy']['seconds_this_run'] / 60:.0f}" for r in reports)
        + ".",
        "",
        "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± s.e.m. | target | on the mean |",
        "|---|" + "---|" * (len(seeds) + 3),
    ]
    ratios = [c["length_ratio_worst"] for c in checks]
    if None in ratios:
        cells = " | ".join("every answer of a context loops" if v is None else f"{v:.2f}" for v in ratios)
        lines.append(
            f"| worst concise / detailed median ratio | {cells} | not measured | <= 0.7 | **not met** |"
        )
    else:
        lines.append(
            _row("worst concise / detailed median ratio", ratios, ".2f", "<= 0.7", mean(ratios) <= 0.7)
        )
    lists = [c["list_users_list_share"] for c in checks]
    prose = [c["prose_users_list_share"] for c in checks]
    lines.append(
        _row("list users' answers with >= 2 list lines (%)", lists, ".1f", ">= 70", mean(lists) >= 70)
    )
    lines.append(
        _row("prose users' answers with >= 2 list lines (%)", prose, ".1f", "<= 20", mean(prose) <= 20)
    )
    for user in users:
        own = [c["own_match_beats_others"][user]["own"] for c in checks]
        rivals = {
            "best other user": [c["own_match_beats_others"][user]["best_other"] for c in checks],
            "m = 0": [c["own_match_beats_others"][user]["m=0"] for c in checks],
        }
        lines.append(
            _row(f"{user}: own answers match both its axes (%)", own, ".1f", "above every rival", None)
        )
        for name, values in rivals.items():
            lines.append(
                _row(f"{user}: {name}'s answers (%)", values, ".1f", "< own", mean(values) < mean(own))
            )
        baseline = [c["own_match_beats_others"][user]["baseline"] for c in checks]  # None: --policy-only
        trained = [v for v in baseline if v is not None]
        if trained:
            cells = " | ".join("-" if v is None else f"{v:.1f}" for v in baseline)
            verdict = "met" if mean(trained) < mean(own) else "**not met**"
            lines.append(f"| {user}: baseline's answers (%) | {cells} | {spread(trained, '.1f')} "
                         f"(the {len(trained)} seed(s) with a baseline) | < own | {verdict} |")  # fmt: skip
    for user in [*users, "m=0"]:
        loops = [r["summary"]["per_user"][user]["repeats_share"] for r in reports]
        lines.append(_row(f"{user}: answers that repeat themselves (%)", loops, ".1f", "-", None))
    for path in reports[0]["summary"]["paths"]:
        points = [r["summary"]["paths"][path] for r in reports]
        ts = [p["t"] for p in points[0]]
        for key, label in (("median_tokens", "median tokens"), ("list_share", "list share (%)")):
            curve = [mean(run[i][key] for run in points) for i in range(len(ts))]
            shape = monotone(curve)
            per_seed = "; ".join(
                f"seed {s}: " + " → ".join(f"{p[key]:.0f}" for p in run)
                for s, run in zip(seeds, points, strict=True)
            )
            lines.append(f"| path {path}, {label} at t = {', '.join(f'{t:g}' for t in ts)} | {per_seed} "
                         + "| " * (len(seeds) - 1)
                         + f"| mean {' → '.join(f'{v:.1f}' for v in curve)} | monotone | "
                         f"{'met' if shape in ('increasing', 'decreasing') else '**not met**'} ({shape}) |")  # fmt: skip
    contexts = sorted(int(m) for m in reports[0]["accuracy"]["accuracy"])
    first, last = str(contexts[0]), str(contexts[-1])
    types = sorted(reports[0]["accuracy"]["accuracy"][first]["by_type"])
    for user_type in types:
        rises = [
            r["accuracy"]["accuracy"][last]["by_type"][user_type]
            - r["accuracy"]["accuracy"][first]["by_type"][user_type]
            for r in reports
        ]
        lines.append(_row(f"implicit accuracy m = {first} → {last}, {user_type} (points)", rises, "+.1f", ">= +10",
                          mean(rises) >= 10))  # fmt: skip
    overall = [
        r["accuracy"]["accuracy"][last]["mean"] - r["accuracy"]["accuracy"][first]["mean"] for r in reports
    ]
    lines.append(
        _row(f"implicit accuracy m = {first} → {last}, all types (points)", overall, "+.1f", "-", None)
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "results", nargs="+", help="results folders of benchmarks/dpo_style.py, one per training seed"
    )
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    lines = table([load_results(p, "REPORT.json") for p in args.results], args.results)
    print("\n".join(lines))
    if args.out:
        heading = "NP-DPO style steering over training seeds (benchmarks/dpo_style_seeds.py)"
        write_tables(args.out, lines, heading=heading)


if __name__ == "__main__":
    main()

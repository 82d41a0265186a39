"""NP-BTL with no settings at all on the three synthetic tasks, against the Bayes ceiling (issue 19, item 5).

    python benchmarks/defaults.py                      # paper1d, mixture2d, dirichlet2d, about 40 min
    python benchmarks/defaults.py --task mixture2d     # one task; the README keeps the others' figures

Each task is trained with `model.kind=np-btl` and nothing else (the library's defaults: the validation
plateau stop included) and scored on fresh users exactly as benchmarks/synthetic.py scores the tuned
settings. Writes benchmarks/results/defaults/: <task>/ (results.json, results.md, accuracy.png, as
`npalign demo`), results.json (every task so far) and README.md, which checks issue 19's lines: within 1
point of the ceiling at m >= 3 and 2 points at m = 1 on mixture2d and dirichlet2d, within 0.5 at every m
on paper1d. `--set KEY=VALUE ...` tries other settings (the README then names them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from npalign.cli.demo import run_synthetic_benchmark
from npalign.evaluation.report import markdown_table
from npalign.utils.io import write_json

RESULTS = Path(__file__).parent / "results" / "defaults"
TASKS = ("paper1d", "mixture2d", "dirichlet2d")
NAME = "np-btl (defaults)"


def gaps(results: dict[str, Any]) -> dict[str, float]:
    """The model's accuracy minus the ceiling at each m (points)."""
    record, ceiling = results["models"][NAME]["accuracy"], results["ceiling"]
    return {m: record[m]["mean"] - ceiling[m] for m in ceiling}


def targets_met(task: str, results: dict[str, Any]) -> list[str]:
    """Issue 19's lines for `task`, each saying what was measured and whether it holds."""
    gap = gaps(results)
    if task == "paper1d":
        worst = min(gap.values())
        return [
            f"within 0.5 point of the ceiling at every m (largest gap {worst:+.2f}): {'yes' if worst >= -0.5 else 'NO'}"
        ]
    at_one = gap["1"]
    beyond = min(g for m, g in gap.items() if int(m) >= 3)
    return [
        f"within 2 points at m = 1 (gap {at_one:+.2f}): {'yes' if at_one >= -2 else 'NO'}",
        f"within 1 point at m >= 3 (largest gap {beyond:+.2f}): {'yes' if beyond >= -1 else 'NO'}",
    ]


def write_readme(all_results: dict[str, Any]) -> None:
    parts = [
        "# NP-BTL with no settings on three synthetic tasks (issue 19, item 5)\n",
        "    python benchmarks/defaults.py\n",
        "Written by `benchmarks/defaults.py`: `npalign train-reward --model np-btl` with nothing else set "
        "(the defaults stop on a validation plateau), scored on fresh users against the Bayes ceiling on "
        "the same episodes, as `benchmarks/synthetic.py` scores the tuned settings. Accuracy in percent, "
        "mean ± s.e.m. over episodes. Training times are wall times on one thread of the 2-core CPU, which "
        "other jobs shared while these ran.\n",
    ]
    for task in sorted(all_results, key=lambda name: TASKS.index(name) if name in TASKS else len(TASKS)):
        record = all_results[task]
        results, timing = record["results"], record["results"]["timings"][NAME]
        extra = f" Settings beyond the defaults: `{' '.join(record['set'])}`." if record["set"] else ""
        seconds = timing["train_seconds"]
        when = (
            f"in {seconds:.0f} s"
            if seconds >= 1
            else "in an earlier run of the script (resumed, nothing left)"
        )
        parts.append(
            f"## {task}\n\nTrained {timing['steps']} steps {when}, "
            f"{'stopped on the validation plateau' if record['stopped'] == 'plateau' else 'to the step cap'}; kept step "
            f"{record['best_step']}.{extra}\n"
        )
        parts.append(markdown_table(results))
        gap_cells = " | ".join(f"{g:+.2f}" for g in gaps(results).values())
        parts.append(f"\nGap to the ceiling per m: {gap_cells}\n")
        parts.append("\n".join(f"- {line}" for line in record["targets_met"]) + "\n")
        parts.append(f"\n![{task}]({task}/accuracy.png)\n")
    (RESULTS / "README.md").write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--episodes", type=int, default=10000, help="test episodes per m")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings to try")
    args = parser.parse_args()
    path = RESULTS / "results.json"
    for task in args.task:
        out = RESULTS / task
        run = run_synthetic_benchmark(
            out,
            task=task,
            models={NAME: ["model.kind=np-btl", *args.set]},
            episodes=args.episodes,
            progress=False,
        )
        summary = json.loads((out / "runs" / NAME / "summary.json").read_text())
        # Read again just before writing: several tasks may run at once, each in its own process.
        all_results = json.loads(path.read_text()) if path.exists() else {}
        all_results[task] = {
            "results": run.results,
            "set": args.set,
            "stopped": summary["stopped"],
            "best_step": summary["best_step"],
            "targets_met": targets_met(task, run.results),
        }
        write_json(all_results, path)
        write_readme(all_results)
        print(markdown_table(run.results))
        print("\n".join(all_results[task]["targets_met"]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

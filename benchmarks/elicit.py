"""Active elicitation against random questions and the Bayes-optimal questioner on synthetic tasks (issue 19).

    python benchmarks/elicit.py --task paper1d        # trains the task's NP-BTL (or reuses runs/<task>)
    python benchmarks/elicit.py --task mixture2d --model runs/np_btl_mixture2d

For each test user (fresh draws from the task, balanced over types) every strategy asks k = 1, 2, 3, 5, 10
questions one at a time from the user's pool, sees the true answers and the model scores held-out targets
(`npalign.evaluation.elicit`). Writes benchmarks/results/elicit/: results.json (every task run so far),
README.md (a table per task with mean ± s.e.m. over users, and issue 19's targets checked) and
<task>.png. Settings: configs/benchmarks/elicit.yaml.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pipeline import ElicitSettings, add_settings_argument, load_settings

from npalign.cli.demo import split_synthetic
from npalign.config import RewardTrainConfig, load_config
from npalign.data.synthetic import generate, task_spec
from npalign.evaluation.elicit import BAYES_QUESTIONER, table_view
from npalign.evaluation.report import markdown_table, plot_accuracy
from npalign.models.builders import load_reward_model
from npalign.training.reward import train_reward_model
from npalign.utils.io import write_json

RESULTS = Path(__file__).parent / "results" / "elicit"


def targets_met(task: str, models: dict[str, Any]) -> list[str]:
    """Issue 19's numbers for `task`, each as a line saying what was measured and whether it holds."""
    active, random = models["info-gain"]["accuracy"], models["random"]["accuracy"]

    def cell(record: dict[str, Any], k: int) -> str:
        return f"{record[str(k)]['mean']:.2f} ± {record[str(k)]['sem']:.2f}"

    lines = []
    if task == "paper1d":
        ok = active["1"]["mean"] >= random["5"]["mean"]
        lines.append(
            f"info-gain k = 1 ({cell(active, 1)}) >= random k = 5 ({cell(random, 5)}): {'yes' if ok else 'NO'}"
        )
        if BAYES_QUESTIONER in models:
            bayes = models[BAYES_QUESTIONER]["accuracy"]
            gaps = {k: active[k]["mean"] - bayes[k]["mean"] for k in active}
            ok = all(gap >= -0.5 for gap in gaps.values())
            worst = min(gaps.values())
            lines.append(
                f"info-gain within 0.5 point of the Bayes questioner at every k (largest gap {worst:+.2f}): "
                f"{'yes' if ok else 'NO'}"
            )
    else:
        for k_active, k_random in ((3, 5), (5, 10)):
            gap = active[str(k_active)]["mean"] - random[str(k_random)]["mean"]
            ok = gap >= -0.3
            lines.append(
                f"info-gain k = {k_active} ({cell(active, k_active)}) >= random k = {k_random} "
                f"({cell(random, k_random)}) within 0.3 (gap {gap:+.2f}): {'yes' if ok else 'NO'}"
            )
    return lines


def write_readme(all_results: dict[str, Any]) -> None:
    tasks = " ".join(all_results)
    parts = [
        "# Active elicitation: accuracy after k questions (issue 19)\n",
        f"    for task in {tasks}; do python benchmarks/elicit.py --task $task; done\n",
        "Written by `benchmarks/elicit.py` (settings `configs/benchmarks/elicit.yaml`). Each test user has a "
        "pool of labelled pairs; a strategy asks k of them one at a time, sees the true answers, and the "
        "NP-BTL scores held-out targets on other prompts. Accuracy in percent, mean ± s.e.m. over users "
        "(equal weight per type). `Bayes questioner`: greedy expected information gain over the exact "
        "posterior of the user's type (particles for Dirichlet users), predicting by Bayes; `Bayes on X's "
        "pairs`: the Bayes prediction from the pairs strategy X chose.\n",
    ]
    for task, record in all_results.items():
        protocol = record["protocol"]
        parts.append(
            f"## {task}\n\n{protocol['episodes']} users, pool {protocol['pool']}, {protocol['targets']} targets, "
            f"model trained {record['train_seconds']:.0f} s, evaluation {record['eval_seconds']:.0f} s.\n"
        )
        parts.append(markdown_table(table_view(record), column="k"))
        parts.append("\n" + "\n".join(f"- {line}" for line in record["targets_met"]) + "\n")
        parts.append(f"\n![{task}]({task}.png)\n")
    text_runs = sorted(RESULTS.glob("dsp_*.md"))
    if text_runs:
        parts.append(
            "## DSP\n\nOver splits of its prompts, NP-BTL as `benchmarks/dsp.py` trains it "
            "(`benchmarks/dsp_elicit.py`): " + ", ".join(f"[{p.stem}]({p.name})" for p in text_runs) + ".\n"
        )
    (RESULTS / "README.md").write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_argument(parser, "elicit")
    parser.add_argument("--task", default="paper1d", help="a task of the settings")
    parser.add_argument(
        "--model", default=None, help="a trained NP-BTL run for the task (default: train one)"
    )
    parser.add_argument("--episodes", type=int, default=None, help="test users (default: settings)")
    args = parser.parse_args()
    settings = load_settings(args.settings, ElicitSettings)
    if args.task not in settings.tasks:
        parser.error(f"--task {args.task}: {args.settings} has {sorted(settings.tasks)}.")
    spec = task_spec(args.task)
    train, val, _ = split_synthetic(generate(spec, seed=settings.seed), settings.seed)
    test = generate(spec, seed=settings.seed + 1)  # fresh users, as benchmarks/synthetic.py evaluates
    run = Path(args.model) if args.model else RESULTS / "runs" / args.task
    started = time.perf_counter()
    if not (run / "run.json").exists():
        overrides = [f"run.seed={settings.seed}", "run.progress=false", *settings.tasks[args.task]]
        train_reward_model(load_config(RewardTrainConfig, overrides=overrides), train, val, run)
    train_seconds = time.perf_counter() - started
    model, _ = load_reward_model(run)
    started = time.perf_counter()
    results = settings.curves(model, test, args.episodes or settings.episodes)
    results["eval_seconds"] = time.perf_counter() - started
    results["train_seconds"] = train_seconds
    results["targets_met"] = targets_met(args.task, results["models"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "results.json"
    all_results = json.loads(path.read_text()) if path.exists() else {}
    all_results[args.task] = results
    write_json(all_results, path)
    plot_accuracy(
        results, RESULTS / f"{args.task}.png", f"{args.task}: accuracy after k questions", "questions asked k"
    )
    write_readme(all_results)
    print(markdown_table(table_view(results), column="k"))
    print("\n".join(results["targets_met"]))
    print(f"train {train_seconds:.0f} s, evaluate {results['eval_seconds']:.0f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()

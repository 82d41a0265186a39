"""Active elicitation on DSP over several splits of the prompts: info-gain against random questions (issue 19).

    python benchmarks/dsp_elicit.py --embedder smollm2-mean64 --splits 8    # about 25 min on a 2-core CPU
    python benchmarks/dsp_elicit.py --embedder minilm --splits 8

For each split seed s = 0 .. N-1 the DSP data is built and split by prompt as benchmarks/dsp.py builds it
(configs/benchmarks/dsp.yaml: its `build`, `common` and NP-BTL settings, so the model is the one the DSP
tables report), embedded through the shared cache, and NP-BTL is trained on the training prompts. On
the test prompts each episode is one user (a domain) with a pool of `pool` labelled pairs and `targets`
held-out pairs on other prompts; every strategy asks k = 1, 2, 3, 5, 10 pool pairs one at a time, sees
the true answers and scores the targets (`npalign.evaluation.elicit`, the same protocol as
benchmarks/elicit.py, without the Bayes rows: DSP has no known user model). Questioning strategies and
pool/targets come from configs/benchmarks/elicit.yaml.

A split's figures are written to out/bench/dsp_elicit_<embedder>/split_<s>.json as soon as it is done, so a
killed run resumes at the next split. Writes benchmarks/results/elicit/dsp_<embedder>.json / .md / .png:
per strategy and k, the mean ± s.e.m. over splits of each split's accuracy (itself a mean over users), and
issue 19's line, info-gain at k = 5 within 0.5 point of random at k = 10 or better.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import torch
from elicit import write_readme as write_elicit_readme
from pipeline import (
    REPO,
    ElicitSettings,
    TextBenchmarkSettings,
    embedded_splits,
    load_settings,
    settings_file,
    train_run,
)

from npalign.data.sources import build_dataset
from npalign.evaluation.report import markdown_table, plot_accuracy
from npalign.models.builders import load_reward_model
from npalign.utils.io import read_json, write_json

RESULTS = REPO / "benchmarks" / "results" / "elicit"
NP_BTL = "NP-BTL"


def run_split(
    text: TextBenchmarkSettings,
    elicit: ElicitSettings,
    embedder: str,
    split_seed: int,
    episodes: int,
    work: Path,
) -> dict[str, Any]:
    """Build, embed and train on one split of the prompts, then the elicitation curves on its test prompts."""
    data_file = work / f"split_{split_seed}" / "dsp.jsonl"
    build_dataset(text.dataset, input=None, out=data_file, seed=split_seed, **text.build)
    splits = embedded_splits(data_file, embedder)
    started = time.perf_counter()
    cfg = text.config(embedder, text.models[NP_BTL], text.seed)
    run_dir = work / f"split_{split_seed}" / "np_btl"
    training = train_run(cfg, splits["train"], splits["validation"], run_dir)
    train_seconds = time.perf_counter() - started
    model, _ = load_reward_model(run_dir)
    started = time.perf_counter()
    curves = elicit.curves(model, splits["test"], episodes)
    curves.update(
        split_seed=split_seed,
        training=training,
        train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - started,
    )
    return curves


def sem_over_splits(values: list[float]) -> float:
    """The s.e.m. of per-split figures (0 for a single split)."""
    return stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def over_splits(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy and k: mean ± s.e.m. over the splits of each split's mean accuracy (report's shape)."""
    models: dict[str, Any] = {}
    for name in runs[0]["models"]:
        accuracy = {}
        for k in runs[0]["models"][name]["accuracy"]:
            values = [run["models"][name]["accuracy"][k]["mean"] for run in runs]
            accuracy[k] = {"mean": mean(values), "sem": sem_over_splits(values), "per_split": values}
        models[name] = {"accuracy": accuracy}
    return {"models": models}


def target_line(summary: dict[str, Any]) -> str:
    """Issue 19's DSP line: info-gain at k = 5 against random at k = 10, with the gap paired by split."""
    active = summary["models"]["info-gain"]["accuracy"]["5"]
    random = summary["models"]["random"]["accuracy"]["10"]
    gaps = [a - r for a, r in zip(active["per_split"], random["per_split"], strict=True)]
    gap, sem = mean(gaps), sem_over_splits(gaps)
    return (
        f"info-gain k = 5 ({active['mean']:.2f} ± {active['sem']:.2f}) within 0.5 point of random k = 10 "
        f"({random['mean']:.2f} ± {random['sem']:.2f}) or better (gap, paired by split, {gap:+.2f} ± {sem:.2f}): "
        f"{'yes' if gap >= -0.5 else 'NO'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embedder", default="smollm2-mean64")
    parser.add_argument("--splits", type=int, default=8, help="split seeds 0 .. N-1")
    parser.add_argument("--episodes", type=int, default=300, help="test users per split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and evaluation")
    args = parser.parse_args()
    text = load_settings(settings_file("dsp"), TextBenchmarkSettings)
    elicit = load_settings(settings_file("elicit"), ElicitSettings)
    if NP_BTL not in text.models:
        raise SystemExit(f"{settings_file('dsp')} has no {NP_BTL!r} model.")
    slug = Path(args.embedder).name
    work = REPO / "out" / "bench" / f"dsp_elicit_{slug}"
    runs = []
    for split_seed in range(args.splits):
        done = work / f"split_{split_seed}.json"
        if not done.exists():
            torch.set_num_threads(args.threads)
            write_json(run_split(text, elicit, args.embedder, split_seed, args.episodes, work), done)
        runs.append(read_json(done))
        print(
            f"split {split_seed}: "
            + ", ".join(
                f"{name} k=5 {runs[-1]['models'][name]['accuracy']['5']['mean']:.2f}"
                for name in runs[-1]["models"]
            ),
            flush=True,
        )
    summary = over_splits(runs)
    summary.update(
        embedder=args.embedder,
        splits=[run["split_seed"] for run in runs],
        protocol=runs[0]["protocol"],
        target=target_line(summary),
        train_seconds=[run["train_seconds"] for run in runs],
        eval_seconds=[run["eval_seconds"] for run in runs],
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(summary, RESULTS / f"dsp_{slug}.json")
    table = markdown_table(summary, column="k")
    (RESULTS / f"dsp_{slug}.md").write_text(
        f"# DSP ({args.embedder}): accuracy after k questions, over {len(runs)} splits of the prompts\n\n"
        f"    python benchmarks/dsp_elicit.py --embedder {args.embedder} --splits {args.splits}\n\n"
        f"Mean ± s.e.m. over splits of each split's accuracy ({args.episodes} test users per split, pool "
        f"{elicit.pool}, {elicit.targets} targets); NP-BTL as benchmarks/dsp.py trains it.\n\n{table}\n\n"
        f"- {summary['target']}\n"
    )
    plot_accuracy(
        summary,
        RESULTS / f"dsp_{slug}.png",
        f"DSP ({args.embedder}): accuracy after k questions",
        "questions asked k",
    )
    synthetic = RESULTS / "results.json"
    if synthetic.exists():  # the folder's README (benchmarks/elicit.py's) links this table
        write_elicit_readme(read_json(synthetic))
    print(table)
    print(summary["target"])


if __name__ == "__main__":
    main()

"""How much of NP-BTL's m = 10 gap to the oracle is finding the domain, and how much is its rewards.

    python benchmarks/dsp_context.py benchmarks/results/dsp_smollm2-mean64 out/splits/mean64_{1..16}

Each argument is a results folder written by benchmarks/dsp.py (any `--seed` or `--split-seed`); the
NP-BTL run and the dataset file are found where that run left them (`setup.build_report.out`). NP-BTL is
scored again on the same test split with more context pairs than the benchmark's m = 10 (default 10, 30
and 60; the test split holds ~185 pairs per domain, so the targets stay disjoint from the context). By
m = 60 NP-BTL's encoder knows the domain as well as it ever will. Where its accuracy stops rising
(SmolLM2), the gap that remains is the rewards': the shared reward network, told the domain, against
the domain's own BTL (the oracle's test figure from results.json; it does not depend on m). On minilm
the encoder names the domain of new prompts poorly even then (tuning.md, section 10). The episodes are
dsp.py's (its episodes per m and evaluation seed, from results.json), so the m = 10 column is the benchmark's own gap. Prints
per run and as mean ± s.e.m. over the runs, and per domain; `--out FILE.md` also writes it to a file.
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path
from statistics import mean

from pipeline import REPO, load_results, spread, write_tables

from npalign.config import RewardTrainConfig
from npalign.data.loaders import load_preferences
from npalign.embedding.embedders import Embedder
from npalign.embedding.features import embed_preferences, resolve_embedder
from npalign.evaluation.reward import evaluate_reward_model
from npalign.models.builders import load_reward_model
from npalign.utils.rundir import RUN_FILE

NP_RUN = "np-btl"  # dsp.py's run folder for NP-BTL


@cache
def embedder(name: str) -> Embedder:
    """One embedder per name for all the runs (the runs of one embedder share it)."""
    return resolve_embedder(name)


def score(folder: str, contexts: list[int], episodes: int, cache_dir: Path | None) -> dict:
    """NP-BTL's test accuracy at each m of `contexts` minus the oracle's, overall and per domain."""
    results = load_results(folder)
    setup = results["setup"]
    data_file = REPO / setup["build_report"]["out"]
    run_dir = data_file.parent / "runs" / NP_RUN
    if not (run_dir / RUN_FILE).is_file():
        raise SystemExit(f"{folder}: no NP-BTL run at {run_dir} (rerun its benchmarks/dsp.py command).")
    model, record = load_reward_model(run_dir)
    test, _ = load_preferences(data_file, split="test")
    test = embed_preferences(test, embedder(record["embedder"]), cache_dir=cache_dir)
    accuracy = evaluate_reward_model(
        model,
        test,
        contexts=contexts,
        episodes=episodes,
        targets=setup["targets_per_episode"],
        seed=RewardTrainConfig().eval.seed,
    )["accuracy"]
    oracle = results["models"][setup["oracle_name"]]["accuracy"]["10"]
    return {
        "overall": {m: accuracy[str(m)]["mean"] - oracle["mean"] for m in contexts},
        "by_type": {
            name: {m: accuracy[str(m)]["by_type"][name] - value for m in contexts}
            for name, value in oracle["by_type"].items()
        },
        "oracle": oracle["mean"],
    }


def report(folders: list[str], scores: list[dict], contexts: list[int], episodes: int) -> list[str]:
    """The markdown lines: per run, mean ± s.e.m. over the runs, and per domain."""
    heads = " | ".join(f"m = {m}" for m in contexts)
    lines = [
        f"NP-BTL's test accuracy minus the oracle's (points), {episodes} episodes per m:",
        "",
        f"| run | oracle | {heads} |",
        "|---|---|" + "---|" * len(contexts),
    ]
    for folder, scored in zip(folders, scores, strict=True):
        cells = " | ".join(f"{scored['overall'][m]:+.2f}" for m in contexts)
        lines.append(f"| {folder} | {scored['oracle']:.2f} | {cells} |")
    cells = " | ".join(spread([s["overall"][m] for s in scores], "+.2f") for m in contexts)
    lines.append(f"| **mean ± s.e.m.** | {mean(s['oracle'] for s in scores):.2f} | {cells} |")
    lines += [
        "",
        "Per domain, mean ± s.e.m. over the runs:",
        "",
        f"| domain | {heads} |",
        "|---|" + "---|" * len(contexts),
    ]
    for name in scores[0]["by_type"]:
        cells = " | ".join(spread([s["by_type"][name][m] for s in scores], "+.2f") for m in contexts)
        lines.append(f"| {name} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="results folders (or results.json) written by dsp.py")
    parser.add_argument("--contexts", type=int, nargs="+", default=[10, 30, 60])
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes per m (default: the first results' own, dsp.py's 4000)",
    )
    parser.add_argument("--cache", default=None, help="embedding cache root (default: the npalign cache)")
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args()
    cache_dir = Path(args.cache) if args.cache else None
    if args.episodes is None:
        args.episodes = load_results(args.results[0])["setup"]["episodes_per_m"]
    scores = [score(folder, args.contexts, args.episodes, cache_dir) for folder in args.results]
    lines = report(args.results, scores, args.contexts, args.episodes)
    print("\n".join(lines))
    if args.out:
        write_tables(args.out, lines, heading="DSP: NP-BTL with more context than m = 10")


if __name__ == "__main__":
    main()

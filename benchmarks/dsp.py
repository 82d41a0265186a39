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

Writes results.json (with the wall time of every stage), results.md and accuracy.png under
benchmarks/results/dsp_<embedder>/; run directories go under out/bench/ (git-ignored).
`benchmarks/hh_relabeled.py` reuses `run_pipeline` for the relabelled HH data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from npalign.config import RewardTrainConfig, load_config
from npalign.data.loaders import load_preferences
from npalign.data.sources import build_dataset
from npalign.embedding.features import embed_preferences, resolve_embedder
from npalign.evaluation.report import markdown_table, write_report
from npalign.evaluation.reward import evaluate_reward_model, score_episodes
from npalign.models.builders import load_reward_model
from npalign.models.reward import PreferenceModel
from npalign.training.reward import train_reward_model
from npalign.types import EpisodeBatch, PreferenceSet
from npalign.utils.io import atomic_path, read_json, read_jsonl, write_json

REPO = Path(__file__).resolve().parents[1]
CONTEXTS = [0, 1, 3, 5, 10]
TARGETS = 20
SPLITS = ("train", "validation", "test")
ORACLE = "BTL per domain (oracle)"
POSTERIOR = "Per-type BTLs, type inferred (Bayes)"

# Settings shared by every run: small data (~1,600 training pairs per domain), so validate often and
# keep the best step; AdamW with weight decay against overfitting.
COMMON = [
    "run.progress=false",
    f"eval.contexts={CONTEXTS}",
    f"eval.targets={TARGETS}",
    "eval.val_episodes=400",
    "eval.val_every=50",
    "run.log_every=50",
    "run.save_every=50",
    f"episodes.targets={TARGETS}",
    "episodes.max_context=10",
    # Keep the step with the best validation *accuracy*: the rewards overfit ~1,600 pairs per domain and
    # grow overconfident (validation NLL rising) while NP-BTL's encoder is still learning to tell the
    # domains apart, so the best-NLL step could come before it had (tuning.md, section 5).
    "eval.select_by=accuracy",
]

NP_CONFIG = REPO / "configs" / "reward" / "np_btl_dsp.yaml"


def config_overrides(path: Path) -> list[str]:
    """A YAML config file as the key=value overrides the benchmark's model lists are made of."""

    def flatten(node: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}"

    return list(flatten(yaml.safe_load(path.read_text()), ""))


# Chosen on the validation split (never the test split) by a small sweep over hidden size, latent size,
# lr, weight decay and steps, with minilm and then smollm2-mean; see benchmarks/results/dsp_minilm/
# tuning.md. Every run keeps its best validation step, which on ~1,600 training pairs per domain comes
# early (100-800 steps of 16 users). The same settings serve every embedder and the HH benchmark.
_SMALL = ["model.hidden_dim=64", "optim.weight_decay=0.1", "episodes.batch_users=16", "optim.warmup_steps=20"]
MODELS: dict[str, list[str]] = {
    "BTL (mixed)": ["model.kind=btl", *_SMALL, "optim.lr=3e-4", "optim.steps=400"],
    "DPL": ["model.kind=dpl", *_SMALL, "optim.lr=3e-4", "optim.steps=400"],
    # NP-BTL's settings live in configs/reward/np_btl_dsp.yaml, so that `npalign train --config` trains
    # the same model; the file says why each one (tuning.md, sections 4-7).
    "NP-BTL": config_overrides(NP_CONFIG),
}
ORACLE_OVERRIDES = ["model.kind=btl", *_SMALL, "optim.lr=3e-4", "optim.steps=400"]


class Clock:
    """Wall time of named stages, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the `with` block to stage `name`."""
        begun = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - begun, 2)

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 2)


def _shown(path: str | Path) -> str:
    """A path as results files show it: relative to the repository (or its parent) when inside."""
    resolved = Path(path).resolve()
    for base in (REPO, REPO.parent):
        if resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return str(path)


def type_subset(data: PreferenceSet, user_type: str) -> PreferenceSet:
    """The pairs of users of one type."""
    index = data.type_names.index(user_type)
    pair_types = torch.tensor([data.type_names.index(t) for t in data.user_types])[data.user]  # (P,)
    return data.subset(pair_types == index)


def evaluate_oracle(
    models: dict[str, PreferenceModel], test: PreferenceSet, *, episodes: int, seed: int
) -> dict[str, Any]:
    """Per-type models on the shared episodes, each episode sent to the model of its user's type."""

    def predict(batch: EpisodeBatch, _: torch.Generator) -> torch.Tensor:
        probs = torch.empty(batch.target_mask.shape)  # (B, T)
        for k, name in enumerate(batch.type_names):
            rows = batch.user_type == k
            if rows.any():
                probs[rows] = models[name].eval().prefer_prob(
                    batch.target_chosen[rows], batch.target_rejected[rows], None
                )
        return probs

    return score_episodes(test, predict, contexts=CONTEXTS, episodes=episodes, targets=TARGETS, seed=seed)


Evidence = Callable[[EpisodeBatch], torch.Tensor]  # episode batch -> (K, B) log-evidence for each type


def likelihood_evidence(models: dict[str, PreferenceModel]) -> Evidence:
    """Each type's log-likelihood of an episode's m context choices under that type's model."""
    names = list(models)

    def evidence(batch: EpisodeBatch) -> torch.Tensor:
        context = torch.stack(
            [models[n].eval().log_likelihood(batch.context_chosen, batch.context_rejected, None) for n in names]
        )  # (K, B, C)
        return (context * batch.context_mask).sum(-1)  # (K, B)

    return evidence


def type_posterior_predictor(
    models: dict[str, PreferenceModel], evidence: list[Evidence]
) -> Callable[[EpisodeBatch, torch.Generator], torch.Tensor]:
    """Bayes over the K types: a uniform prior times the summed evidence, then the posterior-weighted
    mean of the types' p(chosen > rejected) on the targets."""
    names = list(models)

    def predict(batch: EpisodeBatch, _: torch.Generator) -> torch.Tensor:
        log_post = torch.log_softmax(torch.stack([e(batch) for e in evidence]).sum(0), dim=0)  # (K, B)
        targets = torch.stack(
            [models[n].prefer_prob(batch.target_chosen, batch.target_rejected, None) for n in names]
        )  # (K, B, T)
        return (log_post.exp()[..., None] * targets).sum(0)

    return predict


def evaluate_type_posterior(
    models: dict[str, PreferenceModel], test: PreferenceSet, *, episodes: int, seed: int
) -> dict[str, Any]:
    """What the per-type models can do *without* being told the type: Bayes over the K types.

    Each episode's posterior over types is uniform times the likelihood of its m context pairs under each
    type's model; the prediction is the posterior-weighted mean of the types' p(chosen > rejected). It
    needs exactly the information NP-BTL has (m pairs of the user), so it estimates what m pairs of
    these embeddings can tell: the reference NP-BTL is measured against at m > 0.
    """
    predict = type_posterior_predictor(models, [likelihood_evidence(models)])
    return score_episodes(test, predict, contexts=CONTEXTS, episodes=episodes, targets=TARGETS, seed=seed)


def _config(embedder: str, overrides: list[str], seed: int) -> RewardTrainConfig:
    return load_config(RewardTrainConfig, overrides=[*COMMON, f"embedder={embedder}", f"run.seed={seed}", *overrides])


def _train(cfg: RewardTrainConfig, train: PreferenceSet, val: PreferenceSet, run_dir: Path) -> dict[str, Any]:
    """Train from scratch into `run_dir`; return the best validation record and timing.

    With a prior head, which answers for m = 0 alone and is kept at its own best step, the m = 0
    figure comes from that step (`best_prior_step`).
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = train_reward_model(cfg, train, val, run_dir)
    validations = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_nll" in r}
    best = validations[result.best_step]
    record = {
        "steps": result.steps,
        "best_step": result.best_step,
        "ms_per_step": round(result.ms_per_step, 2),
        "val_accuracy_at_best": {str(m): round(best[f"val_accuracy_m{m}"], 2) for m in CONTEXTS},
        "val_nll_at_best": round(best["val_nll"], 4),
    }
    prior_step = read_json(run_dir / "summary.json").get("best_prior_step")
    if prior_step is not None:
        record["best_prior_step"] = prior_step
        record["val_accuracy_at_best"]["0"] = round(validations[prior_step]["val_accuracy_m0"], 2)
    return record


def train_oracles(
    cfg: RewardTrainConfig, train: PreferenceSet, val: PreferenceSet, runs_dir: Path
) -> tuple[dict[str, PreferenceModel], dict[str, dict[str, Any]]]:
    """One model per user type, trained and validated on that type's pairs only, in runs_dir/oracle_<type>.

    Returns:
        The trained models and `_train`'s record of each, both by type name.
    """
    models, records = {}, {}
    for user_type in train.type_names:
        run_dir = runs_dir / f"oracle_{user_type}"
        records[user_type] = _train(cfg, type_subset(train, user_type), type_subset(val, user_type), run_dir)
        models[user_type] = load_reward_model(run_dir)[0]
    return models, records


def run_pipeline(
    *,
    dataset: str,
    embedder: str,
    out_dir: Path,
    runs_dir: Path,
    cache_dir: Path | None,
    episodes: int,
    seed: int,
    split_seed: int = 0,
    models: dict[str, list[str]],
    oracle_overrides: list[str],
    oracle_name: str = ORACLE,
    title: str,
    build_options: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    train_threads: int | None = 1,
) -> dict[str, Any]:
    """Build, embed, train every model and the per-type oracle, evaluate at each m, write the report.

    The embedder runs with torch's default thread count; training and evaluation with `train_threads`
    (None: the default). One thread is the default because these models are tiny: on the shared 2-core
    machine a BTL step took 224 ms on one thread and 832 ms on two, which fought the other jobs.

    `split_seed` seeds the builder's hash of each prompt into train / validation / test, so another
    value draws another split of the same prompts (the luck of which prompts are held out); `seed`
    seeds training.

    Returns:
        results.json's content: models (accuracy/nll/ece per m, per type), training, embedding,
        setup, targets, timings (seconds per stage) and total_seconds.
    """
    clock = Clock()
    runs_dir.mkdir(parents=True, exist_ok=True)
    data_file = runs_dir / f"{dataset}.jsonl"
    with clock.stage("build"):
        build = build_dataset(dataset, input=None, out=data_file, seed=split_seed, **(build_options or {}))
    with clock.stage("load"):
        splits = {name: load_preferences(data_file, split=name)[0] for name in SPLITS}
    embedding: dict[str, Any] = {}
    with clock.stage("embed"):
        model = resolve_embedder(embedder)  # loaded once, shared by the three splits
        for name in SPLITS:
            splits[name] = embed_preferences(splits[name], model, cache_dir=cache_dir)
            report = splits[name].meta["embedding"]
            embedding[name] = report | {"cache_dir": _shown(report["cache_dir"])}
    embed_threads = torch.get_num_threads()
    if train_threads is not None:
        torch.set_num_threads(train_threads)
    train, val, test = (splits[name] for name in SPLITS)
    type_names = test.type_names

    results: dict[str, Any] = {"models": {}, "training": {}}
    for name, overrides in models.items():
        cfg = _config(embedder, overrides, seed)
        run_dir = runs_dir / "runs" / name.split(" ")[0].lower()
        with clock.stage(f"train {name}"):
            results["training"][name] = _train(cfg, train, val, run_dir)
        with clock.stage(f"evaluate {name}"):
            trained, _ = load_reward_model(run_dir)
            results["models"][name] = evaluate_reward_model(
                trained, test, contexts=CONTEXTS, episodes=episodes, targets=TARGETS, seed=cfg.eval.seed
            )

    with clock.stage(f"train {oracle_name}"):
        oracles, results["training"][oracle_name] = train_oracles(
            _config(embedder, oracle_overrides, seed), train, val, runs_dir / "runs"
        )
    with clock.stage(f"evaluate {oracle_name}"):
        results["models"][oracle_name] = evaluate_oracle(
            oracles, test, episodes=episodes, seed=RewardTrainConfig().eval.seed
        )
    with clock.stage(f"evaluate {POSTERIOR}"):
        results["models"][POSTERIOR] = evaluate_type_posterior(
            oracles, test, episodes=episodes, seed=RewardTrainConfig().eval.seed
        )

    pairs_per_type = {
        split: {t: type_subset(splits[split], t).num_pairs for t in type_names} for split in SPLITS
    }
    results["setup"] = {
        "dataset": dataset,
        "build_report": build.to_dict() | {"source": _shown(build.source), "out": _shown(build.out)},
        "embedder": embedder,
        "embed_dim": int(train.features.shape[1]) if train.features is not None else None,
        "split": f"by prompt (80/10/10, split seed {split_seed}), users are the same in every split",
        "pairs_per_type": pairs_per_type,
        "prompts": {split: len(splits[split].prompt_ids) for split in SPLITS},
        "contexts": CONTEXTS,
        "episodes_per_m": episodes,
        "targets_per_episode": TARGETS,
        "evaluation": "each test episode: m context pairs of the user on other prompts than its 20 targets",
        "models": {name: overrides for name, overrides in models.items()} | {oracle_name: oracle_overrides},
        "common": COMMON,
        "torch_threads": {"embed": embed_threads, "train_and_evaluate": torch.get_num_threads()},
        "oracle_name": oracle_name,
    }
    results["embedding"] = embedding
    results["targets"] = target_checks(results["models"], oracle_name)
    results["notes"] = notes or []
    results["timings"] = clock.seconds
    results["total_seconds"] = clock.total()
    with clock.stage("report"):
        write_report(results, out_dir, title=title)
        with atomic_path(out_dir / "results.md") as tmp:
            tmp.write_text(report_markdown(results, title))
    results["total_seconds"] = clock.total()
    write_json(results, out_dir / "results.json")  # again, now with the report's own time
    return results


def target_checks(models: dict[str, Any], oracle_name: str = ORACLE) -> dict[str, Any]:
    """The issue's targets: NP-BTL m=10 vs the oracle, NP-BTL m=0 vs mixed BTL, the oracle >= 80 %."""
    accuracy = {
        name: {m: record["accuracy"][m]["mean"] for m in record["accuracy"]}
        for name, record in models.items()
    }
    oracle = sum(accuracy[oracle_name].values()) / len(accuracy[oracle_name])  # context-free: pool every m
    checks: dict[str, Any] = {"oracle_accuracy_mean_over_m": round(oracle, 2)}
    if "NP-BTL" in accuracy:
        gap_m10 = accuracy["NP-BTL"]["10"] - accuracy[oracle_name]["10"]
        gap_m0 = accuracy["NP-BTL"]["0"] - accuracy["BTL (mixed)"]["0"]
        checks["np_m10_minus_oracle_m10"] = round(gap_m10, 2)
        checks["np_m10_within_1_point_of_oracle"] = gap_m10 >= -1.0
        if POSTERIOR in accuracy:
            # The oracle knows the type; this reference has to infer it from the same m pairs NP-BTL sees.
            checks["type_inferred_m10_minus_oracle_m10"] = round(
                accuracy[POSTERIOR]["10"] - accuracy[oracle_name]["10"], 2
            )
            checks["np_m10_minus_type_inferred_m10"] = round(
                accuracy["NP-BTL"]["10"] - accuracy[POSTERIOR]["10"], 2
            )
        checks["np_m0_minus_btl_mixed_m0"] = round(gap_m0, 2)
        # One-sided like the m = 10 check: the target is that the prior loses nothing to mixed BTL.
        checks["np_m0_within_1_point_of_btl"] = gap_m0 >= -1.0
    checks["oracle_at_least_80"] = oracle >= 80.0
    return checks


def report_markdown(results: dict[str, Any], title: str) -> str:
    """The averaged table, one per-type table per model, training, embedding, timings and targets."""
    lines = [
        f"# {title}",
        "",
        "Accuracy (%) on held-out test targets, averaged over user types (mean ± s.e.m. over episodes).",
        "",
    ]
    lines.append(markdown_table(results))
    for name, record in results["models"].items():
        type_names = list(next(iter(record["accuracy"].values()))["by_type"])
        lines += [
            "",
            f"### {name}: per type",
            "",
            "| type | " + " | ".join(f"m = {m}" for m in CONTEXTS) + " |",
        ]
        lines.append("|---|" + "---|" * len(CONTEXTS))
        for type_name in type_names:
            cells = [f"{record['accuracy'][str(m)]['by_type'][type_name]:.1f}" for m in CONTEXTS]
            lines.append(f"| {type_name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training (best validation step kept)",
        "",
        "| model | steps | best step | ms/step | val acc m=0 | val acc m=10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, record in results["training"].items():
        runs = record.items() if name == results["setup"]["oracle_name"] else [("", record)]
        for type_name, run in runs:
            label = f"{name} {type_name}".strip()
            step = run["best_step"]
            if "best_prior_step" in run:
                step = f"{step} (prior head: {run['best_prior_step']})"
            lines.append(
                f"| {label} | {run['steps']} | {step} | {run['ms_per_step']} | "
                f"{run['val_accuracy_at_best']['0']} | {run['val_accuracy_at_best']['10']} |"
            )
    lines += [
        "",
        "## Embedding",
        "",
        "| split | items | embedded now | from cache | truncated | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for split, report in results["embedding"].items():
        lines.append(
            f"| {split} | {report['items']} | {report['embedded']} | {report['from_cache']} | "
            f"{report['truncated']} (to {report['max_length']} tokens) | {report['seconds']:.1f} |"
        )
    lines += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds} |" for stage, seconds in results["timings"].items()]
    lines.append(f"| **total** | **{results['total_seconds']}** |")
    lines += ["", "## Targets", "", "```json", json.dumps(results["targets"], indent=2), "```"]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    setup = results["setup"]
    lines += [
        "",
        "## Setup",
        "",
        f"- data: `{setup['dataset']}`, split {setup['split']}; prompts per split {setup['prompts']}",
        f"- pairs per type: {setup['pairs_per_type']}",
        f"- embedder `{setup['embedder']}` ({setup['embed_dim']}-d); {setup['episodes_per_m']} episodes per m, "
        f"{setup['targets_per_episode']} targets each; {setup['evaluation']}",
        f"- torch threads: {setup['torch_threads']}",
    ]
    return "\n".join(lines) + "\n"


def pipeline_arguments(
    description: str, results_name: str, runs_name: str
) -> tuple[argparse.Namespace, Path, Path, Path | None]:
    """Parse the options shared by the text benchmarks (this one and hh_relabeled.py).

    Returns:
        (args, out_dir, runs_dir, cache_dir); `results_name` and `runs_name` are the default folder
        names under benchmarks/results/ and out/bench/, each suffixed with the embedder's name.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embedder", default="minilm", help="minilm, smollm2, smollm2-mean, smollm2-mean64 or a model folder"
    )
    parser.add_argument("--out", default=None, help=f"default benchmarks/results/{results_name}_<embedder>")
    parser.add_argument(
        "--runs", default=None, help=f"run directories (default out/bench/{runs_name}_<embedder>)"
    )
    parser.add_argument("--cache", default=None, help="embedding cache root (default: the npalign cache)")
    parser.add_argument(
        "--fresh-cache",
        action="store_true",
        help="embed into an empty cache under --runs (times the embedding)",
    )
    parser.add_argument("--episodes", type=int, default=4000, help="evaluation episodes per m")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the split of the prompts into train / validation / test (the published tables: 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training and evaluation (0: torch's default)",
    )
    args = parser.parse_args()
    slug = Path(args.embedder).name
    out_dir = Path(args.out or REPO / "benchmarks" / "results" / f"{results_name}_{slug}")
    runs_dir = Path(args.runs or REPO / "out" / "bench" / f"{runs_name}_{slug}")
    cache_dir = Path(args.cache) if args.cache else None
    if args.fresh_cache:
        cache_dir = runs_dir / "fresh_cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
    return args, out_dir, runs_dir, cache_dir


def main() -> None:
    args, out_dir, runs_dir, cache_dir = pipeline_arguments(__doc__ or "", "dsp", "dsp")
    results = run_pipeline(
        dataset="dsp",
        embedder=args.embedder,
        out_dir=out_dir,
        runs_dir=runs_dir,
        cache_dir=cache_dir,
        episodes=args.episodes,
        seed=args.seed,
        split_seed=args.split_seed,
        models=MODELS,
        oracle_overrides=ORACLE_OVERRIDES,
        title=f"DSP ({args.embedder}): accuracy on held-out queries",
        build_options={"include_normal": True},
        train_threads=args.threads or None,
    )
    print(markdown_table(results))
    print(
        json.dumps(
            {
                "targets": results["targets"],
                "timings": results["timings"],
                "total_seconds": results["total_seconds"],
            },
            indent=2,
        )
    )
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()

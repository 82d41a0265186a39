"""Which SmolLM2 pooling names a DSP user best? A validation sweep over layers and response cuts.

    python benchmarks/dsp.py --embedder smollm2-mean64      # first: builds out/bench/dsp_smollm2-mean64/dsp.jsonl
    python benchmarks/dsp_pooling.py                        # ~6 min of forward passes, ~30 min of training

NP-BTL's m = 10 gap to the per-domain oracle on smollm2-mean64 is the gap of telling the domain apart
from ten pairs (`dsp_identify.py`: even the oracle's own models, given the domain inferred by Bayes from
likelihood and a style classifier, stay 1.2 points under it on test). Ten pairs can only say what the
vectors carry, so this script asks which pooling of SmolLM2's states carries the domains' styles best,
on the training and validation splits only (the test split is never read):

* one forward pass over every training and validation text, cut after the first 64 response tokens
  as `smollm2-mean64` does, keeping the mean over the first 32 and the first 64 response tokens of
  every layer's states (in out/bench/pooling/states.safetensors; a rerun starts from it);
* for each candidate pooling (a layer, or layers or cuts side by side), the features as the embedding
  stage makes them (each block at unit RMS), then on the validation split:
  - the per-domain oracle (dsp.py's settings, trained on train, its best validation step kept),
  - the style classifier's accuracy on single responses (`dsp_identify.py`),
  - "found": the oracle's models with the domain inferred from m pairs by likelihood and style
    together ("both" in `dsp_identify.py`), a reference for what m pairs of these vectors give a model
    that has to find the user;
* the present pooling and the best few by found at m = 10 again with the oracles trained on two more
  seeds;
* NP-BTL itself (dsp.py's settings) on the present pooling and on the best of those by found.

Writes pooling.json and pooling.md into benchmarks/results/dsp_smollm2-mean64/. Settings (the candidate
poolings, cuts, seeds and budgets): configs/benchmarks/dsp_pooling.yaml.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from pipeline import (
    REPO,
    PoolingSettings,
    TextBenchmarkSettings,
    add_settings_argument,
    fit_style_classifier,
    likelihood_evidence,
    load_settings,
    oracle_predictor,
    style_evidence,
    train_oracles,
    train_run,
    type_posterior_predictor,
)
from tqdm import tqdm

from npalign.data.loaders import load_preferences
from npalign.embedding.embedders import build_embedder
from npalign.embedding.features import to_features
from npalign.evaluation.reward import score_episodes
from npalign.types import PreferenceSet
from npalign.utils.io import atomic_path, load_tensors, save_tensors, write_json

SPLITS = ("train", "validation")


def pooled_states(
    data: dict[str, PreferenceSet], embedder_name: str, cuts: list[int], batch_size: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every split's items -> (N, layers + 1, len(cuts), H) response means of each layer's states.

    Index 0 of the layer axis is the token embeddings, index -1 the final layer after the model's
    last norm (what `smollm2-mean64` pools).
    """
    embedder = build_embedder(embedder_name)
    base = embedder.model.base_model
    out, started, tokens = {}, time.perf_counter(), 0
    for name, split in data.items():
        assert split.item_prompts is not None and split.item_responses is not None
        pairs = embedder._tokenize(split.item_prompts, split.item_responses)
        result = torch.empty(len(pairs), base.config.num_hidden_layers + 1, len(cuts), embedder.dim)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i].input_ids))
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=f"states {name}"):
                batch = [pairs[i] for i in order[start : start + batch_size]]
                ids, mask, pool = embedder.pad(batch)  # left padding, as the embedder runs it
                tokens += int(mask.sum())
                hidden = base(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True,
                    use_cache=False,
                )
                # transformers records the embeddings and each layer's output, the last one after the
                # final norm: hidden_states[-1] is last_hidden_state, what smollm2-mean64 pools.
                states = torch.stack(hidden.hidden_states, 1)  # (n, layers + 1, L, H)
                for c, cut in enumerate(cuts):
                    weights = (pool & (pool.cumsum(-1) <= cut)).float()  # (n, L): first `cut` response tokens
                    means = (
                        torch.einsum("nklh,nl->nkh", states.float(), weights) / weights.sum(1)[:, None, None]
                    )
                    result[order[start : start + len(batch)], :, c] = means
        out[name] = result
    seconds = time.perf_counter() - started
    return out, {"seconds": round(seconds, 1), "tokens": tokens, "texts": sum(len(v) for v in out.values())}


def features(states: torch.Tensor, blocks: list[list[int]], cuts: list[int]) -> torch.Tensor:
    """(N, layers + 1, cuts, H) -> (N, blocks * H): each block at unit RMS, as the embedding stage makes it."""
    return torch.cat([to_features(states[:, layer, cuts.index(cut)]) for layer, cut in blocks], 1)


def score(
    train: PreferenceSet,
    val: PreferenceSet,
    runs: Path,
    settings: PoolingSettings,
    text: TextBenchmarkSettings,
    *,
    episodes: int,
    seed: int,
    weight_decays: list[float],
) -> dict[str, Any]:
    """Oracle, style classifier and the "both" reference of one pooling, on the validation split."""
    cfg = text.config(settings.embedder, text.oracle, seed)
    oracles, records = train_oracles(cfg, train, val, runs)
    classifier, fit = fit_style_classifier(train, val, weight_decays)
    types = val.type_names
    both = torch.no_grad()(
        type_posterior_predictor(
            oracles, [style_evidence(classifier, len(types)), likelihood_evidence(oracles)]
        )
    )
    shared = {"episodes": episodes, "seed": seed, "contexts": text.contexts, "targets": text.targets}
    told = score_episodes(val, oracle_predictor(oracles), **shared)
    found = score_episodes(val, both, **shared)
    return {
        "oracle": round(told["accuracy"]["10"]["mean"], 2),
        "style_accuracy": round(fit["val_accuracy"], 1),
        "both": {m: round(found["accuracy"][str(m)]["mean"], 2) for m in text.contexts},
        "oracle_steps": {t: r["best_step"] for t, r in records.items()},
    }


def train_np(
    train: PreferenceSet,
    val: PreferenceSet,
    run_dir: Path,
    settings: PoolingSettings,
    text: TextBenchmarkSettings,
    *,
    seed: int,
) -> dict[str, Any]:
    """NP-BTL with dsp.py's settings on one pooling: its validation record at the kept steps."""
    cfg = text.config(settings.embedder, [*text.models["NP-BTL"], *settings.np_overrides], seed)
    record = train_run(cfg, train, val, run_dir)
    return {
        "m0": record["val_accuracy_at_best"]["0"],
        "m10": record["val_accuracy_at_best"]["10"],
        "best_step": record["best_step"],
        "ms_per_step": record["ms_per_step"],
    }


def report(
    results: dict[str, Any],
    repeats: dict[str, Any],
    np_runs: dict[str, Any],
    args: argparse.Namespace,
    contexts: list[int],
) -> str:
    """pooling.md: every pooling on the first seed, the leaders on more seeds, NP-BTL on two."""
    lines = [
        "# DSP: which SmolLM2 pooling names the domain best (validation split)",
        "",
        f"Written by `python benchmarks/dsp_pooling.py` ({args.episodes} validation episodes per m). Oracle: "
        "dsp.py's per-domain BTLs, told the domain (m = 10). Style: the linear classifier of `dsp_identify.py` "
        "on single validation responses (5 classes, chance 20 %). Found: the oracle's models with the domain "
        'inferred from the m context pairs (likelihood and style together, `dsp_identify.py`\'s "both"). '
        "Validation holds ~165 pairs per domain, so single figures move by a point or two with the seed.",
        "",
        f"Seed {args.seed}, every pooling:",
        "",
        "| pooling | oracle | style | " + " | ".join(f"found, m = {m}" for m in contexts if m) + " |",
        "|---" * (len(contexts) + 2) + "|",
    ]
    lines += [
        f"| {label} | {r['oracle']:.2f} | {r['style_accuracy']:.1f} | "
        + " | ".join(f"{r['both'][m]:.2f}" for m in contexts if m)
        + " |"
        for label, r in results.items()
    ]
    seeds = [args.seed, *args.repeat_seeds]
    shown = " / ".join(map(str, seeds))
    lines += [
        "",
        f"The present pooling and the {args.repeat_top} best by found at m = 10, over seeds {shown}:",
        "",
        f"| pooling | oracle, seeds {shown} | found m = 10, seeds {shown} | mean oracle | mean found m = 10 |",
        "|---|---|---|---|---|",
    ]
    for label, by_seed in repeats.items():
        oracle = [by_seed[s]["oracle"] for s in seeds]
        found = [by_seed[s]["both"][10] for s in seeds]
        lines.append(
            f"| {label} | {' / '.join(f'{v:.2f}' for v in oracle)} | {' / '.join(f'{v:.2f}' for v in found)} | "
            f"{sum(oracle) / len(oracle):.2f} | {sum(found) / len(found):.2f} |"
        )
    lines += [
        "",
        f"NP-BTL itself (dsp.py's settings, seed {args.seed}, 800 validation episodes per m, the kept steps):",
        "",
        "| pooling | m = 0 | m = 10 | best step | ms per step |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {r['m0']:.2f} | {r['m10']:.2f} | {r['best_step']} | {r['ms_per_step']:.0f} |"
        for label, r in np_runs.items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default=str(REPO / "out" / "bench" / "pooling"))
    parser.add_argument("--data", default=str(REPO / "out" / "bench" / "dsp_smollm2-mean64" / "dsp.jsonl"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dsp_smollm2-mean64"))
    add_settings_argument(parser, "dsp_pooling")
    parser.add_argument("--episodes", type=int, default=None, help="default: settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat-seeds", nargs="*", type=int, default=None, help="default: settings")
    parser.add_argument("--repeat-top", type=int, default=None, help="default: settings")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    settings = load_settings(args.settings, PoolingSettings)
    identify = settings.identify_settings
    text = identify.text
    args.episodes = settings.episodes if args.episodes is None else args.episodes
    args.repeat_seeds = settings.repeat_seeds if args.repeat_seeds is None else args.repeat_seeds
    args.repeat_top = settings.repeat_top if args.repeat_top is None else args.repeat_top
    candidates = settings.candidates
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    data = {s: load_preferences(args.data, split=s)[0] for s in SPLITS}
    states_file = runs / "states.safetensors"
    if states_file.exists():  # the forward passes are the slow part; a rerun scores from them
        states = load_tensors(states_file)
        cost: dict[str, Any] = {"note": f"read from {states_file}"}
        stale = [s for s in SPLITS if states[s].shape[0] != data[s].num_items]
        if stale:
            raise SystemExit(f"{states_file} does not match {args.data} ({stale}); delete it to recompute.")
    else:
        states, cost = pooled_states(data, settings.embedder, settings.cuts, args.batch_size)
        save_tensors(states, states_file)
    torch.set_num_threads(1)

    def split_features(blocks: list[list[int]]) -> tuple[PreferenceSet, PreferenceSet]:
        train, val = (replace(data[s], features=features(states[s], blocks, settings.cuts)) for s in SPLITS)
        return train, val

    def run_dir(blocks: list[list[int]], what: str, seed: int) -> Path:
        return runs / f"{what}_{'_'.join(f'l{layer}c{cut}' for layer, cut in blocks)}_seed{seed}"

    results = {}
    scoring = {"settings": settings, "text": text, "weight_decays": identify.weight_decays}
    for label, blocks in candidates.items():
        results[label] = score(
            *split_features(blocks),
            run_dir(blocks, "oracle", args.seed),
            **scoring,
            episodes=args.episodes,
            seed=args.seed,
        )
        print(label, results[label], flush=True)
    present, *others = candidates
    leaders = sorted(others, key=lambda label: -results[label]["both"][10])
    repeats = {}
    for label in [present, *leaders[: args.repeat_top]]:
        blocks = candidates[label]
        repeats[label] = {args.seed: results[label]}
        for seed in args.repeat_seeds:
            repeats[label][seed] = score(
                *split_features(blocks),
                run_dir(blocks, "oracle", seed),
                **scoring,
                episodes=args.episodes,
                seed=seed,
            )
        print(label, {s: r["both"][10] for s, r in repeats[label].items()}, flush=True)
    best = max(repeats, key=lambda label: sum(r["both"][10] for r in repeats[label].values()))
    np_runs = {}
    for label in dict.fromkeys([present, best]):
        blocks = candidates[label]
        np_runs[label] = train_np(
            *split_features(blocks), run_dir(blocks, "np", args.seed), settings, text, seed=args.seed
        )
        print(label, np_runs[label], flush=True)
    write_json(
        {
            "forward_pass": cost,
            "episodes": args.episodes,
            "seed": args.seed,
            "results": results,
            "repeats": repeats,
            "np_btl": np_runs,
        },
        out / "pooling.json",
    )
    markdown = report(results, repeats, np_runs, args, text.contexts)
    with atomic_path(out / "pooling.md") as tmp:
        tmp.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()

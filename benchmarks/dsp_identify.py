"""How well can m pairs of DSP name the user? References for NP-BTL's m = 10 gap to the oracle.

    python benchmarks/dsp.py --embedder smollm2-mean64        # first: data, cache, the oracle's models
    python benchmarks/dsp_identify.py --embedder smollm2-mean64

The oracle is told the domain. NP-BTL has to find it from m context pairs. This script gives the
oracle's four per-domain BTLs (from the dsp.py run) the domain as inferred from the same m pairs, in
three ways, and scores them on dsp.py's test episodes:

* likelihood: Bayes over the domains from each BTL's likelihood of the context choices (dsp.py's
  "type inferred" row);
* style: a linear classifier of a single response's style (the four domains and `normal`), fitted on
  the training responses, with its weight decay chosen on the validation responses. For each domain k,
  the evidence is log p(k | chosen) + log(1 - p(k | rejected)), summed over the pairs: in DSP a domain
  always chooses its own style;
* both: the two evidences added.

If even "both" stays more than a point under the oracle, ten pairs of these embeddings do not name the
domain well enough for NP-BTL to come within a point of it. Writes identification.json and
identification.md beside dsp.py's results. Settings: configs/benchmarks/dsp_identify.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from pipeline import (
    REPO,
    Evidence,
    IdentifySettings,
    Predictor,
    add_settings_argument,
    embedded_splits,
    fit_style_classifier,
    likelihood_evidence,
    load_settings,
    oracle_predictor,
    response_styles,
    style_evidence,
    type_posterior_predictor,
)

from npalign.config import RewardTrainConfig
from npalign.evaluation.reward import score_episodes
from npalign.models.builders import load_reward_model
from npalign.utils.io import atomic_path, write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_argument(parser, "dsp_identify")
    parser.add_argument("--embedder", default="smollm2-mean64")
    parser.add_argument("--runs", default=None, help="dsp.py's run folder (default out/bench/dsp_<embedder>)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/dsp_<embedder>")
    parser.add_argument("--episodes", type=int, default=None, help="test episodes per m (default: dsp.py's)")
    args = parser.parse_args()
    settings = load_settings(args.settings, IdentifySettings)
    text = settings.text
    contexts, targets = text.contexts, text.targets
    episodes = args.episodes or text.episodes
    slug = Path(args.embedder).name
    runs = Path(args.runs or REPO / "out" / "bench" / f"dsp_{slug}")
    out = Path(args.out or REPO / "benchmarks" / "results" / f"dsp_{slug}")
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)

    train, val, test = embedded_splits(runs / "dsp.jsonl", args.embedder).values()
    types = test.type_names
    oracles = {t: load_reward_model(runs / "runs" / f"oracle_{t}")[0] for t in types}
    classifier, fit = fit_style_classifier(train, val, settings.weight_decays)
    assert test.features is not None
    with torch.no_grad():
        fit["test_accuracy"] = 100 * float(
            (classifier(test.features).argmax(1) == response_styles(test)).float().mean()
        )

    def posterior_prediction(evidence: list[Evidence]) -> Predictor:
        return torch.no_grad()(type_posterior_predictor(oracles, evidence))

    predictors = {
        "oracle (told the domain)": oracle_predictor(oracles),
        "likelihood": type_posterior_predictor(oracles, [likelihood_evidence(oracles)]),
        "style": posterior_prediction([style_evidence(classifier, len(types))]),
        "both": posterior_prediction([style_evidence(classifier, len(types)), likelihood_evidence(oracles)]),
    }
    shared = {
        "contexts": contexts,
        "targets": targets,
        "episodes": episodes,
        "seed": RewardTrainConfig().eval.seed,
    }
    scored = {
        name: score_episodes(test, predict, **shared) for name, predict in predictors.items()
    }  # dsp.py's episodes
    accuracy = {
        name: {m: round(r["accuracy"][m]["mean"], 2) for m in r["accuracy"]} for name, r in scored.items()
    }
    by_type = {name: r["accuracy"]["10"]["by_type"] for name, r in scored.items()}
    write_json(
        {"embedder": args.embedder, "classifier": fit, "accuracy": accuracy, "m10_by_type": by_type},
        out / "identification.json",
    )
    lines = [
        f"# DSP ({args.embedder}): the oracle's models with the domain inferred from m pairs",
        "",
        f"Written by `python benchmarks/dsp_identify.py --embedder {args.embedder}` (test split, "
        f"{episodes} episodes per m, the episodes of dsp.py). Style classifier: weight decay "
        f"{fit['weight_decay']}, accuracy on single responses {fit['val_accuracy']:.1f} % (validation), "
        f"{fit['test_accuracy']:.1f} % (test), chance 20 %.",
        "",
        "| domain inferred from | " + " | ".join(f"m = {m}" for m in contexts) + " |",
        "|---" * (len(contexts) + 1) + "|",
    ]
    lines += [
        f"| {name} | " + " | ".join(f"{accuracy[name][str(m)]:.2f}" for m in contexts) + " |"
        for name in scored
    ]
    lines += ["", "At m = 10, per domain:", "", "| domain inferred from | " + " | ".join(types) + " |"]
    lines += ["|---" * (len(types) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{by_type[name][t]:.1f}" for t in types) + " |" for name in scored]
    with atomic_path(out / "identification.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

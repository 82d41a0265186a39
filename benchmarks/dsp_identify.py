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
identification.md beside dsp.py's results.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from dsp import (
    CONTEXTS,
    REPO,
    SPLITS,
    TARGETS,
    Evidence,
    evaluate_oracle,
    evaluate_type_posterior,
    likelihood_evidence,
    type_posterior_predictor,
)

from npalign.config import RewardTrainConfig
from npalign.data.loaders import load_preferences
from npalign.embedding.features import embed_preferences, resolve_embedder
from npalign.evaluation.reward import score_episodes
from npalign.models.builders import load_reward_model
from npalign.types import EpisodeBatch, PreferenceSet
from npalign.utils.io import atomic_path, write_json

WEIGHT_DECAYS = (1e-3, 1e-2, 3e-2, 1e-1)


def response_styles(data: PreferenceSet) -> torch.Tensor:
    """(N,) style of every response: the index of the domain that chooses it, or K for `normal`."""
    types = data.type_names
    styles = torch.full((data.num_items,), len(types), dtype=torch.long)
    styles[data.chosen] = torch.tensor([types.index(t) for t in data.user_types])[data.user]
    return styles


def fit_style_classifier(
    train: PreferenceSet, val: PreferenceSet
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Softmax regression on standardised features; the weight decay with the best validation accuracy."""
    assert train.features is not None and val.features is not None
    mean, std = train.features.mean(0), train.features.std(0) + 1e-6
    x_train, y_train = (train.features - mean) / std, response_styles(train)
    x_val, y_val = (val.features - mean) / std, response_styles(val)
    best: tuple[float, float, torch.nn.Linear] | None = None
    for decay in WEIGHT_DECAYS:
        torch.manual_seed(0)
        linear = torch.nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
        optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

        def closure(
            linear: torch.nn.Linear = linear, decay: float = decay, optimizer: torch.optim.LBFGS = optimizer
        ) -> torch.Tensor:
            optimizer.zero_grad()
            loss = (
                torch.nn.functional.cross_entropy(linear(x_train), y_train)
                + decay * linear.weight.pow(2).sum()
            )
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            accuracy = float((linear(x_val).argmax(1) == y_val).float().mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, decay, linear)
    assert best is not None
    accuracy, decay, linear = best

    class Standardised(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(linear((features - mean) / std), -1)

    return Standardised().eval(), {"weight_decay": decay, "val_accuracy": 100 * accuracy}


def style_evidence(classifier: torch.nn.Module, num_types: int) -> Evidence:
    """(K, B) log-evidence for each domain from the context's chosen and rejected responses' styles:
    log p(k | chosen) + log(1 - p(k | rejected)), summed over the pairs."""

    def evidence(batch: EpisodeBatch) -> torch.Tensor:
        chosen = classifier(batch.context_chosen)[..., :num_types]  # (B, C, K)
        rejected = classifier(batch.context_rejected)[..., :num_types]
        per_pair = chosen + torch.log1p(-rejected.exp().clamp(max=1 - 1e-6))
        return (per_pair * batch.context_mask[..., None]).sum(1).T

    return evidence


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embedder", default="smollm2-mean64")
    parser.add_argument("--runs", default=None, help="dsp.py's run folder (default out/bench/dsp_<embedder>)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/dsp_<embedder>")
    parser.add_argument("--episodes", type=int, default=4000)
    args = parser.parse_args()
    slug = Path(args.embedder).name
    runs = Path(args.runs or REPO / "out" / "bench" / f"dsp_{slug}")
    out = Path(args.out or REPO / "benchmarks" / "results" / f"dsp_{slug}")
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)

    embedder = resolve_embedder(args.embedder)
    splits = {
        s: embed_preferences(load_preferences(runs / "dsp.jsonl", split=s)[0], embedder) for s in SPLITS
    }
    train, val, test = (splits[s] for s in SPLITS)
    types = test.type_names
    oracles = {t: load_reward_model(runs / "runs" / f"oracle_{t}")[0] for t in types}
    classifier, fit = fit_style_classifier(train, val)
    assert test.features is not None
    with torch.no_grad():
        fit["test_accuracy"] = 100 * float(
            (classifier(test.features).argmax(1) == response_styles(test)).float().mean()
        )

    def posterior_prediction(
        evidence: list[Evidence],
    ) -> Callable[[EpisodeBatch, torch.Generator], torch.Tensor]:
        return torch.no_grad()(type_posterior_predictor(oracles, evidence))

    episodes = {"episodes": args.episodes, "seed": RewardTrainConfig().eval.seed}  # dsp.py's episodes
    scored = {
        "oracle (told the domain)": evaluate_oracle(oracles, test, **episodes),
        "likelihood": evaluate_type_posterior(oracles, test, **episodes),
        "style": score_episodes(
            test,
            posterior_prediction([style_evidence(classifier, len(types))]),
            contexts=CONTEXTS,
            targets=TARGETS,
            **episodes,
        ),
        "both": score_episodes(
            test,
            posterior_prediction([style_evidence(classifier, len(types)), likelihood_evidence(oracles)]),
            contexts=CONTEXTS,
            targets=TARGETS,
            **episodes,
        ),
    }
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
        f"{args.episodes} episodes per m, the episodes of dsp.py). Style classifier: weight decay "
        f"{fit['weight_decay']}, accuracy on single responses {fit['val_accuracy']:.1f} % (validation), "
        f"{fit['test_accuracy']:.1f} % (test), chance 20 %.",
        "",
        "| domain inferred from | " + " | ".join(f"m = {m}" for m in CONTEXTS) + " |",
        "|---" * (len(CONTEXTS) + 1) + "|",
    ]
    lines += [
        f"| {name} | " + " | ".join(f"{accuracy[name][str(m)]:.2f}" for m in CONTEXTS) + " |"
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

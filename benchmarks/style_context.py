"""Can the context see the style axes? NP-BTL names the style user type from 5 choices (issue 21, item 2).

For each context embedder ("minilm", and "minilm+style": minilm plus the responses' length and list-line
statistics, npalign.embedding.style_stats), an NP-BTL is trained on the style users' training prompts
(data: `npalign data build style`, as configs/benchmarks/dpo_style.yaml builds it). Then, for each of the
eight user types, contexts of 5 choices drawn from that type's users on *test* prompts go through the
encoder, and the type is named by the nearest centroid of z, the centroids being mean z over contexts of 5
choices on training prompts. Reports the share of contexts named right (target >= 95 % for the features
the policy's context reads) and the held-out pairwise accuracy at m = 0 / 1 / 5.

    python benchmarks/style_context.py      # ~5 minutes on a 2-core CPU; writes benchmarks/results/style_context/

Settings: configs/benchmarks/style_context.yaml.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from pipeline import REPO, StyleContextSettings, add_settings_argument, load_settings

from npalign.config import RewardTrainConfig, load_config
from npalign.data.loaders import load_preferences
from npalign.data.sources import build_dataset
from npalign.data.sources.style import USER_TYPES
from npalign.embedding.features import embed_preferences
from npalign.inference.api import RewardPredictor
from npalign.training.reward import train_reward_model
from npalign.types import PreferenceSet
from npalign.utils.io import write_json


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def type_contexts(data: PreferenceSet, size: int, count: int, seed: int) -> dict[str, list[torch.Tensor]]:
    """user type -> `count` index tensors of `size` pairs, each from one user of that type."""
    generator = torch.Generator().manual_seed(seed)
    types = [data.user_types[int(u)] for u in data.user]
    contexts: dict[str, list[torch.Tensor]] = {}
    for user_type in USER_TYPES:
        users = sorted({int(u) for u, t in zip(data.user, types, strict=True) if t == user_type})
        draws = []
        for _ in range(count):
            user = users[int(torch.randint(len(users), (1,), generator=generator))]
            own = (data.user == user).nonzero()[:, 0]
            draws.append(own[torch.randperm(len(own), generator=generator)[:size]])
        contexts[user_type] = draws
    return contexts


def latents(model: RewardPredictor, data: PreferenceSet, contexts: list[torch.Tensor]) -> torch.Tensor:
    assert data.features is not None
    chosen = torch.stack([data.features[data.chosen[c]] for c in contexts])  # (B, C, D)
    rejected = torch.stack([data.features[data.rejected[c]] for c in contexts])
    z = model.infer_user(chosen, rejected)
    return z if isinstance(z, torch.Tensor) else z.mean  # (B, Z)


def pair_accuracy(model: RewardPredictor, data: PreferenceSet, m: int, episodes: int, seed: int) -> float:
    """Held-out accuracy at m: per type, `episodes` contexts of m pairs of one user, 8 other pairs of theirs scored."""
    assert data.features is not None
    draws = type_contexts(data, m + 8, episodes, seed)
    correct = []
    for contexts in draws.values():
        for indices in contexts:
            context, targets = indices[:m], indices[m:]
            z = model.infer_user(data.features[data.chosen[context]], data.features[data.rejected[context]])
            p = model.prefer_prob(data.features[data.chosen[targets]], data.features[data.rejected[targets]], z)
            correct.append((p > 0.5).float().mean())
    return 100 * float(torch.stack(correct).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_argument(parser, "style_context")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "style_context")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "style_context")
    args = parser.parse_args()
    settings = load_settings(args.settings, StyleContextSettings)
    args.work.mkdir(parents=True, exist_ok=True)
    data_file = args.work / "style.jsonl"
    if not data_file.is_file():
        options = dict(settings.build)
        build_dataset("style", input=None, out=data_file, splits=tuple(options.pop("splits")), **options)
    results: dict[str, Any] = {"settings": str(args.settings), "embedders": {}}
    for embedder in settings.embedders:
        splits = {s: embed_preferences(load_preferences(data_file, split=s)[0], embedder, progress=True)
                  for s in ("train", "validation", "test")}  # fmt: skip
        run = args.work / embedder.replace("+", "_")
        if not (run / "model.safetensors").is_file():
            cfg = load_config(RewardTrainConfig, settings.reward_config, [f"embedder={embedder}", *settings.overrides])
            train_reward_model(cfg, splits["train"], splits["validation"], run)
        model = RewardPredictor.from_pretrained(run)
        train_z = {t: latents(model, splits["train"], c) for t, c in
                   type_contexts(splits["train"], settings.context_size, settings.centroid_contexts, settings.seed).items()}  # fmt: skip
        centroids = torch.stack([train_z[t].mean(0) for t in USER_TYPES])  # (K, Z)
        per_type = {}
        test_contexts = type_contexts(splits["test"], settings.context_size, settings.test_contexts, settings.seed + 1)
        for index, (user_type, contexts) in enumerate(test_contexts.items()):
            named = torch.cdist(latents(model, splits["test"], contexts), centroids).argmin(-1)  # (B,)
            per_type[user_type] = 100 * float((named == index).float().mean())
        # Among the four two-axis types only: each has a definite preference on both axes, so its choices
        # can name it; a one-axis user differs from a two-axis one in which pairs it holds, not in how it
        # chooses on the pairs they share (concise and concise+list agree on every list-format length pair).
        both = [t for t in USER_TYPES if "+" in t]
        both_centroids = torch.stack([train_z[t].mean(0) for t in both])
        per_two_axis = {}
        for index, user_type in enumerate(both):
            named = torch.cdist(latents(model, splits["test"], test_contexts[user_type]), both_centroids).argmin(-1)
            per_two_axis[user_type] = 100 * float((named == index).float().mean())
        # Named by the choices z predicts: the two-axis type whose held-out choices (40 probe pairs each, on
        # other prompts) z explains best, argmax_k mean log p(type k's choice | z).
        probes = type_contexts(splits["test"], 40, 1, settings.seed + 3)
        features = splits["test"].features
        assert features is not None
        per_two_axis_likelihood = {}
        for index, user_type in enumerate(both):
            right = 0
            for context in test_contexts[user_type]:
                z = model.infer_user(features[splits["test"].chosen[context]], features[splits["test"].rejected[context]])
                fits = [float(model.prefer_prob(features[splits["test"].chosen[probes[t][0]]],
                                                features[splits["test"].rejected[probes[t][0]]], z).clamp_min(1e-6).log().mean())
                        for t in both]  # fmt: skip
                right += int(max(range(len(both)), key=fits.__getitem__) == index)
            per_two_axis_likelihood[user_type] = 100 * right / len(test_contexts[user_type])
        accuracy = {str(m): pair_accuracy(model, splits["test"], m, settings.test_contexts // 4, settings.seed + 2)
                    for m in (0, 1, 5)}  # fmt: skip
        results["embedders"][embedder] = {
            "named_right": sum(per_type.values()) / len(per_type),
            "named_right_by_type": per_type,
            "named_right_two_axis": sum(per_two_axis.values()) / len(per_two_axis),
            "named_right_two_axis_by_type": per_two_axis,
            "named_by_choices_two_axis": sum(per_two_axis_likelihood.values()) / len(per_two_axis_likelihood),
            "named_by_choices_two_axis_by_type": per_two_axis_likelihood,
            "heldout_accuracy": accuracy,
            "features": int(splits["train"].features.shape[1]),  # type: ignore[union-attr]
        }
        log(f"{embedder}: type named right from {settings.context_size} choices in "
            f"{results['embedders'][embedder]['named_right']:.1f} % of test contexts; accuracy {accuracy}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(results, args.out / "results.json")
    rows = [[name, f"{r['named_by_choices_two_axis']:.1f}", f"{r['named_right_two_axis']:.1f}", f"{r['named_right']:.1f}",
             *(f"{r['named_right_by_type'][t]:.0f}" for t in USER_TYPES),
             *(f"{r['heldout_accuracy'][m]:.1f}" for m in ("0", "1", "5"))]
            for name, r in results["embedders"].items()]  # fmt: skip
    header = ["context features", "two-axis type named by predicted choices (%)", "by nearest z centroid (%)",
              "by nearest z centroid, all 8 types (%)", *USER_TYPES]
    table = markdown_table([*header, "acc m=0", "acc m=1", "acc m=5"], rows)
    text = (
        "# Can the context see the style axes? (benchmarks/style_context.py)\n\n"
        f"NP-BTL ({settings.reward_config.split('/')[-1]} with {' '.join(settings.overrides)}) names the style "
        f"user type from {settings.context_size} choices on held-out prompts by the nearest centroid of z "
        f"({settings.test_contexts} contexts per type, 5 random choices of one user each); the per-type "
        "columns are among all 8; held-out pairwise accuracy (%) at m = 0 / 1 / 5.\n\n"
        + table + "\n\n"
        "A two-axis user holds, besides one-axis pairs whose shared value it prefers, the pair on both axes "
        "where its preferences agree (concise+list: short list over long paragraph); without it concise+list "
        "and detailed+prose could not be told apart by their choices, since one reward (short with list, long "
        "with prose) explains both. A one-axis user (concise) differs from a two-axis one (concise+list) mostly "
        "in which pairs it holds.\n"
    )
    (args.out / "README.md").write_text(text, encoding="utf-8")
    log(f"wrote {args.out / 'results.json'} and README.md")


if __name__ == "__main__":
    main()

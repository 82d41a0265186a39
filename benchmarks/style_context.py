"""Can the context see the style axes? NP-BTL names the style user type from 5 choices (issue 21, items 2 and 6).

For each context embedder ("minilm", and "minilm+style": minilm plus the responses' length and list-line
statistics, npalign.embedding.style_stats), an NP-BTL is trained on the style users' training prompts
(data: `npalign data build style`, as configs/benchmarks/dpo_style.yaml builds it). Then, for each of the
eight user types, contexts of 5 choices drawn from that type's users on *test* prompts go through the
encoder, and the type is named by the nearest centroid of z, the centroids being mean z over contexts of 5
choices on training prompts. Reports the share of contexts named right (target >= 95 % for the features
the policy's context reads) and the held-out pairwise accuracy at m = 0 / 1 / 5.

    python benchmarks/style_context.py      # ~5 minutes on a 2-core CPU; writes benchmarks/results/style_context/

The same question for the DSP policy's context (item 6): DSP's four domain users and its two length users
(`npalign data build dsp --length-users`, as benchmarks/dpo_steering.py builds it), read through
`smollm2-mean64`, which pools the first 64 response tokens only, and through `smollm2-mean64+style`, the
features configs/dpo/np_dpo_dsp_smollm2.yaml reads:

    python benchmarks/style_context.py --settings configs/benchmarks/dsp_length_context.yaml \
        --work out/dsp_length_context --out benchmarks/results/dsp_length_context    # ~20 minutes

Settings: configs/benchmarks/style_context.yaml (dsp_length_context.yaml for DSP).
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


def type_names(data: PreferenceSet) -> list[str]:
    """The user types present: the style builder's order where they are its types, else sorted."""
    present = set(data.user_types)
    return [t for t in USER_TYPES if t in present] if present <= set(USER_TYPES) else sorted(present)


def type_contexts(data: PreferenceSet, size: int, count: int, seed: int) -> dict[str, list[torch.Tensor]]:
    """user type -> `count` index tensors of `size` pairs, each from one user of that type."""
    generator = torch.Generator().manual_seed(seed)
    types = [data.user_types[int(u)] for u in data.user]
    contexts: dict[str, list[torch.Tensor]] = {}
    for user_type in type_names(data):
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


def pair_accuracy(
    model: RewardPredictor, data: PreferenceSet, m: int, episodes: int, seed: int
) -> tuple[float, dict[str, float]]:
    """Held-out accuracy at m: per type, `episodes` contexts of m pairs of one user, 8 other pairs of theirs scored.

    Returns the mean over all episodes and the mean per type.
    """
    assert data.features is not None
    draws = type_contexts(data, m + 8, episodes, seed)
    correct: dict[str, list[torch.Tensor]] = {}
    for user_type, contexts in draws.items():
        for indices in contexts:
            context, targets = indices[:m], indices[m:]
            z = model.infer_user(data.features[data.chosen[context]], data.features[data.rejected[context]])
            p = model.prefer_prob(data.features[data.chosen[targets]], data.features[data.rejected[targets]], z)
            correct.setdefault(user_type, []).append((p > 0.5).float().mean())
    overall = 100 * float(torch.stack([c for values in correct.values() for c in values]).mean())
    return overall, {t: 100 * float(torch.stack(values).mean()) for t, values in correct.items()}


def style_readme(settings: StyleContextSettings, results: dict[str, Any]) -> str:
    rows = [[name, f"{r['named_by_choices_two_axis']:.1f}", f"{r['named_right_two_axis']:.1f}", f"{r['named_right']:.1f}",
             *(f"{r['named_right_by_type'][t]:.0f}" for t in USER_TYPES),
             *(f"{r['heldout_accuracy'][m]:.1f}" for m in ("0", "1", "5"))]
            for name, r in results["embedders"].items()]  # fmt: skip
    header = ["context features", "two-axis type named by predicted choices (%)", "by nearest z centroid (%)",
              "by nearest z centroid, all 8 types (%)", *USER_TYPES]
    table = markdown_table([*header, "acc m=0", "acc m=1", "acc m=5"], rows)
    return (
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


def build_flag(key: str, value: Any) -> str:
    """A `build` setting as `npalign data build`'s option: splits [0.6, 0.1, 0.3] -> "--splits 0.6,0.1,0.3"."""
    flag = "--" + key.replace("_", "-")
    if value is True:
        return flag
    return f"{flag} {','.join(map(str, value)) if isinstance(value, list) else value}"


def dsp_readme(settings: StyleContextSettings, results: dict[str, Any]) -> str:
    types = list(next(iter(results["embedders"].values()))["named_right_by_type"])
    named = markdown_table(
        ["context features", "features", "named right (%)", *types],
        [[name, str(r["features"]), f"{r['named_right']:.1f}", *(f"{r['named_right_by_type'][t]:.0f}" for t in types)]
         for name, r in results["embedders"].items()],
    )  # fmt: skip
    last, kept = list(results["embedders"].items())[-1]
    confusion = markdown_table(
        ["user \\ named as", *types],
        [[t, *(f"{kept['named_as_by_type'][t][u]:.0f}" for u in types)] for t in types],
    )
    accuracy = markdown_table(
        ["context features", "m=0", "m=1", "m=5", *(f"{t} m=0 -> 5" for t in types)],
        [[name, *(f"{r['heldout_accuracy'][m]:.1f}" for m in ("0", "1", "5")),
          *(f"{r['heldout_accuracy_by_type']['0'][t]:.0f} -> {r['heldout_accuracy_by_type']['5'][t]:.0f}" for t in types)]
         for name, r in results["embedders"].items()],
    )  # fmt: skip
    flags = [build_flag(key, value) for key, value in settings.build.items()]
    return (
        "# Can the DSP policy's context see length? (benchmarks/style_context.py)\n\n"
        "    python benchmarks/style_context.py --settings configs/benchmarks/dsp_length_context.yaml \\\n"
        "        --work out/dsp_length_context --out benchmarks/results/dsp_length_context\n\n"
        f"DSP's four domain users and its two length users (`npalign data build dsp {' '.join(flags)}`: each domain "
        "response against its own first sentences, both within 128 tokens with the end token, `normal` never "
        "used). NP-BTL "
        f"({settings.reward_config.split('/')[-1]} with {' '.join(settings.overrides)}) names the user from "
        f"{settings.context_size} of its choices on held-out queries ({settings.test_contexts} contexts per "
        f"user) by the nearest centroid of z, the centroids being mean z over {settings.centroid_contexts} "
        "contexts of training queries (the style data's second way, the user whose choices z explains best, is "
        "left out: DSP's users hold different pairs, and the length users' are easier to explain).\n\n"
        + named + "\n\n"
        f"Which user each held-out context is named as (%), `{last}`:\n\n"
        + confusion + "\n\n"
        f"Held-out pairwise accuracy (%) at m = 0 / 1 / 5, each user's at m = 0 and 5 ({settings.test_contexts // 4} "
        "contexts per user, 8 unseen pairs each):\n\n"
        + accuracy + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_argument(parser, "style_context")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "style_context")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "style_context")
    args = parser.parse_args()
    settings = load_settings(args.settings, StyleContextSettings)
    args.work.mkdir(parents=True, exist_ok=True)
    data_file = args.work / f"{settings.source}.jsonl"
    if not data_file.is_file():
        options = dict(settings.build)
        build_dataset(settings.source, input=None, out=data_file, splits=tuple(options.pop("splits")), **options)
    results: dict[str, Any] = {"settings": str(args.settings), "embedders": {}}
    for embedder in settings.embedders:
        splits = {s: embed_preferences(load_preferences(data_file, split=s)[0], embedder, progress=True)
                  for s in ("train", "validation", "test")}  # fmt: skip
        run = args.work / embedder.replace("+", "_")
        if not (run / "model.safetensors").is_file():
            cfg = load_config(RewardTrainConfig, settings.reward_config, [f"embedder={embedder}", *settings.overrides])
            train_reward_model(cfg, splits["train"], splits["validation"], run)
        model = RewardPredictor.from_pretrained(run)
        types = type_names(splits["train"])
        train_z = {t: latents(model, splits["train"], c) for t, c in
                   type_contexts(splits["train"], settings.context_size, settings.centroid_contexts, settings.seed).items()}  # fmt: skip
        centroids = torch.stack([train_z[t].mean(0) for t in types])  # (K, Z)
        per_type, named_as = {}, {}
        test_contexts = type_contexts(splits["test"], settings.context_size, settings.test_contexts, settings.seed + 1)
        for user_type, contexts in test_contexts.items():
            named = torch.cdist(latents(model, splits["test"], contexts), centroids).argmin(-1)  # (B,)
            per_type[user_type] = 100 * float((named == types.index(user_type)).float().mean())
            named_as[user_type] = {t: 100 * float((named == k).float().mean()) for k, t in enumerate(types)}
        # Among the four two-axis types only: each has a definite preference on both axes, so its choices
        # can name it; a one-axis user differs from a two-axis one in which pairs it holds, not in how it
        # chooses on the pairs they share (concise and concise+list agree on every list-format length pair).
        # Data without two-axis types (DSP) names among all its types.
        both = [t for t in types if "+" in t]
        per_two_axis = {}
        if both:
            both_centroids = torch.stack([train_z[t].mean(0) for t in both])
            for index, user_type in enumerate(both):
                named = torch.cdist(latents(model, splits["test"], test_contexts[user_type]), both_centroids).argmin(-1)
                per_two_axis[user_type] = 100 * float((named == index).float().mean())
        # Named by the choices z predicts: the (two-axis) type whose held-out choices (40 probe pairs each, on
        # other prompts) z explains best, argmax_k mean log p(type k's choice | z).
        choosers = both or types
        probes = type_contexts(splits["test"], 40, 1, settings.seed + 3)
        features = splits["test"].features
        assert features is not None
        named_by_choices = {}
        for index, user_type in enumerate(choosers):
            right = 0
            for context in test_contexts[user_type]:
                z = model.infer_user(features[splits["test"].chosen[context]], features[splits["test"].rejected[context]])
                fits = [float(model.prefer_prob(features[splits["test"].chosen[probes[t][0]]],
                                                features[splits["test"].rejected[probes[t][0]]], z).clamp_min(1e-6).log().mean())
                        for t in choosers]  # fmt: skip
                right += int(max(range(len(choosers)), key=fits.__getitem__) == index)
            named_by_choices[user_type] = 100 * right / len(test_contexts[user_type])
        scored = {str(m): pair_accuracy(model, splits["test"], m, settings.test_contexts // 4, settings.seed + 2)
                  for m in (0, 1, 5)}  # fmt: skip
        accuracy = {m: overall for m, (overall, _) in scored.items()}
        tag = "two_axis" if per_two_axis else "all"
        results["embedders"][embedder] = {
            "named_right": sum(per_type.values()) / len(per_type),
            "named_right_by_type": per_type,
            "named_as_by_type": named_as,
            **({"named_right_two_axis": sum(per_two_axis.values()) / len(per_two_axis),
                "named_right_two_axis_by_type": per_two_axis} if per_two_axis else {}),
            f"named_by_choices_{tag}": sum(named_by_choices.values()) / len(named_by_choices),
            f"named_by_choices_{tag}_by_type": named_by_choices,
            "heldout_accuracy": accuracy,
            "heldout_accuracy_by_type": {m: by_type for m, (_, by_type) in scored.items()},
            "features": int(splits["train"].features.shape[1]),  # type: ignore[union-attr]
        }  # fmt: skip
        log(f"{embedder}: type named right from {settings.context_size} choices in "
            f"{results['embedders'][embedder]['named_right']:.1f} % of test contexts; accuracy {accuracy}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(results, args.out / "results.json")
    text = style_readme(settings, results) if settings.source == "style" else dsp_readme(settings, results)
    (args.out / "README.md").write_text(text, encoding="utf-8")
    log(f"wrote {args.out / 'results.json'} and README.md")


if __name__ == "__main__":
    main()

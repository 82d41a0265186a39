"""What the benchmark scripts share: their settings files, the text pipeline (build -> embed -> train -> score).

A script in benchmarks/ imports this module by name (`from pipeline import ...`): Python puts the script's
folder first on the path, so nothing edits `sys.path`. Settings live in configs/benchmarks/<script>.yaml;
`load_settings` reads one into the dataclass of that script (`SCHEMAS`) and checks every key=value list of
training overrides through `npalign.config.load_config`, so a misspelt key stops before anything runs.

The text pipeline is benchmarks/dsp.py's: build a data set, embed its three splits, train each model of the
settings and one BTL per user type (the oracle), score all of them on the same test episodes per m, and
write results.json / results.md / accuracy.png. hh_relabeled.py, tune_dsp.py, dsp_identify.py,
dsp_pooling.py, dsp_context.py and seed_table.py reuse its pieces.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from statistics import mean, stdev
from typing import Any, TypeVar

import torch
import yaml

from npalign.config import PolicyTrainConfig, RewardTrainConfig, from_dict, load_config
from npalign.data.loaders import load_preferences
from npalign.data.sources import build_dataset
from npalign.embedding.features import embed_preferences, resolve_embedder
from npalign.evaluation.elicit import elicitation_curves
from npalign.evaluation.report import markdown_table, write_report
from npalign.evaluation.reward import evaluate_reward_model, score_episodes
from npalign.models.builders import load_reward_model
from npalign.models.reward import PreferenceModel
from npalign.training.reward import train_reward_model
from npalign.types import EpisodeBatch, PreferenceSet
from npalign.utils.io import atomic_path, read_json, read_jsonl, write_json

REPO = Path(__file__).resolve().parents[1]
SETTINGS_DIR = REPO / "configs" / "benchmarks"
SPLITS = ("train", "validation", "test")
ORACLE = "BTL per domain (oracle)"
POSTERIOR = "Per-type BTLs, type inferred (Bayes)"


# ----- settings files ---------------------------------------------------------------------------------------


def config_overrides(path: Path) -> list[str]:
    """A YAML training config file as key=value overrides, in the file's order."""

    def flatten(node: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}"

    return list(flatten(yaml.safe_load(path.read_text()), ""))


def override_list(value: Any, key: str) -> list[str]:
    """`value` if it is a list of key=value strings, else a TypeError naming `key`."""
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise TypeError(f"{key}: expected a list of key=value strings, got {value!r}.")
    return value


def check_overrides(cls: type, overrides: list[str], key: str, path: str | Path | None = None) -> None:
    """Validate `overrides` (on top of the config file `path`, if any) as a `cls` training config."""
    try:
        load_config(cls, path, overrides)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{key}: {error}") from error


@dataclass
class Settings:
    """A benchmark script's settings file; subclasses name its keys, `prepare` rewrites the raw mapping."""

    @classmethod
    def prepare(cls, raw: dict[str, Any], folder: Path) -> dict[str, Any]:
        return raw


@dataclass
class TextBenchmarkSettings(Settings):
    """dsp.yaml and hh_relabeled.yaml: the data set, the models and the evaluation of the text pipeline.

    `common` is given to every run first; `models` maps a display name to its own overrides, written as a
    list or as `{config: FILE, overrides: [...]}` (a training config file, relative to the settings file,
    flattened into overrides). The evaluation's context sizes and targets per episode are those `common`
    sets (eval.contexts, eval.targets), so training validation and the test episodes cannot disagree.
    """

    dataset: str
    common: list[str]
    models: dict[str, list[str]]
    oracle: list[str]
    oracle_name: str = ORACLE
    build: dict[str, Any] = field(default_factory=dict)
    episodes: int = 4000
    seed: int = 0
    split_seed: int = 0

    @classmethod
    def prepare(cls, raw: dict[str, Any], folder: Path) -> dict[str, Any]:
        models = raw.get("models")
        if not isinstance(models, dict):
            raise TypeError(f"models: expected a mapping of name -> overrides, got {models!r}.")
        resolved = {}
        for name, value in models.items():
            if isinstance(value, dict):
                unknown = sorted(set(value) - {"config", "overrides"})
                if unknown or "config" not in value:
                    raise ValueError(
                        f"models.{name}: expected {{config: FILE, overrides: [...]}}, got {value!r}."
                    )
                value = [*config_overrides(folder / value["config"]), *value.get("overrides", [])]
            resolved[name] = value
        return {**raw, "models": resolved}

    def __post_init__(self) -> None:
        override_list(self.common, "common")
        override_list(self.oracle, "oracle")
        for name, overrides in self.models.items():
            check_overrides(
                RewardTrainConfig,
                [*self.common, *override_list(overrides, f"models.{name}")],
                f"models.{name}",
            )
        check_overrides(RewardTrainConfig, [*self.common, *self.oracle], "oracle")
        if not isinstance(self.build, dict):
            raise TypeError(f"build: expected a mapping of build_dataset options, got {self.build!r}.")

    @property
    def contexts(self) -> list[int]:
        return load_config(RewardTrainConfig, overrides=self.common).eval.contexts

    @property
    def targets(self) -> int:
        return load_config(RewardTrainConfig, overrides=self.common).eval.targets

    def config(self, embedder: str, overrides: list[str], seed: int) -> RewardTrainConfig:
        """A run's config: `common`, the embedder, the seed, then the run's own overrides."""
        return load_config(
            RewardTrainConfig,
            overrides=[*self.common, f"embedder={embedder}", f"run.seed={seed}", *overrides],
        )


@dataclass
class SyntheticSettings(Settings):
    """synthetic.yaml: per task, display name -> overrides of RewardTrainConfig (each sets model.kind)."""

    tasks: dict[str, dict[str, list[str]]]
    episodes: int = 10000

    def __post_init__(self) -> None:
        for task, models in self.tasks.items():
            if not isinstance(models, dict) or not models:
                raise TypeError(f"tasks.{task}: expected a mapping of name -> overrides, got {models!r}.")
            for name, overrides in models.items():
                check_overrides(
                    RewardTrainConfig,
                    override_list(overrides, f"tasks.{task}.{name}"),
                    f"tasks.{task}.{name}",
                )


@dataclass
class ElicitSettings(Settings):
    """elicit.yaml: the elicitation protocol (issue 19) and, per synthetic task, the NP-BTL's overrides."""

    tasks: dict[str, list[str]]
    strategies: list[str]
    queries: list[int]
    pool: int = 20
    targets: int = 20
    episodes: int = 600
    seed: int = 0

    def __post_init__(self) -> None:
        for task, overrides in self.tasks.items():
            check_overrides(RewardTrainConfig, override_list(overrides, f"tasks.{task}"), f"tasks.{task}")
        if not self.strategies or not self.queries or max(self.queries) > self.pool:
            raise ValueError(f"strategies and queries must be non-empty, queries <= pool={self.pool}.")

    def curves(self, model: PreferenceModel, data: PreferenceSet, episodes: int) -> dict[str, Any]:
        """`elicitation_curves` of `model` on `data` under these strategies, queries, pool and targets."""
        return elicitation_curves(
            model,
            data,
            strategies=self.strategies,
            queries=self.queries,
            pool=self.pool,
            episodes=episodes,
            targets=self.targets,
            seed=self.seed,
        )


@dataclass
class DPOSteeringRunSettings:
    """One budget of dpo_steering.py: the full measurement or `--quick`."""

    steps: int
    queries: int
    max_new_tokens: int
    judge_steps: int
    eval_episodes: int
    contexts: list[int]
    targets: int


class PolicyBenchmarkSettings(Settings):
    """Settings that name a policy config file (`policy_config`, relative to the settings file)."""

    @classmethod
    def prepare(cls, raw: dict[str, Any], folder: Path) -> dict[str, Any]:
        if isinstance(raw.get("policy_config"), str):
            raw = {**raw, "policy_config": str((folder / raw["policy_config"]).resolve())}
        return raw


@dataclass
class DPOSteeringSettings(PolicyBenchmarkSettings):
    """dpo_steering.yaml: the data split, the judges, the policy config and the two budgets."""

    policy_config: str
    splits: list[float]
    context_size: int
    contexts_per_user: int
    interpolation: list[float]
    max_response_length: int
    eval_seed: int
    judge: list[str]
    full: DPOSteeringRunSettings
    quick: DPOSteeringRunSettings
    quick_overrides: list[str]


    def __post_init__(self) -> None:
        # The judges get their step budget and embedder from the script; check them with a stand-in of each.
        check_overrides(
            RewardTrainConfig,
            [
                *override_list(self.judge, "judge"),
                "optim.steps=400",
                "run.save_every=400",
                "run.log_every=400",
            ],
            "judge",
        )
        check_overrides(
            PolicyTrainConfig,
            override_list(self.quick_overrides, "quick_overrides"),
            "quick_overrides",
            self.policy_config,
        )


def resolve_file(raw: dict[str, Any], folder: Path, key: str) -> dict[str, Any]:
    """`raw` with its `key` (another settings file) made absolute against `folder`."""
    if isinstance(raw.get(key), str):
        return {**raw, key: str((folder / raw[key]).resolve())}
    return raw


@dataclass
class IdentifySettings(Settings):
    """dsp_identify.yaml: the style classifier's weight decays (chosen on validation) and the text benchmark
    (`benchmark`, a settings file) whose oracles, m, targets and test episodes it reuses."""

    benchmark: str
    weight_decays: list[float]

    @classmethod
    def prepare(cls, raw: dict[str, Any], folder: Path) -> dict[str, Any]:
        return resolve_file(raw, folder, "benchmark")

    def __post_init__(self) -> None:
        load_settings(self.benchmark, TextBenchmarkSettings)  # its settings must load too

    @property
    def text(self) -> TextBenchmarkSettings:
        return load_settings(self.benchmark, TextBenchmarkSettings)


@dataclass
class PoolingSettings(Settings):
    """dsp_pooling.yaml: response cuts, candidate poolings (layer, cut blocks) and the sweep's budget.

    `identify` names dsp_identify's settings: its style classifier, and through its `benchmark` the oracle
    and NP-BTL overrides, m and targets the sweep reuses; `np_overrides` come after NP-BTL's own.
    """

    identify: str
    embedder: str
    cuts: list[int]
    candidates: dict[str, list[list[int]]]
    np_overrides: list[str]
    episodes: int
    repeat_seeds: list[int]
    repeat_top: int

    @classmethod
    def prepare(cls, raw: dict[str, Any], folder: Path) -> dict[str, Any]:
        return resolve_file(raw, folder, "identify")

    def __post_init__(self) -> None:
        for label, blocks in self.candidates.items():
            if not blocks or not all(
                isinstance(b, list) and len(b) == 2 and b[1] in self.cuts for b in blocks
            ):
                raise ValueError(
                    f"candidates.{label}: expected [[layer, cut], ...] with cuts in {self.cuts}, got {blocks!r}."
                )
        text = self.identify_settings.text
        check_overrides(
            RewardTrainConfig,
            [*text.common, *text.models["NP-BTL"], *override_list(self.np_overrides, "np_overrides")],
            "np_overrides",
        )

    @property
    def identify_settings(self) -> IdentifySettings:
        return load_settings(self.identify, IdentifySettings)


@dataclass
class DPOStyleRunSettings:
    """The sizes of one dpo_style.py run (full or --quick)."""

    steps: int                 # training steps of NP-DPO and of the baseline
    prompts: int               # held-out prompts answered greedily
    sampled_prompts: int       # of those, answered by sampling too
    interpolation_prompts: int
    contexts_per_user: int
    max_new_tokens: int
    eval_episodes: int         # implicit-reward accuracy episodes per m
    eval_contexts: list[int]


@dataclass
class DPOStyleSettings(PolicyBenchmarkSettings):
    """dpo_style.yaml: the style data, the recipe, who answers, the judges' thresholds, and both budgets."""

    policy_config: str
    build: dict[str, Any]      # `build_dataset("style", ...)` options: splits, cap, short_tokens, ...
    users: list[str]           # the user types that answer (each prefers a value on both axes)
    context_size: int
    paths: list[list[str]]     # interpolation paths, [from, to]
    interpolation: list[float]
    sampling: dict[str, float]  # temperature, top_p
    generation_batch: int
    seed: int
    full: DPOStyleRunSettings
    quick: DPOStyleRunSettings
    quick_overrides: list[str]


    def __post_init__(self) -> None:
        check_overrides(PolicyTrainConfig, self.quick_overrides, "quick_overrides", self.policy_config)


@dataclass
class StyleContextSettings(Settings):
    """style_context.yaml / dsp_length_context.yaml: the data, the context embedders compared, NP-BTL, the draws."""

    build: dict[str, Any]
    embedders: list[str]
    reward_config: str
    overrides: list[str]
    context_size: int
    centroid_contexts: int
    test_contexts: int
    seed: int
    source: str = "style"  # the builder of `npalign data build` (style, or dsp with build.length_users)

    @classmethod
    def prepare(cls, raw: dict[str, Any], folder: Path) -> dict[str, Any]:
        if isinstance(raw.get("reward_config"), str):
            raw = {**raw, "reward_config": str((folder / raw["reward_config"]).resolve())}
        return raw

    def __post_init__(self) -> None:
        check_overrides(RewardTrainConfig, self.overrides, "overrides", self.reward_config)


SCHEMAS: dict[str, type[Settings]] = {
    "dsp": TextBenchmarkSettings,
    "hh_relabeled": TextBenchmarkSettings,
    "synthetic": SyntheticSettings,
    "elicit": ElicitSettings,
    "dpo_steering": DPOSteeringSettings,
    "dpo_style": DPOStyleSettings,
    "style_context": StyleContextSettings,
    "dsp_length_context": StyleContextSettings,
    "dsp_pooling": PoolingSettings,
    "dsp_identify": IdentifySettings,
}

S = TypeVar("S", bound=Settings)


def read_settings_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, on top of the file its `base:` key names (relative to `path`)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a settings file must be a YAML mapping, not a {type(raw).__name__}.")
    if "base" in raw:
        base = path.parent / raw.pop("base")
        raw = {**read_settings_mapping(base), **raw}
    return raw


def load_settings(path: str | Path, schema: type[S] | None = None) -> S:
    """Read and validate a settings file; the schema is `SCHEMAS[file stem]` unless given.

    Raises:
        ValueError / TypeError naming the file and the key (unknown keys and wrong types included).
    """
    path = Path(path)
    cls = schema or SCHEMAS.get(path.stem)
    if cls is None:
        raise ValueError(f"{path}: no settings schema for {path.stem!r}; known: {sorted(SCHEMAS)}.")
    try:
        raw = cls.prepare(read_settings_mapping(path), path.parent)
        return from_dict(cls, raw)  # type: ignore[return-value]
    except (TypeError, ValueError) as error:
        raise type(error)(f"{path}: {error}") from error


def settings_file(name: str) -> Path:
    """The committed settings of script `name`: configs/benchmarks/<name>.yaml."""
    return SETTINGS_DIR / f"{name}.yaml"


def add_settings_argument(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--settings",
        type=Path,
        default=settings_file(name),
        help=f"settings file (default configs/benchmarks/{name}.yaml)",
    )


# ----- small shared pieces ----------------------------------------------------------------------------------


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


def shown(path: str | Path) -> str:
    """A path as results files show it: relative to the repository (or its parent) when inside."""
    resolved = Path(path).resolve()
    for base in (REPO, REPO.parent):
        if resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return str(path)


def load_results(path: str, name: str = "results.json") -> dict:
    """`name` of a results folder (or the file itself); a one-line error where there is none."""
    file = Path(path)
    file = file / name if file.is_dir() else file
    if not file.is_file():
        raise SystemExit(f"{path}: no {name}; pass a results folder (or file) that a benchmark wrote.")
    return read_json(file)


def write_tables(
    out: str | Path, lines: list[str], *, heading: str | None = None, note: str | None = None
) -> None:
    """`lines` as a markdown file: the heading and the note first, the command that wrote it last.

    The command is the running benchmark script's, with its arguments, so that the file says how to rerun it.
    """
    command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    header = [f"# {heading}", ""] if heading else []
    body = [note, ""] if note else []
    with atomic_path(Path(out)) as tmp:
        tmp.write_text("\n".join([*header, *body, *lines, "", f"Written by `{command}`."]) + "\n")


def spread(values: list[float], fmt: str) -> str:
    """The mean in `fmt` and ' ± ' its s.e.m. over the values, or the mean alone for one value."""
    sem = f" ± {stdev(values) / len(values) ** 0.5:.2f}" if len(values) > 1 else ""
    return format(mean(values), fmt) + sem


def type_subset(data: PreferenceSet, user_type: str) -> PreferenceSet:
    """The pairs of users of one type."""
    index = data.type_names.index(user_type)
    pair_types = torch.tensor([data.type_names.index(t) for t in data.user_types])[data.user]  # (P,)
    return data.subset(pair_types == index)


def embedded_splits(
    data_file: Path, embedder: str, splits: tuple[str, ...] = SPLITS
) -> dict[str, PreferenceSet]:
    """The named splits of a data file the pipeline built, embedded through the default cache."""
    model = resolve_embedder(embedder)
    return {s: embed_preferences(load_preferences(data_file, split=s)[0], model) for s in splits}


# ----- the oracle and the type-inferred reference -----------------------------------------------------------


Predictor = Callable[[EpisodeBatch, torch.Generator], torch.Tensor]  # episode batch -> (B, T) p(chosen)
Evidence = Callable[[EpisodeBatch], torch.Tensor]  # episode batch -> (K, B) log-evidence for each type


def oracle_predictor(models: dict[str, PreferenceModel]) -> Predictor:
    """Per-type models, each episode sent to the model of its user's type."""

    def predict(batch: EpisodeBatch, _: torch.Generator) -> torch.Tensor:
        probs = torch.empty(batch.target_mask.shape)  # (B, T)
        for k, name in enumerate(batch.type_names):
            rows = batch.user_type == k
            if rows.any():
                probs[rows] = (
                    models[name]
                    .eval()
                    .prefer_prob(batch.target_chosen[rows], batch.target_rejected[rows], None)
                )
        return probs

    return predict


def likelihood_evidence(models: dict[str, PreferenceModel]) -> Evidence:
    """Each type's log-likelihood of an episode's m context choices under that type's model."""
    names = list(models)

    def evidence(batch: EpisodeBatch) -> torch.Tensor:
        context = torch.stack(
            [
                models[n].eval().log_likelihood(batch.context_chosen, batch.context_rejected, None)
                for n in names
            ]
        )  # (K, B, C)
        return (context * batch.context_mask).sum(-1)  # (K, B)

    return evidence


def type_posterior_predictor(models: dict[str, PreferenceModel], evidence: list[Evidence]) -> Predictor:
    """Bayes over the K types: a uniform prior times the summed evidence, then the posterior-weighted
    mean of the types' p(chosen > rejected) on the targets.

    With `[likelihood_evidence(models)]` it needs exactly the information NP-BTL has (m pairs of the
    user), so it estimates what m pairs of these embeddings can tell.
    """
    names = list(models)

    def predict(batch: EpisodeBatch, _: torch.Generator) -> torch.Tensor:
        log_post = torch.log_softmax(torch.stack([e(batch) for e in evidence]).sum(0), dim=0)  # (K, B)
        targets = torch.stack(
            [models[n].prefer_prob(batch.target_chosen, batch.target_rejected, None) for n in names]
        )  # (K, B, T)
        return (log_post.exp()[..., None] * targets).sum(0)

    return predict


def response_styles(data: PreferenceSet) -> torch.Tensor:
    """(N,) style of every response: the index of the domain that chooses it, or K for `normal`."""
    types = data.type_names
    styles = torch.full((data.num_items,), len(types), dtype=torch.long)
    styles[data.chosen] = torch.tensor([types.index(t) for t in data.user_types])[data.user]
    return styles


def fit_style_classifier(
    train: PreferenceSet, val: PreferenceSet, weight_decays: list[float]
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Softmax regression on standardised features; the weight decay with the best validation accuracy."""
    assert train.features is not None and val.features is not None
    mean_, std = train.features.mean(0), train.features.std(0) + 1e-6
    x_train, y_train = (train.features - mean_) / std, response_styles(train)
    x_val, y_val = (val.features - mean_) / std, response_styles(val)
    best: tuple[float, float, torch.nn.Linear] | None = None
    for decay in weight_decays:
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
            return torch.log_softmax(linear((features - mean_) / std), -1)

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


# ----- training -----------------------------------------------------------------------------------------------


def train_run(
    cfg: RewardTrainConfig, train: PreferenceSet, val: PreferenceSet, run_dir: Path
) -> dict[str, Any]:
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
        "val_accuracy_at_best": {str(m): round(best[f"val_accuracy_m{m}"], 2) for m in cfg.eval.contexts},
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
        The trained models and `train_run`'s record of each, both by type name.
    """
    models, records = {}, {}
    for user_type in train.type_names:
        run_dir = runs_dir / f"oracle_{user_type}"
        records[user_type] = train_run(
            cfg, type_subset(train, user_type), type_subset(val, user_type), run_dir
        )
        models[user_type] = load_reward_model(run_dir)[0]
    return models, records


# ----- the text pipeline --------------------------------------------------------------------------------------


def run_pipeline(
    settings: TextBenchmarkSettings,
    *,
    embedder: str,
    out_dir: Path,
    runs_dir: Path,
    cache_dir: Path | None,
    episodes: int,
    seed: int,
    split_seed: int,
    title: str,
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
    contexts, targets, oracle_name = settings.contexts, settings.targets, settings.oracle_name
    eval_seed = RewardTrainConfig().eval.seed
    clock = Clock()
    runs_dir.mkdir(parents=True, exist_ok=True)
    data_file = runs_dir / f"{settings.dataset}.jsonl"
    with clock.stage("build"):
        build = build_dataset(settings.dataset, input=None, out=data_file, seed=split_seed, **settings.build)
    with clock.stage("load"):
        splits = {name: load_preferences(data_file, split=name)[0] for name in SPLITS}
    embedding: dict[str, Any] = {}
    with clock.stage("embed"):
        model = resolve_embedder(embedder)  # loaded once, shared by the three splits
        for name in SPLITS:
            splits[name] = embed_preferences(splits[name], model, cache_dir=cache_dir)
            report = splits[name].meta["embedding"]
            embedding[name] = report | {"cache_dir": shown(report["cache_dir"])}
    embed_threads = torch.get_num_threads()
    if train_threads is not None:
        torch.set_num_threads(train_threads)
    train, val, test = (splits[name] for name in SPLITS)
    type_names = test.type_names
    scored = {"contexts": contexts, "episodes": episodes, "targets": targets}

    results: dict[str, Any] = {"models": {}, "training": {}}
    for name, overrides in settings.models.items():
        cfg = settings.config(embedder, overrides, seed)
        run_dir = runs_dir / "runs" / name.split(" ")[0].lower()
        with clock.stage(f"train {name}"):
            results["training"][name] = train_run(cfg, train, val, run_dir)
        with clock.stage(f"evaluate {name}"):
            trained, _ = load_reward_model(run_dir)
            results["models"][name] = evaluate_reward_model(trained, test, seed=cfg.eval.seed, **scored)

    with clock.stage(f"train {oracle_name}"):
        oracles, results["training"][oracle_name] = train_oracles(
            settings.config(embedder, settings.oracle, seed), train, val, runs_dir / "runs"
        )
    with clock.stage(f"evaluate {oracle_name}"):
        results["models"][oracle_name] = score_episodes(
            test, oracle_predictor(oracles), seed=eval_seed, **scored
        )
    with clock.stage(f"evaluate {POSTERIOR}"):
        posterior = type_posterior_predictor(oracles, [likelihood_evidence(oracles)])
        results["models"][POSTERIOR] = score_episodes(test, posterior, seed=eval_seed, **scored)

    pairs_per_type = {
        split: {t: type_subset(splits[split], t).num_pairs for t in type_names} for split in SPLITS
    }
    results["setup"] = {
        "dataset": settings.dataset,
        "build_report": build.to_dict() | {"source": shown(build.source), "out": shown(build.out)},
        "embedder": embedder,
        "embed_dim": int(train.features.shape[1]) if train.features is not None else None,
        "split": f"by prompt (80/10/10, split seed {split_seed}), users are the same in every split",
        "pairs_per_type": pairs_per_type,
        "prompts": {split: len(splits[split].prompt_ids) for split in SPLITS},
        "contexts": contexts,
        "episodes_per_m": episodes,
        "targets_per_episode": targets,
        "evaluation": "each test episode: m context pairs of the user on other prompts than its 20 targets",
        "models": dict(settings.models) | {oracle_name: settings.oracle},
        "common": settings.common,
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
    contexts = results["setup"]["contexts"]
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
            "| type | " + " | ".join(f"m = {m}" for m in contexts) + " |",
        ]
        lines.append("|---|" + "---|" * len(contexts))
        for type_name in type_names:
            cells = [f"{record['accuracy'][str(m)]['by_type'][type_name]:.1f}" for m in contexts]
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


def text_benchmark_main(
    description: str, name: str, runs_name: str, title: str, notes: list[str] | None = None
) -> None:
    """The command line of a text benchmark (dsp.py, hh_relabeled.py): parse, run the pipeline, print.

    Args:
        name: the script's name: its settings file configs/benchmarks/<name>.yaml and its results folder
            benchmarks/results/<name>_<embedder>.
        runs_name: the run folder out/bench/<runs_name>_<embedder>.
        title: the report's heading, with `{embedder}` filled in.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_argument(parser, name)
    parser.add_argument(
        "--embedder", default="minilm", help="minilm, smollm2, smollm2-mean, smollm2-mean64 or a model folder"
    )
    parser.add_argument("--out", default=None, help=f"default benchmarks/results/{name}_<embedder>")
    parser.add_argument(
        "--runs", default=None, help=f"run directories (default out/bench/{runs_name}_<embedder>)"
    )
    parser.add_argument("--cache", default=None, help="embedding cache root (default: the npalign cache)")
    parser.add_argument(
        "--fresh-cache",
        action="store_true",
        help="embed into an empty cache under --runs (times the embedding)",
    )
    parser.add_argument(
        "--episodes", type=int, default=None, help="evaluation episodes per m (default: settings)"
    )
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: settings)")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the split of the prompts into train / validation / test (default: settings; the "
        "published tables: 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training and evaluation (0: torch's default)",
    )
    parser.add_argument("--check", action="store_true", help="validate the settings, print them and stop")
    args = parser.parse_args()
    settings = load_settings(args.settings, TextBenchmarkSettings)
    if args.check:
        print(json.dumps({f.name: getattr(settings, f.name) for f in fields(settings)}, indent=2))
        return
    slug = Path(args.embedder).name
    out_dir = Path(args.out or REPO / "benchmarks" / "results" / f"{name}_{slug}")
    runs_dir = Path(args.runs or REPO / "out" / "bench" / f"{runs_name}_{slug}")
    cache_dir = Path(args.cache) if args.cache else None
    if args.fresh_cache:
        cache_dir = runs_dir / "fresh_cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
    results = run_pipeline(
        settings,
        embedder=args.embedder,
        out_dir=out_dir,
        runs_dir=runs_dir,
        cache_dir=cache_dir,
        episodes=settings.episodes if args.episodes is None else args.episodes,
        seed=settings.seed if args.seed is None else args.seed,
        split_seed=settings.split_seed if args.split_seed is None else args.split_seed,
        title=title.format(embedder=args.embedder),
        notes=notes,
        train_threads=args.threads or None,
    )
    print(markdown_table(results))
    summary = {k: results[k] for k in ("targets", "timings", "total_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out_dir}")

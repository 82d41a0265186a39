"""DSP steering, measured on generated text: does NP-DPO answer each domain's user the way that domain wants?

Steps (each cached in --work, so a rerun resumes):
1. data     DSP with the four domain users and the two length users, split by query (0.6 / 0.1 / 0.3:
            136 test queries, so every comparison has >= 100 held-out queries).
2. judges   one BTL reward model per domain on frozen embeddings (--judge-embedder), fitted on the original
            DSP responses of that domain's training queries only; their held-out pairwise accuracy on
            test queries is reported beside every figure (it bounds what the judges can see).
3. policies NP-DPO (configs/dpo/np_dpo_dsp_smollm2.yaml, SmolLM2-135M-Instruct) on all six users, and the
            unconditional DPO baseline on the same mixed data.
4. steering for each held-out query and each domain d: answers generated for d's user (z from 4 of d's
            choices on training queries), for every other domain's user, and by the baseline; the
            domain-d judge compares them. Targets: >= 65 % against other users, >= 60 % against the baseline.
5. length   median answer tokens for the concise and the detailed user (target: concise >= 30 % shorter)
            and along z = (1 - t) z_concise + t z_detailed (target: monotone in t).
6. accuracy implicit-reward accuracy on unseen test pairs against m per user type (no type may fall).

    python benchmarks/dpo_steering.py --quick --out out/dpo_steering_quick.json   # end to end, minutes
    python benchmarks/dpo_steering.py --bf16 --generation-batch 136 \
        --out out/dpo_steering/steering.json                                     # the measurement (a GPU)
    python benchmarks/dpo_steering.py --render benchmarks/results/dpo_h100/steering.json   # its tables again

Settings (the split, the judges, both budgets, the --quick overrides): configs/benchmarks/dpo_steering.yaml.

The measurement in benchmarks/results/dpo_h100/ ran on a lent H100 (NP-DPO 10 minutes; about 25 minutes
in all). Each run writes REPORT.json, REPORT.md (the tables) and --work/answers.json (every generated answer).

--quick keeps the training batch (2 users x 9 target pairs, 128-token responses, so the measured step time
is the real one) but trains 2 steps, generates 32 tokens for 3 queries and scores few episodes: it checks
that the pipeline runs end to end; its win rates are not measurements. Every run records the measured time of one training step and
one generation batch on the machine, and the extrapolated cost of the full setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from pipeline import DPOSteeringSettings, add_settings_argument, load_settings

from npalign.config import PolicyTrainConfig, RewardTrainConfig, load_config
from npalign.data.dpo_episodes import filter_user_types, user_context
from npalign.data.loaders import load_preferences
from npalign.data.sources import DSP_DOMAINS, build_dataset
from npalign.embedding.embedders import build_embedder
from npalign.embedding.features import embed_preferences
from npalign.embedding.hub import load_tokenizer
from npalign.evaluation.dpo import evaluate_policy
from npalign.inference.api import RewardPredictor
from npalign.inference.policy import PolicyRunner, load_policy
from npalign.training.dpo import train_policy
from npalign.training.loop import load_run_data
from npalign.training.reference import precompute_reference
from npalign.training.reward import train_reward_model
from npalign.types import PreferenceSet
from npalign.utils.io import read_json, write_json

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LENGTH_USERS = ("concise", "detailed")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----- 1-2: data and judges ---------------------------------------------------------------------------------


def build_data(work: Path, splits: list[float]) -> Path:
    path = work / "dsp.jsonl"
    if not path.is_file():
        report = build_dataset("dsp", input=None, out=path, splits=tuple(splits), length_users=True)
        log(f"built {path}: {report.total_written} pairs")
    return path


def train_judges(
    data_path: Path, work: Path, embedder_name: str, cache: str | None, steps: int, overrides: list[str]
) -> dict[str, Any]:
    """One BTL per domain on the original DSP responses; returns {domain: {path, heldout_accuracy}}."""
    embedder = build_embedder(embedder_name, device=DEVICE)
    judges: dict[str, Any] = {}
    for domain in DSP_DOMAINS:
        folder = work / "judges" / domain
        train, _ = load_preferences(data_path, split="train")
        test, _ = load_preferences(data_path, split="test")
        options = {"cache_dir": cache, "batch_size": 64, "progress": True}
        train = embed_preferences(filter_user_types(train, [domain]), embedder, **options)
        test = embed_preferences(filter_user_types(test, [domain]), embedder, **options)
        if not (folder / "model.safetensors").is_file():
            budget = [f"optim.steps={steps}", f"embedder={embedder_name}"]
            budget += [f"run.save_every={steps}", f"run.log_every={steps}"]
            cfg = load_config(RewardTrainConfig, overrides=[*overrides, *budget])
            train_reward_model(cfg, train, None, folder)
        judge = RewardPredictor.from_pretrained(folder)
        assert test.features is not None
        no_z = torch.zeros(0)
        chosen = judge.reward(test.features[test.chosen], no_z)
        rejected = judge.reward(test.features[test.rejected], no_z)
        accuracy = 100 * float((chosen > rejected).float().mean())
        judges[domain] = {"path": str(folder), "heldout_accuracy": accuracy, "heldout_pairs": test.num_pairs}
        log(f"judge {domain}: held-out pairwise accuracy {accuracy:.1f} % on {test.num_pairs} pairs")
    judges["_embedder"] = embedder
    return judges


def judge_scores(judges: dict[str, Any], domain: str, prompts: list[str], answers: list[str]) -> torch.Tensor:
    """r_domain of (prompt, answer) pairs, (N,); empty answers get -inf (they lose every comparison)."""
    embedder = judges["_embedder"]
    judge = RewardPredictor.from_pretrained(judges[domain]["path"])
    scores = torch.full((len(answers),), float("-inf"))
    keep = [i for i, answer in enumerate(answers) if answer.strip()]
    if keep:
        features = embedder.embed([prompts[i] for i in keep], [answers[i] for i in keep], batch_size=32)
        scores[keep] = judge.reward(features, torch.zeros(0))
    return scores


# ----- 3: policies ------------------------------------------------------------------------------------------


def policy_config(
    args: argparse.Namespace, settings: DPOSteeringSettings, data_path: Path, mode: str
) -> PolicyTrainConfig:
    short_baseline = mode == "unconditional" and args.baseline_steps is not None
    steps = args.baseline_steps if short_baseline else args.steps
    overrides = [f"data.train={data_path}", f"mode={mode}", f"optim.steps={steps}", "run.progress=true"]
    if short_baseline:  # too few steps for the one-off reference pass to pay; validate once, at the end
        overrides += ["dpo.precompute_reference=false", f"eval.val_every={steps}"]
    overrides += [f"data.max_response_length={args.max_response_length}"]
    if args.bf16:
        overrides.append("model.bf16=true")
    if args.embedding_cache:
        overrides.append(f"embedder.cache={args.embedding_cache}")
    if args.quick:  # the full batch (so the step time is the real one), two steps, no validation
        overrides += settings.quick_overrides
    return load_config(PolicyTrainConfig, settings.policy_config, overrides)


def train(
    args: argparse.Namespace, settings: DPOSteeringSettings, data_path: Path, work: Path, mode: str
) -> tuple[Path, dict[str, Any]]:
    out = work / ("np_dpo" if mode == "conditional" else "dpo_unconditional")
    cfg = policy_config(args, settings, data_path, mode)
    summary_file = out / "summary.json"
    if summary_file.is_file() and (summary := read_json(summary_file))["steps"] == cfg.optim.steps:
        return out, summary
    train_data, val_data, _ = load_run_data(cfg.data)
    result = train_policy(cfg, train_data, val_data, out, resume=(out / "checkpoint").exists())
    log(f"trained {mode}: {result.steps} steps, {result.ms_per_step:.0f} ms/step")
    return out, read_json(summary_file)


def time_reference(run: Path, data: PreferenceSet, args: argparse.Namespace, pairs: int = 18) -> float:
    """Seconds per pair of the once-per-dataset reference pass (dpo.precompute_reference), measured."""
    runner = load_policy(run, device=DEVICE)
    subset = data.subset(torch.arange(data.num_pairs) < pairs)
    started = time.perf_counter()
    precompute_reference(
        runner.policy,
        runner.tokenizer,
        subset,
        max_prompt_length=128,
        max_response_length=args.max_response_length,
        batch_pairs=pairs,
    )
    return (time.perf_counter() - started) / pairs


# ----- 4-5: generation and judging ---------------------------------------------------------------------------


def generate_all(
    runner: PolicyRunner, queries: list[str], z: torch.Tensor | None, args: argparse.Namespace
) -> tuple[list[str], float]:
    started = time.perf_counter()
    answers = runner.generate(
        queries, z=z, max_new_tokens=args.max_new_tokens, batch_size=args.generation_batch
    )
    return answers, time.perf_counter() - started


def win_rate(scores_own: torch.Tensor, scores_other: torch.Tensor) -> float:
    """Percent of queries where the own answer scores higher (ties count half)."""
    wins = (scores_own > scores_other).float() + 0.5 * (scores_own == scores_other).float()
    return 100 * float(wins.mean())


def answer_tokens(tokenizer: Any, answers: dict[str, list[str]]) -> dict[str, list[int]]:
    """Tokens of every answer, per user (re-tokenised without special tokens)."""
    return {
        user: [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in texts]
        for user, texts in answers.items()
    }


def ended_before_cap(tokens: dict[str, list[int]], cap: int) -> dict[str, int]:
    """Answers per user that ended before `cap` new tokens (length < cap - 2, to allow for
    re-tokenisation); once most answers sit at the cap, their median length cannot tell users apart."""
    return {user: sum(n < cap - 2 for n in counts) for user, counts in tokens.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_settings_argument(parser, "dpo_steering")
    parser.add_argument("--work", default="out/dpo_steering", help="folder for data, judges, runs, answers")
    parser.add_argument("--out", default="out/dpo_steering.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny everything, no measurement")
    parser.add_argument(
        "--steps", type=int, default=None, help="policy training steps (default: settings, 2000; quick 2)"
    )
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=None,
        help="train the unconditional baseline for this many steps (default: --steps, the fair comparison)",
    )
    parser.add_argument("--queries", type=int, default=None, help="held-out queries (default: settings)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: settings (128; quick 32)")
    parser.add_argument(
        "--max-response-length", type=int, default=None, help="training truncation (settings)"
    )
    parser.add_argument("--generation-batch", type=int, default=8)
    parser.add_argument(
        "--judge-embedder", default="smollm2-mean64", help="the text issue's best embedder (its oracles)"
    )
    parser.add_argument("--bf16", action="store_true", help="keep the frozen base in bfloat16 (GPU)")
    parser.add_argument(
        "--judge-steps", type=int, default=None, help="BTL judge steps (default: settings, 400; quick 50)"
    )
    parser.add_argument("--embedding-cache", default=None)
    parser.add_argument("--eval-episodes", type=int, default=None, help="implicit-reward accuracy episodes")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 avoids spin-wait stalls on a busy CPU)"
    )
    parser.add_argument("--render", default=None, help="only rewrite REPORT.json's tables as REPORT.md")
    args = parser.parse_args()
    if args.render:
        report = read_json(args.render)
        answers_file = Path(args.render).parent / "answers.json"
        if "ended_before_cap" not in report["length"] and answers_file.is_file():  # reports from before it
            tokenizer = load_tokenizer("smollm2")  # the base of configs/dpo/np_dpo_dsp_smollm2.yaml
            tokens = answer_tokens(tokenizer, read_json(answers_file)["answers"])
            report["length"]["ended_before_cap"] = ended_before_cap(
                tokens, report["settings"]["max_new_tokens"]
            )
            write_json(report, args.render)
        Path(args.render).with_suffix(".md").write_text(render_markdown(report))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    settings = load_settings(args.settings, DPOSteeringSettings)
    budget = settings.quick if quick else settings.full
    args.steps = args.steps or budget.steps
    args.queries = args.queries or budget.queries
    args.max_new_tokens = args.max_new_tokens or budget.max_new_tokens
    args.max_response_length = args.max_response_length or settings.max_response_length
    args.judge_steps = args.judge_steps or budget.judge_steps
    args.eval_episodes = args.eval_episodes or budget.eval_episodes
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    data_path = build_data(work, settings.splits)
    t = time.perf_counter()
    judges = train_judges(
        data_path, work, args.judge_embedder, args.embedding_cache, args.judge_steps, settings.judge
    )
    timings["judges_seconds"] = time.perf_counter() - t

    runs: dict[str, Path] = {}
    for mode in ("conditional", "unconditional"):
        t = time.perf_counter()
        runs[mode], summary = train(args, settings, data_path, work, mode)
        timings[f"train_{mode}_seconds"] = time.perf_counter() - t
        timings[f"train_{mode}_ms_per_step"] = summary["ms_per_step"]

    test, _ = load_preferences(data_path, split="test")
    train_data, _ = load_preferences(data_path, split="train")
    timings["reference_seconds_per_pair"] = time_reference(runs["conditional"], train_data, args)
    queries = sorted(set(test.prompt_ids))[: args.queries]
    log(f"{len(queries)} held-out queries")
    np_dpo = load_policy(runs["conditional"], device=DEVICE)
    baseline = load_policy(runs["unconditional"], device=DEVICE)
    users = [*DSP_DOMAINS, *LENGTH_USERS]
    # Every user answers from `contexts_per_user` contexts (seeds 0, 1, ...): answers[user] is seed 0's,
    # answers[f"{user}@{seed}"] the others', so that the spread over the contexts drawn is reported.
    seeds = range(1 if quick else settings.contexts_per_user)
    z_by_seed = {
        (user, seed): np_dpo.infer_z(user_context(train_data, user, settings.context_size, seed=seed))
        for user in users
        for seed in seeds
    }
    z = {user: z_by_seed[(user, 0)] for user in users}

    answers: dict[str, list[str]] = {}
    generation_seconds: list[float] = []
    for (user, seed), user_z in z_by_seed.items():
        key = user if seed == 0 else f"{user}@{seed}"
        answers[key], seconds = generate_all(np_dpo, queries, user_z, args)
        generation_seconds.append(seconds)
        log(f"generated for {key}: {seconds:.1f} s")
    answers["baseline"], seconds = generate_all(baseline, queries, None, args)
    generation_seconds.append(seconds)
    per_answer = sum(generation_seconds) / (len(generation_seconds) * len(queries))
    timings["seconds_per_generated_answer"] = per_answer

    steering: dict[str, Any] = {}
    for domain in DSP_DOMAINS:
        own = judge_scores(judges, domain, queries, answers[domain])
        others = {
            other: win_rate(own, judge_scores(judges, domain, queries, answers[other]))
            for other in DSP_DOMAINS
            if other != domain
        }
        by_context = []
        for seed in seeds:
            tag = "" if seed == 0 else f"@{seed}"
            own_c = judge_scores(judges, domain, queries, answers[domain + tag])
            rates = [win_rate(own_c, judge_scores(judges, domain, queries, answers[o + tag]))
                     for o in DSP_DOMAINS if o != domain]  # fmt: skip
            by_context.append(sum(rates) / len(rates))
        steering[domain] = {
            "win_rate_vs_other_users_by_context": by_context,
            "judge_heldout_accuracy": judges[domain]["heldout_accuracy"],
            "win_rate_vs_other_users": others,
            "win_rate_vs_other_users_mean": sum(others.values()) / len(others),
            "win_rate_vs_baseline": win_rate(own, judge_scores(judges, domain, queries, answers["baseline"])),
            "queries": len(queries),
        }
        log(f"steering {domain}: {steering[domain]}")

    for t_value in settings.interpolation:
        z_t = np_dpo.interpolate(z["concise"], z["detailed"], t_value)
        answers[f"concise_to_detailed_t{t_value}"] = generate_all(np_dpo, queries, z_t, args)[0]
    tokens = answer_tokens(np_dpo.tokenizer, answers)
    length: dict[str, Any] = {user: float(statistics.median(tokens[user])) for user in LENGTH_USERS}
    length["concise_shorter_percent"] = 100 * (1 - length["concise"] / max(length["detailed"], 1e-9))
    length["by_context"] = {
        user: [float(statistics.median(tokens[user if seed == 0 else f"{user}@{seed}"])) for seed in seeds]
        for user in LENGTH_USERS
    }
    length["interpolation"] = {
        str(t): float(statistics.median(tokens[f"concise_to_detailed_t{t}"])) for t in settings.interpolation
    }
    medians = list(length["interpolation"].values())
    length["interpolation_monotone"] = all(a <= b for a, b in zip(medians, medians[1:], strict=False))
    length["ended_before_cap"] = ended_before_cap(tokens, args.max_new_tokens)
    log(f"length: {length}")
    write_json({"queries": queries, "answers": answers}, work / "answers.json")

    contexts, targets = budget.contexts, budget.targets
    accuracy = evaluate_policy(
        np_dpo,
        test,
        contexts=contexts,
        episodes=args.eval_episodes,
        targets=targets,
        seed=settings.eval_seed,
        progress=True,
    )["accuracy"]
    # The unconditional baseline reads no context, so one m suffices: the largest m's episodes, whose target
    # pairs are the ones NP-DPO was scored on at that m (same seed).
    accuracy["baseline"] = evaluate_policy(
        baseline,
        test,
        contexts=[max(contexts)],
        episodes=args.eval_episodes,
        targets=targets,
        seed=settings.eval_seed,
    )["accuracy"][str(max(contexts))]
    falls = [
        {
            "type": name,
            "from_m": a,
            "to_m": b,
            "drop": accuracy[str(a)]["by_type"][name] - accuracy[str(b)]["by_type"][name],
        }
        for a, b in zip(contexts, contexts[1:], strict=False)
        for name in accuracy[str(a)]["by_type"]
        if accuracy[str(b)]["by_type"][name] < accuracy[str(a)]["by_type"][name] - 1e-6  # not float noise
    ]
    log(
        f"implicit-reward accuracy by m: { {m: round(accuracy[str(m)]['mean'], 1) for m in contexts} }; "
        f"falls: {falls}"
    )

    # The full setting, extrapolated from what was measured here.
    full_queries = len(set(test.prompt_ids))
    full_answers = full_queries * (len(users) + 1 + len(settings.interpolation))
    full, full_length = settings.full, settings.max_response_length
    scale_tokens = full.max_new_tokens / args.max_new_tokens
    step_ms = timings["train_conditional_ms_per_step"]
    train_pairs = train_data.num_pairs
    extrapolated = {
        "policy_training_hours": 2
        * full.steps
        * step_ms
        / 1000
        / 3600
        * (full_length / args.max_response_length),
        "reference_precompute_hours": train_pairs
        * timings["reference_seconds_per_pair"]
        * (full_length / args.max_response_length)
        / 3600,
        "generation_hours": full_answers * per_answer * scale_tokens / 3600,
        "assumptions": f"2 policies x {full.steps} steps at the measured ms/step scaled linearly to "
        f"{full_length}-token responses; one reference pass over {train_pairs} training pairs; "
        f"{full_answers} answers of {full.max_new_tokens} new tokens at the measured seconds per answer "
        "scaled linearly",
    }
    report = {
        "quick": quick,
        "note": "--quick: smoke run, the figures are not measurements" if quick else "",
        "settings": {
            "steps": args.steps,
            "baseline_steps": args.baseline_steps or args.steps,
            "queries": len(queries),
            "max_new_tokens": args.max_new_tokens,
            "max_response_length": args.max_response_length,
            "context_size": settings.context_size,
            "contexts_per_user": len(seeds),
            "judge_embedder": args.judge_embedder,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
            "bf16": args.bf16,
            "generation_batch": args.generation_batch,
        },
        "judges": {
            d: {k: v for k, v in j.items() if k != "path"} for d, j in judges.items() if d != "_embedder"
        },
        "steering": steering,
        "length": length,
        "implicit_reward_accuracy": accuracy,
        "implicit_reward_accuracy_falls": falls,
        "timings": timings,
        "extrapolated_full_cost": extrapolated,
        "seconds": time.perf_counter() - started,
        "answers_sample": {user: answers[user][:2] for user in answers},
    }
    write_json(report, args.out)
    Path(args.out).with_suffix(".md").write_text(render_markdown(report))
    log(f"wrote {args.out} and its .md")


# ----- the report as markdown ----------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    """The report's figures as tables (`--render REPORT.json` rewrites them without running anything)."""
    settings, steering, length = report["settings"], report["steering"], report["length"]
    domains = list(steering)
    lines = [
        "# NP-DPO steering on DSP, judged on generated text (`benchmarks/dpo_steering.py`)",
        "",
        f"Machine: {settings['machine']}; base in bfloat16: {settings.get('bf16', False)}. "
        f"NP-DPO {settings['steps']} steps, unconditional DPO baseline "
        f"{settings.get('baseline_steps', settings['steps'])} steps; {settings['queries']} held-out queries, "
        f"greedy answers of at most {settings['max_new_tokens']} new tokens, z from "
        f"{settings['context_size']} of the user's choices on training queries. Judges: one BTL per "
        f"domain on `{settings['judge_embedder']}` features of the original DSP responses.",
        "",
        *([report["note"], ""] if report.get("note") else []),
        "## Steering: the domain-d judge's preference for the answer generated for d's user (%)",
        "",
        "Ties count half. Targets: >= 65 against another domain's user, >= 60 against the baseline.",
        "",
        "| domain d | judge's held-out accuracy | "
        + " | ".join(f"vs {other}" for other in domains)
        + " | vs other users, mean | vs baseline |",
        "|---|---|" + "---|" * len(domains) + "---|---|",
    ]
    for domain, row in steering.items():
        cells = [f"{row['win_rate_vs_other_users'][o]:.1f}" if o != domain else "-" for o in domains]
        lines.append(
            f"| {domain} | {row['judge_heldout_accuracy']:.1f} | "
            + " | ".join(cells)
            + f" | {row['win_rate_vs_other_users_mean']:.1f} | {row['win_rate_vs_baseline']:.1f} |"
        )
    interpolation = length["interpolation"]
    lines += [
        "",
        "## Length: median answer tokens",
        "",
        f"Concise user {length['concise']:.0f}, detailed user {length['detailed']:.0f} "
        f"(concise {length.get('concise_shorter_percent', 0.0):.0f} % shorter; target >= 30). "
        "Along z = (1 - t) z_concise + t z_detailed:",
        "",
        "| t | " + " | ".join(interpolation) + " |",
        "|---|" + "---|" * len(interpolation),
        "| median tokens | " + " | ".join(f"{v:.0f}" for v in interpolation.values()) + " |",
    ]
    if "ended_before_cap" in length:
        ended = length["ended_before_cap"]
        lines += [
            "| ended before the cap | "
            + " | ".join(str(ended.get(f"concise_to_detailed_t{t}", "")) for t in interpolation)
            + " |",
            "",
            f"Answers that ended before the {settings['max_new_tokens']}-token cap, "
            f"of {settings['queries']}: "
            + ", ".join(f"{user} {n}" for user, n in ended.items() if not user.startswith("concise_to"))
            + ".",
        ]
    lines += [
        "",
        "## Implicit-reward accuracy on unseen test pairs against m (%)",
        "",
    ]
    accuracy = report["implicit_reward_accuracy"]
    keys = sorted(accuracy, key=lambda key: key == "baseline")  # the context sizes, then the baseline
    types = list(accuracy[keys[0]]["by_type"])
    columns = ["baseline DPO" if key == "baseline" else f"m = {key}" for key in keys]
    lines += ["| user type | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in types:
        lines.append(f"| {name} | " + " | ".join(f"{accuracy[k]['by_type'][name]:.1f}" for k in keys) + " |")
    lines.append(
        "| mean ± s.e.m. | "
        + " | ".join(f"{accuracy[k]['mean']:.1f} ± {accuracy[k]['sem']:.1f}" for k in keys)
        + " |"
    )
    falls = [f for f in report.get("implicit_reward_accuracy_falls", []) if f["drop"] > 1e-6]
    lines += [
        "",
        "Falls from one m to the next: "
        + (
            "; ".join(f"{f['type']} {f['from_m']} -> {f['to_m']} by {f['drop']:.1f}" for f in falls)
            if falls
            else "none"
        )
        + ".",
        "",
        f"Training: {report['timings']['train_conditional_ms_per_step']:.0f} ms per NP-DPO step, "
        f"{report['timings']['train_unconditional_ms_per_step']:.0f} ms per baseline step; "
        f"{report['timings']['seconds_per_generated_answer']:.2f} s per generated answer (batched); the last "
        f"invocation took {report['seconds']:.0f} s (policies trained by an earlier one are loaded, "
        "not retrained).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

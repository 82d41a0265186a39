"""NP-DPO steering that a CPU can verify: controlled style users, answers judged by script (issue 21).

Steps (each cached in --work, so a rerun resumes where it stopped):
1. data      `npalign data build style` over DSP (settings `build`): length and format users and their four
             combinations; a pair differs on the axes its user cares about; splits by prompt (111 held-out
             test prompts).
2. policies  NP-DPO (configs/dpo/np_dpo_style_cpu.yaml) and the unconditional DPO baseline on the same
             pairs for the same number of steps.
3. contexts  for each answering user type, `contexts_per_user` contexts of 4 choices on *training* prompts,
             2 per axis (a context with no pair on an axis cannot tell which way the user leans on it).
4. answers   greedy on the held-out prompts for every (user, context), NP-DPO's m = 0 and the baseline
             (NP-DPO's answers and accuracy come before the baseline is trained);
             sampled on the first `sampled_prompts` of them (each user's first context); along
             z = (1 - t) z_from + t z_to on the interpolation paths. Every answer is one row of
             answers.jsonl: {"user", "context_id", "prompt", "answer", "num_tokens", "decoding", "t"}.
5. judges    scripts only (npalign.evaluation.style): tokens by the policy's tokenizer, list lines. Anyone
             can recompute the tables from answers.jsonl.
6. accuracy  implicit-reward accuracy on unseen test pairs against m, per user type.

    python benchmarks/dpo_style.py --quick --work out/dpo_style_quick --out out/dpo_style_quick/results
    python benchmarks/dpo_style.py                     # the measurement: writes benchmarks/results/dpo_style/
    python benchmarks/dpo_style.py --render            # the tables and figures again, from answers.jsonl
    python benchmarks/dpo_style.py --policy-only       # NP-DPO's figures now, the baseline in a later run
    python benchmarks/dpo_style.py --policy-only --repetition-penalty 1.2 --out benchmarks/results/dpo_style_rp1.2
                                                       # the same policy, decoded with a repetition penalty

Answers are appended to --work/answers.jsonl (so they always belong to the policies trained there; with
--repetition-penalty P, to --work/answers_repetition_penalty_P.jsonl) and copied to --out/answers.jsonl
with the report.

Settings: configs/benchmarks/dpo_style.yaml. Wall times of every stage are in REPORT.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from pipeline import REPO, Clock, DPOStyleRunSettings, DPOStyleSettings, add_settings_argument, load_settings

from npalign.config import PolicyTrainConfig, load_config, to_dict
from npalign.data.loaders import load_preferences
from npalign.data.sources import build_dataset
from npalign.data.sources.style import user_preferences
from npalign.embedding.style_stats import list_lines
from npalign.evaluation.dpo import evaluate_policy
from npalign.evaluation.style import axis_matches, has_list, match_table, repeats
from npalign.inference.policy import PolicyRunner, load_policy
from npalign.training.dpo import train_policy
from npalign.training.loop import load_run_data
from npalign.utils.io import atomic_path, read_json, read_jsonl, write_json
from npalign.utils.rundir import check_run_directory

ContextTriple = tuple[str, str, str]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----- 1-3: data, policies, contexts --------------------------------------------------------------------------


def build_data(settings: DPOStyleSettings, path: Path) -> Path:
    if not path.is_file():
        options = dict(settings.build)
        splits = tuple(options.pop("splits"))
        report = build_dataset("style", input=None, out=path, splits=splits, **options)  # type: ignore[arg-type]
        log(f"built {path}: {report.total_written} pairs")
    return path


def train(
    settings: DPOStyleSettings, run: DPOStyleRunSettings, data: Path, out: Path, mode: str, quick: bool, seed: int
) -> dict[str, Any]:
    overrides = [f"data.train={data}", f"mode={mode}", f"optim.steps={run.steps}", f"run.seed={seed}"]
    overrides += settings.quick_overrides if quick else []
    cfg = load_config(PolicyTrainConfig, settings.policy_config, overrides)
    summary_file = out / "summary.json"
    if summary_file.is_file() and (summary := read_json(summary_file))["steps"] == cfg.optim.steps:
        try:  # a run trained with another config (another --train-seed) must not stand in for this one
            check_run_directory(out, "policy", to_dict(cfg), resume=True)
        except ValueError as error:
            raise SystemExit(f"{out} holds a finished run of another config; pass another --work ({error})") from None
        log(f"{mode}: reusing {out} ({summary['steps']} steps)")
        return summary
    train_data, val_data, _ = load_run_data(cfg.data)
    result = train_policy(cfg, train_data, val_data, out, resume=(out / "checkpoint").exists())
    log(f"trained {mode}: {result.steps} steps, {result.ms_per_step:.0f} ms/step")
    return read_json(summary_file)


def is_length_pair(chosen: str, rejected: str) -> bool:
    """A pair on the length axis (a length pair, or a two-axis user's pair on both axes) has sides that
    differ in words; a format pair's sides have the same words."""
    return chosen.replace("- ", "").split() != rejected.replace("- ", "").split()


def draw_contexts(
    rows: list[dict[str, Any]], user_type: str, count: int, size: int, seed: int
) -> list[list[ContextTriple]]:
    """`count` contexts of `size` choices of one user of `user_type` on training prompts, half on each axis
    the type cares about, each pair on a different prompt."""
    rng = random.Random(f"{seed}:{user_type}")
    own = [r for r in rows if r["user_type"] == user_type and r["split"] == "train"]
    axes = list(user_preferences(user_type))
    contexts = []
    for _ in range(count):
        user = rng.choice(sorted({r["user_id"] for r in own}))
        pool = [r for r in own if r["user_id"] == user]
        rng.shuffle(pool)
        chosen: list[dict[str, Any]] = []
        for index in range(size):
            want_length = axes[index % len(axes)] == "length"
            used = {r["prompt"] for r in chosen}
            chosen.append(next(r for r in pool if r["prompt"] not in used
                               and is_length_pair(r["chosen"], r["rejected"]) == want_length))  # fmt: skip
        contexts.append([(r["prompt"], r["chosen"], r["rejected"]) for r in chosen])
    return contexts


# ----- 4: answers ---------------------------------------------------------------------------------------------


class Answers:
    """answers.jsonl, appended one group at a time; a group already there is not generated again."""

    def __init__(self, path: Path, tokenizer: Any, repetition_penalty: float = 1.0) -> None:
        self.path, self.tokenizer, self.repetition_penalty = path, tokenizer, repetition_penalty
        self.rows = list(read_jsonl(path)) if path.is_file() else []
        self.done = {(r["user"], r["context_id"], r["decoding"], r["t"]) for r in self.rows}
        self.seconds: dict[str, float] = {}

    def add(
        self,
        runner: PolicyRunner,
        key: tuple[str, str | None, str, float | None],
        prompts: list[str],
        z: torch.Tensor | None,
        settings: DPOStyleSettings,
        run: DPOStyleRunSettings,
    ) -> None:
        if key in self.done:
            return
        user, context_id, decoding, t = key
        sampled = decoding == "sampled"
        started = time.perf_counter()
        answers = runner.generate(
            prompts, z=z, max_new_tokens=run.max_new_tokens, batch_size=settings.generation_batch,
            do_sample=sampled, seed=settings.seed if sampled else None, repetition_penalty=self.repetition_penalty,
            **(settings.sampling if sampled else {}),  # type: ignore[arg-type]
        )  # fmt: skip
        seconds = time.perf_counter() - started
        self.seconds[decoding] = self.seconds.get(decoding, 0.0) + seconds
        group = [
            {"user": user, "context_id": context_id, "prompt": prompt, "answer": answer,
             "num_tokens": len(self.tokenizer(answer, add_special_tokens=False)["input_ids"]),
             "decoding": decoding, "t": t}  # fmt: skip
            for prompt, answer in zip(prompts, answers, strict=True)
        ]
        with self.path.open("a", encoding="utf-8") as handle:
            for row in group:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += group
        self.done.add(key)
        log(f"{user} {context_id or ''} {decoding} t={t}: {len(prompts)} answers in {seconds:.0f} s")


def test_prompts(rows: list[dict[str, Any]], run: DPOStyleRunSettings) -> list[str]:
    return sorted({r["prompt"] for r in rows if r["split"] == "test"})[: run.prompts]


def policy_answers(
    settings: DPOStyleSettings,
    run: DPOStyleRunSettings,
    rows: list[dict[str, Any]],
    policy: PolicyRunner,
    answers: Answers,
) -> dict[str, list[list[ContextTriple]]]:
    """NP-DPO's answers: every user and context, m = 0, sampled, the interpolation paths; the contexts."""
    prompts = test_prompts(rows, run)
    contexts = {
        user: draw_contexts(rows, user, run.contexts_per_user, settings.context_size, settings.seed)
        for user in settings.users
    }
    z = {user: [policy.infer_z(context) for context in user_contexts] for user, user_contexts in contexts.items()}
    for user in settings.users:
        for index, user_z in enumerate(z[user]):
            answers.add(policy, (user, f"{user}/{index}", "greedy", None), prompts, user_z, settings, run)
    answers.add(policy, ("m=0", None, "greedy", None), prompts, None, settings, run)
    for user in settings.users:
        answers.add(policy, (user, f"{user}/0", "sampled", None), prompts[: run.sampled_prompts], z[user][0], settings, run)
    answers.add(policy, ("m=0", None, "sampled", None), prompts[: run.sampled_prompts], None, settings, run)
    for start, end in settings.paths:
        for t in settings.interpolation:
            path_z = policy.interpolate(z[start][0], z[end][0], t)
            key = (f"{start}->{end}", f"{start}/0->{end}/0", "greedy", t)
            answers.add(policy, key, prompts[: run.interpolation_prompts], path_z, settings, run)
    return contexts


def baseline_answers(
    settings: DPOStyleSettings, run: DPOStyleRunSettings, rows: list[dict[str, Any]], baseline: PolicyRunner, answers: Answers
) -> None:
    prompts = test_prompts(rows, run)
    answers.add(baseline, ("baseline", None, "greedy", None), prompts, None, settings, run)
    answers.add(baseline, ("baseline", None, "sampled", None), prompts[: run.sampled_prompts], None, settings, run)


# ----- 5-6: judges and figures --------------------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]], settings: DPOStyleSettings) -> dict[str, Any]:
    """The script judges' tables: per user and context, per user, the match table and the paths."""
    short = int(settings.build["short_tokens"])
    greedy = [r for r in rows if r["decoding"] == "greedy" and r["t"] is None]

    def stats(group: list[dict[str, Any]]) -> dict[str, Any]:
        unlooped = [r["num_tokens"] for r in group if not repeats(r["answer"])]
        return {
            "answers": len(group),
            "median_tokens": statistics.median(r["num_tokens"] for r in group),
            # the same median over answers that do not loop: a loop runs to the cap and would pass for a
            # long answer
            "median_tokens_unlooped": statistics.median(unlooped) if unlooped else None,
            "list_share": 100 * sum(has_list(r["answer"]) for r in group) / len(group),
            "mean_list_lines": statistics.mean(list_lines(r["answer"]) for r in group),
            "repeats_share": 100 * sum(repeats(r["answer"]) for r in group) / len(group),
        }

    by_context: dict[str, dict[str, Any]] = {}
    for row in greedy:
        by_context.setdefault(row["context_id"] or row["user"], []).append(row)  # type: ignore[arg-type]
    per_context = {key: stats(group) for key, group in by_context.items()}
    users = list(dict.fromkeys(r["user"] for r in greedy))
    per_user = {user: stats([r for r in greedy if r["user"] == user]) for user in users}
    sampled = [r for r in rows if r["decoding"] == "sampled"]
    per_user_sampled = {u: stats([r for r in sampled if r["user"] == u]) for u in dict.fromkeys(r["user"] for r in sampled)}

    def both_axes(group: list[dict[str, Any]], user_type: str) -> float:
        return 100 * statistics.mean(
            all(axis_matches(r["answer"], user_type, r["num_tokens"], short_tokens=short).values()) for r in group
        )

    matches = {u: {t: 100 * v for t, v in row.items()} for u, row in
               match_table(greedy, settings.users, short_tokens=short).items()}  # fmt: skip
    paths: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["t"] is not None:
            paths.setdefault(row["user"], [])
    for path in paths:
        for t in settings.interpolation:
            group = [r for r in rows if r["user"] == path and r["t"] == t]
            if group:
                paths[path].append({"t": t, **stats(group)})
    concise = [u for u in settings.users if user_preferences(u).get("length") == "short"]
    detailed = [u for u in settings.users if user_preferences(u).get("length") == "long"]
    listers = [u for u in settings.users if user_preferences(u).get("format") == "list"]
    prose = [u for u in settings.users if user_preferences(u).get("format") == "prose"]
    ctx = {u: [k for k in per_context if k.startswith(u + "/")] for u in settings.users}

    def worst_length_ratio(median: str) -> float | None:
        """The longest concise context's median over the shortest detailed context's (target <= 0.7).

        None where a context has no such median (every answer of it loops): its length is not measured.
        """
        concise_medians = [per_context[a][median] for u in concise for a in ctx[u]]
        detailed_medians = [per_context[b][median] for u in detailed for b in ctx[u]]
        if None in concise_medians or None in detailed_medians:
            return None
        return max(concise_medians) / max(min(detailed_medians), 1)

    checks = {
        "length_ratio_worst": worst_length_ratio("median_tokens"),
        "length_ratio_worst_unlooped": worst_length_ratio("median_tokens_unlooped"),
        "list_users_list_share": statistics.mean(per_user[u]["list_share"] for u in listers),
        "prose_users_list_share": statistics.mean(per_user[u]["list_share"] for u in prose),
        "own_match_beats_others": {
            u: {"own": matches[u][u],
                "best_other": max(matches[v][u] for v in matches if v != u),
                "m=0": matches.get("m=0", {}).get(u), "baseline": matches.get("baseline", {}).get(u)}
            for u in settings.users if u in matches
        },  # fmt: skip
        "paths_monotone": {
            path: {
                "median_tokens": monotone([p["median_tokens"] for p in points]),
                "list_share": monotone([p["list_share"] for p in points]),
            }
            for path, points in paths.items()
        },
    }
    return {
        "per_context": per_context,
        "per_user": per_user,
        "per_user_sampled": per_user_sampled,
        "matches": matches,
        "both_axes_sampled": {u: both_axes([r for r in sampled if r["user"] == u], u) for u in settings.users
                              if any(r["user"] == u for r in sampled)},  # fmt: skip
        "paths": paths,
        "checks": checks,
    }


def monotone(values: list[float]) -> str:
    """"increasing" / "decreasing" (never turning back, first != last), "flat" or "no"."""
    steps = list(zip(values, values[1:], strict=False))
    if not steps or values[0] == values[-1]:
        return "flat" if all(a == b for a, b in steps) else "no"
    if all(b >= a for a, b in steps):
        return "increasing"
    return "decreasing" if all(b <= a for a, b in steps) else "no"


def plot(summary: dict[str, Any], accuracy: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if accuracy else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    for name, points in summary["paths"].items():
        ts = [p["t"] for p in points]
        axes[0].plot(ts, [p["median_tokens"] for p in points], marker="o", label=name)
        axes[1].plot(ts, [p["list_share"] for p in points], marker="o", label=name)
    axes[0].set(xlabel="t", ylabel="median answer tokens", title="z = (1 - t) z_from + t z_to")
    axes[1].set(xlabel="t", ylabel="answers with >= 2 list lines (%)", title="format along the path")
    axes[0].legend(fontsize=7)
    if accuracy:
        contexts = sorted(int(m) for m in accuracy["accuracy"])
        types = sorted(accuracy["accuracy"][str(contexts[0])]["by_type"])
        for user_type in types:
            axes[2].plot(contexts, [accuracy["accuracy"][str(m)]["by_type"][user_type] for m in contexts],
                         marker="o", label=user_type)  # fmt: skip
        axes[2].set(xlabel="context pairs m", ylabel="implicit-reward accuracy (%)", title="unseen test pairs")
        axes[2].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_markdown(report: dict[str, Any]) -> str:
    summary, checks = report["summary"], report["summary"]["checks"]
    lines = [
        "# NP-DPO style steering on a CPU (benchmarks/dpo_style.py)",
        "",
        f"Machine: {report['machine']}. Training seed {report['train_seed']}. "
        + (f"Decoded with a repetition penalty of {penalty:g} on each answer's own tokens. " if (penalty := report.get("repetition_penalty", 1.0)) != 1
           else "")  # fmt: skip
        + f"NP-DPO: {report['policy']['steps']} steps in "
        f"{report['policy']['seconds_this_run'] / 60:.0f} min, kept step {report['policy'].get('best_step')} "
        f"(best validation accuracy); "
        + (
            f"baseline (unconditional DPO, same pairs): {report['baseline']['steps']} steps in "
            f"{report['baseline']['seconds_this_run'] / 60:.0f} min, kept step {report['baseline'].get('best_step')}. "
            if report["baseline"]
            else "baseline not run yet (--policy-only). "
        )
        + "Stage wall times (s; 0 = reused): "
        f"{json.dumps({k: round(v) for k, v in report['seconds'].items()})}. Every answer: answers.jsonl.",
        "",
        "## Greedy answers per user (all contexts) — script judges",
        "",
        "| user | answers | median tokens | >= 2 list lines (%) | repeats itself (%) | "
        + " | ".join(f"matches {u} (%)" for u in report["users"]) + " |",
        "|---|---|---|---|---|" + "---|" * len(report["users"]),
    ]
    for user, stats in summary["per_user"].items():
        match = summary["matches"].get(user, {})
        lines.append(f"| {user} | {stats['answers']} | {stats['median_tokens']:.0f} | {stats['list_share']:.0f} | "
                     f"{stats['repeats_share']:.0f} | "
                     + " | ".join(f"{match.get(u, 0):.0f}" for u in report["users"]) + " |")  # fmt: skip
    lines += ["", "## Per context (greedy)", "",
              "| context | median tokens | median tokens, answers that do not loop | repeats itself (%) | >= 2 list lines (%) |",
              "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {key} | {s['median_tokens']:.0f} | {_number(s.get('median_tokens_unlooped'))} | "
              f"{s['repeats_share']:.0f} | {s['list_share']:.0f} |" for key, s in summary["per_context"].items()]  # fmt: skip
    lines += ["", "## Sampled answers", "", "| user | answers | median tokens | >= 2 list lines (%) |", "|---|---|---|---|"]
    lines += [f"| {u} | {s['answers']} | {s['median_tokens']:.0f} | {s['list_share']:.0f} |"
              for u, s in summary["per_user_sampled"].items()]  # fmt: skip
    lines += ["", "## Interpolation paths (greedy)", "", "| path | t | median tokens | >= 2 list lines (%) |", "|---|---|---|---|"]
    for path, points in summary["paths"].items():
        lines += [f"| {path} | {p['t']} | {p['median_tokens']:.0f} | {p['list_share']:.0f} |" for p in points]
    lines += ["", "## Checks", "", "```json", json.dumps(checks, indent=1), "```"]
    if report.get("accuracy"):
        accuracy = report["accuracy"]["accuracy"]
        lines += ["", "## Implicit-reward accuracy on unseen test pairs (%)", "",
                  "| m | mean ± s.e.m. | " + " | ".join(sorted(accuracy[next(iter(accuracy))]["by_type"])) + " |"]  # fmt: skip
        types = sorted(accuracy[next(iter(accuracy))]["by_type"])
        lines.append("|---|---|" + "---|" * len(types))
        for m, entry in accuracy.items():
            lines.append(f"| {m} | {entry['mean']:.1f} ± {entry['sem']:.1f} | "
                         + " | ".join(f"{entry['by_type'][t]:.0f}" for t in types) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_argument(parser, "dpo_style")
    parser.add_argument("--quick", action="store_true", help="end to end in minutes; not a measurement")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "dpo_style", help="runs and caches")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dpo_style")
    parser.add_argument("--render", action="store_true", help="only rebuild the report from --out's answers.jsonl")
    parser.add_argument(
        "--policy-only",
        action="store_true",
        help="stop after NP-DPO's answers and accuracy (the report says the baseline was not run); a later run "
        "without it trains the baseline and adds its answers",
    )
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="seed of both trainings (default: the recipe's run.seed); data, contexts and evaluation keep the "
        "settings' seed, so two training seeds answer the same prompts from the same contexts",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="decode every answer with this repetition penalty on its own tokens (default 1.0: none); the policies "
        "in --work are reused, their answers kept apart",
    )
    args = parser.parse_args()
    settings = load_settings(args.settings, DPOStyleSettings)
    if args.train_seed is None:
        args.train_seed = load_config(PolicyTrainConfig, settings.policy_config).run.seed
    run = settings.quick if args.quick else settings.full
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    report_file = args.out / "REPORT.json"
    if args.render:
        report = read_json(report_file)
        report["summary"] = summarise(list(read_jsonl(args.out / "answers.jsonl")), settings)
    else:
        clock = Clock()
        with clock.stage("data"):
            data = build_data(settings, args.work / "style.jsonl")
            rows = list(read_jsonl(data))
        # NP-DPO's figures first, then the baseline's: a run cut short still reports the policy.
        with clock.stage("train_np_dpo"):
            policy_summary = train(settings, run, data, args.work / "np_dpo", "conditional", args.quick, args.train_seed)
        policy = load_policy(args.work / "np_dpo")
        # The answers of the policies trained in --work live there (a rerun goes on where it stopped) and are
        # copied to --out with the report: answers of another run must never stand in for this one's.
        name = "answers.jsonl" if args.repetition_penalty == 1 else f"answers_repetition_penalty_{args.repetition_penalty:g}.jsonl"
        answers = Answers(args.work / name, policy.tokenizer, args.repetition_penalty)
        with clock.stage("generate_np_dpo"):
            contexts = policy_answers(settings, run, rows, policy, answers)
        figures_file = args.work / "np_dpo_figures.json"
        with clock.stage("implicit_accuracy"):
            figures = read_json(figures_file) if figures_file.is_file() else {}
            if figures.get("policy") == policy_summary:
                accuracy = figures["accuracy"]
            else:
                test, _ = load_preferences(data, split="test")
                accuracy = evaluate_policy(policy, test, contexts=run.eval_contexts, episodes=run.eval_episodes,
                                           targets=4, seed=settings.seed, progress=True)  # fmt: skip
                write_json({"accuracy": accuracy, "contexts": contexts, "policy": policy_summary}, figures_file)
        baseline_summary = None
        if not args.policy_only:
            with clock.stage("train_baseline"):
                baseline_summary = train(
                    settings, run, data, args.work / "dpo_baseline", "unconditional", args.quick, args.train_seed
                )
            with clock.stage("generate_baseline"):
                baseline_answers(settings, run, rows, load_policy(args.work / "dpo_baseline"), answers)
        with atomic_path(args.out / "answers.jsonl") as tmp:
            shutil.copyfile(answers.path, tmp)
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "quick": args.quick,
            "users": settings.users,
            "train_seed": args.train_seed,
            "repetition_penalty": args.repetition_penalty,
            "policy": policy_summary,
            "baseline": baseline_summary,
            "contexts": contexts,
            "accuracy": accuracy,
            "generation_seconds": answers.seconds,
            "seconds": clock.seconds,
            "summary": summarise(answers.rows, settings),
        }
    write_json(report, report_file)
    (args.out / "README.md").write_text(render_markdown(report), encoding="utf-8")
    plot(report["summary"], report.get("accuracy"), args.out / "steering.png")
    log(f"wrote {report_file}, README.md and steering.png in {args.out}")


if __name__ == "__main__":
    main()

"""`npalign` command line: demo, synth, data build, embed, train-reward, evaluate-reward, elicit, train-dpo, evaluate-dpo, generate, serve (L4, cli)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from npalign import __version__
from npalign.cli import data_cmd, dpo_cmd, elicit_cmd, embed_cmd, serve_cmd
from npalign.cli.common import (
    USER_ERRORS,
    Command,
    add_commands,
    add_evaluation_flags,
    add_training_flags,
    check_outputs,
    describe,
    hide_library_progress_bars,
    parse_contexts,
    report_drops,
    report_training,
    training_overrides,
    user_error,
)

logger = logging.getLogger("npalign.cli")


def cmd_demo(args: argparse.Namespace) -> int:
    """train BTL, DPL and NP-BTL on the paper's 1-D task; compare to the ceiling

    Generate the paper's 1-D task (20,000 pairs, 400 users, split by user), train BTL, DPL and NP-BTL,
    evaluate them on unseen users at m = 0, 1, 3, 5, 10 against the Bayes ceiling, print the table,
    write results.json, results.md and accuracy.png.
    """
    from npalign.cli.demo import run_synthetic_benchmark
    from npalign.evaluation.report import markdown_table

    if args.episodes < 1:  # before training, not after it
        raise ValueError(f"--episodes {args.episodes}: must be >= 1.")
    run = run_synthetic_benchmark(args.out, episodes=args.episodes, seed=args.seed, progress=not args.quiet)
    print(markdown_table(run.results))
    print(
        f"wrote {run.paths['json']}, {run.paths['markdown']} and {run.paths['plot']} in {run.seconds:.1f} s"
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """write a synthetic dataset (user-grouped JSONL with user_type)

    Write a synthetic heterogeneous-preference task as user-grouped JSONL rows with a split column
    (by user, 80/10/10) and the task spec in FILE.task.json.
    """
    from npalign.data.loaders import preferences_to_rows, split_by_user
    from npalign.data.synthetic import generate, task_spec
    from npalign.utils.io import atomic_path, write_json

    out = Path(args.out)
    split_files = [
        out.with_name(f"{out.stem}.{name}{out.suffix}") for name in ("train", "validation", "test")
    ]
    check_outputs("--out", [out, *(split_files if args.write_splits else [])])
    types = json.loads(args.types) if args.types else None
    basis = [b.strip() for b in args.basis.split(";")] if args.basis else None
    spec = task_spec(
        args.task,
        num_pairs=args.num_pairs,
        num_users=args.num_users,
        noise=args.noise,
        users=args.users,
        alpha=args.alpha,
        basis=basis,
        types=types,
        dim=args.dim,
    )
    data = generate(spec, seed=args.seed)
    parts = split_by_user(data, (0.8, 0.1, 0.1), seed=args.seed)
    split_of_user = {
        user: name
        for name, part in zip(("train", "validation", "test"), parts, strict=True)
        for user in part.user_ids
    }
    rows = preferences_to_rows(data)
    for row in rows:
        row["split"] = split_of_user[row["user_id"]]
    files = {out: rows}
    if args.write_splits:
        for name, path in zip(("train", "validation", "test"), split_files, strict=True):
            files[path] = [r for r in rows if r["split"] == name]
    for path, selected in files.items():
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in selected))
        write_json(spec, f"{path}.task.json")
        print(f"wrote {len(selected)} pairs to {path} (task spec in {path}.task.json)")
    return 0


def _load(path: str, split: str | None, labels: list[str] | None):  # noqa: ANN202 - CLI glue
    from npalign.data.loaders import load_preferences

    data, report = load_preferences(path, split=split, labels=labels)
    report_drops({split or "all rows": report})
    return data


def _features(data, embedder: str, cache: str | None, progress: bool = True):  # noqa: ANN001, ANN202 - CLI glue
    if not data.is_text:
        return data
    if not embedder:
        raise ValueError("the data holds texts; choose an embedder with --embedder (e.g. minilm or smollm2).")
    from npalign.embedding.features import embed_preferences

    return embed_preferences(data, embedder, cache_dir=cache, progress=progress)


def cmd_train(args: argparse.Namespace) -> int:
    """train a reward model (btl, dpl, np-btl, np-btl-latent); alias: train

    Meta-train a reward model over users. key=value arguments override the config, e.g. optim.lr=3e-4
    episodes.max_context=10.
    """
    from npalign.config import RewardTrainConfig, load_config
    from npalign.training.loop import is_main_process, load_run_data
    from npalign.training.reward import train_reward_model

    cfg = load_config(RewardTrainConfig, args.config, training_overrides(args, **{"model.kind": args.model}))
    if not cfg.run.progress:
        hide_library_progress_bars()
    train, val, reports = load_run_data(cfg.data)
    report_drops(reports)
    embedder, cache, progress = cfg.embedder.name, cfg.embedder.cache, cfg.run.progress
    train = _features(train, embedder, cache, progress)
    val = None if val is None else _features(val, embedder, cache, progress)
    result = train_reward_model(cfg, train, val, args.out, resume=args.resume)
    if is_main_process():  # under accelerate launch the main process reports the run
        best = result.best_val_nll if math.isfinite(result.best_val_nll) else None  # no validation: null
        report_training(result, best_val_nll=best)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """accuracy of a reward model against context size on unseen targets; alias: evaluate

    Score a trained reward model at each context size m on fixed episodes (targets disjoint from the
    context), per user type, with the Bayes ceiling when the data is synthetic. Writes --out (JSON) and
    beside it a table and a plot: results.json gives results.md and accuracy.png, NAME.json NAME.md and
    NAME.png. With --elicit: the accuracy after k chosen queries instead, in the same three files.
    """
    from npalign.evaluation.report import markdown_table, report_paths, write_report
    from npalign.evaluation.reward import bayes_ceiling, evaluate_reward_model
    from npalign.models.builders import load_reward_model

    out = Path(args.out)
    if args.elicit and args.contexts is not None:
        raise ValueError("--contexts does not apply with --elicit, whose curves are against k (--queries).")
    args.contexts = [0, 1, 3, 5, 10] if args.contexts is None else args.contexts
    if args.elicit:
        outputs = [out, out.with_suffix(".md"), out.with_suffix(".png")]
    else:
        outputs = list(report_paths(out.parent, out.name).values())
    check_outputs("--out", outputs, [args.data])
    model, record = load_reward_model(args.model)
    embedder = (record.get("embedder") or {}).get("name", "")
    loaded = _load(args.data, args.split, args.labels)
    if loaded.is_text and not embedder:
        raise ValueError(
            f"{args.data} holds texts but the model in {args.model} was trained on feature vectors; evaluate it "
            "on a feature file, or train a model on the texts (train-reward --embedder NAME)."
        )
    data = _features(loaded, embedder, args.cache)
    if data.features is not None and int(data.features.shape[1]) != int(record["embed_dim"]):
        raise ValueError(
            f"{args.data} has {data.features.shape[1]}-d items but the model expects {record['embed_dim']}."
        )
    name = args.name or record["model"]["kind"]
    if args.elicit:
        return _evaluate_elicitation(args, model, data, name)
    args.episodes = 10000 if args.episodes is None else args.episodes
    results = {
        "models": {
            name: evaluate_reward_model(
                model,
                data,
                contexts=args.contexts,
                episodes=args.episodes,
                targets=args.targets,
                seed=args.seed,
                progress=True,
            )
        }
    }
    ceiling = bayes_ceiling(
        data, contexts=args.contexts, episodes=args.episodes, targets=args.targets, seed=args.seed
    )
    if ceiling is not None:
        results.update(ceiling)
    paths = write_report(results, out.parent, title=f"{name} on {Path(args.data).name}", json_name=out.name)
    print(markdown_table(results))
    print(f"wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")
    return 0


def _evaluate_elicitation(args: argparse.Namespace, model, data, name: str) -> int:  # noqa: ANN001 - CLI glue
    """evaluate-reward --elicit: the curves against k, their table and plot, and the comparisons in words."""
    from npalign.evaluation.elicit import elicitation_curves, summary_lines, table_view
    from npalign.evaluation.report import markdown_table, plot_accuracy
    from npalign.utils.io import atomic_path, write_json

    if args.pool < 1:
        raise ValueError(f"--pool {args.pool}: each user needs at least one candidate pair.")
    results = elicitation_curves(
        model,
        data,
        strategies=list(dict.fromkeys(args.elicit)),
        queries=sorted(set(args.queries)),
        pool=args.pool,
        episodes=ELICIT_EPISODES if args.episodes is None else args.episodes,
        targets=args.targets,
        seed=args.seed,
        progress=True,
    )
    results["protocol"]["name"] = name
    out = Path(args.out)
    title = f"{name} on {Path(args.data).name}: accuracy after k queries"
    table = markdown_table(table_view(results), column="k")
    words = "\n".join(f"- {line}" for line in summary_lines(results))
    write_json(results, out)
    markdown, plot = out.with_suffix(".md"), out.with_suffix(".png")
    with atomic_path(markdown) as tmp:
        tmp.write_text(f"# {title}\n\n{table}\n{words}\n")
    plot_accuracy(results, plot, title, xlabel="queries asked k (pairs)")
    print(table + words)
    print(f"wrote {out}, {markdown} and {plot}")
    return 0


def _demo_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    parser.add_argument("--episodes", type=int, default=10000, help="evaluation episodes per context size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _synth_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="paper1d | mixture2d | dirichlet2d")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--num-pairs", type=int, default=None)
    parser.add_argument("--num-users", type=int, default=None)
    parser.add_argument("--noise", type=float, default=None, help="Bradley-Terry temperature; 0 = noiseless")
    parser.add_argument(
        "--users",
        choices=["types", "dirichlet"],
        default=None,
        help="discrete types or random convex mixtures of the basis rewards",
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="Dirichlet concentration (--users dirichlet)"
    )
    parser.add_argument("--dim", type=int, default=None, help="item dimension (with --basis)")
    parser.add_argument(
        "--basis", default=None, help="';'-separated basis rewards, e.g. 'coord:0;bump:0.5,0.5'"
    )
    parser.add_argument(
        "--types", default=None, help="JSON: type name -> basis weights, e.g. '{\"a\": [1, 0]}'"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write-splits", action="store_true", help="also write FILE.train/.validation/.test files"
    )


def _train_reward_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", choices=["btl", "dpl", "np-btl", "np-btl-latent"], default=None, help="model.kind"
    )
    add_training_flags(parser, config_required=False, config_help="YAML config (see configs/reward/)")


ELICIT_EPISODES = 300
"""evaluate-reward --elicit's default episodes: each asks up to 10 questions one model call at a time."""


def _evaluate_reward_flags(parser: argparse.ArgumentParser) -> None:
    add_evaluation_flags(parser, run="model", trained_by="train-reward", name_default="its kind")
    parser.add_argument(
        "--elicit",
        nargs="+",
        default=None,
        metavar="STRATEGY",
        help="instead of the m sweep: accuracy after k queries chosen from each user's pool by each of "
        "random, uncertainty, info-gain, d-optimal (bald: latent NP-BTL)",
    )
    parser.add_argument(
        "--queries",
        nargs="+",
        type=int,
        default=[1, 2, 3, 5, 10],
        help="--elicit: the k to report (default 1 2 3 5 10)",
    )
    parser.add_argument(
        "--pool", type=int, default=20, help="--elicit: candidate pairs per user (default 20)"
    )
    parser.set_defaults(contexts=None, episodes=None, targets=20)  # contexts: 0 1 3 5 10 without --elicit


COMMANDS = (
    Command("demo", cmd_demo, _demo_flags),
    Command("synth", cmd_synth, _synth_flags),
    Command("train-reward", cmd_train, _train_reward_flags, aliases=("train",)),
    Command("evaluate-reward", cmd_evaluate, _evaluate_reward_flags, aliases=("evaluate",)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npalign",
        description="Few-shot steerable alignment: reward models and policies that adapt to a user from a "
        "handful of that user's pairwise choices (neural processes).",
    )
    parser.add_argument("--version", action="version", version=f"npalign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_commands(commands, COMMANDS)
    data_cmd.register(commands)
    dpo_cmd.register(commands)
    embed_cmd.register(commands)
    elicit_cmd.register(commands)
    serve_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come anywhere, also after options (`--out DIR optim.steps=50`), which
    # argparse alone takes only as one contiguous block.
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in item and not item.startswith("-") for item in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if getattr(args, "contexts", None) is not None:
            args.contexts = parse_contexts(args.contexts)
        return int(args.func(args))
    except USER_ERRORS as error:
        if not user_error(error):  # e.g. an OSError without a file: not the user's input
            raise
        if args.verbose:
            logger.info("traceback of the error below", exc_info=True)
        print(f"npalign {args.command}: error: {describe(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            logger.info("traceback of the interruption", exc_info=True)
        resume = " (rerun with --resume to go on from the last checkpoint)" if hasattr(args, "resume") else ""
        print(f"\nnpalign {args.command}: interrupted{resume}.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

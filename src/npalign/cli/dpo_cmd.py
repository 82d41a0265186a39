"""`npalign train-dpo | generate | evaluate-dpo`: NP-DPO policies from the command line (L4, cli).

Usage:
    npalign train-dpo --config FILE [key=value ...] --out DIR [--resume]
    npalign generate --policy DIR (--context FILE | --user-type NAME) --prompt TEXT [--max-new-tokens N]
    npalign evaluate-dpo --policy DIR --data FILE --contexts 0 1 3 5 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from npalign.cli.common import (
    Command,
    add_commands,
    add_evaluation_flags,
    add_training_flags,
    check_outputs,
    hide_library_progress_bars,
    parse_contexts,
    report_drops,
    report_training,
    training_overrides,
)

# The flags of `generate` that `PolicyRunner.generate` takes as they are (parsed under its names).
GENERATION_OPTIONS = ("max_new_tokens", "do_sample", "temperature", "top_p", "repetition_penalty", "seed")


def cmd_train_dpo(args: argparse.Namespace) -> int:
    """train an NP-DPO policy (or plain DPO with mode=unconditional)

    Train a causal LM with LoRA + FiLM steered by z from a user's context pairs, by DPO against the same
    weights with adapters off. key=value arguments override the config, e.g. optim.lr=5e-5 dpo.beta=0.1
    data.user_types=[academy].
    """
    from npalign.config import PolicyTrainConfig, load_config
    from npalign.training.dpo import train_policy
    from npalign.training.loop import is_main_process, load_run_data

    cfg = load_config(PolicyTrainConfig, args.config, training_overrides(args))
    if not cfg.run.progress:
        hide_library_progress_bars()
    train, val, reports = load_run_data(cfg.data)
    report_drops(reports)
    result = train_policy(cfg, train, val, args.out, resume=args.resume)
    if is_main_process():  # under accelerate launch the main process reports the run
        best = result.best_val_accuracy if result.best_val_accuracy > -1 else None
        report_training(result, best_val_accuracy=best)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """generate with a trained policy for a user given by context pairs or a user type

    Generate responses with z inferred from a user's (prompt, chosen, rejected) choices: from a
    JSON/JSONL file (--context) or drawn from one user of a type in the run's training data
    (--user-type). Without either, a conditional policy uses its population prior.
    """
    from npalign.inference.policy import load_policy

    if not args.user_type:
        given = [flag for flag in ("user_id", "data", "data_split") if getattr(args, flag) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(
                f"{flag} goes with --user-type (the user's type in that data); add --user-type NAME."
            )
    runner = load_policy(args.policy)
    context: list[tuple[str, str, str]] | None = None
    if args.context:
        from npalign.data.conversation import read_context_file

        context = read_context_file(args.context)
    elif args.user_type:
        from npalign.data.dpo_episodes import user_context
        from npalign.data.loaders import load_preferences

        recorded = runner.run["data"]
        from npalign.utils.rundir import path_from_run

        source = args.data or path_from_run(recorded["train"], runner.directory or Path.cwd())
        split = args.data_split if args.data else recorded["train_split"]
        if not source:
            raise ValueError("the run records no training data; pass --data FILE to draw the context from.")
        data, _ = load_preferences(source, split=split, labels=recorded.get("labels"))
        context = user_context(data, args.user_type, args.context_size, seed=args.seed, user_id=args.user_id)
    if runner.conditional and context is None:
        print("generate: no --context or --user-type; using the population prior (m = 0).", file=sys.stderr)
    options = {name: getattr(args, name) for name in GENERATION_OPTIONS}
    responses = runner.generate(args.prompt, context=context, **options)
    for prompt, response in zip(args.prompt, responses, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "response": response, "user_type": args.user_type}))
        else:
            print(response)
            if len(args.prompt) > 1:
                print()
    return 0


def cmd_evaluate_dpo(args: argparse.Namespace) -> int:
    """implicit-reward accuracy of a policy against context size, per user type

    Score a trained policy at each context size m on fixed episodes whose target pairs are disjoint
    from the context: 1[beta (log pi - log pi_ref)(chosen) > beta (log pi - log pi_ref)(rejected)],
    mean ± s.e.m. over episodes, per user type. Writes --out (JSON).
    """
    from npalign.data.loaders import load_preferences
    from npalign.evaluation.dpo import evaluate_policy, results_record
    from npalign.evaluation.report import markdown_table
    from npalign.inference.policy import load_policy
    from npalign.utils.io import write_json

    check_outputs("--out", [Path(args.out)], [args.data])
    if args.quiet:
        hide_library_progress_bars()
    runner = load_policy(args.policy)
    data, _ = load_preferences(args.data, split=args.split, labels=args.labels)
    evaluation = evaluate_policy(
        runner,
        data,
        contexts=parse_contexts(args.contexts),
        episodes=args.episodes,
        targets=args.targets,
        seed=args.seed,
        batch_pairs=args.batch_pairs,
        embedding_cache=args.cache,
        progress=not args.quiet,
    )
    name = args.name or ("np-dpo" if runner.conditional else "dpo")
    results = results_record(name, evaluation, run_dir=args.policy, data=args.data)
    write_json(results, Path(args.out))
    print(markdown_table(results))
    print(f"wrote {args.out}")
    return 0


def _train_dpo_flags(parser: argparse.ArgumentParser) -> None:
    add_training_flags(
        parser, config_required=True, config_help="YAML config (see configs/dpo/, configs/tiny/)"
    )


def _generate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", "--run", dest="policy", required=True, help="run directory written by npalign train-dpo"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--context", default=None, help="JSON/JSONL rows {prompt, chosen, rejected}")
    source.add_argument("--user-type", default=None, help="draw the context from a user of this type")
    parser.add_argument("--prompt", required=True, action="append", help="a prompt (repeat for several)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context-size", type=int, default=5, help="--user-type: context pairs (m)")
    parser.add_argument("--user-id", default=None, help="--user-type: this user rather than a random one")
    parser.add_argument("--data", default=None, help="--user-type: draw from this file, not the run's data")
    parser.add_argument("--data-split", default=None, help="--data: use only rows of this split")
    parser.add_argument("--seed", type=int, default=0, help="seeds the context draw and sampling")
    parser.add_argument(
        "--sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="penalise tokens the answer already holds, not the prompt's (1.0: none)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")


def _evaluate_dpo_flags(parser: argparse.ArgumentParser) -> None:
    add_evaluation_flags(
        parser,
        run="policy",
        trained_by="train-dpo",
        name_default="np-dpo / dpo",
        data_help="evaluation preference file (held-out prompts)",
    )
    parser.set_defaults(contexts=["0", "1", "3", "5"], episodes=200, targets=9)
    parser.add_argument("--batch-pairs", type=int, default=16, help="target pairs per forward pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add train-dpo, generate and evaluate-dpo to the `npalign` sub-command parser."""
    commands = [
        Command("train-dpo", cmd_train_dpo, _train_dpo_flags),
        Command("generate", cmd_generate, _generate_flags),
        Command("evaluate-dpo", cmd_evaluate_dpo, _evaluate_dpo_flags),
    ]
    add_commands(subparsers, commands)

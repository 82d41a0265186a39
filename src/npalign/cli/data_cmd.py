"""`npalign data build`: turn a public preference dataset into npalign's JSONL formats (L4, cli).

Usage:
    npalign data build NAME [--input FILE] [--subset hh|hht] [--out FILE] [--seed N]
                            [--splits TRAIN,VALIDATION,TEST] [--no-normal] [--length-users]
                            [--keep-identical] [--column KEY=VALUE ...]
                            [--short-tokens N] [--cap N] [--users-per-type N] [--tokenizer NAME]

NAME is one of ultrafeedback, helpsteer2, generic, dsp, hh-relabeled, style. The report is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from npalign.cli.common import check_outputs
from npalign.data.sources import SOURCES, ULTRAFEEDBACK_SUBSETS, build_dataset

COLUMN_ROLES = ("user", "prompt", "chosen", "rejected", "type")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `data build ...` to the main parser's subcommands; the parsed args carry `func`."""
    data = subparsers.add_parser("data", help="build preference datasets in npalign's JSONL formats")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    build = data_commands.add_parser(
        "build",
        help="convert a dataset (UltraFeedback, HelpSteer2, DSP, relabelled HH, any user-grouped table)",
        description="Convert a preference dataset into npalign's user-grouped or multi-label JSONL; "
        "splits go by prompt. Prints a JSON report of rows written and pairs dropped.",
    )
    build.add_argument("name", choices=sorted(SOURCES), help="which dataset builder to run")
    build.add_argument(
        "--input",
        default=None,
        help="local .jsonl/.json(.gz)/.parquet file or save_to_disk folder, or hf:<owner>/<name>; "
        "default: the hub dataset (ultrafeedback, helpsteer2) or the shared data copy (dsp, hh-relabeled)",
    )
    build.add_argument(
        "--subset", choices=sorted(ULTRAFEEDBACK_SUBSETS), default=None, help="ultrafeedback only"
    )
    build.add_argument("--out", default=None, help="output JSONL (default: data/<name>[-<subset>].jsonl)")
    build.add_argument("--seed", type=int, default=0, help="salt of the prompt hash that assigns splits")
    build.add_argument(
        "--splits",
        type=_fractions,
        default=(0.8, 0.1, 0.1),
        metavar="TRAIN,VALIDATION,TEST",
        help="fractions of prompts per split (default 0.8,0.1,0.1)",
    )
    build.add_argument("--no-normal", action="store_true", help="dsp: leave out the 'normal' response")
    build.add_argument(
        "--length-users", action="store_true", help="dsp: add the 'concise' and 'detailed' users"
    )
    build.add_argument(
        "--keep-identical", action="store_true", help="keep pairs whose two responses are the same text"
    )
    build.add_argument(
        "--column",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"generic: column mapping, KEY in {list(COLUMN_ROLES)} (or KEY_column), e.g. user=worker_id",
    )
    style = build.add_argument_group("style (controlled style users; see npalign.data.sources.style)")
    style.add_argument(
        "--short-tokens", type=int, default=None, help="token budget of the short side (default 48)"
    )
    style.add_argument(
        "--cap",
        type=int,
        default=None,
        help="response cap in tokens, end-of-turn token included (default 160)",
    )
    style.add_argument("--users-per-type", type=int, default=None, help="users per style type (default 4)")
    style.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer that counts tokens: a default model name or path (default smollm2)",
    )
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """Run `build_dataset` for parsed `data build` arguments; print the report as JSON.

    Returns 0 on success, 2 when the input or options are invalid (the reason goes to stderr).
    """
    try:
        options = _options(args)
        out = args.out or str(Path("data") / f"{args.name}{'-' + args.subset if args.subset else ''}.jsonl")
        check_outputs("--out", [Path(out)], [args.input])
        report = build_dataset(
            args.name,
            input=args.input,
            out=out,
            subset=args.subset,
            splits=args.splits,
            seed=args.seed,
            **options,
        )
    except ValueError as error:
        print(f"npalign data build: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Builder options from the flags that were given (absent flags leave the builder's defaults)."""
    options: dict[str, Any] = {}
    if args.no_normal:
        options["include_normal"] = False
    if args.length_users:
        options["length_users"] = True
    if args.keep_identical:
        options["keep_identical"] = True
    for flag in ("short_tokens", "cap", "users_per_type", "tokenizer"):
        if getattr(args, flag) is not None:
            options[flag] = getattr(args, flag)
    for item in args.column:
        key, separator, value = item.partition("=")
        role = key.removesuffix("_column")
        if not separator or not value or role not in COLUMN_ROLES:
            raise ValueError(
                f"--column {item!r}: expected KEY=VALUE with KEY in {list(COLUMN_ROLES)}, e.g. --column user=worker_id."
            )
        options[f"{role}_column"] = value
    return options


def _fractions(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers like 0.8,0.1,0.1")
    return values[0], values[1], values[2]

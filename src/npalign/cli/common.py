"""Pieces every command shares: common flags, the --contexts parser and the one-line error report (L4, cli)."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from safetensors import SafetensorError

if TYPE_CHECKING:
    from npalign.data.loaders import LoadReport

# What a command may raise for a bad input: reported as one line, exit code 2. AssertionError is not here
# on purpose (an assert that fires is a bug, and its traceback is what a bug report needs), nor is
# KeyboardInterrupt (`main` reports it in one line, exit code 130). OSError counts only with a file name
# or as one of these subclasses; see `user_error`.
USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # includes json.JSONDecodeError and UnicodeDecodeError
    TypeError,
    OSError,
    yaml.YAMLError,
    SafetensorError,
)
_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


@dataclass(frozen=True)
class Command:
    """One `npalign` subcommand. Its `--help` comes from the docstring of `run`, as click takes it: the
    first paragraph is the line in `npalign --help`, the rest the description of `npalign NAME --help`."""

    name: str
    run: Callable[[argparse.Namespace], int]
    add_flags: Callable[[argparse.ArgumentParser], None]
    aliases: tuple[str, ...] = ()


def add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], commands: Sequence[Command]
) -> None:
    """Add a parser for each command; the parsed args carry `func`, the function that runs it."""
    for command in commands:
        summary, _, description = (inspect.getdoc(command.run) or "").partition("\n\n")
        parser = subparsers.add_parser(
            command.name, aliases=list(command.aliases), help=summary, description=description
        )
        command.add_flags(parser)
        # -v after the command too (`npalign train-reward ... -v`); SUPPRESS keeps the top-level value otherwise
        parser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level"
        )
        parser.set_defaults(func=command.run)


def parse_contexts(values: Sequence[int | str]) -> list[int]:
    """Context sizes m from `--contexts 0 1 3`, `--contexts 0,1,3` or ints already parsed.

    Raises:
        ValueError: naming the bad part, for anything but an integer >= 0 (e.g. -1 or a).
    """
    sizes = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            if not part.isdigit():
                raise ValueError(
                    f"--contexts: context sizes must be integers >= 0, got {part!r}; "
                    "pass e.g. --contexts 0 1 3 5."
                )
            sizes.append(int(part))
    if not sizes:
        raise ValueError("--contexts: no context size given; pass e.g. --contexts 0 1 3 5.")
    return sizes


def user_error(error: BaseException) -> bool:
    """Whether `error` is a bad input to report in one line, not a bug to show with its traceback."""
    if not isinstance(error, USER_ERRORS):
        return False
    if isinstance(error, OSError) and not isinstance(error, _FILE_ERRORS):
        return error.filename is not None  # e.g. a network error without a file is not the user's input
    return True


def describe(error: BaseException) -> str:
    """A one-line message for `error` that names the file when the exception knows it."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        # Raised by the OS ("[Errno 13] Permission denied: 'x'"): put the file first, then what to do.
        remedy = {
            FileNotFoundError: "check the path",
            IsADirectoryError: "pass a file, not a directory",
            NotADirectoryError: "a parent of this path is a file, not a directory",
            PermissionError: "check the file's permissions",
            FileExistsError: "choose another path",
        }.get(type(error), "check the file and the disk")
        message = f"{error.filename}: {error.strerror}; {remedy}."
    elif isinstance(error, UnicodeDecodeError):
        message = (
            f"cannot read the input as UTF-8 (byte {error.object[error.start : error.start + 1]!r} at offset "
            f"{error.start}: {error.reason}); save the file as UTF-8."
        )
    elif isinstance(error, json.JSONDecodeError):
        message = f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
    elif isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark  # 0-based; editors count from 1
        where = "" if mark.name.startswith("<") else f"{mark.name}, "
        what = " ".join(part for part in (error.context, error.problem) if part)
        message = f"{where}line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({what})."
    elif isinstance(error, SafetensorError):
        message = f"a safetensors file is truncated or corrupt ({error}); restore it or retrain."
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())  # one line, whatever the exception put in it


def check_outputs(flag: str, outputs: Sequence[Path], inputs: Sequence[str | None] = ()) -> None:
    """Before any work, refuse outputs that would overwrite what the user did not mean to: an input of the
    command, a file of a run directory, a directory (a file is wanted), or a path under a file.

    Args:
        flag: the option that named the outputs (for the message), e.g. "--out".
        outputs: every file the command will write.
        inputs: the command's input files (None and hub names "hf:..." are skipped).
    Raises:
        ValueError: naming the output, what it would overwrite and what to do.
    """
    from npalign.utils.rundir import RUN_FILE, RUN_OWN_FILES

    sources = {Path(p).resolve() for p in inputs if p and not str(p).startswith("hf:")}
    for out in outputs:
        resolved = out.resolve()
        if out.is_dir():
            raise ValueError(f"{flag} {out}: is a directory; pass a file path.")
        if resolved in sources:
            raise ValueError(
                f"{flag} {out}: is an input of this command, which it would overwrite; choose another file."
            )
        if out.name in RUN_OWN_FILES and (resolved.parent / RUN_FILE).is_file():
            raise ValueError(
                f"{flag} {out}: is the run's own {out.name} in {out.parent}; choose another name, "
                f"e.g. {out.parent / 'results.json'}."
            )
        ancestor = next(parent for parent in resolved.parents if parent.exists())
        if not ancestor.is_dir():
            raise ValueError(f"{flag} {out}: {ancestor} is a file, not a directory; choose another path.")


def add_row_filters(parser: argparse.ArgumentParser) -> None:
    """--split and --labels: which rows and which label columns of a preference file to read."""
    parser.add_argument("--split", default=None, help="use only rows whose split column equals this")
    parser.add_argument(
        "--labels", nargs="+", default=None, help="multi-label files: which choice_<label> columns"
    )


def add_training_flags(parser: argparse.ArgumentParser, *, config_required: bool, config_help: str) -> None:
    """The flags both training commands take: config, run directory, resume, the data and embedder
    shorthands (each the same as its key=value override) and key=value overrides."""
    parser.add_argument("--config", required=config_required, default=None, help=config_help)
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint after a crash")
    parser.add_argument("--data", default=None, help="training preference file (data.train=FILE)")
    parser.add_argument("--val", default=None, help="validation file (data.val=FILE)")
    parser.add_argument("--data-split", default=None, help="rows of this split only (data.train_split)")
    parser.add_argument("--val-split", default=None, help="validation rows of this split (data.val_split)")
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="multi-label files: which choice_<label> columns (data.labels)",
    )
    parser.add_argument(
        "--embedder", default=None, help="for text data: minilm, smollm2-mean64, ... (embedder.name)"
    )
    parser.add_argument("--cache", default=None, help="embedding cache directory (embedder.cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (run.progress=false)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def training_overrides(args: argparse.Namespace, **job_flags: str | None) -> list[str]:
    """The shorthand flags of a training command as config overrides, then its key=value ones (which win).

    Args:
        job_flags: the job's own flags, config key -> value (e.g. {"model.kind": args.model}).
    """
    flags = {
        **job_flags,
        "embedder.name": args.embedder,
        "embedder.cache": args.cache,
        "data.train": args.data,
        "data.val": args.val,
        "data.train_split": args.data_split,
        "data.val_split": args.val_split,
        "data.labels": args.labels,
        "run.progress": False if args.no_progress else None,
    }
    shorthands = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return [*shorthands, *args.overrides]


def report_training(result: object, **figures: float | None) -> None:
    """Print a finished run as one JSON line: its folder, steps, kept step, the job's figures, timing."""
    print(
        json.dumps(
            {
                "out": str(result.out_dir),  # type: ignore[attr-defined]
                "steps": result.steps,  # type: ignore[attr-defined]
                "best_step": result.best_step,  # type: ignore[attr-defined]
                **figures,
                "seconds": round(result.seconds, 2),  # type: ignore[attr-defined]
                "ms_per_step": round(result.ms_per_step, 2),  # type: ignore[attr-defined]
            }
        )
    )


def add_evaluation_flags(
    parser: argparse.ArgumentParser,
    *,
    run: str,
    trained_by: str,
    name_default: str,
    data_help: str = "evaluation preference file",
) -> None:
    """The flags both evaluation commands take: the run directory (`--run` or `--{run}`, parsed as `run`),
    data and rows, context sizes, episodes, output. Each command sets its protocol's defaults after."""
    parser.add_argument(
        f"--{run}", "--run", dest=run, required=True, help=f"run directory written by npalign {trained_by}"
    )
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--contexts", nargs="+", help="context sizes m")
    parser.add_argument("--out", required=True, help="results JSON file")
    parser.add_argument("--episodes", type=int, help="episodes per context size")
    parser.add_argument("--targets", type=int, help="target pairs per episode")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--name", default=None, help=f"model name in results.json (default: {name_default})")
    add_row_filters(parser)
    parser.add_argument("--cache", default=None, help="embedding cache directory")


def hide_library_progress_bars() -> None:
    """--no-progress / --quiet also for the bars of transformers (loading weights) and the hub's downloads."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def report_drops(reports: dict[str, LoadReport]) -> None:
    """Say on stderr what loading dropped from each file (ties, users under data.min_pairs): never silently."""
    for name, report in reports.items():
        where = f"{report.source} ({name})"
        if any(report.ties_dropped.values()):
            print(f"{where}: dropped ties per label {report.ties_dropped}", file=sys.stderr)
        if report.users_dropped_min_pairs:
            print(
                f"{where}: dropped {report.users_dropped_min_pairs} users with fewer than data.min_pairs pairs "
                f"({report.pairs_dropped_min_pairs} pairs)",
                file=sys.stderr,
            )

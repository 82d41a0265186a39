"""Dataset sources: public preference datasets -> npalign's user-grouped / multi-label JSONL (L1, data).

Each builder reads one dataset in its own schema and writes one JSONL file that
`npalign.data.loaders` reads:

* user-grouped, one row per pair:
  `{"user_id", "prompt", "chosen", "rejected", "user_type", "split"}` (TRL's columns plus a user);
* multi-label, one row per pair of responses:
  `{"prompt", "response_a", "response_b", "choice_<label>": 0 | 1 | 0.5, ..., "split"}`, where 0 means
  response_a is preferred under <label>, 1 means response_b is, and 0.5 is a tie (the loader drops ties
  and counts them). Each label acts as one user type.

Sources (`build_dataset(name, ...)`; one module each, registered in `SOURCES`):

| name | source | format | user types |
|---|---|---|---|
| ultrafeedback | openbmb/UltraFeedback | multi-label | helpfulness, honesty, truthfulness, instruction_following |
| helpsteer2 | nvidia/HelpSteer2 | multi-label | helpfulness, correctness, coherence, complexity, verbosity |
| generic | any user-grouped table (PRISM-like) | user-grouped | a column of the table, or none |
| dsp | DSP domain-specific preference (test) | user-grouped | academy, business, entertainment, literature (+ concise, detailed) |
| hh-relabeled | HH-RLHF relabelled by objective (DPL) | user-grouped | helpful, harmless |
| style | any prompts + responses (DSP by default), transformed | user-grouped | concise, detailed, list, prose and their four combinations |

Rules shared by every source:

* Splits go by prompt: a stable hash of (seed, prompt text) places each prompt in train, validation or
  test, so no prompt is in two splits. The hash (`npalign.data.splits`) is the one `loaders.split_by_prompt` uses.
* A pair whose two responses are the same text carries no preference (the loader would map both to
  one item), and the loader rejects empty texts; both are dropped and counted unless
  `keep_identical=True` keeps the identical ones.
* Nothing is dropped silently: every drop is counted in `BuildReport.dropped` (the key names the unit:
  `completions_...`, `prompts_...`, `pairs_...`) and logged as a warning.
* Rows are sorted (split, then their fields in order) and written atomically, so the same input and
  seed give a byte-identical file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npalign.data.records import HUB_PREFIX, Record, missing_input_message, read_hub, read_local
from npalign.data.sources import dsp, generic, helpsteer2, hh_relabeled, style, ultrafeedback
from npalign.data.sources._common import BuildReport, Source, check_fractions, finish, resolve_options
from npalign.data.sources.dsp import DSP_DOMAINS
from npalign.data.sources.ultrafeedback import ULTRAFEEDBACK_SUBSETS
from npalign.data.splits import SPLIT_NAMES, prompt_split

__all__ = [
    "DSP_DOMAINS",
    "HUB_PREFIX",
    "SOURCES",
    "SPLIT_NAMES",
    "ULTRAFEEDBACK_SUBSETS",
    "BuildReport",
    "Source",
    "build_dataset",
    "prompt_split",
]

SOURCES: dict[str, Source] = {
    module.SOURCE.name: module.SOURCE
    for module in (ultrafeedback, helpsteer2, generic, dsp, hh_relabeled, style)
}
"""name -> Source; `npalign data build NAME` offers these names."""

DATA_DIR_ENV = "NPALIGN_DATA_DIR"


def build_dataset(
    name: str,
    *,
    input: str | None,
    out: str | Path,
    subset: str | None = None,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    **options: Any,
) -> BuildReport:
    """Build one dataset into npalign's JSONL format and write it to `out`.

    Args:
        name: one of `SOURCES`: ultrafeedback, helpsteer2, generic, dsp, hh-relabeled, style.
        input: a local file (.jsonl, .json, each optionally .gz, or .parquet), a `save_to_disk` folder,
            or "hf:<owner>/<name>" for a Hugging Face hub dataset. None means the builder's default:
            the hub dataset for ultrafeedback / helpsteer2, the copy under the shared data folder
            (`$NPALIGN_DATA_DIR`, else `shared/data` next to or inside the repository) for dsp /
            hh-relabeled / style; generic has no default.
        out: output JSONL path, replaced atomically.
        subset: ultrafeedback only: "hh" (helpfulness and honesty strictly disagree) or "hht"
            (helpfulness, honesty, truthfulness not unanimous).
        splits: (train, validation, test) fractions of the prompts; non-negative, summing to 1.
        seed: salt of the prompt hash that assigns splits.
        **options: builder options; see `SOURCES[name].options` (e.g. dsp: include_normal, length_users;
            generic: user_column, prompt_column, chosen_column, rejected_column, type_column; style:
            short_tokens, cap, end_tokens, min_ratio, users_per_type, tokenizer; all:
            keep_identical).
    Returns:
        The BuildReport; the file at `out` holds `report.total_written` rows.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset builder {name!r}; choose one of {sorted(SOURCES)}.")
    source = SOURCES[name]
    fractions = check_fractions(splits)
    if subset is not None and name != "ultrafeedback":
        raise ValueError(f"subset={subset!r} applies only to ultrafeedback; drop --subset for {name!r}.")
    if subset is not None and subset not in ULTRAFEEDBACK_SUBSETS:
        raise ValueError(
            f"unknown ultrafeedback subset {subset!r}; choose one of {sorted(ULTRAFEEDBACK_SUBSETS)}."
        )
    resolved = resolve_options(source, options)
    where, records = _load_records(source, input)
    report = BuildReport(
        name=name,
        source=where,
        out=str(out),
        format=source.format,
        subset=subset,
        seed=seed,
        split_fractions=fractions,
        options=resolved,
        rows_read=len(records),
    )
    rows = source.build(records, report, subset, resolved)
    finish(rows, report, Path(out))
    return report


def _load_records(source: Source, input: str | None) -> tuple[str, Sequence[Record]]:
    """(where it came from, records) for a source's input; see `build_dataset` for what `input` may be."""
    records: Sequence[Record]
    if input is None and source.hub_id is not None:
        where = source.hub_id
        records = read_hub(where)
    elif input is None and source.default_file is not None:
        path = _shared_data_file(source.default_file)
        where, records = str(path), read_local(path)
    elif input is None:
        raise ValueError(f"builder {source.name!r} has no default input; pass --input FILE (or input=...).")
    elif input.startswith(HUB_PREFIX):
        where = input[len(HUB_PREFIX) :]
        records = read_hub(where)
    elif not Path(input).exists():
        raise ValueError(missing_input_message(input))
    else:
        where, records = input, read_local(Path(input))
    if len(records) == 0:
        raise ValueError(
            f"input {where} has no rows; check that it is the right file or dataset and not empty."
        )
    return where, records


def _shared_data_file(relative: str) -> Path:
    """`relative` under $NPALIGN_DATA_DIR, else under the first `shared/data` folder that holds it."""
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        candidates = [Path(env_dir)]
    else:
        repo_root = Path(__file__).resolve().parents[4]  # src/npalign/data/sources/__init__.py -> repository
        candidates = [
            Path.cwd() / "shared" / "data",
            repo_root / "shared" / "data",
            repo_root.parent / "shared" / "data",
        ]
    for directory in candidates:
        if (directory / relative).is_file():
            return directory / relative
    raise ValueError(
        f"cannot find the default input {relative} under {[str(c) for c in candidates]}; pass --input FILE "
        f"or set {DATA_DIR_ENV} to the folder that holds it."
    )

"""`npalign embed`: embed every text item of a preference file into a features folder (L4, cli).

Usage:
    npalign embed --data FILE --embedder NAME --out DIR [--cache DIR] [--float16] [--split NAME]
                  [--labels LABEL ...] [--batch-size N]

Writes into DIR:
    features.safetensors   tensor "features" (N, D), float32 (float16 with --float16), row i = item i:
                           the model features, i.e. the embedder's vectors at unit RMS
                           (`embedding.features.to_features`); the embedder, revision and source
                           file in the header metadata
    items.jsonl            line i: {"index": i, "prompt": ..., "response": ...}, the texts of item i
    embedding.json         the report: embedder, revision, dim, dtype, items, embedded now, from the
                           cache, truncated, seconds, the cache folder, the data file and split

Items are the distinct (prompt, response) texts of the file (of one split with --split), in the
order the loader first meets them. Everything goes through the embedding cache (--cache, default
under the npalign cache folder), so `npalign train-reward` / `evaluate-reward` later reuse the vectors, and a killed
run resumes. The counts are printed as one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from npalign.cli.common import Command, add_commands, add_row_filters

FEATURES_FILE = "features.safetensors"
ITEMS_FILE = "items.jsonl"
REPORT_FILE = "embedding.json"


def _embed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="preference file with text items")
    parser.add_argument(
        "--embedder",
        required=True,
        help="minilm, smollm2 (last token), smollm2-mean, smollm2-mean64, or a model folder",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--cache", default=None, help="embedding cache directory (default: npalign cache)")
    parser.add_argument(
        "--float16", action="store_true", help="store vectors as float16 (cache and features file)"
    )
    add_row_filters(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `embed` to the main parser's subcommands; the parsed args carry `func`."""
    add_commands(subparsers, [Command("embed", run_embed, _embed_flags)])


def run_embed(args: argparse.Namespace) -> int:
    """embed the texts of a preference file (cached; resumable)

    Embed every (prompt, response) item of a preference file with a text embedder and write
    DIR/features.safetensors (N, D), DIR/items.jsonl (the texts of row i) and DIR/embedding.json
    (counts). Vectors go through the embedding cache, so no text is embedded twice and train/evaluate
    reuse them.
    """
    # Prints the counts as JSON; returns 0, or 2 when the input or options are invalid (reason on stderr).
    from npalign.data.loaders import load_preferences
    from npalign.embedding.cache import StorageDtype
    from npalign.embedding.features import embed_preferences
    from npalign.utils.io import atomic_path, save_tensors, write_json

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size}: use 1 or more.")
        data, _ = load_preferences(args.data, split=args.split, labels=args.labels)
        if not data.is_text:
            raise ValueError(f"{args.data} holds feature vectors, not texts; there is nothing to embed.")
        dtype: StorageDtype = "float16" if args.float16 else "float32"
        embedded = embed_preferences(
            data,
            args.embedder,
            cache_dir=args.cache,
            progress=not args.quiet,
            dtype=dtype,
            batch_size=args.batch_size,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"npalign embed: error: {error}", file=sys.stderr)
        return 2
    assert embedded.features is not None and embedded.item_prompts is not None
    assert embedded.item_responses is not None
    report = {
        **embedded.meta["embedding"],
        "data": str(args.data),
        "split": args.split,
        "pairs": data.num_pairs,
        "users": data.num_users,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stored = embedded.features.half() if args.float16 else embedded.features  # (N, D)
    metadata = {
        "embedder": report["embedder"],
        "revision": report["revision"],
        "data": str(args.data),
        "split": str(args.split or ""),
    }
    save_tensors({"features": stored}, out / FEATURES_FILE, metadata)
    with atomic_path(out / ITEMS_FILE) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for index, (prompt, response) in enumerate(
            zip(embedded.item_prompts, embedded.item_responses, strict=True)
        ):
            handle.write(json.dumps({"index": index, "prompt": prompt, "response": response}) + "\n")
    write_json(report, out / REPORT_FILE)
    print(
        json.dumps(
            {
                key: report[key]
                for key in ("embedder", "dim", "dtype", "items", "embedded", "from_cache", "truncated")
            }
            | {"seconds": round(report["seconds"], 2), "out": str(out)}
        )
    )
    return 0

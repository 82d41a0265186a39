"""Embedding throughput on this machine: texts/second for the default embedders on DSP pairs.

Also times the one-off GGUF -> safetensors conversion of smollm2 (in a temporary cache) against a
load from the converted folder.

    python benchmarks/embed_throughput.py --out benchmarks/results/embed_throughput.json
    python benchmarks/embed_throughput.py --embedders minilm --n 64 --skip-conversion --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from npalign.embedding import hub
from npalign.embedding.embedders import build_embedder
from npalign.utils.io import write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("../shared/data/dsp_domain_specific_preference/domain_specific_preference.test.json.gz")


def load_dsp_pairs(path: Path, n: int) -> tuple[list[str], list[str]]:
    """The first n (query, response) pairs of a DSP file, walking queries then their domains.

    Pairs with an empty query or response (the DSP test file has a few) are skipped: embedders refuse them.
    """
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        records = json.load(handle)
    prompts, responses = [], []
    for record in records:
        for _, response in sorted(record["responses"].items()):
            if not record["query"].strip() or not response.strip():
                continue
            prompts.append(record["query"])
            responses.append(response)
    if len(prompts) < n:
        raise ValueError(f"{path} holds {len(prompts)} pairs; ask for --n {len(prompts)} or fewer.")
    return prompts[:n], responses[:n]


def time_conversion() -> dict[str, float]:
    """Seconds to build the smollm2 folder from the GGUF, then to load model + tokenizer from it."""
    previous = os.environ.get(hub.CACHE_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[hub.CACHE_ENV] = tmp
        try:
            started = time.perf_counter()
            hub.resolve_model("smollm2")
            converted = time.perf_counter() - started
            started = time.perf_counter()
            hub.load_causal_lm("smollm2")
            hub.load_tokenizer("smollm2")
            cached = time.perf_counter() - started
        finally:
            if previous is None:
                del os.environ[hub.CACHE_ENV]
            else:
                os.environ[hub.CACHE_ENV] = previous
    return {"gguf_convert_s": round(converted, 2), "cached_load_s": round(cached, 3)}


def measure(
    name: str, prompts: list[str], responses: list[str], batch_size: int, repeats: int
) -> dict[str, Any]:
    started = time.perf_counter()
    embedder = build_embedder(name)
    load_s = time.perf_counter() - started
    lengths = embedder.token_lengths(prompts, responses)
    embedder.embed(prompts[:batch_size], responses[:batch_size], batch_size=batch_size)  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = embedder.embed(prompts, responses, batch_size=batch_size)
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {
        "embedder": name,
        "dim": int(vectors.shape[1]),
        "max_length": embedder.max_length,
        "texts": len(prompts),
        "mean_tokens": round(statistics.mean(lengths), 1),
        "truncated": sum(length > embedder.max_length for length in lengths),
        "batch_size": batch_size,
        "load_s": round(load_s, 2),
        "seconds": [round(s, 2) for s in seconds],
        "texts_per_s": round(len(prompts) / best, 1),
        "tokens_per_s": round(sum(min(n, embedder.max_length) for n in lengths) / best, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="DSP .json.gz, relative to the repo root"
    )
    parser.add_argument("--embedders", nargs="+", default=["minilm", "smollm2", "smollm2-mean64"])
    parser.add_argument("--n", type=int, default=256, help="(query, response) pairs to embed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="timed passes; the fastest counts")
    parser.add_argument("--skip-conversion", action="store_true", help="do not time the GGUF conversion")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    data = args.data if args.data.is_absolute() else REPO / args.data
    prompts, responses = load_dsp_pairs(data, args.n)
    report: dict[str, Any] = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "data": data.name,
        "results": [],
    }
    if any(name.startswith("smollm2") for name in args.embedders):
        hub.resolve_model("smollm2")  # make sure the shared cache exists before timing loads
        if not args.skip_conversion:
            report["smollm2_loading"] = time_conversion()
    for name in args.embedders:
        report["results"].append(measure(name, prompts, responses, args.batch_size, args.repeats))

    header = f"{'embedder':<14}{'dim':>5}{'tokens/text':>13}{'load s':>8}{'texts/s':>9}{'tokens/s':>10}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        print(
            f"{row['embedder']:<14}{row['dim']:>5}{row['mean_tokens']:>13}{row['load_s']:>8}"
            f"{row['texts_per_s']:>9}{row['tokens_per_s']:>10.0f}"
        )
    if "smollm2_loading" in report:
        timing = report["smollm2_loading"]
        print(
            f"smollm2: GGUF conversion {timing['gguf_convert_s']} s; load from cache {timing['cached_load_s']} s"
        )
    write_json(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

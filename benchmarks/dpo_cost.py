"""Cost of the NP-DPO design against a naive one, side by side at the same batch: peak memory and step time.

Variants (each measured in its own fresh subprocess, so that peak memory is that variant's alone):

* ours             reference = the same weights with LoRA and FiLM off (`policy.reference()`), one
                   reference forward per step (no gradients), then the policy forward + backward.
* ours-precomputed the same policy; log pi_ref of the batch computed once before the timed steps
                   (`dpo.precompute_reference: true`), so a step has no reference forward at all.
* naive            what the release did: a deep copy of the whole base model as the reference and a
                   separate reference forward through it every step.

All three train the same LoRA + FiLM + encoder with AdamW on identical random token batches of
B users x T target pairs x 2 responses x L tokens (the response is the second half of each sequence).
Step time: wall-clock median, and on CPU also the process's CPU time per step (steadier on a shared
machine). Peak memory: on CPU the process's RSS high-water mark (`resource.getrusage`, ru_maxrss), reported in
total and above the RSS right after imports (torch's own libraries); on CUDA `torch.cuda.max_memory_allocated`.

    python benchmarks/dpo_cost.py --out out/dpo_cost_cpu.json                     # SmolLM2-135M, CPU
    python benchmarks/dpo_cost.py --device cuda --model-shape qwen2.5-1.5b \\
        --users 2 --targets 9 --seq-len 512 --dtype bf16 --out out/dpo_cost_gpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

VARIANTS = ("ours", "ours-precomputed", "naive")

# Random-init shapes (the published configs of these models; weights random, same cost).
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}
EMBED_DIM = 384  # minilm's width: the context features the encoder reads
CONTEXT_PAIRS = 3


def _rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    """The process's RSS high-water mark so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build_base(args: argparse.Namespace) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.model_shape:
        shape = dict(MODEL_SHAPES[args.model_shape])
        config = AutoConfig.for_model(shape.pop("model_type"), **shape)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    else:
        from npalign.embedding import hub

        model = hub.load_causal_lm(args.model)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One variant: build, run warm-up + timed steps, report times and peak memory."""
    from npalign.models.film import sequence_latents
    from npalign.models.losses import dpo_loss, sequence_logprobs
    from npalign.models.policy import ConditionalPolicy

    device = torch.device(args.device)
    rss_after_imports = _rss_mb()
    base = _build_base(args)
    vocab = int(base.config.get_text_config().vocab_size)
    base_params = sum(p.numel() for p in base.parameters())
    reference_model = None
    if args.variant == "naive":
        reference_model = copy.deepcopy(base).requires_grad_(False)  # the release's frozen copy
    policy = ConditionalPolicy(
        base,
        embed_dim=EMBED_DIM,
        latent_dim=64,
        encoder_hidden_dim=256,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.dtype == "bf16",
    )
    if reference_model is not None and args.dtype == "bf16":
        torch.nn.Module.to(reference_model, torch.bfloat16)  # transformers wraps `to` opaquely
    policy.to(device)
    if reference_model is not None:
        torch.nn.Module.to(reference_model, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_after_model = _rss_mb()

    users, targets, length = args.users, args.targets, args.seq_len
    sequences = 2 * users * targets  # chosen rows then rejected rows, user-major
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (sequences, length), generator=generator).to(device)
    attention_mask = torch.ones(sequences, length, dtype=torch.long, device=device)
    completion_mask = torch.zeros(sequences, length, dtype=torch.bool, device=device)
    completion_mask[:, length // 2 :] = True  # prompt = first half, response = second half
    context = torch.randn(users, CONTEXT_PAIRS, 2, EMBED_DIM, generator=generator).to(device)
    context_mask = torch.ones(users, CONTEXT_PAIRS, dtype=torch.bool, device=device)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-5)

    def reference_logps() -> torch.Tensor:
        if reference_model is None:
            return policy.reference_logprobs(input_ids, attention_mask, completion_mask)  # adapters off
        with torch.no_grad():
            logits = reference_model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits
            return sequence_logprobs(logits, input_ids, completion_mask)

    precompute_seconds = None
    precomputed = None
    if args.variant == "ours-precomputed":
        _sync(device)
        started = time.perf_counter()
        precomputed = reference_logps()  # once per dataset in training; excluded from the step time
        _sync(device)
        precompute_seconds = time.perf_counter() - started

    policy.train()
    step_seconds, step_cpu_seconds = [], []
    for step in range(args.warmup + args.steps):
        _sync(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        reference = precomputed if precomputed is not None else reference_logps()  # (2BT,)
        z = policy.encode_context(context[:, :, 0], context[:, :, 1], context_mask)  # (B, Z)
        z_rows = sequence_latents(z, targets, pairs=True)  # (2BT, Z)
        logps = policy.sequence_logprobs(input_ids, attention_mask, completion_mask, z_rows)
        policy_chosen, policy_rejected = logps.chunk(2)
        reference_chosen, reference_rejected = reference.chunk(2)
        losses, _, _ = dpo_loss(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.05
        )
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - started)
            step_cpu_seconds.append(time.process_time() - cpu_started)
        print(f"[{args.variant}] step {step}: {time.perf_counter() - started:.2f} s", file=sys.stderr)

    tokens = sequences * length
    median = statistics.median(step_seconds)
    record: dict[str, Any] = {
        "variant": args.variant,
        "base_params": base_params,
        "step_seconds": step_seconds,
        "median_step_seconds": median,
        # CPU time of the process per step: on a shared CPU it is far steadier than wall time.
        "step_cpu_seconds": step_cpu_seconds,
        "median_step_cpu_seconds": statistics.median(step_cpu_seconds),
        "tokens_per_step": tokens,
        "tokens_per_second": tokens / median,
        "precompute_seconds_per_batch": precompute_seconds,
        "rss_after_imports_mb": rss_after_imports,
        "rss_after_model_mb": rss_after_model,
        "peak_rss_mb": _peak_rss_mb(),
    }
    record["peak_rss_above_imports_mb"] = record["peak_rss_mb"] - rss_after_imports
    if device.type == "cuda":
        record["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["cuda_device"] = torch.cuda.get_device_name(device)
    return record


def _ratio(record: dict[str, Any], naive: dict[str, Any], key: str) -> float | None:
    if record.get(key) is None or not naive.get(key):
        return None
    return record[key] / naive[key]


def _worker_command(args: argparse.Namespace, variant: str) -> list[str]:
    """The command line that measures one variant in a fresh process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--device", args.device]
    command += ["--model-shape", args.model_shape] if args.model_shape else ["--model", args.model]
    command += ["--dtype", args.dtype, "--users", str(args.users), "--targets", str(args.targets)]
    command += ["--seq-len", str(args.seq_len), "--lora-r", str(args.lora_r)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", default="smollm2", help="base by name (npalign.embedding.hub); default smollm2"
    )
    source.add_argument("--model-shape", choices=sorted(MODEL_SHAPES), default=None, help="random init")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bf16"], default="float32", help="base weights")
    parser.add_argument("--users", type=int, default=1, help="B (paper: 2)")
    parser.add_argument("--targets", type=int, default=2, help="T target pairs per user (paper: 9)")
    parser.add_argument("--seq-len", type=int, default=128, help="L tokens per sequence (paper: 512)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here.")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.variant is not None:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    results: dict[str, Any] = {}
    for variant in args.variants:
        command = _worker_command(args, variant)
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            sys.stderr.write(completed.stderr[-4000:])
            raise SystemExit(f"variant {variant} failed (exit {completed.returncode})")
        results[variant] = json.loads(lines[-1][len("RESULT ") :])
        record = results[variant]
        print(
            f"{variant:17s} step {record['median_step_seconds']:.3f} s (CPU {record['median_step_cpu_seconds']:.3f} s)  "
            f"{record['tokens_per_second']:.0f} tok/s  "
            f"peak RSS {record['peak_rss_mb']:.0f} MiB (+{record['peak_rss_above_imports_mb']:.0f} over imports)"
            + (
                f"  CUDA peak {record['cuda_peak_allocated_mb']:.0f} MiB"
                if "cuda_peak_allocated_mb" in record
                else ""
            ),
            flush=True,
        )
    naive = results.get("naive")
    ratios: dict[str, Any] = {}
    if naive is not None:
        for variant, record in results.items():
            if variant == "naive":
                continue
            ratios[variant] = {
                "time": _ratio(record, naive, "median_step_seconds"),
                "cpu_time": _ratio(record, naive, "median_step_cpu_seconds"),
                "peak_rss": _ratio(record, naive, "peak_rss_mb"),
                "peak_rss_above_imports": _ratio(record, naive, "peak_rss_above_imports_mb"),
                "cuda_peak": _ratio(record, naive, "cuda_peak_allocated_mb"),
            }
            print(
                f"{variant} / naive: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios[variant].items() if v)
            )
    report = {
        "settings": {
            "model": args.model_shape and f"random {args.model_shape}" or args.model,
            "device": args.device,
            "dtype": args.dtype,
            "batch": f"{args.users} users x {args.targets} target pairs x 2 responses x {args.seq_len} tokens",
            "lora_r": args.lora_r,
            "gradient_checkpointing": args.gradient_checkpointing,
            "timed_steps": args.steps,
            "threads": args.threads or torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        },
        "results": results,
        "ratios_vs_naive": ratios,
    }
    if args.out:
        from npalign.utils.io import write_json  # imported late like the rest, to keep workers light

        write_json(report, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

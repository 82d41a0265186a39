"""NP-DPO's reference log-probabilities, computed once per dataset and reused while the pairs are the same (L2, training).

With dpo.precompute_reference the reference model (the policy with LoRA and FiLM off) scores every pair
once before training, instead of once per step; the tables are kept in the run directory, keyed by a
fingerprint of the pairs, the base revision and the token budgets.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from npalign.config import PolicyTrainConfig
from npalign.data.dpo_episodes import pair_texts
from npalign.data.dpo_tokenize import tokenize_preference_pairs
from npalign.models.policy import ConditionalPolicy
from npalign.types import PreferenceSet
from npalign.utils.io import load_tensors, save_tensors

logger = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.safetensors"


def _reference_fingerprint(
    data: PreferenceSet, base_revision: str, max_prompt_length: int, max_response_length: int
) -> str:
    digest = hashlib.sha256(f"{base_revision}|{max_prompt_length}|{max_response_length}".encode())
    for prompt, chosen, rejected in pair_texts(data, range(data.num_pairs)):
        digest.update(repr((prompt, chosen, rejected)).encode())
    return digest.hexdigest()


@torch.no_grad()
def precompute_reference(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    data: PreferenceSet,
    *,
    max_prompt_length: int,
    max_response_length: int,
    batch_pairs: int,
    progress: bool = False,
) -> Tensor:
    """log pi_ref(chosen | prompt) and log pi_ref(rejected | prompt) of every pair, adapters off.

    Returns:
        (P, 2) float32 on the CPU, row p for pair p of `data`: [chosen, rejected].
    """
    device = policy.encoder.empty_context.device
    table = torch.empty(data.num_pairs, 2)
    for start in tqdm(
        range(0, data.num_pairs, batch_pairs), desc="reference log-probs", disable=not progress, leave=False
    ):
        pairs = list(range(start, min(start + batch_pairs, data.num_pairs)))
        texts = pair_texts(data, pairs)
        tokens = tokenize_preference_pairs(
            tokenizer,
            [t[0] for t in texts],
            [t[1] for t in texts],
            [t[2] for t in texts],
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
        )
        for column, side in enumerate(("chosen", "rejected")):
            table[start : start + len(pairs), column] = policy.reference_logprobs(
                tokens[f"{side}_input_ids"].to(device),
                tokens[f"{side}_attention_mask"].to(device),
                tokens[f"{side}_completion_mask"].to(device),
            ).cpu()  # (n,)
    return table


def reference_tables(
    policy: ConditionalPolicy,
    tokenizer: PreTrainedTokenizerBase,
    splits: dict[str, PreferenceSet],
    cfg: PolicyTrainConfig,
    base_revision: str,
    path: Path,
    is_main: bool,
) -> dict[str, Tensor]:
    """The (P, 2) reference tables of each split, reused from `path` when made from the same pairs."""
    lengths = (cfg.data.max_prompt_length, cfg.data.max_response_length)
    fingerprints = {
        name: _reference_fingerprint(data, base_revision, *lengths) for name, data in splits.items()
    }
    if path.is_file():
        stored = load_tensors(path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if all(metadata.get(name) == fingerprint for name, fingerprint in fingerprints.items()):
            logger.info("reusing reference log-probs from %s", path)
            return {name: stored[name] for name in splits}
    started = time.perf_counter()
    tables = {
        name: precompute_reference(
            policy,
            tokenizer,
            data,
            max_prompt_length=cfg.data.max_prompt_length,
            max_response_length=cfg.data.max_response_length,
            batch_pairs=cfg.eval.batch_pairs,
            progress=cfg.run.progress and is_main,
        )
        for name, data in splits.items()
    }
    logger.info(
        "reference log-probs of %d pairs in %.1f s",
        sum(len(t) for t in tables.values()),
        time.perf_counter() - started,
    )
    if is_main:
        save_tensors(tables, path, metadata=fingerprints)
    return tables

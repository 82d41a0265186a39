"""Load a trained NP-DPO policy and generate for a user: context texts -> embedder -> encoder -> z (L2, inference).

    runner = load_policy("runs/np_dpo")
    z = runner.infer_z([(prompt, chosen, rejected), ...])         # (Z,) from a user's few choices
    runner.generate(["Describe the ocean."], z=z)                 # or context=[...] directly
    runner.generate(prompts, z=runner.interpolate(z_a, z_b, 0.5)) # halfway between two users

The policy never sees the context text: the frozen embedder recorded in the run turns each context pair
into features, the trained encoder turns them into z, and FiLM applies z during generation (KV cache on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessorList, PreTrainedTokenizerBase, RepetitionPenaltyLogitsProcessor

from npalign.data.dpo_tokenize import tokenize_prompts_for_generation
from npalign.embedding.embedders import Embedder, build_embedder
from npalign.embedding.features import FEATURE_CONVENTION, to_item_features
from npalign.models.bases import load_base, native_bfloat16
from npalign.models.film import sequence_latents
from npalign.models.policy import ConditionalPolicy
from npalign.utils.io import write_json
from npalign.utils.rundir import (
    POLICY_DIR,
    RUN_FILE,
    check_new_run_directory,
    path_from_run,
    read_run,
    relative_to_run,
)

logger = logging.getLogger(__name__)


ContextTriple = tuple[str, str, str]


def _run_directory(path: Path) -> tuple[Path, Path]:
    """(run directory, policy folder) for a run directory or a policy folder inside one
    (run/policy, run/checkpoint/policy)."""
    for run_dir in (path, path.parent, path.parent.parent):
        if (run_dir / RUN_FILE).is_file():
            return run_dir, run_dir / POLICY_DIR if run_dir == path else path
    read_run(
        path, "policy"
    )  # no run.json here: raises the run-directory error that fits (missing, 0.1, none)
    raise AssertionError(f"read_run accepted {path} without a {RUN_FILE}")


class PolicyRunner:
    """A trained policy ready for scoring and generation; no optimizer, no accelerate, no data pipeline.

    Attributes:
        policy: the ConditionalPolicy, in eval mode.
        tokenizer: the base model's tokenizer (chat template, pad token).
        run: the run record (mode, base, embedder, beta, lengths, user types, data).
        conditional: False for unconditional DPO runs, which take no z.
        latent_dim: Z.
    """

    def __init__(
        self,
        policy: ConditionalPolicy,
        tokenizer: PreTrainedTokenizerBase,
        run: dict[str, Any],
        embedder: Embedder | None = None,
    ) -> None:
        self.policy = policy.eval()
        self.tokenizer = tokenizer
        self.run = run
        self.conditional = run["mode"] == "conditional"
        self.latent_dim = policy.latent_dim
        self._embedder = embedder
        self.directory: Path | None = None  # the run directory, when loaded from one

    @property
    def device(self) -> torch.device:
        return self.policy.encoder.empty_context.device

    def to(self, device: str | torch.device) -> PolicyRunner:
        """Move the policy (base, LoRA, FiLM, encoder) to `device`; returns self."""
        self.policy.to(torch.device(device))
        return self

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the policy as a run directory `npalign.load` reads: run.json and policy/ (LoRA + FiLM +
        encoder weights and their config; the base model is referenced by name and revision, not copied).
        """
        directory = Path(directory)
        check_new_run_directory(directory)
        run = dict(self.run)
        if isinstance(run.get("data"), dict) and self.directory is not None:
            source = path_from_run(run["data"].get("train"), self.directory)
            run["data"] = {**run["data"], "train": relative_to_run(source, directory)}
        self.policy.save_pretrained(directory / POLICY_DIR)
        write_json(run, directory / RUN_FILE)

    @property
    def embedder(self) -> Embedder:
        """The frozen embedder the run was trained with (built on first use, on the policy's device; its
        revision is checked)."""
        if self._embedder is None:
            record = self.run.get("embedder")
            if record is None:
                raise ValueError("this run is unconditional; it has no embedder and takes no context.")
            if record.get("features") != FEATURE_CONVENTION:
                raise ValueError(
                    f"this run's context features are {record.get('features')!r}, but this npalign computes "
                    f"{FEATURE_CONVENTION!r} ones; retrain the policy with this version."
                )
            embedder = build_embedder(record["name"], max_length=record["max_length"], device=self.device)
            if embedder.revision != record["revision"] or embedder.dim != record["dim"]:
                raise ValueError(
                    f"embedder {record['name']!r} now has revision {embedder.revision!r} (dim {embedder.dim}) "
                    f"but the policy was trained on revision {record['revision']!r} (dim {record['dim']}); "
                    "its context features would differ. Install the embedder the run was trained with."
                )
            self._embedder = embedder
        return self._embedder

    # ----- z ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def context_features(self, context: Sequence[ContextTriple]) -> tuple[Tensor, Tensor]:
        """Features of a user's context pairs (`to_item_features` of the frozen embeddings): chosen (C, D) and
        rejected (C, D)."""
        for index, triple in enumerate(context):
            if not (isinstance(triple, tuple | list) and len(triple) == 3 and all(isinstance(t, str) for t in triple)):
                raise ValueError(
                    f"context[{index}] must be a (prompt, chosen, rejected) triple of strings; got {triple!r:.200}."
                )
        prompts = [prompt for prompt, _, _ in context]
        chosen_texts, rejected_texts = [c for _, c, _ in context], [r for _, _, r in context]
        chosen = to_item_features(
            self.embedder, chosen_texts, self.embedder.embed(prompts, chosen_texts)
        )  # (C, D)
        rejected = to_item_features(
            self.embedder, rejected_texts, self.embedder.embed(prompts, rejected_texts)
        )
        return chosen, rejected

    @torch.no_grad()
    def infer_z(self, context: Sequence[ContextTriple]) -> Tensor:
        """z (Z,) of one user from their context pairs; an empty context gives the learned prior."""
        if not self.conditional:
            raise ValueError("this run is unconditional (mode=unconditional); it takes no context or z.")
        if isinstance(context, str) or not isinstance(context, Sequence):
            raise TypeError(
                f"context must be a list of (prompt, chosen, rejected) triples ([] = the prior); got {context!r:.80}."
            )
        if len(context) == 0:
            width = self.policy.encoder.embed_dim
            chosen = rejected = torch.zeros(0, width)
        else:
            chosen, rejected = self.context_features(context)
        mask = torch.ones(1, chosen.shape[0], dtype=torch.bool, device=self.device)  # (1, C)
        z = self.policy.encode_context(chosen[None].to(self.device), rejected[None].to(self.device), mask)
        return z[0]  # (Z,)

    def interpolate(self, z_a: Tensor, z_b: Tensor, t: float | Tensor) -> Tensor:
        """(1 - t) * z_a + t * z_b: a continuum between two users; z_a, z_b (..., Z)."""
        return ConditionalPolicy.interpolate(z_a, z_b, t)

    def _rows_of_z(self, num_prompts: int, z: Tensor | None, context: Sequence[Any] | None) -> Tensor | None:
        """(N, Z) one z per prompt from a z (Z,) / (N, Z), or one context / one context per prompt."""
        if z is not None and context is not None:
            raise ValueError("pass z or context, not both.")
        if not self.conditional:
            if z is not None or context is not None:
                raise ValueError("this run is unconditional (mode=unconditional); it takes no context or z.")
            return None
        if context is not None:
            per_prompt = len(context) > 0 and all(
                isinstance(c, list | tuple) and (len(c) == 0 or isinstance(c[0], list | tuple))
                for c in context
            )
            if per_prompt:
                if len(context) != num_prompts:
                    raise ValueError(
                        f"got {len(context)} contexts for {num_prompts} prompts; pass one context per prompt "
                        "or a single context for all."
                    )
                z = torch.stack([self.infer_z(c) for c in context])  # (N, Z)
            else:
                z = self.infer_z(context)  # (Z,)
        if z is None:
            z = self.infer_z([])  # the population prior
        z = torch.as_tensor(z, dtype=torch.float32).to(self.device)
        if z.dim() == 1:
            z = sequence_latents(z[None], num_prompts)  # (N, Z): the one user's z on every prompt
        if z.dim() != 2 or z.shape != (num_prompts, self.latent_dim):
            raise ValueError(
                f"z must have shape ({self.latent_dim},) or ({num_prompts}, {self.latent_dim}); got "
                f"{tuple(z.shape)}."
            )
        if not bool(torch.isfinite(z).all()):
            raise ValueError("z contains NaN or inf.")
        return z

    # ----- generation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        z: Tensor | None = None,
        context: Sequence[ContextTriple] | Sequence[Sequence[ContextTriple]] | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        batch_size: int = 8,
        seed: int | None = None,
        max_prompt_length: int | None = None,
    ) -> list[str]:
        """Responses to `prompts` for a user, batched, with z bound for every decoding step.

        Args:
            prompts: N user messages (rendered with the chat template).
            z: (Z,) for every prompt or (N, Z) one per prompt; None with no context = the population prior.
            context: one user's (prompt, chosen, rejected) pairs for every prompt, or one list per prompt.
            max_new_tokens / do_sample / temperature / top_p: decoding settings (greedy by default).
            repetition_penalty: CTRL's penalty on tokens the answer already holds, > 0; 1.0 is none. Greedy
                answers of a small policy often loop; 1.1-1.3 is the usual remedy. Unlike `generate`'s own
                option it leaves the prompt's tokens alone: a chat prompt holds the end-of-turn token, and
                penalising it lengthened every answer (docs/details.md).
            batch_size: prompts per `generate` call.
            seed: seeds sampling (torch's global RNG) when given.
            max_prompt_length: keep at most this many prompt tokens; default the run's training length.
        Returns:
            N response texts, special tokens removed.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings; wrap a single prompt in a list.")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{index}] must be a str; got {type(prompt).__name__}.")
        counts = {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "max_prompt_length": max_prompt_length,
        }
        for name, count in counts.items():
            if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
                raise ValueError(f"{name}={count!r} must be an integer >= 1.")
        if do_sample and not (0 < top_p <= 1 and temperature >= 1e-4):  # below: inf logits in float32
            raise ValueError(
                f"sampling needs 0 < top_p <= 1 and temperature >= 1e-4; got {top_p} and {temperature}."
            )
        if not repetition_penalty > 0 or repetition_penalty == float("inf"):
            raise ValueError(f"repetition_penalty={repetition_penalty} must be a finite number > 0 (1.0 is none).")
        z_rows = self._rows_of_z(len(prompts), z, context)  # (N, Z) or None
        if seed is not None:
            torch.manual_seed(seed)
        length = int(self.run["max_prompt_length"]) if max_prompt_length is None else max_prompt_length
        settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "repetition_penalty": 1.0,  # the answer-only penalty below, never a base's generation default
        }
        if do_sample:
            settings.update(temperature=temperature, top_p=top_p)
        else:  # generation configs of instruct models often carry sampling defaults; greedy means greedy
            settings.update(temperature=None, top_p=None, top_k=None)
        responses: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            inputs = tokenize_prompts_for_generation(self.tokenizer, chunk, max_prompt_length=length)
            output = self.policy.generate(
                inputs["input_ids"].to(self.device),
                inputs["attention_mask"].to(self.device),
                None if z_rows is None else z_rows[start : start + len(chunk)],
                logits_processor=self._answer_penalty(repetition_penalty, inputs["input_ids"].shape[1]),
                **settings,
            )  # (n, L + new)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            responses.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return responses

    @staticmethod
    def _answer_penalty(penalty: float, prompt_length: int) -> LogitsProcessorList:
        """CTRL's repetition penalty on the generated tokens only: the (left-padded) prompt's L are skipped."""
        if penalty == 1:
            return LogitsProcessorList()
        return LogitsProcessorList(
            [RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=prompt_length)]
        )


def load_policy(directory: str | Path, *, device: str | torch.device = "cpu") -> PolicyRunner:
    """Load a run directory written by `npalign train-dpo` (or its policy/ folder), strictly.

    The base model is rebuilt from its recorded name and must have the recorded revision; LoRA, FiLM and
    the encoder are loaded strictly, so a checkpoint missing any part is an error. A base that trained in
    bfloat16 keeps those bfloat16 values but computes in float32 where `device` has no native bfloat16
    (an AVX2-only CPU emulates it about 100x slower); answers may then differ from bfloat16's in near-ties.
    """
    run_dir, policy_dir = _run_directory(Path(directory))
    run = read_run(run_dir, "policy")
    base, tokenizer, revision = load_base(run["base"]["name"])
    if revision != run["base"]["revision"]:
        raise ValueError(
            f"base model {run['base']['name']!r} now has revision {revision!r}, but the policy in {run_dir} "
            f"was trained on {run['base']['revision']!r}; the LoRA and FiLM weights belong to that base."
        )
    policy = ConditionalPolicy.from_pretrained(policy_dir, base_model=base)
    if policy.config["bf16"] and not native_bfloat16(device):
        policy.to(torch.float32)
    policy.to(torch.device(device))
    runner = PolicyRunner(policy, tokenizer, run)
    runner.directory = run_dir
    return runner

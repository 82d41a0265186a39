"""`npalign elicit`: which K candidate pairs to ask a user next, greedily or one answer at a time (L4, cli).

Usage:
    npalign elicit --model DIR --candidates FILE [--context FILE] [--k K] [--strategy S]
                   [--interactive] [--out FILE] [--seed N] [--cache DIR]

Both files hold one pair per row, JSON or JSONL, as a context file for `npalign generate` does:
`chosen` and `rejected` as feature lists (a feature model) or, with `prompt`, as texts or TRL message lists
(a text model). In the candidates file the two sides may also be named `a` and `b`; `chosen`/`rejected`
there only name the two sides of an unasked pair, so a preference file can serve as the pool.

Without --interactive the K pairs are chosen greedily: after each, the model's most likely answer is
appended to the context. With --interactive each pair is printed on stderr and the answer (a or b) read
from stdin before the next is chosen. Each chosen pair is one JSON line on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from npalign.cli.common import Command, add_commands, check_outputs

DEFAULT_K = 1


@dataclass
class Pairs:
    """Pairs read from a file: features (N, D) twice for a feature model, or texts with their prompts."""

    first: Any  # (N, D) Tensor or list[str]
    second: Any
    prompts: list[str] | None
    rows: list[dict[str, Any]]  # the rows as read, for the output

    def __len__(self) -> int:
        return len(self.rows)


def _elicit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "--run", dest="model", required=True, help="reward run directory (npalign train-reward)"
    )
    parser.add_argument("--candidates", required=True, help="JSON/JSONL file of the pairs one could ask")
    parser.add_argument("--context", default=None, help="JSON/JSONL file of the user's choices so far")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"pairs to choose (default {DEFAULT_K})")
    parser.add_argument(
        "--strategy",
        default="info-gain",
        help="info-gain (default), uncertainty, d-optimal, random, bald (latent NP-BTL)",
    )
    parser.add_argument(
        "--interactive", action="store_true", help="ask each pair on stderr and read a or b from stdin"
    )
    parser.add_argument("--out", default=None, help="also write the chosen pairs to this JSONL file")
    parser.add_argument("--seed", type=int, default=0, help="seeds random and the reference pool")
    parser.add_argument("--cache", default=None, help="embedding cache directory (text models)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `elicit` to the main parser's subcommands; the parsed args carry `func`."""
    add_commands(subparsers, [Command("elicit", run_elicit, _elicit_flags)])


def read_pairs(path: str, *, text: bool, width: int, candidates: bool) -> Pairs:
    """The pairs of a context or candidates file, checked against the model (texts or `width`-d features).

    Raises:
        ValueError naming the file and row: a row without two sides, features of another width, NaN/inf,
        texts for a feature model or features for a text model.
    """
    from npalign.data.conversation import conversation_texts, is_conversation
    from npalign.data.loaders import read_records

    _, records = read_records(path)
    first: list[Any] = []
    second: list[Any] = []
    prompts: list[str] = []
    rows: list[dict[str, Any]] = []
    for where, raw in records:
        row = dict(raw)
        if candidates and "a" in row and "b" in row and "chosen" not in row:
            row["chosen"], row["rejected"] = row.pop("a"), row.pop("b")
        one, two = row.get("chosen"), row.get("rejected")
        names = "a/b or chosen/rejected" if candidates else "chosen/rejected"
        if one is None or two is None:
            raise ValueError(f"{where}: needs both sides of the pair ({names}); got columns {sorted(row)}.")
        if text:
            if is_conversation(one) or is_conversation(two):
                prompt, one, two = conversation_texts(row.get("prompt"), one, two, where)
            elif isinstance(row.get("prompt"), str) and isinstance(one, str) and isinstance(two, str):
                prompt = row["prompt"]
            else:
                raise ValueError(
                    f"{where}: the model scores texts; give prompt and both sides ({names}) as texts or TRL "
                    "message lists."
                )
            prompts.append(prompt)
        else:
            for name, value in (("chosen", one), ("rejected", two)):
                if not (isinstance(value, list) and all(isinstance(v, int | float) for v in value)):
                    raise ValueError(
                        f"{where}, column {name!r}: the model scores {width}-d feature vectors; got "
                        f"{str(value)[:60]!r}."
                    )
                if len(value) != width:
                    raise ValueError(
                        f"{where}, column {name!r}: {len(value)}-d features, but the model expects {width}-d."
                    )
                if not all(torch.isfinite(torch.tensor(value, dtype=torch.float64))):
                    raise ValueError(
                        f"{where}, column {name!r}: features contain NaN or inf; clean the file."
                    )
        first.append(one)
        second.append(two)
        rows.append({"prompt": prompts[-1]} if text else {})
        rows[-1].update({"a": one, "b": two})
    if text:
        return Pairs(first, second, prompts, rows)
    return Pairs(
        torch.tensor(first, dtype=torch.float32).reshape(-1, width),
        torch.tensor(second, dtype=torch.float32).reshape(-1, width),
        None,
        rows,
    )


def _read_answer(row: dict[str, Any], number: int, k: int) -> str:
    """Show a pair on stderr and read a or b from stdin; asks again after anything else."""
    print(f"[{number}/{k}] which does the user prefer?", file=sys.stderr)
    if "prompt" in row:
        print(f"  prompt: {row['prompt']}", file=sys.stderr)
    print(f"  a: {row['a']}\n  b: {row['b']}", file=sys.stderr)
    while True:
        print("answer (a/b): ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            print(file=sys.stderr)  # end the prompt's line, so that the error is a line of its own
            raise ValueError(f"--interactive: stdin ended before the answer to pair {number} of {k}.")
        answer = line.strip().lower()
        if answer in ("a", "b"):
            return answer
        print(f"  please type a or b, not {line.strip()!r}", file=sys.stderr)


def run_elicit(args: argparse.Namespace) -> int:
    """choose the next K pairs to ask a user (active elicitation)

    Score every candidate pair with the strategy (default info-gain: the expected information its answer
    gives about the user's other choices, as `RewardPredictor.next_query`), take the best, and repeat K
    times, each time adding the answer to the context: the model's most likely answer, or the one typed
    with --interactive. Prints one JSON line per chosen pair (its row in the candidates file, both sides,
    score, the model's p(a > b) before asking and the answer).
    """
    import npalign
    from npalign.inference.api import RewardPredictor
    from npalign.inference.text import TextRewardPredictor
    from npalign.utils.io import atomic_path

    if args.k < 1:
        raise ValueError(f"--k {args.k}: choose at least one pair.")
    if args.out:
        check_outputs("--out", [Path(args.out)], [args.candidates, args.context])
    predictor = npalign.load(args.model, seed=args.seed, cache_dir=args.cache)
    if not isinstance(predictor, RewardPredictor | TextRewardPredictor):
        raise ValueError(
            f"--model {args.model}: a policy run; elicit needs a reward run (npalign train-reward)."
        )
    text = isinstance(predictor, TextRewardPredictor)
    width = (
        predictor.features.embed_dim if isinstance(predictor, TextRewardPredictor) else predictor.embed_dim
    )
    pool = read_pairs(args.candidates, text=text, width=width, candidates=True)
    if args.k > len(pool):
        raise ValueError(
            f"--k {args.k} is larger than the {len(pool)} candidate pairs in {args.candidates}; "
            "lower --k or add candidates."
        )
    context = (
        read_pairs(args.context, text=text, width=width, candidates=False)
        if args.context
        else Pairs([] if text else torch.zeros(0, width), [] if text else torch.zeros(0, width), [], [])
    )
    chosen, rejected, prompts = context.first, context.second, list(context.prompts or [])
    remaining = list(range(len(pool)))
    lines = []
    for number in range(1, args.k + 1):
        if isinstance(predictor, TextRewardPredictor):
            assert pool.prompts is not None
            cand_prompts = [pool.prompts[i] for i in remaining]
            cand_a, cand_b = [pool.first[i] for i in remaining], [pool.second[i] for i in remaining]
            choice = predictor.next_query(
                prompts,
                chosen,
                rejected,
                cand_prompts,
                cand_a,
                cand_b,
                strategy=args.strategy,
                seed=args.seed,
            )
            a, b, prompt = cand_a[choice.index], cand_b[choice.index], cand_prompts[choice.index]
            z = predictor.infer_user(prompts, chosen, rejected)
            prob_a = float(predictor.prefer_prob([prompt], [a], [b], z)[0])
        else:
            index = torch.tensor(remaining, dtype=torch.long)
            cand_a, cand_b = pool.first[index], pool.second[index]
            choice = predictor.next_query(
                chosen, rejected, cand_a, cand_b, strategy=args.strategy, seed=args.seed
            )
            a, b = cand_a[choice.index : choice.index + 1], cand_b[choice.index : choice.index + 1]
            z = predictor.infer_user(chosen, rejected)
            prob_a = float(predictor.prefer_prob(a, b, z)[0])
        row_index = remaining.pop(choice.index)
        row = pool.rows[row_index]
        answer = _read_answer(row, number, args.k) if args.interactive else ("a" if prob_a >= 0.5 else "b")
        winner, loser = (a, b) if answer == "a" else (b, a)
        if text:
            prompts.append(prompt)
            chosen, rejected = [*chosen, winner], [*rejected, loser]
        else:
            chosen, rejected = torch.cat([chosen, winner]), torch.cat([rejected, loser])
        record = {
            "rank": number,
            "candidate": row_index,
            **row,
            "score": float(choice.scores[choice.index]),
            "strategy": args.strategy,
            "p_a": round(prob_a, 6),
            "answer": answer,
            "answered_by": "user" if args.interactive else "model (most likely)",
        }
        line = json.dumps(record)
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines))
        print(f"wrote {len(lines)} pairs to {args.out}", file=sys.stderr)
    return 0

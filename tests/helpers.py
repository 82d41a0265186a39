"""Test helpers shared by several test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from http.client import HTTPException
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def kill_once_checkpointed(
    command: list[str],
    run_dir: Path,
    step: int,
    *,
    env: dict[str, str],
    poll_s: float,
    cwd: Path | None = None,
) -> int:
    """Start a training `command`, SIGKILL it once its checkpoint has reached `step`; the step it died at.

    Fails the test when the run finishes (or two minutes pass) before that checkpoint is written.
    """
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = run_dir / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= step:
            break
        time.sleep(poll_s)
    assert process.poll() is None, "the run finished before it could be killed; raise the number of steps"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return int(json.loads(state.read_text())["step"])


def synth_command(out: str | Path, pairs: int, users: int, *extra: str) -> list[str]:
    """`npalign synth` arguments for the paper's 1-D task with `pairs` pairs over `users` users."""
    return [
        "synth",
        "--task",
        "paper1d",
        "--num-pairs",
        str(pairs),
        "--num-users",
        str(users),
        "--out",
        str(out),
        *extra,
    ]


def counting_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word or punctuation mark (everything is <unk>): counts are easy to check by hand."""
    backend = Tokenizer(models.WordLevel(vocab={"<unk>": 0}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<unk>")


# ---------------------------------------------------------------------------------------------------
# tiny trained reward models for the server tests (test_serve.py, test_serve_process.py)

# The release's shape and a fixed step count: the tests' small models were tuned with it (the library's
# defaults since issue 19 are deeper and stop on a validation plateau).
RELEASE_SHAPE = ["model.encoder_depth=2", "model.decoder_depth=1", "eval.patience=null"]

SERVE_TRAIN = [
    *RELEASE_SHAPE,
    "model.hidden_dim=16",
    "model.latent_dim=4",
    "episodes.batch_users=8",
    "episodes.targets=4",
    "episodes.max_context=3",
    "optim.steps=20",
    "optim.warmup_steps=5",
    "optim.lr=3e-3",
    "eval.contexts=[0,1,3]",
    "eval.targets=4",
    "eval.val_episodes=8",
    "eval.val_every=10",
    "run.save_every=10",
    "run.log_every=10",
    "run.progress=false",
]
SERVE_WORDS = "the cat sat on a warm mat while rain fell over quiet hills and rivers ran far".split(" ")  # noqa: SIM905


def train_synthetic(out: Path, task: str, num_pairs: int, num_users: int, overrides: list[str]) -> Path:
    """A reward model trained on a synthetic task (seed 0, split by user 0.8 / 0.1 / 0.1) into `out`."""
    from npalign.config import RewardTrainConfig, load_config
    from npalign.data.loaders import split_by_user
    from npalign.data.synthetic import generate, task_spec
    from npalign.training.reward import train_reward_model

    data = generate(task_spec(task, num_pairs=num_pairs, num_users=num_users), seed=0)
    train, val, _ = split_by_user(data, (0.8, 0.1, 0.1), seed=0)
    train_reward_model(load_config(RewardTrainConfig, overrides=overrides), train, val, out)
    return out


def train_feature_model(out: Path, kind: str = "np-btl") -> Path:
    """A tiny reward model on the 2-d mixture task (feature vectors), trained in a second or two."""
    return train_synthetic(out, "mixture2d", 1200, 24, [*SERVE_TRAIN, f"model.kind={kind}"])


# A small NP-BTL for the elicitation tests: the paper's 1-D task, learnt in a few seconds.
SMALL_NP_BTL = [
    *RELEASE_SHAPE,
    "model.kind=np-btl",
    "model.hidden_dim=32",
    "model.latent_dim=8",
    "episodes.batch_users=32",
    "optim.lr=3e-3",
    "optim.warmup_steps=20",
    "eval.val_episodes=16",
    "run.progress=false",
]


def train_small_paper1d(out: Path, num_pairs: int, num_users: int, steps: int) -> Path:
    """`SMALL_NP_BTL` on paper1d for `steps` steps, validated and saved at the last one."""
    budget = [f"optim.steps={steps}", f"eval.val_every={steps}", f"run.save_every={steps}"]
    return train_synthetic(out, "paper1d", num_pairs, num_users, [*SMALL_NP_BTL, *budget])


def length_user_rows(words: Sequence[str], num_prompts: int, split: Callable[[int], str]) -> list[dict]:
    """'concise' users prefer the shorter of two answers, 'verbose' users the longer: per prompt p, 3 answers
    (3, 8 and 14 of `words`) and all 3 answer pairs, for 2 users of each type; `split(p)` names its split."""
    rows = []
    for p in range(num_prompts):
        prompt = f"question {p}: tell me about {words[p % len(words)]} and {words[(3 * p) % len(words)]}"
        answers = [
            " ".join(words[(p + 5 * k + i) % len(words)] for i in range(length))
            for k, length in enumerate((3, 8, 14))
        ]
        for user_type in ("concise", "verbose"):
            for copy in range(2):
                for short, long in ((0, 1), (0, 2), (1, 2)):
                    chosen, rejected = (short, long) if user_type == "concise" else (long, short)
                    rows.append(
                        {
                            "user_id": f"{user_type}-{copy}",
                            "user_type": user_type,
                            "prompt": prompt,
                            "chosen": answers[chosen],
                            "rejected": answers[rejected],
                            "split": split(p),
                        }
                    )
    return rows


def text_rows() -> list[dict]:
    """The server tests' text data: `length_user_rows` over 16 prompts, split 10 train / 6 validation."""
    return length_user_rows(SERVE_WORDS, 16, lambda p: "train" if p < 10 else "validation")


def train_text_model(out: Path, cache: Path) -> Path:
    """A tiny NP-BTL over texts embedded by the real (offline) minilm embedder, through `cache`."""
    from npalign.config import RewardTrainConfig, load_config
    from npalign.data.loaders import load_preferences
    from npalign.embedding.features import embed_preferences
    from npalign.training.reward import train_reward_model

    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / "texts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in text_rows()))
    train = embed_preferences(load_preferences(path, split="train")[0], "minilm", cache_dir=cache)
    val = embed_preferences(load_preferences(path, split="validation")[0], "minilm", cache_dir=cache)
    cfg = load_config(RewardTrainConfig, overrides=[*SERVE_TRAIN, "model.kind=np-btl", "embedder=minilm"])
    train_reward_model(cfg, train, val, out)
    return out


# ---------------------------------------------------------------------------------------------------
# a real `npalign serve` process (test_serve_process.py)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: object | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    """(status, JSON body) of one request; raises OSError when the server cannot be reached or dies mid-reply."""
    return http_bytes(method, url, None if body is None else json.dumps(body).encode(), timeout)


def http_bytes(method: str, url: str, data: bytes | None, timeout: float = 30.0) -> tuple[int, dict]:
    """`http` with the body given as bytes."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except HTTPException as error:  # headers sent, then the process was killed (IncompleteRead)
        raise ConnectionError(f"{method} {url}: the reply broke off ({error!r})") from error


class ServerProcess:
    """`python -m npalign.cli.main serve ...` on a free port; `kill()` is SIGKILL, as a crash would be."""

    def __init__(self, run: Path, store: str, env: dict[str, str], *extra: str) -> None:
        import sys
        import tempfile

        # not a pipe: a server that logs much must never block on it
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in kill()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "npalign.cli.main", "serve", "--model", str(run), "--store", store]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *extra], env=env, stdout=subprocess.DEVNULL, stderr=self.log
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode()}")
            try:
                if http("GET", f"{self.url}/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("the server did not answer /healthz within 120 s")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()

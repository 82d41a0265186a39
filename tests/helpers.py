"""Test helpers shared by several test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
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

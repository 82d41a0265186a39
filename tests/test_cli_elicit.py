"""`npalign elicit`: the next K pairs from a candidates file, greedily or asked one at a time; bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

import npalign
from helpers import synth_command, train_small_paper1d
from npalign.cli.main import main
from npalign.data.conversation import read_context_file
from npalign.inference.api import RewardPredictor
from npalign.inference.text import TextRewardPredictor

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small NP-BTL on the paper's 1-D task (items are 1-d features)."""
    return train_small_paper1d(tmp_path_factory.mktemp("elicit_cli") / "run", 3000, 60, steps=300)


CONTEXT = [{"chosen": [0.9], "rejected": [0.7]}, {"chosen": [0.6], "rejected": [0.8]}]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _pool(tmp_path: Path) -> tuple[str, list[dict]]:
    values = torch.rand(12, 2, generator=torch.Generator().manual_seed(0)).tolist()
    rows = [{"a": [a], "b": [b]} for a, b in values]
    rows.append({"a": [0.9], "b": [0.7]})  # a context pair again: its answer is known
    return _write(tmp_path / "pool.jsonl", rows), rows


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_greedy_choices_follow_next_query_with_the_models_own_answers(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool, rows = _pool(tmp_path)
    context = _write(tmp_path / "context.jsonl", CONTEXT)
    out = tmp_path / "next.jsonl"
    argv = ["elicit", "--model", str(run_dir), "--candidates", pool, "--context", context, "--k", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    chosen = _lines(capsys.readouterr().out)
    assert chosen == _lines(out.read_text())
    assert main(["elicit", "--run", *argv[2:]]) == 0  # `--run`, as every command that takes one run spells it
    assert _lines(capsys.readouterr().out) == chosen
    assert [c["rank"] for c in chosen] == [1, 2, 3]
    assert len({c["candidate"] for c in chosen}) == 3 and 12 not in {c["candidate"] for c in chosen}
    # Replay with the API: each pick is next_query's best among the pairs not yet asked, and the assumed
    # answer is the model's more likely one.
    model = npalign.load(str(run_dir))
    assert isinstance(model, RewardPredictor)
    ctx_chosen = torch.tensor([r["chosen"] for r in CONTEXT])
    ctx_rejected = torch.tensor([r["rejected"] for r in CONTEXT])
    remaining = list(range(len(rows)))
    for pick in chosen:
        a = torch.tensor([rows[i]["a"] for i in remaining])
        b = torch.tensor([rows[i]["b"] for i in remaining])
        choice = model.next_query(ctx_chosen, ctx_rejected, a, b)
        assert remaining[choice.index] == pick["candidate"]
        assert pick["answer"] == ("a" if pick["p_a"] >= 0.5 else "b")
        winner, loser = (a, b) if pick["answer"] == "a" else (b, a)
        ctx_chosen = torch.cat([ctx_chosen, winner[choice.index : choice.index + 1]])
        ctx_rejected = torch.cat([ctx_rejected, loser[choice.index : choice.index + 1]])
        remaining.remove(pick["candidate"])


def test_interactive_answers_are_read_from_stdin_and_used_for_the_next_choice(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, rows = _pool(tmp_path)
    argv = ["elicit", "--model", str(run_dir), "--candidates", pool, "--k", "2", "--interactive"]
    results = {}
    for answers in ("maybe\nb\na\n", "a\na\n"):  # an unclear answer is asked again
        monkeypatch.setattr("sys.stdin", io.StringIO(answers))
        assert main(argv) == 0
        captured = capsys.readouterr()
        results[answers] = _lines(captured.out)
        assert "please type a or b" in captured.err or answers == "a\na\n"
    first, second = results.values()
    assert [p["answer"] for p in first] == ["b", "a"] and [p["answer"] for p in second] == ["a", "a"]
    assert first[0]["candidate"] == second[0]["candidate"]  # the first question does not depend on answers
    # The second question is next_query's choice given the typed answer.
    model = npalign.load(str(run_dir))
    assert isinstance(model, RewardPredictor)
    for picks in (first, second):
        asked = rows[picks[0]["candidate"]]
        winner, loser = (asked["a"], asked["b"]) if picks[0]["answer"] == "a" else (asked["b"], asked["a"])
        remaining = [i for i in range(len(rows)) if i != picks[0]["candidate"]]
        a = torch.tensor([rows[i]["a"] for i in remaining])
        b = torch.tensor([rows[i]["b"] for i in remaining])
        choice = model.next_query(torch.tensor([winner]), torch.tensor([loser]), a, b)
        assert remaining[choice.index] == picks[1]["candidate"]


def test_stdin_that_ends_early_is_a_one_line_error(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, _ = _pool(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n"))
    argv = ["elicit", "--model", str(run_dir), "--candidates", pool, "--k", "2", "--interactive"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("npalign elicit: error: --interactive: stdin ended before the answer to pair 2")


@pytest.mark.parametrize(
    ("pool_rows", "extra", "match"),
    [
        ([{"a": [0.1], "b": [0.2]}] * 3, ["--k", "4"], "--k 4 is larger than the 3 candidate pairs"),
        ([{"a": [0.1], "b": [0.2]}], ["--k", "0"], "--k 0: choose at least one pair"),
        ([{"a": [0.1, 0.5], "b": [0.2, 0.5]}], [], "2-d features, but the model expects 1-d"),
        ([{"a": [float("nan")], "b": [0.2]}], [], "features contain NaN or inf"),
        ([{"a": "text", "b": "other"}], [], "the model scores 1-d feature vectors"),
        ([{"a": [0.1]}], [], "needs both sides of the pair"),
        ([], [], "is empty"),
        (None, [], "missing.jsonl: no such file"),
    ],
)
def test_bad_input_is_one_line_naming_what_to_fix(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pool_rows: list[dict] | None,
    extra: list[str],
    match: str,
) -> None:
    pool = str(tmp_path / "missing.jsonl") if pool_rows is None else _write(tmp_path / "p.jsonl", pool_rows)
    assert main(["elicit", "--model", str(run_dir), "--candidates", pool, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("npalign elicit: error:") and match in err[0], err


def test_a_context_of_another_width_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool, _ = _pool(tmp_path)
    context = _write(tmp_path / "context.jsonl", [{"chosen": [0.9, 0.1], "rejected": [0.7, 0.1]}])
    assert main(["elicit", "--model", str(run_dir), "--candidates", pool, "--context", context]) == 2
    assert "context.jsonl line 1, column 'chosen': 2-d features" in capsys.readouterr().err


@pytest.fixture(scope="module")
def paper_test_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Fresh paper1d users (50 pairs each) written by `npalign synth`, with the task spec beside them."""
    path = tmp_path_factory.mktemp("elicit_data") / "paper.jsonl"
    assert main(synth_command(str(path), 2000, 40, "--seed", "1")) == 0
    return str(path)


def test_evaluate_reward_elicit_writes_curves_per_strategy_beside_the_bayes_questioner(
    run_dir: Path, paper_test_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "elicit.json"
    argv = ["evaluate-reward", "--model", str(run_dir), "--data", paper_test_file, "--out", str(out)]
    assert main([*argv, "--elicit", "random", "info-gain", "--episodes", "24", "--pool", "12"]) == 0
    printed = capsys.readouterr().out
    assert "| model | k = 1 | k = 2 | k = 3 | k = 5 | k = 10 |" in printed
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"random", "info-gain", "Bayes questioner"}
    assert results["protocol"]["episodes"] == 24 and results["protocol"]["pool"] == 12
    assert out.with_suffix(".png").stat().st_size > 1000 and out.with_suffix(".md").exists()
    bayes = results["models"]["Bayes questioner"]["accuracy"]
    for name in ("random", "info-gain"):
        record = results["models"][name]
        assert set(record["accuracy"]) == {"1", "2", "3", "5", "10"} == set(record["bayes_on_chosen"])
        for k in ("1", "2", "3"):
            # Greedy information gain about the type, on the paper's task, is as good as questions get:
            # one pair the types disagree on settles the type.
            assert bayes[k]["mean"] >= record["bayes_on_chosen"][k]["mean"] - 1e-9
    assert bayes["1"]["mean"] == 100.0  # every pool of 12 here holds a pair the two types disagree on
    # Random questions: the Bayes prediction from one random pair is right 87.5 % of the time on average.
    assert 70.0 < results["models"]["random"]["bayes_on_chosen"]["1"]["mean"] < 100.0


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            ["--queries", "1", "30", "--pool", "20"],
            "queries [1, 30] must each be between 1 and the pool size 20",
        ),
        (["--pool", "40"], "fewer pairs than context + targets = 40 + 20"),
        (["--pool", "0"], "--pool 0"),
        (["--elicit", "greedy"], "unknown elicitation strategy ['greedy']"),
    ],
)
def test_evaluate_reward_elicit_refuses_a_protocol_the_data_cannot_hold(
    run_dir: Path,
    paper_test_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    match: str,
) -> None:
    argv = [
        "evaluate-reward",
        "--model",
        str(run_dir),
        "--data",
        paper_test_file,
        "--out",
        str(tmp_path / "e.json"),
    ]
    assert main([*argv, "--elicit", "random", *extra]) == 2
    assert match in capsys.readouterr().err


def test_a_text_model_reads_prompts_and_texts_and_message_lists(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text path: TRL rows in, texts out, the same picks as `TextRewardPredictor.next_query`."""
    rows = []
    for p in range(12):
        short, long = f"answer {p}", f"a much longer answer number {p} with many more words in it"
        for user_type in ("concise", "verbose"):
            chosen, rejected = (short, long) if user_type == "concise" else (long, short)
            for copy in range(2):
                rows.append(
                    {"user_id": f"{user_type}{copy}", "user_type": user_type, "prompt": f"question {p}?"}
                    | {"chosen": chosen, "rejected": rejected}
                )
    data = _write(tmp_path / "texts.jsonl", rows)
    run = tmp_path / "run"
    tiny = ["model.hidden_dim=16", "model.latent_dim=4", "episodes.batch_users=4", "episodes.targets=4"]
    tiny += ["episodes.max_context=3", "optim.steps=10", "optim.warmup_steps=2", "eval.val_every=10"]
    tiny += [
        "run.save_every=10",
        "run.log_every=10",
        "eval.contexts=[0,1]",
        "eval.targets=4",
        "eval.val_episodes=4",
    ]
    train = ["train-reward", "--model", "np-btl", "--data", data, "--embedder", str(tiny_bert_dir)]
    assert main([*train, "--cache", str(tmp_path / "cache"), "--out", str(run), "--no-progress", *tiny]) == 0
    capsys.readouterr()  # the training report
    candidates = [
        {"prompt": "Name a prime.", "a": "7.", "b": "Seven is a prime, because only 1 and 7 divide it."},
        {"prompt": "Capital of France?", "a": "Paris.", "b": "The capital of France is Paris, on the Seine."},
        {"prompt": "2 + 2?", "a": "4.", "b": "Two plus two is four."},
    ]
    pool = _write(tmp_path / "pool.jsonl", candidates)
    context = str(Path(__file__).parent / "fixtures" / "trl_conversational.jsonl")  # TRL message lists
    argv = ["elicit", "--model", str(run), "--candidates", pool, "--context", context, "--k", "2"]
    assert main([*argv, "--cache", str(tmp_path / "cache")]) == 0
    picks = _lines(capsys.readouterr().out)
    assert [p["rank"] for p in picks] == [1, 2]
    first = candidates[picks[0]["candidate"]]
    assert (picks[0]["prompt"], picks[0]["a"], picks[0]["b"]) == (first["prompt"], first["a"], first["b"])
    model = npalign.load(str(run), cache_dir=tmp_path / "cache")
    assert isinstance(model, TextRewardPredictor)
    prompts, chosen, rejected = map(list, zip(*read_context_file(context), strict=True))
    choice = model.next_query(
        prompts, chosen, rejected, *[[c[key] for c in candidates] for key in ("prompt", "a", "b")]
    )
    assert choice.index == picks[0]["candidate"]

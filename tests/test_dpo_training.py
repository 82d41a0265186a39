"""NP-DPO end to end on configs/tiny/: train-dpo, generate and evaluate-dpo through the CLI, and what a run
must guarantee: only LoRA, FiLM and encoder weights move; the run reloads strictly; a killed run resumes to
exactly the metrics of an uninterrupted one; a checkpoint missing a part does not load."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers import kill_once_checkpointed
from npalign.cli.main import main
from npalign.config import PolicyTrainConfig, load_config
from npalign.data.dpo_episodes import DPOEpisodeSampler, pair_texts, user_context
from npalign.data.loaders import load_preferences
from npalign.inference.policy import load_policy
from npalign.models.bases import load_base
from npalign.models.policy import TRAINABLE_FILE
from npalign.training.dpo import build_policy
from npalign.training.loop import load_run_data
from npalign.utils.io import load_tensors, read_json, read_jsonl, save_tensors

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/tiny/np_dpo.yaml"  # paths in configs are relative to the repository root
DATA = "tests/fixtures/dpo_tiny.jsonl"
TRL_NAMES = {
    "loss",
    "grad_norm",
    "learning_rate",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


@pytest.fixture(scope="module", autouse=True)
def in_repository() -> Iterator[None]:
    """Run from the repository root, as `npalign train-dpo --config configs/tiny/np_dpo.yaml` expects."""
    previous = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(previous)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpo")


def _train_args(out: Path, cache: Path, *overrides: str) -> list[str]:
    return [
        "train-dpo",
        "--config",
        TINY,
        "--out",
        str(out),
        "--no-progress",
        f"embedder.cache={cache}",
        *overrides,
    ]


@pytest.fixture(scope="module")
def tiny_run(workdir: Path) -> Path:
    out = workdir / "run"
    assert main(_train_args(out, workdir / "cache")) == 0
    return out


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path)


def test_train_dpo_writes_a_complete_pickle_free_run(tiny_run: Path) -> None:
    for name in ("config.yaml", "run.json", "metrics.jsonl", "summary.json"):
        assert (tiny_run / name).is_file(), name
    for folder in (tiny_run / "policy", tiny_run / "checkpoint" / "policy"):
        assert {p.name for p in folder.iterdir()} == {"trainable.safetensors", "policy_config.json"}
    assert not [p for p in tiny_run.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    keys = load_tensors(tiny_run / "policy" / TRAINABLE_FILE)
    assert {key.split(".")[0] for key in keys} == {"lora", "film", "encoder"}
    records = _rows(tiny_run / "metrics.jsonl")
    training = [r for r in records if "loss" in r]
    validation = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in training] == list(range(4, 33, 4))
    assert all(set(r) >= TRL_NAMES for r in training)
    assert [r["step"] for r in validation] == [16, 32]
    assert all({"eval_rewards/accuracies_m0", "eval_rewards/accuracies_m3"} <= set(r) for r in validation)
    run = read_json(tiny_run / "run.json")
    assert run["mode"] == "conditional" and run["type_names"] == ["concise", "detailed"]
    assert run["embedder"]["name"] == "minilm" and run["embedder"]["dim"] == 384


def test_only_lora_film_and_encoder_weights_move(tiny_run: Path) -> None:
    runner = load_policy(tiny_run)
    pristine, _, _ = load_base("tiny-random-llama")
    trainable_ids = {id(t) for t in runner.policy._trainable_tensors().values()}
    base = {
        name.replace(".base_layer", ""): tensor
        for name, tensor in runner.policy.base_model.state_dict(keep_vars=True).items()
        if id(tensor) not in trainable_ids
    }
    assert base.keys() == pristine.state_dict().keys()
    assert all(torch.equal(base[name], tensor) for name, tensor in pristine.state_dict().items())

    cfg = load_config(PolicyTrainConfig, TINY)
    torch.manual_seed(cfg.run.seed)  # train_policy seeds this way right before building the policy
    initial, _, _ = build_policy(cfg, embed_dim=384)
    before, after = initial.trainable_state_dict(), runner.policy.trainable_state_dict()
    assert before.keys() == after.keys()
    moved = {name.split(".")[0] for name in after if not torch.equal(after[name], before[name])}
    assert moved == {"lora", "film", "encoder"}


def _target_batch(runner, context_size: int = 3):  # noqa: ANN001, ANN202 - test helper
    data, _ = load_preferences(DATA, split="test")
    sampler = DPOEpisodeSampler(data, targets=4, max_context=context_size)
    batch = next(iter(sampler.evaluation_batches(context_size, 2, seed=0)))
    return batch.tokenize_targets(runner.tokenizer, max_prompt_length=96, max_response_length=160), batch


def test_saved_run_reloads_to_identical_logprobs_and_z_steers(tiny_run: Path) -> None:
    first, second = load_policy(tiny_run), load_policy(tiny_run / "policy")
    tokens, batch = _target_batch(first)
    data, _ = load_preferences(DATA, split="train")
    concise = user_context(data, "concise", 3, seed=0)
    detailed = user_context(data, "detailed", 3, seed=0)
    args = (tokens["input_ids"], tokens["attention_mask"], tokens["completion_mask"])
    rows = args[0].shape[0]
    with torch.no_grad():
        z_first, z_second = first.infer_z(concise), second.infer_z(concise)
        torch.testing.assert_close(z_first, z_second, rtol=0, atol=0)
        logps = first.policy.sequence_logprobs(*args, z_first.expand(rows, -1))
        torch.testing.assert_close(
            logps, second.policy.sequence_logprobs(*args, z_second.expand(rows, -1)), rtol=0, atol=0
        )
        # After training, the two types' contexts give different z and different log-probs; the
        # reference (adapters off) ignores z entirely.
        z_detailed = first.infer_z(detailed)
        assert (z_first - z_detailed).abs().max() > 1e-4
        other = first.policy.sequence_logprobs(*args, z_detailed.expand(rows, -1))
        assert (logps - other).abs().max() > 1e-5
        with first.policy.reference():
            torch.testing.assert_close(
                first.policy.sequence_logprobs(*args, z_first.expand(rows, -1)),
                first.policy.reference_logprobs(*args),
            )


@pytest.mark.parametrize("part", ["encoder", "film", "lora"])
def test_a_checkpoint_missing_a_part_fails_to_load(tiny_run: Path, tmp_path: Path, part: str) -> None:
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    path = broken / "policy" / TRAINABLE_FILE
    state = load_tensors(path)
    save_tensors({k: v for k, v in state.items() if not k.startswith(f"{part}.")}, path)
    with pytest.raises(ValueError, match=f"Parts absent entirely: \\['{part}'\\]"):
        load_policy(broken)


def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tiny_run: Path, workdir: Path) -> None:
    """A real SIGKILL mid-run, then --resume: metrics and final weights equal the uninterrupted run's."""
    crashed = workdir / "crashed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from npalign.cli.main import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, *_train_args(crashed, workdir / "cache")]
    killed_at = kill_once_checkpointed(command, crashed, 8, env=env, poll_s=0.005, cwd=REPO)
    assert 8 <= killed_at < 32

    assert main([*_train_args(crashed, workdir / "cache"), "--resume"]) == 0
    assert _rows(crashed / "metrics.jsonl") == _rows(tiny_run / "metrics.jsonl")
    resumed = load_tensors(crashed / "policy" / TRAINABLE_FILE)
    uninterrupted = load_tensors(tiny_run / "policy" / TRAINABLE_FILE)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_resume_refuses_a_changed_config(
    tiny_run: Path, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([*_train_args(tiny_run, workdir / "cache", "dpo.beta=0.2"), "--resume"]) == 2
    assert "differs" in capsys.readouterr().err
    assert main(_train_args(tiny_run, workdir / "cache")) == 2  # no --resume: the run is not overwritten


def test_generate_for_a_user_type_and_for_a_context_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompt = "Tell me about owls."
    common = ["generate", "--policy", str(tiny_run), "--prompt", prompt, "--max-new-tokens", "6", "--json"]
    assert main([*common, "--user-type", "concise", "--context-size", "3"]) == 0
    from_type = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_type["prompt"] == prompt and isinstance(from_type["response"], str)

    # The same three pairs written to a file give the same z, hence the same greedy answer.
    data, _ = load_preferences(DATA, split="train")
    context = user_context(data, "concise", 3, seed=0)
    context_file = tmp_path / "context.jsonl"
    context_file.write_text(
        "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in context)
    )
    assert main([*common, "--context", str(context_file)]) == 0
    from_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_file["response"] == from_type["response"]

    # TRL's conversational rows are read as the same pairs.
    conversational = tmp_path / "context_messages.jsonl"
    conversational.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": p}],
                    "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": r}],
                }
            )
            + "\n"
            for p, c, r in context
        )
    )
    assert main([*common, "--context", str(conversational)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["response"] == from_type["response"]

    runner = load_policy(tiny_run)
    z = runner.infer_z(context)
    assert runner.generate([prompt], z=z, max_new_tokens=6) == [from_file["response"]]
    halfway = runner.interpolate(z, runner.infer_z([]), 0.5)
    assert len(runner.generate([prompt, prompt], z=halfway, max_new_tokens=3)) == 2


def test_repetition_penalty_breaks_a_loop_and_bad_values_are_one_line_errors(
    tiny_run: Path, capsys: pytest.CaptureFixture
) -> None:
    runner = load_policy(tiny_run)
    plain = runner.generate(["Hi."], max_new_tokens=24)[0]
    assert runner.generate(["Hi."], max_new_tokens=24, repetition_penalty=1.0)[0] == plain  # 1.0: none
    penalised = runner.generate(["Hi."], max_new_tokens=24, repetition_penalty=100.0)[0]
    assert len(set(plain)) <= 2 < len(set(penalised))  # the random tiny model repeats one token greedily
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="repetition_penalty"):
            runner.generate(["Hi."], max_new_tokens=2, repetition_penalty=bad)
    command = ["generate", "--policy", str(tiny_run), "--prompt", "Hi.", "--max-new-tokens", "24"]
    assert main([*command, "--repetition-penalty", "100"]) == 0
    assert capsys.readouterr().out.strip() == penalised.strip()
    assert main([*command, "--repetition-penalty", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the note that m = 0 is used
    assert error.startswith("npalign generate: error: repetition_penalty=0.0 must be")


def test_generate_and_infer_z_refuse_what_would_decode_garbage(tiny_run: Path) -> None:
    """Each bad argument a ValueError / TypeError naming it, before any decoding."""
    runner = load_policy(tiny_run)
    width = runner.latent_dim
    cases = [
        ({"z": torch.full((width,), float("nan"))}, ValueError, "z contains NaN or inf"),
        ({"max_prompt_length": 0}, ValueError, "max_prompt_length=0 must be an integer >= 1"),
        ({"max_new_tokens": 2.5}, ValueError, "max_new_tokens=2.5"),
        ({"do_sample": True, "top_p": 2.0}, ValueError, "0 < top_p <= 1"),
    ]
    for change, error, match in cases:
        with pytest.raises(error, match=match):
            runner.generate(["Hi."], **{"max_new_tokens": 2, **change})
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str"):
        runner.generate(["Hi.", None], max_new_tokens=2)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"context\[0\] must be a \(prompt, chosen, rejected\) triple"):
        runner.infer_z([(None, None, None)])  # once embedded as the text "None"
    with pytest.raises(TypeError, match="context must be a list"):
        runner.infer_z(None)  # type: ignore[arg-type]


def test_repetition_penalty_leaves_the_prompt_tokens_alone(tiny_run: Path) -> None:
    # A chat prompt holds the end-of-turn token: transformers' own option penalises it and answers lengthen.
    runner = load_policy(tiny_run)
    token = runner.generate(["Hi."], max_new_tokens=1)[0]  # the random tiny model's greedy token
    prompt = token * 4  # the same token now sits in the prompt, where a penalty must not see it
    first = runner.generate([prompt], max_new_tokens=1)[0]
    assert runner.generate([prompt], max_new_tokens=1, repetition_penalty=100.0) == [first]
    assert runner.generate([prompt, "Hi."], max_new_tokens=1, repetition_penalty=100.0) == [first, token]


def test_evaluate_dpo_writes_results_in_the_core_shape(tiny_run: Path, workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = [
        "evaluate-dpo",
        "--policy",
        str(tiny_run),
        "--data",
        DATA,
        "--split",
        "test",
        "--contexts",
        "0",
        "1",
        "3",
    ]
    argv += [
        "--out",
        str(out),
        "--episodes",
        "8",
        "--targets",
        "4",
        "--cache",
        str(workdir / "cache"),
        "--quiet",
    ]
    assert main(argv) == 0
    results = read_json(out)
    accuracy = results["models"]["np-dpo"]["accuracy"]
    assert set(accuracy) == {"0", "1", "3"}
    for cell in accuracy.values():
        assert set(cell) == {"mean", "sem", "by_type"} and set(cell["by_type"]) == {"concise", "detailed"}
        assert 0 <= cell["mean"] <= 100
    # The two types disagree on every pair: without context no policy beats 50 % on average, with three
    # of the user's choices on other prompts the trained policy answers the user's way on unseen prompts.
    assert 25 <= accuracy["0"]["mean"] <= 75
    assert accuracy["3"]["mean"] >= 75 and accuracy["3"]["mean"] - accuracy["0"]["mean"] >= 20


def test_unconditional_single_type_baseline_runs_with_the_same_code(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = workdir / "dpo_concise"
    settings = ["mode=unconditional", "data.user_types=[concise]", "optim.steps=2", "optim.warmup_steps=1"]
    settings += ["eval.val_every=2", "run.save_every=2", "run.log_every=2"]
    assert main(_train_args(out, workdir / "cache", *settings)) == 0
    run = read_json(out / "run.json")
    assert run["mode"] == "unconditional" and run["type_names"] == ["concise"] and run["embedder"] is None
    film = {k: v for k, v in load_tensors(out / "policy" / TRAINABLE_FILE).items() if k.startswith("film.")}
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in film.items() if k.endswith("weight"))
    capsys.readouterr()
    base = ["generate", "--policy", str(out), "--prompt", "Tell me about owls.", "--max-new-tokens", "3"]
    assert main(base) == 0
    assert main([*base, "--user-type", "concise"]) == 2
    assert "unconditional" in capsys.readouterr().err
    results = workdir / "dpo_concise.json"
    argv = ["evaluate-dpo", "--policy", str(out), "--data", DATA, "--split", "test", "--contexts", "0", "3"]
    assert main([*argv, "--out", str(results), "--episodes", "2", "--targets", "4", "--quiet"]) == 0
    accuracy = read_json(results)["models"]["dpo"]["accuracy"]
    # Without z the policy cannot tell users apart, so the context size changes nothing but the draw.
    assert set(accuracy) == {"0", "3"} and set(accuracy["0"]["by_type"]) == {"concise", "detailed"}


def test_precomputed_reference_equals_the_reference_forward_per_pair(workdir: Path) -> None:
    out = workdir / "precomputed"
    settings = ["dpo.precompute_reference=true", "optim.steps=4", "optim.warmup_steps=1", "eval.val_every=4"]
    assert main(_train_args(out, workdir / "cache", *settings)) == 0
    tables = load_tensors(out / "reference_logps.safetensors")
    train, _, _ = load_run_data(load_config(PolicyTrainConfig, TINY).data)
    assert tables["train"].shape == (train.num_pairs, 2)
    runner = load_policy(out)
    batch = DPOEpisodeSampler(train, targets=4, max_context=3, batch_users=4).batch_at(0)
    tokens = batch.tokenize_targets(runner.tokenizer, max_prompt_length=96, max_response_length=160)
    expected = runner.policy.reference_logprobs(
        tokens["input_ids"], tokens["attention_mask"], tokens["completion_mask"]
    )  # (2BT,): chosen rows, then rejected rows
    stored = tables["train"][batch.episodes.target_pairs.flatten()]  # (BT, 2)
    torch.testing.assert_close(torch.cat([stored[:, 0], stored[:, 1]]), expected, rtol=1e-5, atol=1e-4)


def test_config_errors_name_the_key(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    for override, message in (
        ("mode=steered", "mode='steered'"),
        ("dpo.beta=0", "dpo.beta=0.0"),
        ("dpo.betta=0.1", "dpo.betta"),
        ("dpo.rpo_alpha=-1", "dpo.rpo_alpha=-1"),
        ("dpo.rpo_min_context=-1", "dpo.rpo_min_context=-1"),
        ("dpo.loss_type=hinge", "dpo.loss_type='hinge'"),
        ("dpo.prior_margin_weight=-1", "dpo.prior_margin_weight=-1"),
        ("data.user_types=[nobody]", "nobody"),
    ):
        assert main(_train_args(workdir / "bad", workdir / "cache", override)) == 2
        assert message in capsys.readouterr().err


def test_rpo_alpha_adds_the_chosen_responses_mean_token_nll_to_the_dpo_loss(workdir: Path) -> None:
    settings = ["optim.steps=1", "optim.warmup_steps=1", "run.log_every=1", "data.val_split=null"]
    records = {}
    for alpha in (0.0, 2.0):
        out = workdir / f"rpo{alpha}"
        assert main(_train_args(out, workdir / "cache", *settings, f"dpo.rpo_alpha={alpha}")) == 0
        (records[alpha],) = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    # Step 1 scores the same batch with the same weights, so only the added term differs.
    plain, rpo = records[0.0], records[2.0]
    assert plain["logps/chosen"] == pytest.approx(rpo["logps/chosen"], rel=1e-5)
    assert rpo["nll_loss"] == pytest.approx(plain["nll_loss"], rel=1e-5) and rpo["nll_loss"] > 0
    assert rpo["loss"] - plain["loss"] == pytest.approx(2.0 * rpo["nll_loss"], rel=1e-4)


def test_rpo_min_context_leaves_the_nll_of_episodes_with_a_smaller_context_out(workdir: Path) -> None:
    settings = ["optim.steps=1", "optim.warmup_steps=1", "run.log_every=1", "data.val_split=null"]
    records = {}
    for least in (0, 3, 99):
        out = workdir / f"rpo_min{least}"
        overrides = [*settings, "dpo.rpo_alpha=1.0", f"dpo.rpo_min_context={least}"]
        assert main(_train_args(out, workdir / "cache", *overrides)) == 0
        (records[least],) = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    # The tiny run's first batch holds episodes with contexts of 2 and 3 pairs: 3 keeps some of them, 99 none.
    assert records[99]["nll_loss"] == 0.0 and records[0]["nll_loss"] > 0
    assert 0 < records[3]["nll_loss"] != pytest.approx(records[0]["nll_loss"], rel=1e-4)
    assert records[0]["logps/chosen"] == pytest.approx(records[3]["logps/chosen"], rel=1e-5)  # same batch


def test_prior_margin_weight_pulls_the_m0_margins_towards_the_reference(workdir: Path) -> None:
    """Every episode has an empty context (max_context 0); the pull keeps its implicit margins near 0.

    The fixture's users are opposed (concise / detailed), so the m = 0 margins drift with the batches drawn.
    A weight of 1e-6 only logs their mean square; 1 keeps it far smaller. With a context, the term is absent.
    """
    settings = ["optim.steps=16", "optim.warmup_steps=1", "run.log_every=1", "data.val_split=null", "optim.lr=0.01"]
    squares = {}
    for weight in (1e-6, 1.0):
        out = workdir / f"prior{weight}"
        overrides = [*settings, "episodes.max_context=0", f"dpo.prior_margin_weight={weight}"]
        assert main(_train_args(out, workdir / "cache", *overrides)) == 0
        records = [r["prior_margin_loss"] for r in _rows(out / "metrics.jsonl") if "loss" in r]
        assert records[0] == 0.0  # step 1: the policy is the reference, h = 0
        squares[weight] = sum(records[8:]) / len(records[8:])  # the last 8 steps
    assert 0 < squares[1.0] < 0.2 * squares[1e-6]
    out = workdir / "prior_with_context"
    overrides = [*settings[1:], "optim.steps=1", "episodes.min_context=1", "dpo.prior_margin_weight=1"]
    assert main(_train_args(out, workdir / "cache", *overrides)) == 0
    (record,) = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    assert record["prior_margin_loss"] == 0.0


def test_loss_type_ipo_trains_on_the_squared_loss(workdir: Path) -> None:
    settings = ["optim.steps=1", "optim.warmup_steps=1", "run.log_every=1", "data.val_split=null"]
    losses = {}
    for loss_type in ("sigmoid", "ipo"):
        out = workdir / f"loss_{loss_type}"
        assert main(_train_args(out, workdir / "cache", *settings, f"dpo.loss_type={loss_type}")) == 0
        (record,) = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
        # Step 1 scores the first batch before any update: the policy is the reference and h = 0.
        assert record["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
        losses[loss_type] = record["loss"]
    # At h = 0 DPO's loss is log 2 and IPO's (beta h - 1/2)^2 is 1/4.
    assert losses == pytest.approx({"sigmoid": math.log(2), "ipo": 0.25}, abs=1e-5)


def test_context_and_target_pairs_never_overlap() -> None:
    data, _ = load_preferences(DATA, split="train")
    sampler = DPOEpisodeSampler(data, targets=4, max_context=3, batch_users=4, seed=0)
    for step in range(20):
        batch = sampler.batch_at(step)
        for user in range(batch.num_users):
            context = {int(p) for p in batch.episodes.context_pairs[user] if p >= 0}
            targets = {int(p) for p in batch.episodes.target_pairs[user]}
            assert not context & targets
            assert len(batch.context_texts[user]) == len(context)
        prompts = [p for p, _, _ in pair_texts(data, batch.episodes.target_pairs.flatten())]
        assert prompts == batch.target_prompts


def test_bf16_gradient_checkpointing_and_accumulation_train(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = workdir / "bf16"
    settings = ["model.bf16=true", "model.gradient_checkpointing=true", "optim.grad_accumulation=2"]
    settings += [
        "optim.steps=2",
        "optim.warmup_steps=1",
        "run.save_every=2",
        "run.log_every=2",
        "data.val_split=null",
    ]
    assert main(_train_args(out, workdir / "cache", *settings)) == 0
    (record,) = [r for r in _rows(out / "metrics.jsonl") if "loss" in r]
    assert all(torch.isfinite(torch.tensor(record[name])) for name in TRL_NAMES)
    config = read_json(out / "policy" / "policy_config.json")
    assert config["bf16"] and config["gradient_checkpointing"]
    import npalign.inference.policy as inference_policy

    monkeypatch.setattr(inference_policy, "native_bfloat16", lambda device: True)
    runner = load_policy(out)
    assert next(runner.policy.base_model.parameters()).dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in runner.policy.trainable_state_dict().values())
    # Where bfloat16 is emulated (an AVX2-only CPU), the same bfloat16 weights compute in float32.
    monkeypatch.setattr(inference_policy, "native_bfloat16", lambda device: False)
    upcast = load_policy(out)
    weights, upcast_weights = runner.policy.state_dict(), upcast.policy.state_dict()
    assert weights.keys() == upcast_weights.keys()
    assert all(t.dtype == torch.float32 for t in upcast_weights.values())
    assert all(torch.equal(weights[k].float(), upcast_weights[k]) for k in weights)


def test_model_bf16_auto_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """model.bf16: auto is bfloat16 where `native_bfloat16` says the device computes it, else float32."""
    import npalign.training.dpo as dpo

    cfg = load_config(PolicyTrainConfig, TINY, ["model.bf16=auto"])
    assert cfg.model.bf16 == "auto"
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(dpo, "native_bfloat16", lambda device, native=native: native)
        policy, _, _ = build_policy(cfg, embed_dim=384)
        assert policy.base_model.get_input_embeddings().weight.dtype == dtype
    with pytest.raises(ValueError, match="model.bf16='fast': use true, false or auto"):
        load_config(PolicyTrainConfig, TINY, ["model.bf16=fast"])
    assert load_config(PolicyTrainConfig, TINY, ["model.bf16=true"]).model.bf16 is True
    assert load_config(PolicyTrainConfig, TINY, ["model.bf16=false"]).model.bf16 is False


def test_npalign_load_gives_a_policy_runner_that_saves_and_reloads(tiny_run: Path, tmp_path: Path) -> None:
    """npalign.load reads a policy run too; save_pretrained writes a run that loads back to the same z and
    weights, with the recorded data path still pointing at the same file."""
    import npalign
    from npalign.inference.policy import PolicyRunner
    from npalign.utils.rundir import path_from_run

    runner = npalign.load(str(tiny_run))
    assert isinstance(runner, PolicyRunner) and runner.to("cpu") is runner
    runner.save_pretrained(tmp_path / "copy")
    again = npalign.load(str(tmp_path / "copy"))
    assert isinstance(again, PolicyRunner)
    recorded, copied = runner.run["data"]["train"], again.run["data"]["train"]
    assert path_from_run(copied, tmp_path / "copy") == path_from_run(recorded, tiny_run)
    context = user_context(load_preferences(REPO / DATA, split="train")[0], "concise", 2, seed=0)
    assert torch.equal(runner.infer_z(context), again.infer_z(context))
    first, second = runner.policy.trainable_state_dict(), again.policy.trainable_state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

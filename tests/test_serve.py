"""`npalign serve`'s HTTP API through FastAPI's TestClient, on models trained in the test (tests).

Each store test runs on SQLite and, when NPALIGN_TEST_POSTGRES_URL names a server (as `.ci/run` sets it),
on PostgreSQL; no store is mocked. The real-process tests (kill -9, restart, two replicas) are in
test_serve_process.py.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

import npalign
from helpers import train_feature_model, train_text_model
from npalign.cli.main import main
from npalign.inference.api import RewardPredictor
from npalign.inference.policy import PolicyRunner
from npalign.inference.text import TextRewardPredictor
from npalign.integrations.trl import reward_function
from npalign.serve.app import check_limits, create_app
from npalign.serve.schemas import Choice, Limits, response_of
from npalign.serve.served import ServedModel
from npalign.serve.store import UserStore, metadata

REPO = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("NPALIGN_TEST_POSTGRES_URL")
STORES = [
    "sqlite",
    pytest.param(
        "postgres", marks=pytest.mark.skipif(not POSTGRES, reason="NPALIGN_TEST_POSTGRES_URL unset")
    ),
]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PROMPT = "question 3: tell me about on and over"
SHORT, LONG = "the cat sat", "a warm mat while rain fell over quiet hills and rivers ran far the cat"
TEXT_CHOICES = [
    {"prompt": PROMPT, "chosen": SHORT, "rejected": LONG, "choice_id": "c1"},
    {
        "prompt": "question 4: tell me about a and rain",
        "chosen": "rain fell",
        "rejected": LONG,
        "choice_id": "c2",
    },
]
FEATURE_CHOICES = [
    {"chosen": [0.9, 0.1], "rejected": [0.1, 0.9], "choice_id": "f1"},
    {"chosen": [0.8, 0.3], "rejected": [0.2, 0.7], "choice_id": "f2"},
    {"chosen": [0.7, 0.2], "rejected": [0.5, 0.5]},
]
RESPONSES = [SHORT, LONG, "rivers ran far", "the cat sat on a warm mat"]


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_feature_model(tmp_path_factory.mktemp("features") / "run")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return train_text_model(tmp_path_factory.mktemp("texts") / "run", cache_dir)


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """configs/tiny/np_dpo.yaml for 4 steps: a policy that loads and generates; its quality is not the point."""
    out = tmp_path_factory.mktemp("policy") / "run"
    previous = os.getcwd()
    os.chdir(REPO)
    try:
        args = ["train-dpo", "--config", "configs/tiny/np_dpo.yaml", "--out", str(out), "--no-progress"]
        overrides = ["optim.steps=4", "eval.val_every=4", "run.save_every=4", "optim.warmup_steps=1"]
        assert main([*args, f"embedder.cache={out.parent / 'cache'}", *overrides]) == 0
    finally:
        os.chdir(previous)
    yield out


def store_url(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'users.db'}"
    assert POSTGRES is not None
    engine = create_engine(POSTGRES)
    metadata.drop_all(engine)  # each test starts from an empty store
    engine.dispose()
    return POSTGRES


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UserStore]:
    users = UserStore(store_url(request.param, tmp_path))
    yield users
    users.close()


def client_for(run: Path, store: UserStore, cache: Path | None = None, **options: Any) -> TestClient:
    predictor = npalign.load(str(run), cache_dir=cache)
    assert not isinstance(predictor, PolicyRunner)
    policy = options.pop("policy", None)
    return TestClient(create_app(ServedModel(predictor, policy), store, **options))


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: Any, status: int, field: str) -> dict[str, Any]:
    """A refusal: the status, a JSON body whose `field` names the part at fault and whose error says it."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert body["error"].startswith(f"{field}:"), body
    return body


# ---------------------------------------------------------------------------------------------------
# round trips: HTTP == in process


def test_feature_model_round_trip_equals_in_process(feature_run: Path, store: UserStore) -> None:
    client = client_for(feature_run, store)
    model = npalign.load(str(feature_run))
    assert isinstance(model, RewardPredictor)
    user = new_user()
    assert ok(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES[:2]})) == {
        "user_id": user,
        "num_choices": 2,
    }
    assert (
        ok(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES[2:]}))["num_choices"]
        == 3
    )
    chosen = torch.tensor([c["chosen"] for c in FEATURE_CHOICES])
    rejected = torch.tensor([c["rejected"] for c in FEATURE_CHOICES])
    z = model.infer_user(chosen, rejected)
    items = [[0.1, 0.2], [0.9, 0.9], [0.5, 0.0]]

    answer = ok(client.post("/v1/reward", json={"user_id": user, "responses": items}))
    assert answer["num_choices"] == 3
    torch.testing.assert_close(torch.tensor(answer["rewards"]), model.reward(torch.tensor(items), z))
    inline = ok(client.post("/v1/reward", json={"context": FEATURE_CHOICES, "responses": items}))
    assert inline["rewards"] == answer["rewards"]
    prior = ok(client.post("/v1/reward", json={"context": [], "responses": items}))
    torch.testing.assert_close(
        torch.tensor(prior["rewards"]), model.reward(torch.tensor(items), model.infer_user([], []))
    )

    probs = ok(client.post("/v1/prefer", json={"user_id": user, "a": items, "b": items[::-1]}))["probs"]
    torch.testing.assert_close(
        torch.tensor(probs), model.prefer_prob(torch.tensor(items), torch.tensor(items[::-1]), z)
    )
    described = ok(client.get(f"/v1/users/{user}"))
    assert described["num_choices"] == 3 and described["kind"] == "np-btl"
    torch.testing.assert_close(torch.tensor(described["z"]), z)
    assert described["posterior_scale"] is None

    # next-query: the stored user's choices are the context; the same pick and scores as in process.
    candidates = {"a": items, "b": [[0.2, 0.1], [0.9, 0.9], [0.0, 0.5]]}
    for strategy in ("info-gain", "uncertainty"):
        picked = ok(client.post(f"/v1/users/{user}/next-query", json={**candidates, "strategy": strategy}))
        local = model.next_query(chosen, rejected, torch.tensor(candidates["a"]), torch.tensor(candidates["b"]),
                                 strategy=strategy)  # fmt: skip
        assert picked["index"] == local.index and picked["num_choices"] == 3
        torch.testing.assert_close(torch.tensor(picked["scores"]), local.scores.float())
        assert picked["index"] != 1  # (0.9, 0.9) against itself cannot tell anything
    fresh = ok(client.post(f"/v1/users/{new_user()}/next-query", json=candidates))
    assert fresh["num_choices"] == 0 and len(fresh["scores"]) == 3
    refused = client.post(f"/v1/users/{user}/next-query", json={"a": [], "b": []})
    assert refused.status_code == 422 and refused.json()["field"] == "a"
    refused = client.post(f"/v1/users/{user}/next-query", json={**candidates, "strategy": "bald"})
    assert refused.status_code == 422 and refused.json()["field"] == "strategy"
    # random draws anew for each request (it once always drew seed 0), and repeats itself given a seed
    many = {"a": [[i / 10, 0.5] for i in range(8)], "b": [[0.5, i / 10] for i in range(8)], "strategy": "random"}
    draws = [ok(client.post(f"/v1/users/{user}/next-query", json=many))["scores"] for _ in range(2)]
    seeded = [ok(client.post(f"/v1/users/{user}/next-query", json={**many, "seed": 7}))["scores"] for _ in range(2)]
    assert draws[0] != draws[1] and seeded[0] == seeded[1]


def test_latent_model_reports_its_posterior_scale(tmp_path: Path) -> None:
    run = train_feature_model(tmp_path / "latent", kind="np-btl-latent")
    client = client_for(run, UserStore(f"sqlite:///{tmp_path / 'u.db'}"))
    user = new_user()
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES}))
    model = npalign.load(str(run))
    assert isinstance(model, RewardPredictor)
    posterior = model.infer_user(
        [c["chosen"] for c in FEATURE_CHOICES], [c["rejected"] for c in FEATURE_CHOICES]
    )
    described = ok(client.get(f"/v1/users/{user}"))
    torch.testing.assert_close(torch.tensor(described["posterior_scale"]), posterior.scale)  # type: ignore[union-attr]
    assert (
        len(ok(client.post("/v1/reward", json={"user_id": user, "responses": [[0.1, 0.1]]}))["rewards"]) == 1
    )


def test_text_model_round_trip_equals_in_process(text_run: Path, store: UserStore, cache_dir: Path) -> None:
    client = client_for(text_run, store, cache_dir)
    model = npalign.load(str(text_run), cache_dir=cache_dir)
    assert isinstance(model, TextRewardPredictor)
    user = new_user()
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": TEXT_CHOICES}))
    z = model.infer_user(
        [c["prompt"] for c in TEXT_CHOICES],
        [c["chosen"] for c in TEXT_CHOICES],
        [c["rejected"] for c in TEXT_CHOICES],
    )
    answer = ok(client.post("/v1/reward", json={"user_id": user, "prompt": PROMPT, "responses": RESPONSES}))
    torch.testing.assert_close(torch.tensor(answer["rewards"]), model.reward(PROMPT, RESPONSES, z))
    per_item = ok(
        client.post("/v1/reward", json={"user_id": user, "prompts": [PROMPT] * 4, "responses": RESPONSES})
    )
    assert per_item["rewards"] == answer["rewards"]
    inline = ok(
        client.post("/v1/reward", json={"context": TEXT_CHOICES, "prompt": PROMPT, "responses": RESPONSES})
    )
    assert inline["rewards"] == answer["rewards"]
    probs = ok(
        client.post(
            "/v1/prefer", json={"user_id": user, "prompt": PROMPT, "a": RESPONSES[:2], "b": RESPONSES[2:]}
        )
    )
    torch.testing.assert_close(
        torch.tensor(probs["probs"]), model.prefer_prob(PROMPT, RESPONSES[:2], RESPONSES[2:], z)
    )


def test_get_reward_openrlhf_contract_by_id_and_inline_context(
    text_run: Path, store: UserStore, cache_dir: Path
) -> None:
    """OpenRLHF 0.11's request ({query, prompts, labels}) -> {rewards, scores, extra_logs}, in order; labels
    as objects or JSON strings, users by id or inline context, mixed in one batch."""
    client = client_for(text_run, store, cache_dir)
    stored, other = new_user(), new_user()
    ok(client.post(f"/v1/users/{stored}/choices", json={"choices": TEXT_CHOICES}))
    ok(
        client.post(
            f"/v1/users/{other}/choices",
            json={"choices": [{**TEXT_CHOICES[0], "chosen": LONG, "rejected": SHORT}]},
        )
    )
    labels: list[Any] = [
        {"user_id": stored},
        json.dumps({"user_id": other}),
        json.dumps({"context": TEXT_CHOICES}),
        {"user_id": stored},
    ]
    body = {"query": [PROMPT + r for r in RESPONSES], "prompts": [PROMPT] * 4, "labels": labels}
    answer = ok(client.post("/get_reward", json=body))
    assert set(answer) == {"rewards", "scores", "extra_logs"}
    assert answer["scores"] == answer["rewards"] and answer["extra_logs"] == {
        "user_choices": [2.0, 1.0, 2.0, 2.0]
    }
    for index, user in enumerate((stored, other, stored, stored)):
        expected = ok(
            client.post(
                "/v1/reward", json={"user_id": user, "prompt": PROMPT, "responses": [RESPONSES[index]]}
            )
        )
        assert answer["rewards"][index] == pytest.approx(expected["rewards"][0], abs=1e-5)

    # What OpenRLHF's decode really sends: the answer's end-of-turn token; left padding (older versions); a
    # prompt cut to its last tokens while `prompts` holds it whole (0.11, SingleTurnAgentExecutor).
    decoded = [
        PROMPT + RESPONSES[0] + "<|im_end|>",
        "<|endoftext|>" * 3 + PROMPT + RESPONSES[1] + "<|im_end|><|endoftext|>",
        PROMPT[12:] + RESPONSES[2] + "</s>",
        PROMPT + RESPONSES[3],
    ]
    as_decoded = ok(client.post("/get_reward", json={**body, "query": decoded}))
    assert as_decoded["rewards"] == pytest.approx(answer["rewards"], abs=1e-5)
    bad = {**body, "query": [PROMPT + "x", "another prompt" + SHORT, PROMPT + "y", PROMPT + "z"]}
    refused(client.post("/get_reward", json=bad), 422, "query[1]")
    chance = {**body, "query": [PROMPT + "x", "and over" + SHORT, PROMPT + "y", PROMPT + "z"]}  # 8 characters
    refused(client.post("/get_reward", json=chance), 422, "query[1]")
    refused(client.post("/get_reward", json={**body, "labels": labels[:3]}), 422, "labels")
    refused(client.post("/get_reward", json={**body, "labels": [*labels[:3], "{not json"]}), 422, "labels[3]")
    refused(
        client.post("/get_reward", json={**body, "labels": [*labels[:3], {"user_id": "nobody"}]}),
        404,
        "labels[3].user_id",
    )
    refused(
        client.post("/get_reward", json={**body, "labels": [*labels[:3], {"name": "x"}]}),
        422,
        "labels[3].name",
    )
    refused(client.post("/get_reward", json={"query": body["query"], "labels": labels}), 422, "prompts")


def test_get_reward_needs_a_text_model(feature_run: Path, store: UserStore) -> None:
    client = client_for(feature_run, store)
    refused(
        client.post("/get_reward", json={"query": ["pr"], "prompts": ["p"], "labels": [{"context": []}]}),
        422,
        "query",
    )


def test_generate_for_a_stored_user_equals_the_policy_in_process(
    text_run: Path, policy_run: Path, store: UserStore, cache_dir: Path
) -> None:
    policy = npalign.load(str(policy_run))
    assert isinstance(policy, PolicyRunner)
    client = client_for(text_run, store, cache_dir, policy=policy)
    user = new_user()
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": TEXT_CHOICES}))
    prompts = ["Describe the ocean.", "Name a colour."]
    triples = [(c["prompt"], c["chosen"], c["rejected"]) for c in TEXT_CHOICES]
    expected = policy.generate(prompts, context=triples, max_new_tokens=6)
    by_id = ok(client.post("/v1/generate", json={"user_id": user, "prompts": prompts, "max_new_tokens": 6}))
    assert by_id["responses"] == expected and by_id["num_choices"] == 2
    inline = ok(
        client.post("/v1/generate", json={"context": TEXT_CHOICES, "prompts": prompts, "max_new_tokens": 6})
    )
    assert inline["responses"] == expected
    sampled = {
        "user_id": user,
        "prompts": prompts,
        "max_new_tokens": 6,
        "do_sample": True,
        "temperature": 0.7,
        "seed": 3,
    }
    assert ok(client.post("/v1/generate", json=sampled)) == ok(client.post("/v1/generate", json=sampled))
    refused(client.post("/v1/generate", json={**sampled, "max_new_tokens": 0}), 422, "max_new_tokens")
    refused(client.post("/v1/generate", json={**sampled, "max_new_tokens": 10_000}), 422, "max_new_tokens")
    refused(client.post("/v1/generate", json={**sampled, "top_p": 1.5}), 422, "top_p")
    refused(client.post("/v1/generate", json={**sampled, "repetition_penalty": 0}), 422, "repetition_penalty")
    penalised = policy.generate(prompts, context=triples, max_new_tokens=6, repetition_penalty=1.5)
    assert ok(client.post("/v1/generate", json={"user_id": user, "prompts": prompts, "max_new_tokens": 6,
                                                "repetition_penalty": 1.5}))["responses"] == penalised  # fmt: skip


def test_generate_without_a_policy_is_a_404(feature_run: Path, store: UserStore) -> None:
    client = client_for(feature_run, store)
    refused(client.post("/v1/generate", json={"context": [], "prompts": ["hi"]}), 404, "policy")


# ---------------------------------------------------------------------------------------------------
# the store: idempotent retries, deletion, z cache across processes


def test_retries_with_a_choice_id_are_stored_once(feature_run: Path, store: UserStore) -> None:
    client = client_for(feature_run, store)
    user = new_user()
    body = {"choices": FEATURE_CHOICES[:2]}
    for _ in range(5):  # OpenRLHF-style retries of one request
        assert ok(client.post(f"/v1/users/{user}/choices", json=body))["num_choices"] == 2
    repeated = {
        "choices": [
            FEATURE_CHOICES[0],
            {**FEATURE_CHOICES[1], "choice_id": "f9"},
            {**FEATURE_CHOICES[1], "choice_id": "f9"},
        ]
    }
    assert ok(client.post(f"/v1/users/{user}/choices", json=repeated))["num_choices"] == 3
    conflict = {"choices": [FEATURE_CHOICES[2], {**FEATURE_CHOICES[0], "chosen": [0.0, 0.0]}]}
    refused(client.post(f"/v1/users/{user}/choices", json=conflict), 409, "choices[1].choice_id")
    assert store.user(user).num_choices == 3  # type: ignore[union-attr]  # the refused request stored nothing
    _, stored = store.choices(user)
    assert [c.choice_id for c in stored] == ["f1", "f2", "f9"]


def test_a_deleted_user_is_gone_from_every_table(feature_run: Path, store: UserStore) -> None:
    client = client_for(feature_run, store)
    user, kept = new_user(), new_user()
    for name in (user, kept):
        ok(client.post(f"/v1/users/{name}/choices", json={"choices": FEATURE_CHOICES}))
    ok(client.get(f"/v1/users/{user}"))  # z cached
    assert ok(client.delete(f"/v1/users/{user}")) == {"user_id": user, "deleted": True}
    engine = store.read_engine  # the write engine's BEGIN IMMEDIATE would wait on inspect()'s connection
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            columns = {c["name"] for c in inspect(engine).get_columns(table)}
            if "user_id" in columns:
                count = connection.execute(
                    text(f"SELECT COUNT(*) FROM {table} WHERE user_id = :user"), {"user": user}
                ).scalar_one()
                assert count == 0, table
    assert store.count_rows(kept) == {"npalign_users": 1, "npalign_choices": 3}
    refused(client.get(f"/v1/users/{user}"), 404, "user_id")
    refused(client.post("/v1/reward", json={"user_id": user, "responses": [[0.1, 0.1]]}), 404, "user_id")
    refused(client.delete(f"/v1/users/{user}"), 404, "user_id")
    # a new user under the old id starts from nothing, not from the cached z
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES[:1]}))
    assert ok(client.get(f"/v1/users/{user}"))["num_choices"] == 1


def test_two_servers_on_one_store_agree_on_z(feature_run: Path, store: UserStore) -> None:
    """A replica's cached z follows the store: when the other replica appends, the next reward is new."""
    first, second = client_for(feature_run, store), client_for(feature_run, store)
    user = new_user()
    ok(first.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES[:1]}))
    query = {"user_id": user, "responses": [[0.3, 0.6], [0.6, 0.3]]}
    before = ok(first.post("/v1/reward", json=query))["rewards"]
    assert ok(second.post("/v1/reward", json=query))["rewards"] == before
    ok(second.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES[1:]}))
    after_first, after_second = (ok(c.post("/v1/reward", json=query)) for c in (first, second))
    assert after_first == after_second and after_first["num_choices"] == 3
    assert after_first["rewards"] != before


# ---------------------------------------------------------------------------------------------------
# bad input: each is a 4xx naming the field, never a 500


BAD_FEATURE_REQUESTS = [
    ("post", "/v1/users/a b/choices", {"choices": FEATURE_CHOICES}, 422, "user_id"),
    ("post", "/v1/users/" + "x" * 200 + "/choices", {"choices": FEATURE_CHOICES}, 422, "user_id"),
    ("post", "/v1/users/ok/choices", {"choices": []}, 422, "choices"),
    ("post", "/v1/users/ok/choices", {}, 422, "choices"),
    ("post", "/v1/users/ok/choices", {"choices": [{"chosen": [1, 2]}]}, 422, "choices[0].rejected"),
    (
        "post",
        "/v1/users/ok/choices",
        {"choices": [{"chosen": [1, 2, 3], "rejected": [1, 2]}]},
        422,
        "choices[0].chosen",
    ),
    (
        "post",
        "/v1/users/ok/choices",
        {"choices": [{"chosen": "text", "rejected": [1, 2]}]},
        422,
        "choices[0].chosen",
    ),
    (
        "post",
        "/v1/users/ok/choices",
        {"choices": [{"chosen": [1, "x"], "rejected": [1, 2]}]},
        422,
        "choices[0].chosen[1]",
    ),
    (
        "post",
        "/v1/users/ok/choices",
        {"choices": [{"chosen": [1, 2], "rejected": [1, 2], "choice_id": "a b"}]},
        422,
        "choices[0].choice_id",
    ),
    ("post", "/v1/users/ok/choices", {"choices": FEATURE_CHOICES, "extra": 1}, 422, "extra"),
    ("post", "/v1/reward", {"responses": [[0.1, 0.2]]}, 422, "user_id"),
    ("post", "/v1/reward", {"user_id": "ok", "context": [], "responses": [[0.1, 0.2]]}, 422, "user_id"),
    ("post", "/v1/reward", {"user_id": "no-such-user", "responses": [[0.1, 0.2]]}, 404, "user_id"),
    ("post", "/v1/reward", {"context": [], "responses": [[0.1]]}, 422, "responses[0]"),
    ("post", "/v1/reward", {"context": [], "responses": [[True, 0.2]]}, 422, "responses[0][0]"),
    # past float32's range (the model would see inf), and an integer past float64's
    ("post", "/v1/reward", {"context": [], "responses": [[0.1, 1e39]]}, 422, "responses[0][1]"),
    ("post", "/v1/reward", {"context": [], "responses": [[10**400, 0.2]]}, 422, "responses[0][0]"),
    # within float32 but overflowing inside the model: once a null reward, and a stored user's z of nulls
    ("post", "/v1/reward", {"context": [], "responses": [[3e38, 3e38]]}, 422, "responses[0]"),
    (
        "post",
        "/v1/users/ok/choices",
        {"choices": [{"chosen": [3e38, 3e38], "rejected": [0, 1]}]},
        422,
        "choices[0]",
    ),
    (
        "post",
        "/v1/users/ok/choices",
        {"choices": [{"chosen": [1e39, 0], "rejected": [0, 1]}]},
        422,
        "choices[0].chosen[0]",
    ),
    ("post", "/v1/reward", {"context": [], "responses": "nope"}, 422, "responses"),
    ("post", "/v1/reward", {"context": [], "prompt": "p", "responses": [[0.1, 0.2]]}, 422, "prompt"),
    (
        "post",
        "/v1/reward",
        {"context": [{"chosen": [1], "rejected": [1, 2]}], "responses": [[0.1, 0.2]]},
        422,
        "context[0].chosen",
    ),
    ("post", "/v1/prefer", {"context": [], "a": [[0.1, 0.2]], "b": []}, 422, "b"),
    ("get", "/v1/users/no-such-user", None, 404, "user_id"),
    ("delete", "/v1/users/no-such-user", None, 404, "user_id"),
    ("post", "/v1/nowhere", {}, 404, "path"),
    ("get", "/v1/reward", None, 405, "path"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), BAD_FEATURE_REQUESTS)
def test_bad_requests_are_4xx_naming_the_field(
    feature_run: Path, tmp_path: Path, method: str, path: str, body: Any, status: int, field: str
) -> None:
    client = client_for(feature_run, UserStore(f"sqlite:///{tmp_path / 'u.db'}"))
    call = getattr(client, method)
    refused(call(path) if body is None else call(path, json=body), status, field)


def test_bad_text_requests_and_malformed_bodies(text_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    client = client_for(text_run, UserStore(f"sqlite:///{tmp_path / 'u.db'}"), cache_dir)
    refused(client.post("/v1/reward", json={"context": [], "responses": [SHORT]}), 422, "prompt")
    refused(
        client.post("/v1/reward", json={"context": [], "prompts": ["p"], "responses": [SHORT, LONG]}),
        422,
        "prompts",
    )
    refused(
        client.post("/v1/reward", json={"context": [], "prompt": "p", "responses": [[0.1]]}),
        422,
        "responses[0]",
    )
    refused(
        client.post("/v1/reward", json={"context": [], "prompt": "p", "responses": ["  "]}),
        422,
        "responses[0]",
    )
    refused(
        client.post("/v1/reward", json={"context": [], "prompt": "p", "responses": [3]}), 422, "responses[0]"
    )
    no_prompt = {"choices": [{"chosen": SHORT, "rejected": LONG}]}
    refused(client.post("/v1/users/ok/choices", json=no_prompt), 422, "choices[0].prompt")
    headers = {"content-type": "application/json"}
    refused(client.post("/v1/reward", content=b'{"context": [', headers=headers), 422, "body")
    refused(client.post("/v1/reward", content=b"[1, 2]", headers=headers), 422, "body")
    nan = b'{"context": [], "prompt": "p", "responses": ["a"], "user_id": NaN}'
    assert client.post("/v1/reward", content=nan, headers=headers).status_code == 422


def test_text_that_is_not_unicode_and_out_of_range_numbers_are_422s(
    text_run: Path, policy_run: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """JSON's lone-surrogate escapes are valid JSON but not text: refused wherever a string goes, nothing
    stored; so are a seed past torch's range and a JSON-string label past the request limits."""
    policy = npalign.load(str(policy_run))
    store = UserStore(f"sqlite:///{tmp_path / 'u.db'}")
    client = client_for(text_run, store, cache_dir, policy=policy, limits=Limits(max_items=4))
    lone = "tell me \ud800 more"  # json.dumps writes the escape \\ud800, as a client would send it
    label = json.dumps({"context": [{"prompt": "p", "chosen": lone, "rejected": "b"}]})
    cases = [
        ("/v1/reward", {"context": [], "prompt": "p", "responses": [lone]}, "responses[0]"),
        ("/v1/reward", {"context": [], "prompt": lone, "responses": ["a"]}, "prompt"),
        ("/v1/users/ann/choices", {"choices": [{"prompt": "p", "chosen": lone, "rejected": "b"}]},
         "choices[0].chosen"),
        ("/v1/generate", {"context": [], "prompts": [lone]}, "prompts[0]"),
        ("/get_reward", {"query": ["pa"], "prompts": ["p"], "labels": [label]}, "labels[0].context[0].chosen"),
    ]  # fmt: skip
    headers = {"content-type": "application/json"}
    for path, body, field in cases:
        refused(client.post(path, content=json.dumps(body).encode(), headers=headers), 422, field)
    assert store.user("ann") is None
    refused(client.post("/v1/generate", json={"context": [], "prompts": ["p"], "seed": 2**64}), 422, "seed")
    tiny = {"context": [], "prompts": ["p"], "do_sample": True, "temperature": 1e-50}  # 0 in float32: a 500
    refused(client.post("/v1/generate", json=tiny), 422, "temperature")
    too_many = json.dumps({"context": [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 5})
    refused(
        client.post("/get_reward", json={"query": ["pa"], "prompts": ["p"], "labels": [too_many]}),
        422,
        "labels[0].context",
    )


def test_response_of_finds_the_answer_in_what_openrlhf_decodes() -> None:
    chat = "<|im_start|>user\n请解释一下这个函数的作用是什么<|im_end|>\n<|im_start|>assistant\n"
    # a cut inside a character decodes to U+FFFD before the prompt's tail
    assert response_of("\ufffd\ufffd" + chat[19:] + "好的<|im_end|>", chat) == "好的"
    # an answer that repeats the whole (cut) prompt keeps the repeat: the tail comes before the padding rule
    asked = chat[20:] + "You asked: " + chat + " Fine."
    assert response_of(asked, chat) == "You asked: " + chat + " Fine."
    assert response_of("<|endoftext|>" * 2 + chat + "好的<|im_end|><|endoftext|>", chat) == "好的"
    assert response_of(chat + "<|im_end|>", chat) == "<|im_end|>"  # nothing else: scored as it is
    assert response_of("作用是什么<|im_end|>\n<|im_start|>assistant\nhi", chat) is not None  # a 16+ tail
    assert response_of("assistant\nhi", chat) is None  # 10 characters in common: chance


def test_serving_writes_nothing_to_the_embedding_cache(text_run: Path, tmp_path: Path) -> None:
    """Every request's texts are embedded in memory: a shard per request made each later cache open slower."""
    cache = tmp_path / "cache"
    client = client_for(text_run, UserStore(f"sqlite:///{tmp_path / 'u.db'}"), cache)
    ok(client.post("/v1/users/ann/choices", json={"choices": TEXT_CHOICES}))
    ok(client.post("/v1/reward", json={"user_id": "ann", "prompt": PROMPT, "responses": RESPONSES}))
    ok(client.post("/v1/reward", json={"context": TEXT_CHOICES[:1], "prompt": PROMPT, "responses": [SHORT]}))
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))


def test_limits_on_body_items_text_and_choices(
    feature_run: Path, text_run: Path, tmp_path: Path, cache_dir: Path
) -> None:
    limits = Limits(max_body_bytes=2000, max_items=4, max_text_chars=50, max_choices_per_user=3)
    store = UserStore(f"sqlite:///{tmp_path / 'u.db'}", max_choices_per_user=3)
    client = client_for(feature_run, store, limits=limits)
    refused(client.post("/v1/reward", json={"context": [], "responses": [[0.1, 0.2]] * 200}), 413, "body")
    refused(client.post("/v1/reward", json={"context": [], "responses": [[0.1, 0.2]] * 5}), 422, "responses")
    user = new_user()
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES}))
    refused(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES[2:]}), 409, "choices")
    text_client = client_for(text_run, UserStore(f"sqlite:///{tmp_path / 't.db'}"), cache_dir, limits=limits)
    refused(
        text_client.post("/v1/reward", json={"context": [], "prompt": "p", "responses": ["x" * 51]}),
        422,
        "responses[0]",
    )
    refused(
        text_client.post("/v1/reward", json={"context": [], "prompt": "p" * 51, "responses": ["x"]}),
        422,
        "prompt",
    )
    check_limits({"responses": [[0.5] * 384]}, limits)  # a feature vector is as wide as D, not an item limit


def test_injection_strings_are_data_not_sql(text_run: Path, store: UserStore, cache_dir: Path) -> None:
    client = client_for(text_run, store, cache_dir)
    for user_id in ("x'; DROP TABLE npalign_choices; --", "1 OR 1=1", 'a"b', "%", "..", "robert'); --"):
        assert client.get(f"/v1/users/{user_id}").status_code in (404, 422)
        assert client.post(f"/v1/users/{user_id}/choices", json={"choices": TEXT_CHOICES}).status_code in (
            404,
            422,
        )
    user = "o.brien-1:x@y"  # every character class an id may hold
    nasty = "'); DELETE FROM npalign_users; -- \" OR 1=1 /* \\ %s ?"
    choice = {
        "prompt": nasty,
        "chosen": nasty + " yes",
        "rejected": "robert'); DROP TABLE npalign_users;--",
        "choice_id": "q-1",
    }
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": [choice]}))
    _, stored = store.choices(user)
    assert (stored[0].prompt, stored[0].chosen, stored[0].rejected) == (
        choice["prompt"],
        choice["chosen"],
        choice["rejected"],
    )
    assert set(inspect(store.read_engine).get_table_names()) >= {"npalign_users", "npalign_choices"}
    ok(client.post("/v1/reward", json={"user_id": user, "prompt": nasty, "responses": [nasty]}))


def test_api_key_guards_every_route_but_healthz(feature_run: Path, tmp_path: Path) -> None:
    client = client_for(feature_run, UserStore(f"sqlite:///{tmp_path / 'u.db'}"), api_key="s3cret")
    assert ok(client.get("/healthz"))["status"] == "ok"
    body = {"context": [], "responses": [[0.1, 0.2]]}
    refused(client.post("/v1/reward", json=body), 401, "authorization")
    refused(
        client.post("/v1/reward", json=body, headers={"Authorization": "Bearer wrong"}), 401, "authorization"
    )
    refused(client.get("/metrics"), 401, "authorization")
    ok(client.post("/v1/reward", json=body, headers={"Authorization": "Bearer s3cret"}))


def test_healthz_docs_and_metrics(feature_run: Path, tmp_path: Path) -> None:
    client = client_for(feature_run, UserStore(f"sqlite:///{tmp_path / 'u.db'}"))
    assert ok(client.get("/healthz")) == {"status": "ok", "kind": "np-btl", "text": False, "policy": False}
    assert client.get("/docs").status_code == 200
    paths = ok(client.get("/openapi.json"))["paths"]
    assert {"/v1/reward", "/v1/prefer", "/v1/generate", "/get_reward", "/v1/users/{user_id}/choices"} <= set(
        paths
    )
    user = new_user()
    ok(client.post(f"/v1/users/{user}/choices", json={"choices": FEATURE_CHOICES}))
    for _ in range(2):
        ok(client.post("/v1/reward", json={"user_id": user, "responses": [[0.1, 0.2]]}))
    client.post("/v1/reward", json={})
    metrics = client.get("/metrics").text
    assert 'npalign_requests_total{method="POST",route="/v1/reward",status="200"} 2.0' in metrics
    assert 'npalign_requests_total{method="POST",route="/v1/reward",status="422"} 1.0' in metrics
    assert 'npalign_z_cache{result="hit"} 1.0' in metrics
    assert "npalign_request_seconds_bucket" in metrics


# ---------------------------------------------------------------------------------------------------
# TRL and the command line


def test_trl_reward_function_with_the_call_grpo_makes(
    text_run: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """The exact call of trl 1.10's GRPOTrainer._calculate_rewards: prompts, completions, completion_ids, each
    other dataset column as a list, trainer_state, log_extra, log_metric."""
    model = npalign.load(str(text_run), cache_dir=cache_dir)
    assert isinstance(model, TextRewardPredictor)
    url = f"sqlite:///{tmp_path / 'users.db'}"
    UserStore(url).append(
        "alice", ServedModel(model).check_choices([Choice(**c) for c in TEXT_CHOICES], "choices")
    )
    function = reward_function(str(text_run), store=url)
    assert function.__name__ == "npalign_reward"
    z = model.infer_user(
        [c["prompt"] for c in TEXT_CHOICES],
        [c["chosen"] for c in TEXT_CHOICES],
        [c["rejected"] for c in TEXT_CHOICES],
    )
    expected = model.reward(PROMPT, RESPONSES, z).tolist()
    trl_extras = {
        "trainer_state": object(),
        "log_extra": lambda *a, **k: None,
        "log_metric": lambda *a, **k: None,
    }
    by_id = function(
        prompts=[PROMPT] * 4, completions=RESPONSES, completion_ids=[[1, 2]] * 4,
        user_id=["alice"] * 4, answer=["unused"] * 4, **trl_extras,
    )  # fmt: skip
    assert by_id == pytest.approx(expected, abs=1e-5)
    conversational = function(
        prompts=[[{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]] * 4,
        completions=[[{"role": "assistant", "content": r}] for r in RESPONSES],
        completion_ids=[[1]] * 4, context=[json.dumps(TEXT_CHOICES)] * 2 + [TEXT_CHOICES] * 2, **trl_extras,
    )  # fmt: skip
    assert conversational == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="neither a user_id nor a context column"):
        function(prompts=[PROMPT], completions=[SHORT], completion_ids=[[1]], **trl_extras)
    # errors name the row: the empty completion is row 3 (it was named by its place among its user's rows)
    users = {"user_id": ["alice", "bob", "bob", "alice"], "completion_ids": [[1]] * 4}
    with pytest.raises(ValueError, match=r"completions\[3\]: is empty"):
        function(prompts=[PROMPT] * 4, completions=[SHORT, LONG, SHORT, " "], **users, **trl_extras)
    with pytest.raises(ValueError, match="both a user_id and a context column"):
        function(prompts=[PROMPT], completions=[SHORT], user_id=["alice"], context=[[]], **trl_extras)
    with pytest.raises(ValueError, match="the context of row 1 is not JSON"):
        function(prompts=[PROMPT] * 2, completions=[SHORT] * 2, context=["[]", "[{"], **trl_extras)


def test_trl_reward_function_needs_a_text_model(feature_run: Path) -> None:
    with pytest.raises(ValueError, match="trained on feature vectors"):
        reward_function(str(feature_run))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no/such/dir"], "--model no/such/dir: no such directory"),
        (["--model", ".", "--host", "0.0.0.0"], "--host 0.0.0.0 is not a loopback address"),
        (["--model", ".", "--port", "70000"], "--port 70000"),
        (["--model", ".", "--max-items", "0"], "--max-items 0"),
    ],
)
def test_serve_command_one_line_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NPALIGN_API_KEY", raising=False)
    assert main(["serve", *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("npalign serve: error: ") and message in error and "\n" not in error


def test_serve_command_refuses_a_store_it_cannot_open(
    feature_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(feature_run), "--store", "mysql://x"]) == 2
    assert "--store mysql://x" in capsys.readouterr().err
    assert (
        main(["serve", "--model", str(feature_run), "--store", "postgresql+psycopg://nobody@127.0.0.1:1/x"])
        == 2
    )
    assert "cannot open the store" in capsys.readouterr().err
    # each pooled connection would see its own empty database
    for memory in ("sqlite://", "sqlite:///:memory:"):
        assert main(["serve", "--model", str(feature_run), "--store", memory]) == 2
        assert "in-memory SQLite store is not durable" in capsys.readouterr().err


def test_serve_without_the_serve_extra_is_a_one_line_error(
    feature_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as after `pip install -e .`: import uvicorn fails
    assert main(["serve", "--model", str(feature_run)]) == 2
    error = capsys.readouterr().err.strip()
    assert "pip install -e '.[serve]'" in error and "'uvicorn'" in error and "\n" not in error

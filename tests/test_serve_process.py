"""`npalign serve` as a real uvicorn process: kill -9 while clients append, restart, nothing lost (tests).

SQLite always; PostgreSQL (one server, and two servers on one database) when NPALIGN_TEST_POSTGRES_URL
names a server, as `.ci/run` sets it. Nothing is mocked: the server is `python -m npalign.cli.main serve`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from helpers import ServerProcess, http, http_bytes, train_feature_model, train_text_model
from npalign.integrations.trl import reward_function
from npalign.serve.store import UserStore, metadata

POSTGRES = os.environ.get("NPALIGN_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES, reason="NPALIGN_TEST_POSTGRES_URL unset")
pytestmark = pytest.mark.slow  # each test starts one to three server processes
SRC = Path(__file__).resolve().parents[1] / "src"
STABLE = [
    {"chosen": [0.9, 0.1], "rejected": [0.1, 0.9], "choice_id": "s1"},
    {"chosen": [0.8, 0.3], "rejected": [0.2, 0.7], "choice_id": "s2"},
]
ITEMS = [[0.1, 0.2], [0.9, 0.9], [0.5, 0.0], [0.3, 0.7]]
CLIENTS = 8


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_feature_model(tmp_path_factory.mktemp("features") / "run")


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The server runs this checkout's npalign, offline, on one thread (the machine is shared)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def empty_postgres() -> str:
    assert POSTGRES is not None
    engine = create_engine(POSTGRES)
    metadata.drop_all(engine)
    engine.dispose()
    return POSTGRES


class Appenders:
    """8 clients appending one choice per request, each with its own choice_id, until no server is left.

    Clients 0-3 each write to their own user, clients 4-7 all to one shared user (contended row).
    `acknowledged` holds the ids answered 200; `in_flight` the one each client had sent when it failed.
    """

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.acknowledged: dict[str, list[str]] = {}
        self.in_flight: dict[str, tuple[str, dict]] = {}
        self.lock = threading.Lock()
        self.dead: set[str] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(c,), daemon=True) for c in range(CLIENTS)]

    @staticmethod
    def user_of(client: int) -> str:
        return f"client-{client}" if client < 4 else "shared"

    def client(self, index: int) -> None:
        user = self.user_of(index)
        for step in range(10_000):
            if self.stop.is_set():
                return
            choice = {
                "chosen": [index / 10, step / 1000],
                "rejected": [0.5, 0.5],
                "choice_id": f"c{index}-{step}",
            }
            while True:
                alive = [url for url in self.urls if url not in self.dead]
                if not alive:  # no server left: what was sent may or may not be stored
                    with self.lock:
                        self.in_flight[choice["choice_id"]] = (user, choice)
                    return
                url = alive[(index + step) % len(alive)]
                try:
                    status, _ = http(
                        "POST", f"{url}/v1/users/{user}/choices", {"choices": [choice]}, timeout=10
                    )
                    break
                except (
                    OSError
                ):  # that server is gone: resend the same choice to another (as a balancer would)
                    self.dead.add(url)
            assert status == 200
            with self.lock:
                self.acknowledged.setdefault(user, []).append(choice["choice_id"])

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and sum(map(len, self.acknowledged.values())) < count:
            time.sleep(0.05)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


def check_store(url: str, appenders: Appenders) -> None:
    """Every acknowledged choice stored exactly once; positions 0..n-1; num_choices = the rows."""
    store = UserStore(url)
    try:
        for user in {Appenders.user_of(c) for c in range(CLIENTS)}:
            record, stored = store.choices(user)
            ids = [c.choice_id for c in stored]
            if record is None:  # none of this client's appends had committed when the server died
                assert not stored and not appenders.acknowledged.get(user), f"{user}: acknowledged but lost"
                continue
            assert record.num_choices == len(stored)
            assert max(Counter(ids).values()) == 1, f"{user}: a choice stored twice"
            missing = set(appenders.acknowledged.get(user, [])) - set(ids)
            assert not missing, f"{user}: acknowledged but lost: {sorted(missing)[:5]}"
        with store.read_engine.connect() as connection:
            positions = connection.exec_driver_sql(
                "SELECT user_id, COUNT(*), MIN(position), MAX(position) FROM npalign_choices GROUP BY user_id"
            ).all()
        for user, count, low, high in positions:
            assert (low, high) == (0, count - 1), user
    finally:
        store.close()


def rewards(url: str, user: str) -> list[float]:
    status, body = http("POST", f"{url}/v1/reward", {"user_id": user, "responses": ITEMS})
    assert status == 200, body
    return body["rewards"]


def crash_and_restart(run: Path, store: str, env: dict[str, str], replicas: int) -> None:
    servers = [ServerProcess(run, store, env) for _ in range(replicas)]
    try:
        status, _ = http("POST", f"{servers[0].url}/v1/users/stable/choices", {"choices": STABLE})
        assert status == 200
        before = [rewards(server.url, "stable") for server in servers]
        assert all(r == before[0] for r in before)
        appenders = Appenders([server.url for server in servers])
        appenders.start()
        appenders.wait_for(40)
        servers[0].kill()  # mid-stream: some requests are in flight, some acknowledged
        if replicas > 1:  # the clients carry on through the other replica
            appenders.wait_for(sum(map(len, appenders.acknowledged.values())) + 20)
            appenders.stop.set()
        appenders.join()
        servers[0] = ServerProcess(run, store, env)
        check_store(store, appenders)
        for server in servers:
            assert rewards(server.url, "stable") == before[0], "rewards changed across the crash"
        if replicas > 1:  # both replicas see every client's latest choices
            for user in ("shared", "client-0"):
                assert rewards(servers[0].url, user) == rewards(servers[1].url, user)
        for choice_id, (
            user,
            choice,
        ) in appenders.in_flight.items():  # clients retry what they never heard back
            status, _ = http("POST", f"{servers[0].url}/v1/users/{user}/choices", {"choices": [choice]})
            assert status == 200, choice_id
            status, _ = http("POST", f"{servers[0].url}/v1/users/{user}/choices", {"choices": [choice]})
            assert status == 200, choice_id
            appenders.acknowledged.setdefault(user, []).append(choice_id)
        check_store(store, appenders)
    finally:
        for server in servers:
            server.kill()


def test_kill_9_on_sqlite_loses_no_acknowledged_choice(
    feature_run: Path, env: dict[str, str], tmp_path: Path
) -> None:
    crash_and_restart(feature_run, f"sqlite:///{tmp_path / 'users.db'}", env, replicas=1)


@needs_postgres
def test_kill_9_on_postgres_loses_no_acknowledged_choice(feature_run: Path, env: dict[str, str]) -> None:
    crash_and_restart(feature_run, empty_postgres(), env, replicas=1)


@needs_postgres
def test_two_servers_on_one_postgres_survive_a_kill_9(feature_run: Path, env: dict[str, str]) -> None:
    crash_and_restart(feature_run, empty_postgres(), env, replicas=2)


def test_trl_reward_function_through_a_server(env: dict[str, str], tmp_path: Path) -> None:
    """The TRL callable with a URL posts to /get_reward and gets what the in-process callable computes; a
    batch whose contexts make it larger than the server's body limit is sent in parts; a body past the limit
    is answered 413 (its rest read and dropped), not cut off with a connection reset."""
    cache = tmp_path / "cache"
    run = train_text_model(tmp_path / "text" / "run", cache)
    server = ServerProcess(run, f"sqlite:///{tmp_path / 'users.db'}", env)
    try:
        context = [
            {"prompt": "question 1: tell me", "chosen": "the cat", "rejected": "a warm mat while rain fell"}
        ]
        status, _ = http("POST", f"{server.url}/v1/users/alice/choices", {"choices": context})
        assert status == 200
        prompts, completions = (
            ["question 2: why"] * 3,
            ["the cat sat", "rain fell over quiet hills and far", "no"],
        )
        remote = reward_function(server.url)
        local = reward_function(str(run))
        extras = {"completion_ids": [[1]] * 3, "trainer_state": None, "log_extra": None, "log_metric": None}
        by_id = remote(prompts=prompts, completions=completions, user_id=["alice"] * 3, **extras)
        inline = local(prompts=prompts, completions=completions, context=[context] * 3, **extras)
        assert by_id == pytest.approx(inline, abs=1e-5)
        with pytest.raises(ValueError, match="answered 404"):
            remote(prompts=prompts[:1], completions=completions[:1], user_id=["nobody"], **extras)

        # 256 rows, each with a context of 16 choices of ~600 characters: one body would be ~5.2 MB (limit 4 MiB)
        long = [{"prompt": f"question {i}: " + "tell me more " * 20, "chosen": "the cat " * 75,
                 "rejected": f"rain fell {i} " * 55} for i in range(16)]  # fmt: skip
        many = 256
        rows = {"prompts": prompts[:1] * many, "completions": (completions * many)[:many]}
        extras = {**extras, "completion_ids": [[1]] * many}
        split = remote(**rows, context=[long] * many, **extras)
        assert split == pytest.approx(local(**rows, context=[long] * many, **extras), abs=1e-5)

        oversized = json.dumps({"responses": ["x" * 1000] * 8000, "context": []}).encode()  # 8 MB
        status, body = http_bytes("POST", f"{server.url}/v1/reward", oversized)
        assert status == 413 and body["field"] == "body", body
    finally:
        server.kill()

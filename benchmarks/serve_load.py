"""Load and faults of `npalign serve` (issue 20): latency/throughput at concurrency 1/8/64, kill -9 recovery.

Load, on localhost, `--seconds` per setting (60; `--quick`: 3): p50 / p99 latency and throughput of
`/v1/reward` (16 responses for a user with 10 stored choices) for a feature model and a minilm text model,
and of `/get_reward` (16 queries, the user named in each label), at concurrency 1, 8 and 64, with the
failed requests counted. The baseline is the same call in process through `npalign.load` (z inferred
once, as the server caches it). Text requests carry fresh responses each time (as RLHF rollouts do), so
both sides run minilm on 16 new texts per call (the server embeds texts without the disk cache; the
baseline is `npalign.load` without a cache folder, the same path).

Faults: 8 clients append choices (each with a choice_id) while the server is killed with SIGKILL; the
server restarts on the same store; every acknowledged choice must be stored exactly once, positions
must be contiguous, and the user's rewards must equal those before the kill. Then the same with two
servers on one PostgreSQL (`--postgres URL`, default $NPALIGN_TEST_POSTGRES_URL; skipped when unset),
the clients moving to the surviving replica.

    python benchmarks/serve_load.py --quick            # seconds per setting: 3
    python benchmarks/serve_load.py                    # the full run, ~15 min; writes benchmarks/results/serve/
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import npalign
from npalign.config import RewardTrainConfig, load_config
from npalign.data.loaders import load_preferences, split_by_user
from npalign.data.synthetic import generate, task_spec
from npalign.embedding.features import embed_preferences
from npalign.serve.store import UserStore, metadata
from npalign.training.reward import train_reward_model

REPO = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a warm mat while rain fell over quiet hills and rivers ran far away".split()  # noqa: SIM905
TRAIN = [
    "model.encoder_depth=2",  # the release's shape, as measured (the library's defaults are 4 and 3)
    "model.decoder_depth=1",
    "optim.steps=20",
    "optim.warmup_steps=0",
    "eval.val_every=20",
    "eval.val_episodes=8",
    "run.progress=false",
]
CONCURRENCY = (1, 8, 64)
RESPONSES = 16
CHOICES = 10


# ----- models --------------------------------------------------------------------------------------


def feature_model(folder: Path) -> Path:
    """The paper1d NP-BTL at its release sizes (configs/reward/np_btl_paper1d.yaml), briefly trained."""
    data = generate(task_spec("paper1d", num_pairs=2000, num_users=40), seed=0)
    train, val, _ = split_by_user(data, (0.8, 0.1, 0.1), seed=0)
    cfg = load_config(RewardTrainConfig, REPO / "configs/reward/np_btl_paper1d.yaml", overrides=TRAIN)
    train_reward_model(cfg, train, val, folder / "features")
    return folder / "features"


def sentence(seed: int, length: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * (seed % 5 + 1)) % len(WORDS)] for i in range(length)) + f" {seed}"


def text_model(folder: Path, cache: Path) -> Path:
    """An NP-BTL over minilm embeddings (hidden 64, latent 16), briefly trained on concise/verbose users."""
    rows = []
    for p in range(24):
        for user in range(4):
            for k in range(3):
                short, long = sentence(p * 10 + k, 3), sentence(p * 10 + k + 5, 12)
                chosen, rejected = (short, long) if user % 2 else (long, short)
                rows.append({"user_id": f"u{user}", "prompt": f"question {p}", "chosen": chosen, "rejected": rejected,
                             "split": "train" if p < 18 else "validation"})  # fmt: skip
    path = folder / "texts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = embed_preferences(load_preferences(path, split="train")[0], "minilm", cache_dir=cache)
    val = embed_preferences(load_preferences(path, split="validation")[0], "minilm", cache_dir=cache)
    overrides = [*TRAIN, "model.kind=np-btl", "model.hidden_dim=64", "model.latent_dim=16", "embedder=minilm",
                 "eval.contexts=[0,1]", "eval.targets=2", "episodes.targets=2", "episodes.max_context=3"]  # fmt: skip
    train_reward_model(load_config(RewardTrainConfig, overrides=overrides), train, val, folder / "text")
    return folder / "text"


# ----- a server process ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, run: Path, store: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "npalign.cli.main", "serve", "--model", str(run), "--store", store,
                   "--port", str(self.port)]  # fmt: skip
        self.log = log.open("ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, env=os.environ.copy())
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited; see {log}")
            try:
                if request("GET", self.url, "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("no /healthz within 180 s")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()


def request(method: str, url: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ----- load ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def load(url: str, path: str, body_of: Any, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` clients on keep-alive connections POST for `seconds`; latencies of the 200s, failures."""
    port = int(url.rsplit(":", 1)[1])
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad, step = [], 0, 0
        while time.perf_counter() < stop:
            payload = json.dumps(body_of(index, step)).encode()
            step += 1
            started = time.perf_counter()
            try:
                connection.request("POST", path, payload, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    mine.append(time.perf_counter() - started)
                else:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.close()
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    for step in range(3):  # warm-up: the first request builds the embedder and infers the user's z
        assert request("POST", url, path, body_of(-1, -1 - step))[0] == 200
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency, "requests": len(latencies), "failed": failures[0],
        "p50_ms": round(1000 * percentile(latencies, 0.5), 2), "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "throughput_rps": round(len(latencies) / elapsed, 1),
    }  # fmt: skip


def in_process(call: Any, seconds: float) -> dict[str, Any]:
    for step in range(3):  # warm-up: the first call builds the embedder
        call(-1 - step)
    latencies = []
    stop = time.perf_counter() + seconds
    step = 0
    while time.perf_counter() < stop:
        started = time.perf_counter()
        call(step)
        latencies.append(time.perf_counter() - started)
        step += 1
    return {"calls": len(latencies), "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2)}  # fmt: skip


def run_load(feature_run: Path, text_run: Path, folder: Path, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"server": [], "in_process": {}}
    generator = torch.Generator().manual_seed(0)

    # feature model: items are 1-d vectors here (paper1d)
    model = npalign.load(str(feature_run))
    width = model.embed_dim
    choices = [{"chosen": torch.rand(width, generator=generator).tolist(),
                "rejected": torch.rand(width, generator=generator).tolist(), "choice_id": f"c{i}"}
               for i in range(CHOICES)]  # fmt: skip
    items = torch.rand(RESPONSES, width, generator=generator)
    z = model.infer_user(
        torch.tensor([c["chosen"] for c in choices]), torch.tensor([c["rejected"] for c in choices])
    )
    results["in_process"]["feature /v1/reward"] = in_process(lambda _: model.reward(items, z), seconds)
    server = Server(feature_run, f"sqlite:///{folder / 'feature.db'}", folder / "server.log")
    try:
        assert request("POST", server.url, "/v1/users/bench/choices", {"choices": choices})[0] == 200
        body = {"user_id": "bench", "responses": items.tolist()}
        for concurrency in CONCURRENCY:
            row = load(server.url, "/v1/reward", lambda i, s: body, concurrency, seconds)
            results["server"].append({"model": "feature (paper1d NP-BTL)", "endpoint": "/v1/reward", **row})
            print(json.dumps(results["server"][-1]), flush=True)
    finally:
        server.kill()

    # text model: fresh responses every request, as rollouts are
    text = npalign.load(str(text_run))  # responses skip the disk cache, as in the server (serve/served.py)
    text_choices = [{"prompt": f"question {i}", "chosen": sentence(900 + i, 3), "rejected": sentence(950 + i, 12),
                     "choice_id": f"t{i}"} for i in range(CHOICES)]  # fmt: skip
    prompt = "question 7"

    def responses(client: int, step: int, side: str) -> list[str]:
        return [f"{sentence(step + k, 3 + k % 9)} {side} {client}-{step}-{k}" for k in range(RESPONSES)]

    text_z = text.infer_user([c["prompt"] for c in text_choices], [c["chosen"] for c in text_choices],
                             [c["rejected"] for c in text_choices])  # fmt: skip
    results["in_process"]["minilm /v1/reward"] = in_process(
        lambda s: text.reward(prompt, responses(-1, s, "baseline"), text_z), seconds
    )
    server = Server(text_run, f"sqlite:///{folder / 'text.db'}", folder / "server.log")
    try:
        assert request("POST", server.url, "/v1/users/bench/choices", {"choices": text_choices})[0] == 200
        for concurrency in CONCURRENCY:
            row = load(server.url, "/v1/reward",
                       lambda i, s, c=concurrency: {"user_id": "bench", "prompt": prompt,
                                                    "responses": responses(i, s, f"reward{c}")},
                       concurrency, seconds)  # fmt: skip
            results["server"].append({"model": "text (minilm NP-BTL)", "endpoint": "/v1/reward", **row})
            print(json.dumps(results["server"][-1]), flush=True)
        for concurrency in CONCURRENCY:

            def get_reward(i: int, s: int, c: int = concurrency) -> dict[str, Any]:
                answers = responses(i, s, f"get{c}")
                return {"query": [prompt + a for a in answers], "prompts": [prompt] * RESPONSES,
                        "labels": [{"user_id": "bench"}] * RESPONSES}  # fmt: skip

            row = load(server.url, "/get_reward", get_reward, concurrency, seconds)
            results["server"].append({"model": "text (minilm NP-BTL)", "endpoint": "/get_reward", **row})
            print(json.dumps(results["server"][-1]), flush=True)
    finally:
        server.kill()
    for name, baseline in results["in_process"].items():
        at_one = next(r for r in results["server"] if r["concurrency"] == 1 and name.split()[0] in r["model"]
                      and r["endpoint"] == "/v1/reward")  # fmt: skip
        baseline["server_p50_ratio_at_1"] = round(at_one["p50_ms"] / baseline["p50_ms"], 2)
    return results


# ----- faults --------------------------------------------------------------------------------------


def faults(run: Path, store: str, folder: Path, replicas: int) -> dict[str, Any]:
    """kill -9 the first server while 8 clients append; restart it; check the store and the rewards."""
    servers = [Server(run, store, folder / "server.log") for _ in range(replicas)]
    stable = [
        {"chosen": [0.2], "rejected": [0.8], "choice_id": "s1"},
        {"chosen": [0.4], "rejected": [0.1], "choice_id": "s2"},
    ]
    probe = {"user_id": "stable", "responses": [[0.1], [0.5], [0.9]]}
    assert request("POST", servers[0].url, "/v1/users/stable/choices", {"choices": stable})[0] == 200
    before = request("POST", servers[-1].url, "/v1/reward", probe)[1]["rewards"]
    acknowledged: dict[str, list[str]] = {}
    in_flight: list[tuple[str, dict[str, Any]]] = []
    dead: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()
    urls = [s.url for s in servers]

    def client(index: int) -> None:
        user = f"client-{index}" if index < 4 else "shared"
        for step in range(100_000):
            if stop.is_set():
                return
            choice = {"chosen": [index / 10], "rejected": [step / 1e5], "choice_id": f"c{index}-{step}"}
            while True:
                alive = [u for u in urls if u not in dead]
                if not alive:
                    with lock:
                        in_flight.append((user, choice))
                    return
                url = alive[(index + step) % len(alive)]
                try:
                    status, _ = request(
                        "POST", url, f"/v1/users/{user}/choices", {"choices": [choice]}, timeout=10
                    )
                    break
                except OSError:
                    dead.add(url)
            if status == 200:
                with lock:
                    acknowledged.setdefault(user, []).append(choice["choice_id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 120
    while sum(map(len, acknowledged.values())) < 200 and time.time() < deadline:
        time.sleep(0.05)
    servers[0].kill()
    killed_after = sum(map(len, acknowledged.values()))
    if replicas > 1:
        time.sleep(2)
        stop.set()
    for thread in threads:
        thread.join()
    servers[0] = Server(run, store, folder / "server.log")
    after = [request("POST", s.url, "/v1/reward", probe)[1]["rewards"] for s in servers]
    for user, choice in in_flight:  # the clients retry what they never heard back about, twice
        for _ in range(2):
            assert (
                request("POST", servers[0].url, f"/v1/users/{user}/choices", {"choices": [choice]})[0] == 200
            )
        acknowledged.setdefault(user, []).append(choice["choice_id"])
    users = UserStore(store)
    lost = duplicated = stored = 0
    contiguous = True
    for user, ids in acknowledged.items():
        record, rows = users.choices(user)
        counts = Counter(c.choice_id for c in rows)
        stored += len(rows)
        lost += len(set(ids) - set(counts))
        duplicated += sum(n - 1 for n in counts.values())
        contiguous &= record is not None and record.num_choices == len(rows)
    with users.read_engine.connect() as connection:
        spans = connection.exec_driver_sql(
            "SELECT COUNT(*), MIN(position), MAX(position) FROM npalign_choices GROUP BY user_id"
        ).all()
    contiguous &= all((low, high) == (0, count - 1) for count, low, high in spans)
    users.close()
    for server in servers:
        server.kill()
    return {
        "store": store.split(":", 1)[0], "replicas": replicas, "acknowledged_before_kill": killed_after,
        "acknowledged": sum(map(len, acknowledged.values())), "in_flight_at_kill": len(in_flight),
        "stored": stored, "lost": lost, "duplicated": duplicated, "consistent": contiguous,
        "rewards_equal_after_restart": all(a == before for a in after),
    }  # fmt: skip


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    postgres = any(fault["replicas"] > 1 for fault in results["faults"])
    lines = [
        "# npalign serve: load and faults",
        "",
        f"{results['machine']}; {results['torch_threads']} torch thread(s) per process; "
        f"{results['seconds_per_setting']} s per setting"
        f"{' (--quick)' if results['quick'] else ''}. Rerun: `python benchmarks/serve_load.py"
        f"{' --quick' if results['quick'] else ''}{' --postgres URL' if postgres else ''}`"
        f"{' (two servers on one PostgreSQL too)' if postgres else ''}.",
        "",
        "| model | endpoint | concurrency | requests | failed | p50 ms | p99 ms | requests/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["load"]["server"]:
        lines.append(f"| {r['model']} | {r['endpoint']} | {r['concurrency']} | {r['requests']} | {r['failed']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} |")  # fmt: skip
    lines += ["", "In process through `npalign.load` (same 16 responses per call, z inferred once):", "",
              "| call | p50 ms | p99 ms | server p50 / in-process p50 at concurrency 1 |", "|---|---:|---:|---:|"]  # fmt: skip
    for name, r in results["load"]["in_process"].items():
        lines.append(f"| {name} | {r['p50_ms']} | {r['p99_ms']} | {r.get('server_p50_ratio_at_1', '')} |")
    failed_at_64 = sum(r["failed"] for r in results["load"]["server"] if r["concurrency"] == 64)
    ratios = {name: r.get("server_p50_ratio_at_1") for name, r in results["load"]["in_process"].items()}
    lines += [
        "",
        f"Targets: zero failed requests at concurrency 64: {'met' if failed_at_64 == 0 else 'NOT met'} "
        f"({failed_at_64} failed). Server latency within 1.3x of in process at concurrency 1: "
        + "; ".join(
            f"{name}: {ratio}x, {'met' if ratio is not None and ratio <= 1.3 else 'NOT met'}"
            for name, ratio in ratios.items()
        )  # fmt: skip
        + ". A call that takes well under a millisecond in process (the feature model) cannot stay within "
        "1.3x of itself once HTTP, JSON and a store lookup (about a millisecond on an idle core) are added.",
    ]
    lines += ["", "Faults (kill -9 of a server while 8 clients append; restart on the same store):", "",
              "| store | servers | acknowledged | in flight at kill | stored | lost | duplicated | consistent | rewards equal |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for f in results["faults"]:
        lines.append(f"| {f['store']} | {f['replicas']} | {f['acknowledged']} | {f['in_flight_at_kill']} | {f['stored']} | "
                     f"{f['lost']} | {f['duplicated']} | {f['consistent']} | {f['rewards_equal_after_restart']} |")  # fmt: skip
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per setting instead of 60, for checking")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument(
        "--postgres", default=os.environ.get("NPALIGN_TEST_POSTGRES_URL"), help="a PostgreSQL URL"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/serve"))
    parser.add_argument("--note", default="", help="a note on the machine, written into the results")
    parser.add_argument("--report", default=None, help="only rewrite README.md from this results.json")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads, in process and in each server (1)"
    )
    args = parser.parse_args()
    if args.report:
        write(json.loads(Path(args.report).read_text()), Path(args.out))
        return
    # The same thread count on both sides of the comparison; on a small shared machine more threads mostly
    # wait on each other (see tests/conftest.py, one_thread).
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    seconds = args.seconds or (3.0 if args.quick else 60.0)
    folder = Path(tempfile.mkdtemp(prefix="npalign_serve_bench_"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    feature_run = feature_model(folder)
    text_run = text_model(folder, folder / "cache")
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        + (f"; {args.note}" if args.note else ""),
        "quick": args.quick, "seconds_per_setting": seconds, "torch_threads": args.threads, "responses_per_request": RESPONSES,
        "stored_choices": CHOICES,
    }  # fmt: skip
    results["load"] = run_load(feature_run, text_run, folder, seconds)
    results["faults"] = [faults(feature_run, f"sqlite:///{folder / 'faults.db'}", folder, replicas=1)]
    if args.postgres:
        engine_store = UserStore(args.postgres)
        metadata.drop_all(engine_store.engine)
        engine_store.close()
        results["faults"].append(faults(feature_run, args.postgres, folder, replicas=2))
    print(json.dumps(results["faults"], indent=1))
    write(results, Path(args.out))
    print(f"wrote {args.out}/results.json and README.md")


if __name__ == "__main__":
    main()

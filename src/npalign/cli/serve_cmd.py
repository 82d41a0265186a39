"""`npalign serve`: a reward (and policy) server over HTTP with a durable user store (L4, cli).

Usage:
    npalign serve --model DIR [--policy DIR] [--store URL] [--host 127.0.0.1] [--port 8000]
                  [--api-key KEY] [--max-items N] [--max-body-bytes N] [--max-text-chars N]
                  [--max-choices-per-user N]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from npalign.cli.common import Command, add_commands

DEFAULT_STORE = "sqlite:///npalign_users.db"


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reward model run directory (npalign train-reward)")
    parser.add_argument(
        "--policy", default=None, help="policy run directory (npalign train-dpo) for /v1/generate"
    )
    parser.add_argument(
        "--store", default=DEFAULT_STORE, help=f"user store URL: sqlite:///FILE or postgresql+psycopg://... "
        f"(default {DEFAULT_STORE})",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key", default=None, help="bearer token every route but /healthz needs (or env NPALIGN_API_KEY); "
        "required for a non-loopback --host",
    )  # fmt: skip
    parser.add_argument("--max-items", type=int, default=None, help="entries per list in a request (256)")
    parser.add_argument("--max-body-bytes", type=int, default=None, help="request body size (4 MiB)")
    parser.add_argument("--max-text-chars", type=int, default=None, help="characters per string (20000)")
    parser.add_argument(
        "--max-choices-per-user", type=int, default=None, help="choices stored per user (1000)"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve` to the main parser's subcommands; the parsed args carry `func`."""
    add_commands(subparsers, [Command("serve", run_serve, _serve_flags)])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """serve a reward model (and policy) over HTTP: /v1/reward, /get_reward, users' choices stored

    Serve a reward model (feature or text) and optionally a policy over HTTP (FastAPI + uvicorn; docs at
    /docs, /healthz, Prometheus /metrics). Users' choices live in the store (SQLite by default,
    PostgreSQL for several replicas) and are on disk before a request is answered. OpenRLHF:
    --reward.remote_url http://HOST:PORT/get_reward with each sample's label naming its user.
    """
    api_key = args.api_key or os.environ.get("NPALIGN_API_KEY") or None
    if not is_loopback(args.host) and api_key is None:
        raise ValueError(
            f"--host {args.host} is not a loopback address; set --api-key KEY (or NPALIGN_API_KEY) so that "
            "only clients with the key are answered."
        )
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: use 0-65535.")
    for flag in ("max_items", "max_body_bytes", "max_text_chars", "max_choices_per_user"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {value}: use 1 or more.")
    for flag in ("model", "policy"):
        folder = getattr(args, flag)
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"--{flag} {folder}: no such directory; pass a run directory.")

    try:
        import uvicorn
        from sqlalchemy.exc import SQLAlchemyError
    except ModuleNotFoundError as error:  # `pip install -e .` leaves the server's packages out
        raise ValueError(
            f"npalign serve needs {error.name!r}, from the serve extra: pip install -e '.[serve]' in the checkout."
        ) from None

    from npalign.inference.api import load
    from npalign.inference.policy import PolicyRunner
    from npalign.serve.app import create_app
    from npalign.serve.schemas import Limits
    from npalign.serve.served import ServedModel
    from npalign.serve.store import UserStore, shown_url

    limits = Limits(
        **{
            name: getattr(args, name)
            for name in ("max_items", "max_body_bytes", "max_text_chars", "max_choices_per_user")
            if getattr(args, name) is not None
        }
    )
    predictor = load(args.model)  # texts are embedded in memory (served.py), never through the disk cache
    if isinstance(predictor, PolicyRunner):
        raise ValueError(
            f"--model {args.model} is a policy run; pass it as --policy and a reward model as --model."
        )
    policy = None
    if args.policy is not None:
        loaded = load(args.policy)
        if not isinstance(loaded, PolicyRunner):
            raise ValueError(
                f"--policy {args.policy} is a reward model run; pass a policy (npalign train-dpo)."
            )
        policy = loaded
    try:
        store = UserStore(args.store, max_choices_per_user=limits.max_choices_per_user)
    except SQLAlchemyError as error:
        raise ValueError(
            f"--store {shown_url(args.store)}: cannot open the store ({error.__class__.__name__}: {error})."
        ) from None
    app = create_app(ServedModel(predictor, policy), store, api_key=api_key, limits=limits)
    print(
        f"npalign serve: {predictor.kind} model on http://{args.host}:{args.port} (docs at /docs), store "
        f"{store.engine.url.render_as_string(hide_password=True)}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0

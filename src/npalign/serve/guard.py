"""The outermost ASGI layer of `npalign serve`: the API key, the body-size limit, and request metrics (L3, serve).

`create_app` wraps its FastAPI app in a `Guard`, so no route ever sees an unauthorised request or a body
past the limit; refusals are the same {"error", "field"} JSON as the routes' own.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_BYTES = 64 * 1024 * 1024  # a refused body up to this size is read (and dropped) before the 413
OPEN_PATHS = ("/healthz",)  # answered without the API key (load balancers' health checks)


def error_response(status: int, field: str, message: str) -> JSONResponse:
    """A refusal as npalign serve answers every one: {"error": "FIELD: message", "field": FIELD}."""
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status)


class Guard:
    """Outermost ASGI layer: the API key, the body-size limit, and the request metrics.

    The body is read here up to the limit (a larger Content-Length is refused before reading), so no
    route ever sees a request past `max_body_bytes`.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        status_seen = [500]

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = int(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None and refusal.status_code == 413:
                await self._drain(receive, 0)
            if refusal is None:
                body, refusal = await self._read_body(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_and_count)
                return
            replayed = [False]

            async def replay() -> Message:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_and_count)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"  # never the raw path: clients choose it
            self.metrics.requests.labels(label, scope.get("method", ""), str(status_seen[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)

    def _refusal(self, scope: Scope, path: str) -> JSONResponse | None:
        if self.api_key is not None and path not in OPEN_PATHS:
            headers = dict(scope.get("headers", []))
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return error_response(
                    401, "authorization", "send the server's API key as 'Authorization: Bearer KEY'."
                )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit():
                    return error_response(400, "content-length", "is not a number.")
                if int(value) > self.max_body_bytes:
                    return error_response(
                        413,
                        "body",
                        f"is {int(value)} bytes; this server takes at most {self.max_body_bytes}.",
                    )
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, JSONResponse | None]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", error_response(
                    400, "body", "the client disconnected before sending the whole body."
                )
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                return b"", error_response(
                    413, "body", f"is over {self.max_body_bytes} bytes, the most this server takes."
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    @staticmethod
    async def _drain(receive: Receive, size: int) -> None:
        """Read and drop the rest of a refused body (up to DRAIN_BYTES in all), so that the client, still
        sending, reads the 413 instead of a connection reset; a larger body is cut off unread."""
        while size <= DRAIN_BYTES:
            message = await receive()
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "npalign_requests", "HTTP requests by route, method and status", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "npalign_request_seconds", "request latency by route", ["route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )  # fmt: skip
        self.cache = Gauge(
            "npalign_z_cache", "z cache lookups since start", ["result"], registry=self.registry
        )
        self.items = Counter("npalign_items_scored", "responses scored", registry=self.registry)

"""The HTTP API of `npalign serve`: FastAPI routes over `ServedModel` and `UserStore` (L3, serve).

    app = create_app(ServedModel(npalign.load("runs/np_btl")), UserStore("sqlite:///users.db"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes are thin: validate, look the user up, call the predictor. Every bad request is a 4xx whose JSON
body is {"error": message, "field": the part of the request at fault}; a 500 is a bug. Appended choices
are committed before the 200 goes out. With an API key every route but /healthz needs
`Authorization: Bearer KEY`.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from npalign import __version__
from npalign.serve.guard import ASGIApp, Guard, Metrics, error_response
from npalign.serve.schemas import (
    ID_PATTERN,
    AppendChoices,
    AppendResponse,
    ErrorResponse,
    FieldError,
    GenerateRequest,
    GenerateResponse,
    GetRewardRequest,
    GetRewardResponse,
    Limits,
    NextQueryRequest,
    NextQueryResponse,
    PreferRequest,
    PreferResponse,
    RewardRequest,
    RewardResponse,
    UserRequest,
    UserResponse,
    check_text,
    field_of,
    response_of,
    user_from_label,
)
from npalign.serve.served import ServedModel, UnknownUser
from npalign.serve.store import ChoiceConflict, StoredChoice, TooManyChoices, UserStore

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 409, 413, 422)
}


def check_limits(value: Any, limits: Limits, field: str = "") -> None:
    """Every list at most `max_items` long and every string Unicode text of at most `max_text_chars`, naming
    the first past.

    A list of numbers is a feature vector, whose width the model checks (D may well exceed `max_items`).
    """
    if isinstance(value, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return
    if isinstance(value, str):
        check_text(value, field or "body")
        if len(value) > limits.max_text_chars:
            raise FieldError(
                field or "body", f"has {len(value)} characters; the limit is {limits.max_text_chars}."
            )
    elif isinstance(value, list):
        if len(value) > limits.max_items:
            raise FieldError(
                field or "body", f"has {len(value)} entries; the limit is {limits.max_items} per request."
            )
        for index, item in enumerate(value):
            check_limits(item, limits, f"{field}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_limits(item, limits, f"{field}.{key}" if field else str(key))


def create_app(
    served: ServedModel,
    store: UserStore,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
) -> ASGIApp:
    """The ASGI app: FastAPI routes (OpenAPI docs at /docs) inside the `Guard` layer.

    Args:
        served: the reward model (and policy) to answer with.
        store: where users' choices live.
        api_key: when given, every route but /healthz needs `Authorization: Bearer api_key`.
        limits: request limits (default `Limits()`).
    """
    limits = limits or Limits()
    metrics = Metrics()
    app = FastAPI(
        title="npalign",
        version=__version__,
        description="Personalised rewards and generation for users known by a few pairwise choices.",
    )
    app.state.served, app.state.store, app.state.limits = served, store, limits

    @app.exception_handler(FieldError)
    async def on_field_error(_: Request, error: FieldError) -> JSONResponse:
        return error_response(error.status, error.field, error.message)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": "body", "message": f"is not valid JSON (at character {e.get('loc', ('', '?'))[-1]})."}
            if e.get("type") == "json_invalid"
            else {"field": field_of(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in error.errors()
        ]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        response = error_response(422, first["field"], first["message"])
        response.body = json.dumps({**json.loads(bytes(response.body)), "errors": problems}).encode()
        response.headers["content-length"] = str(len(response.body))
        return response

    @app.exception_handler(Exception)
    async def on_bug(_: Request, error: Exception) -> JSONResponse:
        logger.exception("a request failed inside the server: a bug", exc_info=error)
        return JSONResponse(
            {"error": f"internal error ({type(error).__name__}); please report it", "field": ""}, 500
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(
            error.status_code, "path" if error.status_code in (404, 405) else "body", str(error.detail)
        )

    def user_latent(request: UserRequest, job: str) -> tuple[Any, int]:
        """(z, number of choices) of the user a request names by user_id or inline context."""
        if (request.user_id is None) == (request.context is None):
            raise FieldError("user_id", "send either user_id (a stored user) or context (a list of choices).")
        if request.context is not None:
            choices = served.check_choices(request.context, "context")
            if job == "reward":
                return served.latent(choices), len(choices)
            return served.policy_latent(choices), len(choices)
        try:
            return served.cached(job, request.user_id or "", store)
        except UnknownUser:
            raise FieldError(
                "user_id", f"{request.user_id!r} is not a stored user; append choices first.", status=404
            ) from None

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """200 once the model is loaded (the app exists only after it is)."""
        return {"status": "ok", "kind": served.kind, "text": served.text, "policy": served.policy is not None}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        metrics.cache.labels("hit").set(served.cache_hits)
        metrics.cache.labels("miss").set(served.cache_misses)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    user_path = Path(pattern=ID_PATTERN, max_length=128, description="1-128 letters, digits, . _ : @ -")

    @app.post("/v1/users/{user_id}/choices", responses=ERRORS)
    def append_choices(body: AppendChoices, user_id: str = user_path) -> AppendResponse:
        """Append choices to a user (created on the first); committed before the answer. A choice_id sent
        again with the same content is not stored twice, so a client may retry."""
        check_limits(body.model_dump(), limits)
        if not body.choices:
            raise FieldError("choices", "is empty; send at least one choice.")
        choices: list[StoredChoice] = served.check_choices(body.choices, "choices")
        try:
            record = store.append(user_id, choices)
        except ChoiceConflict as error:
            raise FieldError(f"choices[{error.index}].choice_id", str(error), status=409) from None
        except TooManyChoices as error:
            raise FieldError("choices", str(error), status=409) from None
        return AppendResponse(user_id=user_id, num_choices=record.num_choices)

    @app.get("/v1/users/{user_id}", responses=ERRORS)
    def get_user(user_id: str = user_path) -> UserResponse:
        """A stored user: how many choices, their revision, and the reward model's z for them."""
        try:  # the revision and count z was computed from, even if choices were appended since
            (latent, num_choices), revision = served.cached_with_revision("reward", user_id, store)
        except UnknownUser:
            raise FieldError("user_id", f"{user_id!r} is not a stored user.", status=404) from None
        z, scale = served.describe_latent(latent)
        return UserResponse(
            user_id=user_id, num_choices=num_choices, revision=revision, kind=served.kind, z=z,
            posterior_scale=scale,
        )  # fmt: skip

    @app.delete("/v1/users/{user_id}", responses=ERRORS)
    def delete_user(user_id: str = user_path) -> dict[str, Any]:
        """Forget a user and all their choices."""
        if not store.delete(user_id):
            raise FieldError("user_id", f"{user_id!r} is not a stored user.", status=404)
        return {"user_id": user_id, "deleted": True}

    @app.post("/v1/reward", responses=ERRORS)
    def reward(body: RewardRequest) -> RewardResponse:
        """Rewards of responses for one user (stored, or given inline by their context)."""
        check_limits(body.model_dump(), limits)
        items = served.check_items(body.responses, "responses")
        prompts = served.prompts_for(body.prompt, body.prompts, len(items), "responses")
        z, count = user_latent(body, "reward")
        metrics.items.inc(len(items))
        return RewardResponse(rewards=served.reward(prompts, items, z) if items else [], num_choices=count)

    @app.post("/v1/prefer", responses=ERRORS)
    def prefer(body: PreferRequest) -> PreferResponse:
        """p(a[i] preferred to b[i]) for one user."""
        check_limits(body.model_dump(), limits)
        a, b = served.check_items(body.a, "a"), served.check_items(body.b, "b")
        if len(a) != len(b):
            raise FieldError("b", f"has {len(b)} entries but a has {len(a)}; pair them up.")
        prompts = served.prompts_for(body.prompt, body.prompts, len(a), "pairs")
        z, count = user_latent(body, "reward")
        return PreferResponse(probs=served.prefer(prompts, a, b, z) if a else [], num_choices=count)

    @app.post("/v1/users/{user_id}/next-query", responses=ERRORS)
    def next_query(body: NextQueryRequest, user_id: str = user_path) -> NextQueryResponse:
        """Which candidate pair to ask this stored user next (`predictor.next_query`); an unknown user is
        asked as a new one (no choices yet)."""
        check_limits(body.model_dump(), limits)
        a, b = served.check_items(body.a, "a"), served.check_items(body.b, "b")
        if not a:
            raise FieldError("a", "is empty; send at least one candidate pair.")
        if len(a) != len(b):
            raise FieldError("b", f"has {len(b)} entries but a has {len(a)}; pair them up.")
        prompts = served.prompts_for(body.prompt, body.prompts, len(a), "pairs")
        _, choices = store.choices(user_id)
        # Without a seed, random draws anew for each request; the other strategies keep seed 0 for their
        # reference pool and the latent kind's z samples, so the same request gets the same scores.
        seed = (
            body.seed
            if body.seed is not None
            else (secrets.randbelow(2**31) if body.strategy == "random" else 0)
        )
        try:
            picked = served.next_query(choices, prompts, a, b, body.strategy, seed)
        except FieldError:
            raise
        except ValueError as error:  # e.g. bald on a deterministic model
            raise FieldError("strategy", str(error)) from None
        return NextQueryResponse(
            index=picked.index, scores=[float(s) for s in picked.scores], strategy=picked.strategy,
            num_choices=len(choices),
        )  # fmt: skip

    @app.post("/v1/generate", responses=ERRORS)
    def generate(body: GenerateRequest) -> GenerateResponse:
        """The policy's answers to prompts for one user (decoding options as transformers' generate)."""
        check_limits(body.model_dump(), limits)
        if served.policy is None:
            raise FieldError("policy", "this server has no policy; start it with --policy DIR.", status=404)
        if body.max_new_tokens > limits.max_new_tokens:
            raise FieldError(
                "max_new_tokens", f"is {body.max_new_tokens}; the limit is {limits.max_new_tokens}."
            )
        for index, prompt in enumerate(body.prompts):
            if not prompt.strip():
                raise FieldError(f"prompts[{index}]", "is empty.")
        z, count = user_latent(body, "policy")
        responses = served.generate(
            body.prompts, z, max_new_tokens=body.max_new_tokens, do_sample=body.do_sample,
            temperature=body.temperature, top_p=body.top_p, repetition_penalty=body.repetition_penalty,
            seed=body.seed,
        )  # fmt: skip
        return GenerateResponse(responses=responses, num_choices=count)

    @app.post("/get_reward", responses=ERRORS)
    def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        """OpenRLHF's remote reward model (`--reward.remote_url http://HOST:PORT/get_reward`): each label names
        the sample's user, as {"user_id": ...} or {"context": [...]} (or that object as a JSON string)."""
        check_limits(body.model_dump(), limits)
        if not served.text:
            raise FieldError(
                "query", "this server's model reads feature vectors; /get_reward needs a text model."
            )
        count = len(body.query)
        for name, values in (("prompts", body.prompts), ("labels", body.labels)):
            if len(values) != count:
                raise FieldError(name, f"has {len(values)} entries for {count} queries; send one per query.")
        responses = []
        for index, (query, prompt) in enumerate(zip(body.query, body.prompts, strict=True)):
            if not prompt.strip():
                raise FieldError(f"prompts[{index}]", "is empty.")
            response = response_of(query, prompt)
            if response is None:
                raise FieldError(
                    f"query[{index}]",
                    f"holds neither prompts[{index}] nor a tail of it; send prompt + response.",
                )
            responses.append(served.check_item(response, f"query[{index}] (its response)"))
        groups: dict[str, list[int]] = {}
        users: dict[str, UserRequest] = {}
        for index, label in enumerate(body.labels):
            user = user_from_label(label, f"labels[{index}]")
            if isinstance(label, str):  # the body's check saw one string; an object label was checked with it
                check_limits(user.model_dump(), limits, f"labels[{index}]")
            key = user.model_dump_json()
            groups.setdefault(key, []).append(index)
            users[key] = user
        rewards = [0.0] * count
        choices = [0.0] * count
        for key, indices in groups.items():
            try:
                z, used = user_latent(users[key], "reward")
            except FieldError as error:
                raise FieldError(f"labels[{indices[0]}].{error.field}", error.message, error.status) from None
            values = served.reward([body.prompts[i] for i in indices], [responses[i] for i in indices], z)
            for i, value in zip(indices, values, strict=True):
                rewards[i], choices[i] = value, float(used)
        metrics.items.inc(count)
        return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs={"user_choices": choices})

    return Guard(app, api_key=api_key, max_body_bytes=limits.max_body_bytes, metrics=metrics)

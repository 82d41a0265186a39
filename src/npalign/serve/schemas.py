"""Request and response models of `npalign serve`, its limits and its field-naming errors (L3, serve).

Items (responses, chosen, rejected, a, b) are JSON values whose type the served model decides: a string
for a model trained on texts, a list of D numbers for one trained on feature vectors. `ServedModel`
checks them against the model and names the offending field, e.g. `responses[3]`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from npalign.embedding.base import lone_surrogate_at

# User ids and choice ids: what fits in a URL path segment and a log line unquoted.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
ID_HELP = "1-128 characters: letters, digits and . _ : @ - (starting with a letter or digit)"

FLOAT32_MAX = 3.4028234663852886e38  # the models compute in float32; a number past this becomes inf

Item = Annotated[Any, Field(description="a string (text model) or a list of D numbers (feature model)")]


@dataclass(frozen=True)
class Limits:
    """What one request may hold; past these a request is answered 413 (body) or 422 (naming the field).

    Attributes:
        max_body_bytes: request body size.
        max_items: entries of any one list in a request (responses, choices, queries, prompts ...).
        max_text_chars: characters of any one string.
        max_choices_per_user: choices the store keeps for one user.
        max_new_tokens: the largest `max_new_tokens` /v1/generate accepts.
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_items: int = 256
    max_text_chars: int = 20_000
    max_choices_per_user: int = 1000
    max_new_tokens: int = 512


class FieldError(ValueError):
    """A bad request: `field` names the part of it (e.g. `choices[2].chosen`), answered with `status`."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def check_text(value: str, field: str) -> None:
    """Refuse a string that is not Unicode text: JSON's "\\ud800" escape gives a lone surrogate, which no
    embedder, tokenizer or database encodes."""
    surrogate = lone_surrogate_at(value)
    if surrogate is not None:
        raise FieldError(
            field,
            f"holds a lone surrogate ({value[surrogate]!r} at character {surrogate}), which is not "
            "text; send UTF-8 (pair each \\ud800-\\udbff escape with a \\udc00-\\udfff one).",
        )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class Choice(_Request):
    """One choice: `chosen` preferred to `rejected` as answers to `prompt` (feature models: no prompt)."""

    prompt: str = ""
    chosen: Item
    rejected: Item
    choice_id: str | None = Field(
        default=None, pattern=ID_PATTERN, description=f"makes retries idempotent; {ID_HELP}"
    )


class UserRequest(_Request):
    """The user a request is for: `user_id` (from the store) or an inline `context` of choices."""

    user_id: str | None = Field(default=None, pattern=ID_PATTERN, description=ID_HELP)
    context: list[Choice] | None = Field(
        default=None, description="the user's choices; [] = the population prior"
    )


class AppendChoices(_Request):
    choices: list[Choice]


class AppendResponse(BaseModel):
    user_id: str
    num_choices: int


class UserResponse(BaseModel):
    user_id: str
    num_choices: int
    revision: str = Field(description="changes whenever the user's choices change")
    kind: str = Field(description="the reward model's kind")
    z: list[float] = Field(description="the user's latent (its mean for the latent model)")
    posterior_scale: list[float] | None = Field(default=None, description="latent model only")


class RewardRequest(UserRequest):
    prompt: str | None = Field(default=None, description="one prompt for every response (text models)")
    prompts: list[str] | None = Field(default=None, description="one prompt per response (text models)")
    responses: list[Item]


class RewardResponse(BaseModel):
    rewards: list[float]
    num_choices: int = Field(description="how many choices the user's z came from")


class PreferRequest(UserRequest):
    prompt: str | None = None
    prompts: list[str] | None = None
    a: list[Item]
    b: list[Item]


class PreferResponse(BaseModel):
    probs: list[float] = Field(description="p(a[i] preferred to b[i]) for the user")
    num_choices: int


class NextQueryRequest(_Request):
    """Candidate pairs (a[i], b[i]) one could ask the user next, and how to choose among them."""

    prompt: str | None = None
    prompts: list[str] | None = None
    a: list[Item]
    b: list[Item]
    strategy: Literal["info-gain", "bald", "uncertainty", "d-optimal", "random"] = "info-gain"
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="seeds the strategy; none: random draws anew, the others use 0",
    )


class NextQueryResponse(BaseModel):
    index: int = Field(description="the candidate pair to ask next")
    scores: list[float] = Field(description="every candidate's score; higher = ask first")
    strategy: str
    num_choices: int


class GenerateRequest(UserRequest):
    prompts: list[str]
    max_new_tokens: int = Field(default=128, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=1e-4, allow_inf_nan=False)  # below: inf logits in float32
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1, description="seeds sampling (torch's range)")


class GenerateResponse(BaseModel):
    responses: list[str]
    num_choices: int


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward request (openrlhf/utils/agent.py, `_fetch_rewards_via_http`)."""

    model_config = ConfigDict(extra="ignore")  # OpenRLHF may add keys; those we read are checked
    query: list[str] = Field(description="prompt + response, as decoded by the trainer")
    prompts: list[str]
    labels: list[Any] = Field(
        description='per sample: {"user_id": ...} or {"context": [...]}, or that as a JSON string'
    )


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ErrorResponse(BaseModel):
    error: str
    field: str


# Special-token text a trainer's decode leaves around an answer (ChatML, Llama 3, Qwen, SmolLM: <|...|>;
# Llama 2, Mistral: </s>; Gemma: <eos>, <pad>); the reward model was trained on answers without it.
_SPECIAL = r"(?:<\|[^<>|\s]{1,40}\|>|</s>|<eos>|<pad>)"
_TRAILING_SPECIAL = re.compile(rf"(?:\s*{_SPECIAL})+\s*$")
MIN_PROMPT_TAIL = 16  # characters of a cut prompt's tail that must open the query


def response_of(query: str, prompt: str) -> str | None:
    """The answer inside an OpenRLHF query (`decode(prompt tokens + answer tokens)`), or None if none is found.

    The query starts with the prompt; or, when OpenRLHF cut a prompt too long for its budget to its last
    tokens (0.11, `SingleTurnAgentExecutor`), with a tail of it (after any U+FFFD a cut inside a character
    decodes to), while `prompts` still holds the whole prompt: the answer then follows the longest tail of
    the prompt (at least MIN_PROMPT_TAIL characters) that the query starts with; or, in older OpenRLHF,
    with left padding and then the prompt. Trailing end-of-turn and padding tokens are dropped, unless
    nothing else is left.
    """
    if query.startswith(prompt):
        start = len(prompt)
    else:
        # A cut inside a character decodes to U+FFFD; the tail before the padding check, since an answer
        # may well repeat the whole prompt after a cut one.
        cut = len(query) - len(query.lstrip("\ufffd"))
        start = cut + _longest_tail_at_start(prompt, query[cut:])
        if start - cut < MIN_PROMPT_TAIL:  # a few characters in common are chance, not a cut prompt
            if prompt not in query:
                return None
            start = query.index(prompt) + len(prompt)  # after left padding
    answer = query[start:]
    stripped = _TRAILING_SPECIAL.sub("", answer)
    return stripped if stripped.strip() else answer  # an answer of just "<|im_end|>" is still scored


def _longest_tail_at_start(prompt: str, query: str) -> int:
    """Length of the longest suffix of `prompt` that `query` starts with (KMP's failure function, linear)."""
    # Code points joined by -1, which no character is, so that a match never runs across the join.
    text = [ord(c) for c in query[: len(prompt)]] + [-1] + [ord(c) for c in prompt]
    failure = [0] * len(text)
    for i in range(1, len(text)):
        k = failure[i - 1]
        while k and text[i] != text[k]:
            k = failure[k - 1]
        failure[i] = k + (text[i] == text[k])
    return failure[-1]


def field_of(location: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'choices', 0, 'chosen') -> 'choices[0].chosen'; ('path', 'user_id') -> 'user_id'."""
    parts = list(location)
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field or "body"


def user_from_label(label: Any, field: str) -> UserRequest:
    """A /get_reward label as the user it names: a JSON object, or a JSON string holding one."""
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as error:
            raise FieldError(
                field, f'is not JSON ({error.msg}); send {{"user_id": ...}} or {{"context": [...]}}.'
            ) from None
    if not isinstance(label, dict):
        raise FieldError(
            field, f'must be {{"user_id": ...}} or {{"context": [...]}}; got {type(label).__name__}.'
        )
    try:
        return UserRequest.model_validate(label)
    except ValidationError as error:
        first = error.errors()[0]
        raise FieldError(f"{field}.{field_of(first.get('loc', ()))}", str(first.get("msg"))) from None

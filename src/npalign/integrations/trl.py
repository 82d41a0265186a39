"""A TRL reward function that scores each completion for its own user, locally or via `npalign serve` (L3.5, integrations).

    from npalign.integrations.trl import reward_function
    trainer = GRPOTrainer(model=..., reward_funcs=reward_function("runs/np_btl_dsp"), train_dataset=dataset)

The dataset carries a `user_id` column (users in a store: pass `store=URL`, or serve them and pass the
server's URL) or a `context` column (each row's few choices, a list of {prompt, chosen, rejected}, or that
list as a JSON string). The call signature is the one TRL's GRPOTrainer makes in `_calculate_rewards`
(read in trl 1.10.0.dev0, trl/trainer/grpo_trainer.py):

    reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs)

where reward_kwargs holds every other dataset column as a list (one entry per completion) plus
`trainer_state`, `log_extra`, `log_metric` (and `environments` when set), which are ignored here.
Prompts and completions are strings, or conversations (lists of {"role", "content"} messages): the
prompt is then the last user message and the completion the assistant's text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from npalign.serve.schemas import UserRequest, user_from_label
from npalign.serve.served import ServedModel, UnknownUser
from npalign.serve.store import UserStore

REMOTE_BATCH = 256  # the server's default items per request
REMOTE_BODY_BYTES = 3 * 1024 * 1024  # under the server's default 4 MiB body limit, with room for the keys


def _text(content: Any) -> str:
    """The text of a message's content: a str, or a list of parts of which the text ones are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(f"message content must be a str or a list of parts; got {type(content).__name__}.")


def _prompt_text(prompt: Any, index: int) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        user_turns = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if user_turns:
            return _text(user_turns[-1].get("content", ""))
    raise TypeError(
        f"prompts[{index}] must be a str or a conversation with a user message; got {prompt!r:.80}."
    )


def _completion_text(completion: Any, index: int) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(_text(m.get("content", "")) for m in completion if isinstance(m, dict))
    raise TypeError(f"completions[{index}] must be a str or a list of messages; got {completion!r:.80}.")


def _labels(count: int, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """One user per completion from the `user_id` or `context` column."""
    if kwargs.get("user_id") is not None and kwargs.get("context") is not None:
        raise ValueError(
            "the dataset has both a user_id and a context column; keep the one that names each row's user."
        )
    for column in ("user_id", "context"):
        values = kwargs.get(column)
        if values is None:
            continue
        if len(values) != count:
            raise ValueError(f"the {column} column has {len(values)} entries for {count} completions.")
        if column == "user_id":
            return [{"user_id": str(value)} for value in values]
        return [{"context": _context(value, row)} for row, value in enumerate(values)]
    raise ValueError(
        "the dataset has neither a user_id nor a context column; add one so that each completion is scored "
        "for its user."
    )


def _context(value: Any, row: int) -> Any:
    """One row's context: a list of choices, or that list as a JSON string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"the context of row {row} is not JSON ({error.msg}, character {error.pos})."
            ) from None
    if value is None:
        raise ValueError(
            f"the context of row {row} is empty (None); give each row its choices ([] = the prior)."
        )
    return value


class NPAlignReward:
    """TRL reward function: `f(prompts, completions, **kwargs) -> list[float]`, one reward per completion.

    Args:
        model_dir_or_url: a reward model run directory, or the URL of `npalign serve` (http://HOST:PORT).
        store: with a run directory: the user store URL for a `user_id` column (None: context column only).
        api_key: with a URL: the server's API key.
        timeout_s: with a URL: seconds per request.
    """

    def __init__(
        self,
        model_dir_or_url: str,
        *,
        store: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 180.0,
    ) -> None:
        self.__name__ = "npalign_reward"  # TRL names each reward function's metrics after its __name__
        self.url = (
            model_dir_or_url.rstrip("/") if model_dir_or_url.startswith(("http://", "https://")) else None
        )
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.served: ServedModel | None = None
        self.store: UserStore | None = None
        if self.url is None:
            from npalign.inference.api import load
            from npalign.inference.policy import PolicyRunner
            from npalign.inference.text import TextRewardPredictor

            predictor = load(model_dir_or_url)  # texts are embedded in memory (serve/served.py)
            if isinstance(predictor, PolicyRunner):
                raise ValueError(f"{model_dir_or_url} is a policy run; pass a reward model run directory.")
            if not isinstance(predictor, TextRewardPredictor):
                raise ValueError(
                    f"{model_dir_or_url} was trained on feature vectors; TRL needs a text model."
                )
            self.served = ServedModel(predictor)
            self.store = None if store is None else UserStore(store)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions.")
        prompt_texts = [_prompt_text(p, i) for i, p in enumerate(prompts)]
        responses = [_completion_text(c, i) for i, c in enumerate(completions)]
        labels = _labels(len(prompts), kwargs)
        if self.url is not None:
            return self._remote(prompt_texts, responses, labels)
        return self._local(prompt_texts, responses, labels)

    def _local(self, prompts: list[str], responses: list[str], labels: list[dict[str, Any]]) -> list[float]:
        served = self.served
        assert served is not None
        groups: dict[str, list[int]] = {}
        users: dict[str, UserRequest] = {}
        for index, label in enumerate(labels):
            user = user_from_label(label, f"row {index}")
            groups.setdefault(user.model_dump_json(), []).append(index)
            users[user.model_dump_json()] = user
        rewards = [0.0] * len(prompts)
        for key, indices in groups.items():
            user = users[key]
            if user.context is not None:
                z = served.latent(served.check_choices(user.context, f"context of row {indices[0]}"))
            elif self.store is None:
                raise ValueError("a user_id column needs the store: reward_function(run_dir, store=URL).")
            else:
                try:
                    z, _ = served.cached("reward", user.user_id or "", self.store)
                except UnknownUser:
                    raise ValueError(
                        f"user_id {user.user_id!r} (row {indices[0]}) is not in the store."
                    ) from None
            # named by the row's own index, not by its place among this user's rows
            items = [served.check_item(responses[i], f"completions[{i}]") for i in indices]
            values = served.reward([prompts[i] for i in indices], items, z)
            for i, value in zip(indices, values, strict=True):
                rewards[i] = value
        return rewards

    def _remote(self, prompts: list[str], responses: list[str], labels: list[dict[str, Any]]) -> list[float]:
        rewards: list[float] = []
        queries = [p + r for p, r in zip(prompts, responses, strict=True)]
        for indices in _batches(queries, prompts, labels):
            body = {
                "query": [queries[i] for i in indices],
                "prompts": [prompts[i] for i in indices],
                "labels": [labels[i] for i in indices],
            }
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            request = urllib.request.Request(
                f"{self.url}/get_reward", data=json.dumps(body).encode(), headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    rewards.extend(float(r) for r in json.loads(response.read())["rewards"])
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")
                raise ValueError(f"{self.url}/get_reward answered {error.code}: {detail}") from None
        return rewards


def _batches(queries: list[str], prompts: list[str], labels: list[Any]) -> list[list[int]]:
    """Indices of the requests to send: at most REMOTE_BATCH items and (roughly) REMOTE_BODY_BYTES each, so
    that rows with long contexts do not make a body the server refuses. One item past the size goes alone."""
    batches: list[list[int]] = [[]]
    size = 0
    for index, parts in enumerate(zip(queries, prompts, labels, strict=True)):
        item = sum(len(json.dumps(part).encode()) + 2 for part in parts)
        if batches[-1] and (len(batches[-1]) == REMOTE_BATCH or size + item > REMOTE_BODY_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(index)
        size += item
    return [batch for batch in batches if batch]


def reward_function(
    model_dir_or_url: str,
    *,
    store: str | None = None,
    api_key: str | None = None,
) -> NPAlignReward:
    """A TRL reward function over a text reward model (a run directory) or an `npalign serve` URL.

    See `NPAlignReward`; raises ValueError for a feature model or a policy run.
    """
    return NPAlignReward(model_dir_or_url, store=store, api_key=api_key)


__all__ = ["NPAlignReward", "reward_function"]

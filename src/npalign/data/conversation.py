"""TRL's conversational preference rows (message lists) -> npalign's text prompt, chosen, rejected (L1, data).

TRL writes a conversational pair either with an explicit prompt,
`{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}`, or with an implicit one,
`{"chosen": [user, assistant], "rejected": [user, assistant]}`, where the shared prefix is the prompt.
npalign scores a response to one prompt, so only single-turn conversations map faithfully: the prompt
is one user message, each completion one assistant message. Anything else is an error naming the row.
"""

from __future__ import annotations

from typing import Any

REMEDY = (
    "npalign takes single-turn pairs (one user message, one assistant reply each); "
    "flatten the conversation into text columns or drop the row"
)


def is_conversation(value: Any) -> bool:
    """True for a TRL message list: a non-empty list of {"role", "content"} objects."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _text(message: dict[str, Any], role: str, where: str, column: str) -> str:
    if message.get("role") != role:
        raise ValueError(
            f"{where}, column {column!r}: expected a {role!r} message here, got role {message.get('role')!r}; "
            f"{REMEDY}."
        )
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(
            f"{where}, column {column!r}: message content is {type(content).__name__}, expected a string "
            "(npalign reads text content only)."
        )
    return content


def _one(messages: list[dict[str, Any]], role: str, where: str, column: str, what: str) -> str:
    if len(messages) != 1:
        roles = [m.get("role") for m in messages]
        raise ValueError(
            f"{where}, column {column!r}: {what} has {len(messages)} messages {roles}; {REMEDY}."
        )
    return _text(messages[0], role, where, column)


def conversation_texts(prompt: Any, chosen: Any, rejected: Any, where: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of one conversational row.

    Args:
        prompt: the prompt message list, or None for TRL's implicit-prompt form.
        chosen / rejected: message lists.
        where: the row ("file.jsonl line 3") for error messages.
    Raises:
        ValueError naming the row and the remedy when the conversation is not single-turn, or when the
        implicit prompts of chosen and rejected differ.
    """
    for column, value in (("chosen", chosen), ("rejected", rejected)):
        if not is_conversation(value):
            raise ValueError(
                f"{where}, column {column!r}: expected a message list like the other columns, got "
                f"{str(value)[:60]!r}; use message lists or plain text in every column."
            )
    if prompt is None:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise ValueError(
                f"{where}: implicit-prompt row, but 'chosen' and 'rejected' do not start with the same "
                "message(s), so their prompts differ; start both with the same user message, or give a "
                "'prompt' column."
            )
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        prompt_column = "chosen"
    elif not is_conversation(prompt):
        raise ValueError(
            f"{where}, column 'prompt': expected a message list like 'chosen' and 'rejected', got "
            f"{str(prompt)[:60]!r}; use message lists or plain text in every column."
        )
    else:
        prompt_column = "prompt"
    if prompt[0].get("role") == "system":
        raise ValueError(
            f"{where}, column {prompt_column!r}: the prompt starts with a system message, which npalign "
            "cannot score apart from the user's; fold it into the user message or drop it."
        )
    return (
        _one(prompt, "user", where, prompt_column, "the prompt"),
        _one(chosen, "assistant", where, "chosen", "the chosen completion"),
        _one(rejected, "assistant", where, "rejected", "the rejected completion"),
    )


def read_context_file(source: str) -> list[tuple[str, str, str]]:
    """A user's context pairs from a JSON/JSONL file: (prompt, chosen, rejected) texts per row.

    Rows are TRL's standard text rows (`prompt`, `chosen`, `rejected` strings) or its conversational rows
    (message lists, either form); a row that is neither is an error naming the file and its line.
    """
    from npalign.data.loaders import read_records  # loaders reads conversations through this module

    _, records = read_records(source)
    triples = []
    for where, row in records:
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        if is_conversation(chosen) or is_conversation(rejected):
            triples.append(conversation_texts(prompt, chosen, rejected, where))
            continue
        missing = [key for key in ("prompt", "chosen", "rejected") if not isinstance(row.get(key), str)]
        if missing:
            raise ValueError(
                f"{where}: needs prompt, chosen and rejected as texts or as TRL message lists; missing or not "
                f"text: {missing}."
            )
        triples.append((row["prompt"], row["chosen"], row["rejected"]))
    return triples

"""Any user-grouped table (PRISM-like) -> user-grouped rows, columns named by options (L1, data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from npalign.data.conversation import conversation_texts, is_conversation
from npalign.data.records import Record
from npalign.data.sources._common import USER_GROUPED, BuildReport, Source, drop_reason, user_row


def build(
    records: Sequence[Record], report: BuildReport, subset: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Any user-grouped table: options name the user, prompt, chosen, rejected and (optional) type columns.

    User ids and types may be strings or integers (written as strings); texts must be strings, or
    TRL conversational message lists (`npalign.data.conversation`): then a table without the prompt
    column takes the prompt from the messages that chosen and rejected share. Without `type_column`
    every user_type is "".
    """
    columns = {
        role: options[f"{role}_column"]
        for role in ("user", "prompt", "chosen", "rejected", "type")
        if options[f"{role}_column"] is not None
    }
    first_where, first_row = records[0]
    if columns.get("prompt") not in first_row and is_conversation(first_row.get(columns["chosen"])):
        columns.pop("prompt", None)  # TRL's implicit prompt: the shared start of chosen and rejected
    for role, column in columns.items():
        if column not in first_row:
            raise ValueError(
                f"column {column!r} ({role}_column) is not in {first_where}; the rows have columns "
                f"{sorted(first_row)}. Name the right one with --column {role}=<column>."
            )
    rows: list[dict[str, Any]] = []
    for where, row in records:
        values: dict[str, str] = {}
        if is_conversation(row.get(columns["chosen"])) or is_conversation(row.get(columns.get("prompt", ""))):
            prompt = row.get(columns["prompt"]) if "prompt" in columns else None
            chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
            values["prompt"], values["chosen"], values["rejected"] = conversation_texts(
                prompt, chosen, rejected, where
            )
        elif "prompt" not in columns:
            raise ValueError(
                f"{where}: no prompt column (prompt_column is unset); name it with --column prompt=<column>, "
                "or give TRL conversational rows whose chosen and rejected start with the prompt."
            )
        for role, column in columns.items():
            if role in values:
                continue
            if column not in row:
                raise ValueError(
                    f"{where}: no column {column!r} ({role}_column); this row has {sorted(row)}. "
                    "Fix the row or remove it."
                )
            value = row[column]
            is_id = role in ("user", "type")
            if isinstance(value, str) or (is_id and isinstance(value, int) and not isinstance(value, bool)):
                values[role] = str(value)
            else:
                expected = "a string or an integer" if is_id else "a string"
                raise ValueError(
                    f"{where}, column {column!r} ({role}_column): expected {expected}, got {value!r:.60}. "
                    "Fix the value or remove the row."
                )
        if reason := drop_reason(values["chosen"], values["rejected"], options["keep_identical"]):
            report.drop(f"pairs_{reason}", where)
            continue
        rows.append(
            user_row(
                values["user"], values["prompt"], values["chosen"], values["rejected"], values.get("type", "")
            )
        )
    report.user_types = sorted({row["user_type"] for row in rows})
    return rows


SOURCE = Source(
    name="generic",
    build=build,
    format=USER_GROUPED,
    options={
        "user_column": "user_id",
        "prompt_column": "prompt",
        "chosen_column": "chosen",
        "rejected_column": "rejected",
        "type_column": None,
        "keep_identical": False,
    },
)

"""The user store: each user's choices, durable before a request is answered, via SQLAlchemy (L3, serve).

    store = UserStore("sqlite:///users.db")            # or postgresql+psycopg://user:pw@host/db
    store.append("alice", [StoredChoice(prompt, chosen, rejected, choice_id="c1")])
    store.choices("alice")                              # in the order they were appended
    store.delete("alice")

Two tables: `users` (one row per user: how many choices, and a `revision` token that changes with every
change to them, so that each server process can tell whether its cached z is stale) and `choices`. Values
are stored as JSON text (a string for text models, a list of floats for feature models). SQL goes only
through SQLAlchemy Core with bound parameters.

SQLite runs in WAL mode with synchronous=FULL, and every write transaction starts with BEGIN IMMEDIATE,
so writers queue rather than fail; a commit that returned is on disk. On PostgreSQL an append locks the
user's row (SELECT ... FOR UPDATE), so concurrent appends to one user from several replicas serialize,
and a unique (user_id, choice_id) index makes a retried request with the same choice_id a no-op.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

logger = logging.getLogger(__name__)

metadata = MetaData()
users = Table(
    "npalign_users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("num_choices", Integer, nullable=False),
    Column("revision", String(32), nullable=False),
)
choices = Table(
    "npalign_choices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(128), ForeignKey("npalign_users.user_id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("choice_id", String(128), nullable=True),
    Column("prompt", Text, nullable=False),
    Column("chosen", Text, nullable=False),
    Column("rejected", Text, nullable=False),
    sqlite_autoincrement=True,
)
Index("npalign_choices_user_position", choices.c.user_id, choices.c.position, unique=True)
Index("npalign_choices_user_choice_id", choices.c.user_id, choices.c.choice_id, unique=True)
TABLES = (users, choices)


@dataclass(frozen=True)
class StoredChoice:
    """One of a user's choices: `chosen` preferred to `rejected` as answers to `prompt`.

    Values are strings (text models) or lists of floats (feature models; the prompt is then "").
    """

    prompt: Any
    chosen: Any
    rejected: Any
    choice_id: str | None = None

    def same_content(self, other: StoredChoice) -> bool:
        return (self.prompt, self.chosen, self.rejected) == (other.prompt, other.chosen, other.rejected)


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    num_choices: int
    revision: str


class ChoiceConflict(ValueError):
    """A choice_id already stored for the user with other content; `index` is the choice's position."""

    def __init__(self, index: int, choice_id: str) -> None:
        super().__init__(
            f"choice_id {choice_id!r} is already stored for this user with a different prompt, chosen or "
            "rejected; a retry must resend the same choice, a new choice needs a new choice_id."
        )
        self.index = index


class TooManyChoices(ValueError):
    """An append would take the user past the store's limit."""


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _sqlite_pragmas(engine: Engine, begin: str) -> None:
    """WAL + synchronous=FULL, and `begin` (BEGIN IMMEDIATE for writers) on every transaction (SQLAlchemy's
    pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)


def shown_url(url: str) -> str:
    """The store URL as messages may show it: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # not a URL SQLAlchemy reads: drop what may be a login
        return url.split("@", 1)[-1] if "@" in url else url


class UserStore:
    """Users' choices in a SQL database (SQLite file or PostgreSQL), created on first use.

    Args:
        url: a SQLAlchemy URL, e.g. sqlite:///users.db or postgresql+psycopg://user:pw@host/db.
        max_choices_per_user: an append past this many choices for one user is refused.
    """

    def __init__(self, url: str, *, max_choices_per_user: int = 1000) -> None:
        self.url = url
        self.max_choices_per_user = max_choices_per_user
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(
                f"--store {shown_url(url)}: use sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST/DB."
            )
        if self.dialect == "sqlite":
            database = make_url(url).database
            if database in (None, "", ":memory:") or "mode=memory" in url:
                # Each pooled connection would open its own empty database: nothing stored could be read.
                raise ValueError(
                    f"--store {shown_url(url)}: an in-memory SQLite store is not durable; use sqlite:///FILE."
                )
            arguments = {"check_same_thread": False, "timeout": 30}
            self.engine = create_engine(url, connect_args=arguments)
            _sqlite_pragmas(self.engine, "BEGIN IMMEDIATE")
            # Readers need no write lock: in WAL mode they read the last commit while a writer works.
            self.read_engine = create_engine(url, connect_args=arguments)
            _sqlite_pragmas(self.read_engine, "BEGIN")
        else:
            self.engine = create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
            # A user's row and choices are read from one snapshot, so a cached z never mislabels its choices.
            self.read_engine = self.engine.execution_options(isolation_level="REPEATABLE READ")
        self._create_tables()

    def _create_tables(self) -> None:
        # Two replicas starting at once may both try to create the tables; the loser's error is harmless.
        try:
            metadata.create_all(self.engine)
        except (IntegrityError, OperationalError, ProgrammingError) as error:
            if self.dialect != "postgresql":
                raise
            logger.info("tables were created by another process at the same time: %s", error)
            metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()

    def user(self, user_id: str) -> UserRecord | None:
        """The user's row, or None for a user the store does not hold."""
        with self.read_engine.connect() as connection:
            row = connection.execute(
                select(users.c.user_id, users.c.num_choices, users.c.revision).where(
                    users.c.user_id == user_id
                )
            ).first()
        return None if row is None else UserRecord(row.user_id, int(row.num_choices), row.revision)

    def choices(self, user_id: str) -> tuple[UserRecord | None, list[StoredChoice]]:
        """The user's row and choices (in the order appended), read in one transaction."""
        with self.read_engine.begin() as connection:
            row = connection.execute(
                select(users.c.user_id, users.c.num_choices, users.c.revision).where(
                    users.c.user_id == user_id
                )
            ).first()
            if row is None:
                return None, []
            rows = connection.execute(
                select(choices.c.prompt, choices.c.chosen, choices.c.rejected, choices.c.choice_id)
                .where(choices.c.user_id == user_id)
                .order_by(choices.c.position)
            ).all()
        stored = [
            StoredChoice(json.loads(r.prompt), json.loads(r.chosen), json.loads(r.rejected), r.choice_id)
            for r in rows
        ]
        return UserRecord(row.user_id, int(row.num_choices), row.revision), stored

    def append(self, user_id: str, new: Sequence[StoredChoice]) -> UserRecord:
        """Append choices to a user (created if new) in one transaction, committed before this returns.

        A choice whose choice_id the user already has with the same content is skipped (a retry); with
        other content it raises ChoiceConflict. Retries once when a concurrent first append created the user.
        """
        for attempt in range(2):
            try:
                return self._append(user_id, new)
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _append(self, user_id: str, new: Sequence[StoredChoice]) -> UserRecord:
        with self.engine.begin() as connection:
            row = connection.execute(
                select(users.c.num_choices).where(users.c.user_id == user_id).with_for_update()
            ).first()
            if row is None:
                connection.execute(
                    insert(users).values(user_id=user_id, num_choices=0, revision=uuid.uuid4().hex)
                )
                count = 0
            else:
                count = int(row.num_choices)
            ids = [c.choice_id for c in new if c.choice_id is not None]
            known: dict[str, StoredChoice] = {}
            if ids:
                for r in connection.execute(
                    select(choices.c.choice_id, choices.c.prompt, choices.c.chosen, choices.c.rejected).where(
                        choices.c.user_id == user_id, choices.c.choice_id.in_(ids)
                    )
                ):
                    known[r.choice_id] = StoredChoice(
                        json.loads(r.prompt), json.loads(r.chosen), json.loads(r.rejected), r.choice_id
                    )
            rows: list[dict[str, Any]] = []
            for index, choice in enumerate(new):
                if choice.choice_id is not None:
                    if choice.choice_id in known:
                        if not known[choice.choice_id].same_content(choice):
                            raise ChoiceConflict(index, choice.choice_id)
                        continue  # a retry of a choice already stored
                    known[choice.choice_id] = choice  # the same id twice in one request: stored once
                rows.append(
                    {
                        "user_id": user_id,
                        "position": count + len(rows),
                        "choice_id": choice.choice_id,
                        "prompt": _encode(choice.prompt),
                        "chosen": _encode(choice.chosen),
                        "rejected": _encode(choice.rejected),
                    }
                )
            total = count + len(rows)
            if total > self.max_choices_per_user:
                raise TooManyChoices(
                    f"user {user_id!r} has {count} choices; {len(rows)} more would pass the limit of "
                    f"{self.max_choices_per_user} choices per user. Delete the user or send fewer."
                )
            revision = uuid.uuid4().hex
            if rows:
                connection.execute(insert(choices), rows)
                connection.execute(
                    update(users)
                    .where(users.c.user_id == user_id)
                    .values(num_choices=total, revision=revision)
                )
            else:
                current = connection.execute(
                    select(users.c.revision).where(users.c.user_id == user_id)
                ).scalar_one()
                revision = str(current)
        return UserRecord(user_id, total, revision)

    def delete(self, user_id: str) -> bool:
        """Forget the user and every choice of theirs; False when the store did not hold them."""
        with self.engine.begin() as connection:
            connection.execute(delete(choices).where(choices.c.user_id == user_id))
            removed = connection.execute(delete(users).where(users.c.user_id == user_id)).rowcount
        return bool(removed)

    def count_rows(self, user_id: str) -> dict[str, int]:
        """Rows mentioning the user in each table (for checks that a deleted user is gone)."""
        with self.read_engine.connect() as connection:
            return {
                table.name: int(
                    connection.execute(
                        select(func.count()).select_from(table).where(table.c.user_id == user_id)
                    ).scalar_one()
                )
                for table in TABLES
            }

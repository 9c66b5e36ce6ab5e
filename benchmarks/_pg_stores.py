"""The PostgreSQL contestants of ``bench_postgres``, each in its own database on one server.

Every contestant offers conversations (``conversation(id)``: ``extend``, ``append``,
``tail``, ``close``) and a way to write many conversations at once in its own concurrency
model (``write_concurrently``): threads for the synchronous APIs, asyncio tasks on one event
loop for openai-agents' async ``SQLAlchemySession`` (its engine and connections belong to
one loop, so threads would each need their own engine).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import psycopg

from benchmarks._workload import REPO_ROOT, Message

T = TypeVar("T")
# Fernet ttl for EncryptedSession; its default (600 s) would silently hide older messages.
_TTL_FOREVER = 10 * 365 * 24 * 3600  # seconds


def start_cluster(*, fsync: bool) -> Any:
    """Start a throwaway PostgreSQL server as the tests do (``tests/_postgres.py``).

    The tests run with ``fsync=off`` (their crash model is a process crash); a benchmark of
    commit latency keeps PostgreSQL's default ``fsync=on`` unless asked otherwise. Autovacuum
    is off so that the relation sizes do not depend on when it happened to run; every
    database is ANALYZEd explicitly after its histories are built.
    """
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from _postgres import Cluster

    class BenchCluster(Cluster):  # type: ignore[misc]
        def start_server(self) -> None:
            options = (
                f"-c listen_addresses='' -k {self.root} -c max_connections=200 "
                f"-c fsync={'on' if fsync else 'off'} -c autovacuum=off"
            )
            self.run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w",
                     "-t", "60", "-o", options, "start")  # fmt: skip

    return BenchCluster.start()


class Contestant:
    """One library's conversations in one database (``url``, a psycopg URL)."""

    name: ClassVar[str]
    label: ClassVar[str]
    notes: ClassVar[str]

    def __init__(self, url: str, key: bytes, host: str) -> None:
        self.url, self.key, self.host = url, key, host
        self.dbname = url.split("///", 1)[1].split("?", 1)[0]

    def conversation(self, cid: str) -> Any:
        """Return a handle with ``extend(msgs)``, ``append(m)``, ``tail(n)``, ``close()``."""
        raise NotImplementedError

    def write_concurrently(self, ids: Sequence[str], messages: Sequence[Message]) -> float:
        """Append ``messages`` one at a time to every conversation of ``ids`` at once, each
        conversation in its own thread; return the wall time in seconds."""
        handles = [self.conversation(cid) for cid in ids]
        barrier = threading.Barrier(len(handles) + 1)
        errors: list[BaseException] = []

        def work(handle: Any) -> None:
            barrier.wait()
            try:
                for m in messages:
                    handle.append(m)
            except BaseException as exc:  # reported after the join
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(h,)) for h in handles]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        for h in handles:
            h.close()
        if errors:
            raise errors[0]
        return elapsed

    def close(self) -> None:
        """Release the contestant's connections."""


class Ours(Contestant):
    """``ConversationStore(url, encryption_key=key)``; one codec per conversation."""

    name = "ours"
    label = "conversation-codec (encrypted)"
    notes = (
        "ConversationStore('postgresql://…', encryption_key=key).open(id): records sealed "
        "(zstd + Fernet) as in the file format, one row each in cc_records; the store's own "
        "psycopg pool (max 8 connections); long histories built with extend(batch of 500)."
    )

    def __init__(self, url: str, key: bytes, host: str) -> None:
        super().__init__(url, key, host)
        from conversation_codec import ConversationStore

        self.store = ConversationStore(url, encryption_key=key)

    def conversation(self, cid: str) -> Any:
        return _OursConversation(self.store.open(cid))

    def close(self) -> None:
        # The store leaves its pool open (it is the process's, one per URL): close it here.
        from conversation_codec.storage.postgres import PostgresBackend

        PostgresBackend.shared(self.url).close()


class _OursConversation:
    def __init__(self, codec: Any) -> None:
        self.codec = codec

    def extend(self, messages: Sequence[Message]) -> None:
        self.codec.extend(list(messages))

    def append(self, message: Message) -> None:
        self.codec.append(message)

    def tail(self, n: int) -> list[Any]:
        return list(self.codec.tail(n))

    def close(self) -> None:
        self.codec.close()


class AgentsSQLAlchemy(Contestant):
    """openai-agents ``SQLAlchemySession`` on an async engine (asyncpg driver)."""

    name = "agents-sqlalchemy"
    label = "openai-agents SQLAlchemySession"
    notes = (
        "agents.extensions.memory.SQLAlchemySession over create_async_engine("
        "'postgresql+asyncpg://…') with the engine's default pool (5 + 10 overflow), "
        "create_tables=True; plaintext JSON text rows. tail(n) = get_items(limit=n)."
    )
    _encrypted = False

    def __init__(self, url: str, key: bytes, host: str) -> None:
        super().__init__(url, key, host)
        from sqlalchemy.ext.asyncio import create_async_engine

        self.loop = asyncio.new_event_loop()
        self.engine = create_async_engine(
            f"postgresql+asyncpg://postgres@/{self.dbname}?host={host}"
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def session(self, cid: str) -> Any:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession

        inner = SQLAlchemySession(cid, engine=self.engine, create_tables=True)
        if not self._encrypted:
            return inner
        from agents.extensions.memory.encrypt_session import EncryptedSession

        return EncryptedSession(cid, inner, self.key.decode(), ttl=_TTL_FOREVER)

    def conversation(self, cid: str) -> Any:
        return _AgentsConversation(self, self.session(cid))

    def write_concurrently(self, ids: Sequence[str], messages: Sequence[Message]) -> float:
        sessions = [self.session(cid) for cid in ids]
        self.run(sessions[0].get_items(limit=1))  # create the tables before the clock starts

        async def one(session: Any) -> None:
            for m in messages:
                await session.add_items([m])

        async def every() -> None:
            await asyncio.gather(*(one(s) for s in sessions))

        t0 = time.perf_counter()
        self.run(every())
        return time.perf_counter() - t0

    def close(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()


class AgentsEncrypted(AgentsSQLAlchemy):
    """``EncryptedSession`` over the same ``SQLAlchemySession``."""

    name = "agents-encrypted"
    label = "openai-agents EncryptedSession over SQLAlchemySession"
    notes = (
        "agents.extensions.memory.EncryptedSession (Fernet per item, HKDF-derived per-session "
        "key, base64 token in a JSON envelope, ttl 10 years) over the SQLAlchemySession above."
    )
    _encrypted = True


class _AgentsConversation:
    def __init__(self, owner: AgentsSQLAlchemy, session: Any) -> None:
        self.owner, self.session = owner, session

    def extend(self, messages: Sequence[Message]) -> None:
        self.owner.run(self.session.add_items(list(messages)))

    def append(self, message: Message) -> None:
        self.owner.run(self.session.add_items([message]))

    def tail(self, n: int) -> list[Any]:
        return list(self.owner.run(self.session.get_items(limit=n)))

    def close(self) -> None:
        pass


class LangChainPostgres(Contestant):
    """langchain-postgres ``PostgresChatMessageHistory`` on a psycopg connection."""

    name = "langchain-postgres"
    label = "langchain-postgres PostgresChatMessageHistory"
    notes = (
        "langchain_postgres.PostgresChatMessageHistory, one psycopg connection per "
        "conversation; plaintext JSONB rows (SERIAL id, UUID session id). It has no tail or "
        "limit API: tail(n) = get_messages()[-n:], which reads the whole history. Messages "
        "converted with langchain_community.adapters.openai."
    )
    _TABLE = "chat_history"

    def __init__(self, url: str, key: bytes, host: str) -> None:
        super().__init__(url, key, host)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langchain_community.adapters.openai import convert_dict_to_message
            from langchain_postgres import PostgresChatMessageHistory
        self.convert = convert_dict_to_message
        self.cls = PostgresChatMessageHistory
        with psycopg.connect(url) as conn:
            PostgresChatMessageHistory.create_tables(conn, self._TABLE)

    def conversation(self, cid: str) -> Any:
        conn = psycopg.connect(self.url)
        session = str(uuid.uuid5(uuid.NAMESPACE_OID, cid))  # its session ids are UUIDs
        return _LangChainConversation(
            self, conn, self.cls(self._TABLE, session, sync_connection=conn)
        )


class _LangChainConversation:
    def __init__(self, owner: LangChainPostgres, conn: psycopg.Connection[Any], history: Any):
        self.owner, self.conn, self.history = owner, conn, history

    def extend(self, messages: Sequence[Message]) -> None:
        self.history.add_messages([self.owner.convert(m) for m in messages])

    def append(self, message: Message) -> None:
        self.history.add_messages([self.owner.convert(message)])

    def tail(self, n: int) -> list[Any]:
        return self.history.get_messages()[-n:]

    def close(self) -> None:
        self.conn.close()


CONTESTANTS: tuple[type[Contestant], ...] = (
    Ours,
    AgentsSQLAlchemy,
    AgentsEncrypted,
    LangChainPostgres,
)


def database_bytes(url: str) -> int:
    """Return ``pg_total_relation_size`` summed over the database's tables (heap, TOAST,
    indexes, free-space and visibility maps)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def analyze(url: str) -> None:
    """ANALYZE every table (autovacuum is off), so plans see the built histories."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")

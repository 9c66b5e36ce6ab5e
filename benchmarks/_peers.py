"""Peer stores, each behind the ``Store`` adapter: what a user would otherwise reach for."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import struct
import time
import warnings
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from cryptography.fernet import Fernet

from benchmarks._store import Sealer, Store
from benchmarks._workload import Message

T = TypeVar("T")
# Peers that rewrite the whole file per message are only built to this many messages:
# beyond it one append costs tens of milliseconds and the build alone would take minutes.
REWRITE_CAP = 2_000
# Fernet ttl for EncryptedSession; its default (600 s) would silently hide older messages.
_TTL_FOREVER = 10 * 365 * 24 * 3600  # seconds


def sqlite_session_class(durability: str) -> Any:
    """openai-agents' ``SQLiteSession`` as it syncs by default ("fsync": synchronous=FULL),
    or with synchronous=NORMAL ("flush"), the SQLite setting closest to our flush."""
    from agents.memory import SQLiteSession

    if durability != "flush":
        return SQLiteSession

    class _NormalSyncSession(SQLiteSession):
        @staticmethod
        def _configure_connection(conn: sqlite3.Connection) -> None:
            SQLiteSession._configure_connection(conn)
            conn.execute("PRAGMA synchronous=NORMAL")

    return _NormalSyncSession


class _AgentsSession(Store):
    """openai-agents ``SQLiteSession`` on a file database; methods are async."""

    name = "agents-sqlite"
    label = "openai-agents SQLiteSession"
    notes = (
        "agents.memory.SQLiteSession, file DB (WAL); fsync = its default synchronous=FULL, "
        "flush = PRAGMA synchronous=NORMAL. No date/keyword query API: search = get_items() "
        "+ filter; get(i) = get_items(limit=count-i)[0]."
    )
    _encrypted = False

    def open(self, durability: str) -> None:

        cls = sqlite_session_class(durability)
        # One loop for the whole session: asyncio.run() per call would start a fresh thread
        # pool, and SQLiteSession opens a connection per worker thread.
        self._loop = asyncio.new_event_loop()
        self._inner = cls("bench", self.directory / "agents.db")
        self._session: Any = self._inner
        if self._encrypted:
            from agents.extensions.memory import EncryptedSession

            self._session = EncryptedSession(
                "bench", self._inner, self.key.decode(), ttl=_TTL_FOREVER
            )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        self._inner.close()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        self._run(self._session.add_items(list(messages)))

    def append(self, message: Message) -> None:
        self._run(self._session.add_items([message]))

    def load(self) -> list[Any]:
        return list(self._run(self._session.get_items()))

    def tail(self, n: int) -> list[Any]:
        return list(self._run(self._session.get_items(limit=n)))

    def get(self, index: int, count: int) -> Any:
        return self._run(self._session.get_items(limit=count - index))[0]


class AgentsSQLite(_AgentsSession):
    """Plain ``SQLiteSession`` (no encryption)."""


class AgentsEncrypted(_AgentsSession):
    """``EncryptedSession`` (Fernet per item, HKDF-derived key) over ``SQLiteSession``."""

    name = "agents-encrypted"
    label = "openai-agents EncryptedSession"
    notes = (
        "agents.extensions.memory.EncryptedSession over a file SQLiteSession: Fernet per "
        "item stored as base64 text in a JSON envelope, no compression; ttl set to 10 years."
    )
    _encrypted = True


class LangChainFile(Store):
    """langchain-community ``FileChatMessageHistory``: one JSON array, rewritten per message."""

    name = "langchain-file"
    label = "LangChain FileChatMessageHistory"
    notes = (
        "langchain_community FileChatMessageHistory: plaintext JSON array re-read and "
        "rewritten on every add_message, never fsynced (flush column only); messages "
        f"converted with langchain_community.adapters.openai. Built to {REWRITE_CAP:,} max."
    )
    cap = REWRITE_CAP
    durabilities = ("flush",)
    returns_dicts = False

    def open(self, durability: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langchain_community.adapters.openai import convert_dict_to_message
            from langchain_community.chat_message_histories import FileChatMessageHistory
        self._convert = convert_dict_to_message
        self._history = FileChatMessageHistory(str(self.directory / "history.json"))

    def close(self) -> None:
        pass

    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        # Builds write the file once in the class's own format; its add_messages() would
        # rewrite it per message (that cost is what append() measures).
        from langchain_core.messages import messages_to_dict

        new = messages_to_dict([self._convert(m) for m in messages])
        path = self._history.file_path
        path.write_text(json.dumps(json.loads(path.read_text()) + new))

    def append(self, message: Message) -> None:
        self._history.add_message(self._convert(message))

    def load(self) -> list[Any]:
        return list(self._history.messages)

    def tail(self, n: int) -> list[Any]:
        return list(self._history.messages[-n:])

    def get(self, index: int, count: int) -> Any:
        return self._history.messages[index]

    def text(self, message: Any) -> str:
        return str(message.content) + json.dumps(message.additional_kwargs)


class WholeFile(Store):
    """Load all, append, JSONL-encode, Fernet-encrypt the whole file, write it back."""

    name = "whole-file"
    label = "whole-file Fernet JSONL"
    notes = (
        "The naive approach: every append reads and decrypts the whole file, adds the message, "
        "re-encrypts all of it with one Fernet token and replaces the file (tmp + rename; "
        f"+ fsync for the fsync column). stdlib json, no compression. Built to {REWRITE_CAP:,}."
    )
    cap = REWRITE_CAP

    def open(self, durability: str) -> None:
        self._fernet = Fernet(self.key)
        self._path = self.directory / "history.fernet"
        self._fsync = durability == "fsync"

    def close(self) -> None:
        pass

    def load(self) -> list[Any]:
        try:
            token = self._path.read_bytes()
        except FileNotFoundError:
            return []
        text = self._fernet.decrypt(token).decode()
        return [json.loads(line) for line in text.splitlines()]

    def save(self, messages: Sequence[Message]) -> None:
        """Replace the whole history atomically."""
        body = "\n".join(json.dumps(m, ensure_ascii=False) for m in messages).encode()
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(self._fernet.encrypt(body))
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        self.save([*self.load(), *messages])

    def append(self, message: Message) -> None:
        self.save([*self.load(), message])

    def tail(self, n: int) -> list[Any]:
        return self.load()[-n:]

    def get(self, index: int, count: int) -> Any:
        return self.load()[index]


class SQLiteTuned(Store):
    """Hand-tuned stdlib sqlite3: WAL, one row per message, zstd + Fernet per row."""

    name = "sqlite-tuned"
    label = "hand-tuned sqlite3 + zstd + Fernet"
    notes = (
        "stdlib sqlite3, WAL, table (seq INTEGER PRIMARY KEY, ts INTEGER, data BLOB) with an "
        "index on ts; each row msgspec JSON, zstd when smaller, Fernet, stored as raw bytes. "
        "fsync = synchronous=FULL, flush = NORMAL. between = indexed SQL range; search streams."
    )

    def open(self, durability: str) -> None:
        self._sealer = Sealer(self.key)
        self._db = sqlite3.connect(self.directory / "tuned.db", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durability == 'fsync' else 'NORMAL'}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS msg (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, "
            "data BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS msg_ts ON msg (ts)")
        row = self._db.execute("SELECT max(seq) FROM msg").fetchone()
        self._next = 0 if row[0] is None else row[0] + 1

    def close(self) -> None:
        self._db.close()

    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        rows = [
            (self._next + i, int(ts * 1e6), self._sealer.seal(m))
            for i, (m, ts) in enumerate(zip(messages, timestamps, strict=True))
        ]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO msg VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")
        self._next += len(rows)

    def append(self, message: Message) -> None:
        self._db.execute(
            "INSERT INTO msg VALUES (?, ?, ?)",
            (self._next, time.time_ns() // 1000, self._sealer.seal(message)),
        )
        self._next += 1

    def _rows(self, sql: str, *args: object) -> list[Any]:
        return [self._sealer.unseal(b) for (b,) in self._db.execute(sql, args)]

    def load(self) -> list[Any]:
        return self._rows("SELECT data FROM msg ORDER BY seq")

    def tail(self, n: int) -> list[Any]:
        return self._rows("SELECT data FROM msg ORDER BY seq DESC LIMIT ?", n)[::-1]

    def get(self, index: int, count: int) -> Any:
        return self._rows("SELECT data FROM msg WHERE seq = ?", index)[0]

    def between(self, since: float, until: float) -> list[Any]:
        return self._rows(
            "SELECT data FROM msg WHERE ts >= ? AND ts < ? ORDER BY seq",
            int(since * 1e6),
            int(until * 1e6),
        )

    def search(self, keyword: str) -> list[Any]:
        needle = keyword.lower().encode()
        hits = []
        for (blob,) in self._db.execute("SELECT data FROM msg ORDER BY seq"):
            raw = self._sealer.unseal_bytes(blob)
            if needle in raw.lower():
                hits.append(self._sealer.decode(raw))
        return hits


class Floor(Store):
    """The floor: zstd + Fernet per record, length-prefixed, os.write to a bare file."""

    name = "floor"
    label = "floor: bare file + zstd + Fernet"
    notes = (
        "Same record sealing as sqlite-tuned, 4-byte length prefix, os.write on an O_APPEND fd "
        "(+ os.fdatasync for fsync). No index, no lock, no timestamps: reads hop the length "
        "prefixes from the start of the file; between is n/a."
    )
    _FRAME = struct.Struct("<I")

    def open(self, durability: str) -> None:
        self._sealer = Sealer(self.key)
        self._path = self.directory / "floor.log"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fsync = durability == "fsync"

    def close(self) -> None:
        os.close(self._fd)

    def _frame(self, message: Message) -> bytes:
        blob = self._sealer.seal(message)
        return self._FRAME.pack(len(blob)) + blob

    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        os.write(self._fd, b"".join(self._frame(m) for m in messages))
        if self._fsync:
            os.fdatasync(self._fd)

    def append(self, message: Message) -> None:
        os.write(self._fd, self._frame(message))
        if self._fsync:
            os.fdatasync(self._fd)

    def _blobs(self) -> Iterator[bytes]:
        # Buffered streaming reads keep memory flat for search; load pays the same hops.
        with open(self._path, "rb", buffering=1 << 20) as f:
            read, unpack = f.read, self._FRAME.unpack
            while header := read(4):
                yield read(unpack(header)[0])

    def load(self) -> list[Any]:
        unseal = self._sealer.unseal
        return [unseal(b) for b in self._blobs()]

    def tail(self, n: int) -> list[Any]:
        blobs = list(self._blobs())[-n:]
        return [self._sealer.unseal(b) for b in blobs]

    def get(self, index: int, count: int) -> Any:
        for i, blob in enumerate(self._blobs()):
            if i == index:
                return self._sealer.unseal(blob)
        raise IndexError(index)

    def search(self, keyword: str) -> list[Any]:
        needle = keyword.lower().encode()
        hits = []
        for blob in self._blobs():
            raw = self._sealer.unseal_bytes(blob)
            if needle in raw.lower():
                hits.append(self._sealer.decode(raw))
        return hits


PEERS: tuple[type[Store], ...] = (
    AgentsEncrypted,
    AgentsSQLite,
    LangChainFile,
    WholeFile,
    SQLiteTuned,
    Floor,
)

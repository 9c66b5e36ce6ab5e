"""The ``LogStorage`` protocol: what ``ConversationCodec`` needs from where records live.

A log is a header followed by record bodies, each with its timestamp (``ts_us``, µs since
the epoch). The codec encodes and seals bodies itself (``records``); a storage keeps them in
order and answers by sequence number. ``storage.file.log.FileLog`` is the file storage
(FORMAT.md), ``storage.memory.MemoryLog`` an in-memory one, ``storage.postgres.PostgresLog``
a PostgreSQL one; all pass the conformance suite ``tests/test_storage.py``.

Operations, and what each guarantees:

- ``transaction(write=)``: holds the log's lock (exclusive for ``write``) and brings the
  view (``fmt``, ``index``) up to date; re-entrant within one thread; a nested transaction
  never upgrades a read to a write. Every other call runs inside one. A read may promise
  to read only the last ``tail`` records.
- ``create(header, fmt)``, ``rewrite(header, fmt, records, dictionary)``: replace the whole
  log atomically — a reader sees all the old records or all the new ones — after removing
  whatever a crashed rewrite left (``remove_stale_temps``).
- ``append(bodies, tss, dictionary)``: add records at the end, all or none.
- ``truncate(count)``: drop the records from ``count`` on.
- ``read_body(seq)``, ``read_bodies(start, stop)``: read back a body, a range of bodies.
- ``index`` (the head and counters): ``len(index)`` records, ``index.tss[seq]`` their
  times, ``index.span(seq)`` where each lies, ``index.first_at_or_after(ts_us)``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from ..records import RecordCodec, RecordRejected, SealedRecords
from .postings import PostingsStore

__all__ = [
    "Hold",
    "IndexMismatch",
    "LogFormat",
    "LogIndex",
    "LogStorage",
    "Polling",
    "StorageOpener",
    "StoreBackend",
    "adopt_dictionary",
]


@dataclass(frozen=True, slots=True)
class LogFormat:
    """What the codec learned from a log's header: where records start and how to read them."""

    log_id: bytes
    data_start: int
    records: RecordCodec
    sealed: bool
    format_version: int = 1  # FORMAT.md §12: 2 for a log bound to a context (§4.2)


class IndexMismatch(Exception):
    """The index points at bytes that are not one whole record: rebuild it and retry."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class LogIndex(Protocol):
    """Where each record lies and when it was written (the head and counters of a log)."""

    @property
    def tss(self) -> Sequence[int]:
        """Per record, its timestamp (µs since the epoch), non-decreasing."""
        ...

    @property
    def path(self) -> str:
        """The index file, if the storage keeps one ("" otherwise)."""
        ...

    def __len__(self) -> int: ...

    def span(self, seq: int) -> tuple[int, int]:
        """The ``[start, end)`` position of record ``seq`` in the storage's own units."""
        ...

    def first_at_or_after(self, ts_us: int) -> int:
        """The first seq whose timestamp is >= ``ts_us`` (``len`` when none is)."""
        ...


class LogStorage(Protocol):
    """One conversation log's records; see the module docstring for each operation."""

    on_change: Callable[[], None]  # called when another writer changed the log

    @property
    def fmt(self) -> LogFormat | None:
        """The header's reading of the log; None when there is no log yet."""
        ...

    @property
    def index(self) -> LogIndex: ...

    @property
    def seen(self) -> tuple[int, int, int] | None:
        """An opaque version of the log as last seen (changes with every write)."""
        ...

    def probe(self) -> None:
        """Identify an existing log from its header (fail fast on a wrong key)."""
        ...

    def transaction(
        self, *, write: bool, tolerant: bool = False, tail: int | None = None
    ) -> AbstractContextManager[None]:
        """``tail=n`` (reads only): a promise to read at most the last ``n`` records (0:
        none), which a storage may fetch with the view (a database: in one round trip)."""
        ...

    def create(self, header: bytes, fmt: LogFormat) -> None: ...

    def append(
        self, bodies: list[bytes], tss: list[int], dictionary: tuple[int, bytes] | None = None
    ) -> None: ...

    def truncate(self, count: int) -> None: ...

    def rewrite(
        self,
        header: bytes,
        fmt: LogFormat,
        records: Iterable[tuple[bytes, int]],
        dictionary: bytes | None = None,
    ) -> None: ...

    def read_body(self, seq: int) -> bytes: ...

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]: ...

    def rebuild_index(self) -> None: ...

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` if the current transaction is rolled back after all, whether or
        not it wrote (a key rotation of no log yet changes only the codec): a storage that
        commits when the outermost transaction ends (a database) and fails to, or ends it
        in an exception. A storage whose every write is committed when it returns never
        calls it."""
        ...

    def stored(self) -> tuple[bytes, bytes | None] | None:
        """The header's bytes and the dictionary record's body (None: none) as stored, for
        a copy that keeps the records' bytes; None when there is no log."""
        ...

    def remove(self, also: Callable[[], None] = ...) -> None:
        """Delete the log (then run ``also``)."""
        ...

    def remove_stale_temps(self) -> None: ...

    def size(self) -> int:
        """The log's size in the storage's units (bytes for a file)."""
        ...

    def keyword_index(self) -> PostingsStore | None:
        """Where the log's blind keyword index keeps its segments (``storage.postings``);
        None when this storage keeps none."""
        ...

    def close(self) -> None: ...

    def watch(self) -> Polling:
        """What ``ConversationCodec.wait`` pauses with between two looks at the log."""
        ...


class Polling:
    """How ``ConversationCodec.wait`` pauses between two looks at a log: it sleeps, backing
    off from 1 ms to ``LONGEST`` seconds. A storage that hears of changes returns one that
    wakes early (PostgreSQL: ``postgres.notify.Watch``); the look, not the wake-up, says
    whether the log changed."""

    LONGEST = 0.1  # seconds: a message is seen within ~100 ms of its commit

    def __init__(self) -> None:
        self._pause = 0.001  # seconds

    def backoff(self, most: float | None) -> float:
        """The next pause of the back-off, at most ``most`` seconds (None: no bound)."""
        pause, self._pause = self._pause, min(self._pause * 2, self.LONGEST)
        return pause if most is None else min(pause, most)

    def sleep(self, most: float | None) -> None:
        """Pause until the next look, at most ``most`` seconds (None: no bound)."""
        time.sleep(self.backoff(most))

    async def pause(self, most: float | None) -> None:
        """``sleep`` for a coroutine: the event loop runs meanwhile, and no thread waits."""
        await asyncio.sleep(self.backoff(most))

    def close(self) -> None:
        """Stop watching."""

    def __enter__(self) -> Polling:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# Opens one log's storage, given the codec's header reader (``attach``: header bytes to a
# ``LogFormat``, or a library error for a wrong key or a foreign log). ``ConversationCodec``
# takes one as ``storage=``; a ``ConversationStore`` makes one per conversation.
StorageOpener = Callable[[Callable[[bytes], LogFormat]], LogStorage]


class StoreBackend(Protocol):
    """Where a ``ConversationStore`` keeps its conversations: one log per conversation id.

    ``storage.file.store.FileStore`` is a directory of log files; the PostgreSQL backend
    keeps every conversation in one database. ``storage.backend_for(root)`` picks one.
    """

    @property
    def name(self) -> str:
        """The root as shown in messages (a URL without its password)."""
        ...

    def locate(
        self, conversation_id: str, *, lock_timeout: float | None = None
    ) -> tuple[str | os.PathLike[str], StorageOpener | None]:
        """What to open ``ConversationCodec`` with: a path (and None, a file log), or a
        name for messages and the opener of the conversation's storage (whose writer
        lock waits at most ``lock_timeout`` seconds; None: forever)."""
        ...

    def exists(self, conversation_id: str) -> bool:
        """Whether the conversation has a log (no key needed)."""
        ...

    def has_files(self, conversation_id: str) -> bool:
        """Whether anything of the conversation is stored (a log, or a crash's leftovers)."""
        ...

    def ids(self) -> list[str]:
        """Every conversation id with a log, sorted (no log is opened, no key needed)."""
        ...

    def footprint(self, conversation_id: str) -> tuple[int, bytes]:
        """Bytes the conversation takes, and its header's first bytes (to tell a sealed
        log in a listing when it cannot be opened)."""
        ...

    def close(self) -> None: ...


class Hold:
    """The context of one transaction of a storage that keeps its own nesting (memory, a
    database): ``begin(write)`` on entry, ``end(error)`` on exit (None when it succeeded)."""

    __slots__ = ("_begin", "_end", "_write")

    def __init__(
        self,
        begin: Callable[[bool], None],
        end: Callable[[BaseException | None], None],
        write: bool,
    ) -> None:
        self._begin, self._end, self._write = begin, end, write

    def __enter__(self) -> None:
        self._begin(self._write)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end(exc)


def adopt_dictionary(fmt: LogFormat, body: bytes, *, have_one: bool) -> None:
    """Make the record codec of ``fmt`` use the dictionary record ``body`` (FORMAT.md §5.3;
    for storages that keep the dictionary apart from the records).

    :raises RecordRejected: a plain log, a second dictionary, or a body that does not open.
    """
    records = fmt.records
    if not isinstance(records, SealedRecords):
        raise RecordRejected("a plain log holds no dictionary records")
    if have_one:
        raise RecordRejected("the log holds a dictionary record already")
    records.use_dictionary(1, records.decode_dictionary(body, 1))

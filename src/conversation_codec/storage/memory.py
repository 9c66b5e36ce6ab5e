"""An in-memory ``LogStorage``: a log that lives as long as its ``MemoryLog`` object.

For tests of code built on conversation-codec, and throwaway sessions (as SQLite's
``":memory:"``). It keeps the header and the record bodies the codec hands it, in order,
with their timestamps; nothing is framed, written or synced. Transactions take one
re-entrant lock (readers too: there are no other processes to share with).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..records import SealedRecords
from .base import Hold, LogFormat, LogStorage, Polling, adopt_dictionary

__all__ = ["MemoryLog"]


class _MemoryIndex:
    """Record ``seq`` lies at ``[seq, seq + 1)``: positions are sequence numbers."""

    __slots__ = ("tss",)

    path = ""  # no index file

    def __init__(self) -> None:
        self.tss: list[int] = []

    def __len__(self) -> int:
        return len(self.tss)

    def span(self, seq: int) -> tuple[int, int]:
        self.tss[seq]
        return seq, seq + 1

    def first_at_or_after(self, ts_us: int) -> int:
        return bisect.bisect_left(self.tss, ts_us)


class MemoryLog:
    """One conversation log in memory. ``attach`` reads a header (as for ``FileLog``)."""

    def __init__(self, *, attach: Callable[[bytes], LogFormat] | None = None) -> None:
        self._attach = attach
        self._header: bytes | None = None
        self._fmt: LogFormat | None = None
        self._bodies: list[bytes] = []
        self._index = _MemoryIndex()
        self._dictionary_at: int | None = None  # seq the dictionary record precedes
        self._dictionary: bytes | None = None  # its body
        self._version = (0, 0)  # (writes, truncations): what ``seen`` reports
        self._mutex = threading.RLock()
        self._depth = 0
        self._writable = False
        self.on_change: Callable[[], None] = lambda: None

    @property
    def fmt(self) -> LogFormat | None:
        return self._fmt

    @property
    def index(self) -> _MemoryIndex:
        return self._index

    @property
    def seen(self) -> tuple[int, int, int] | None:
        return (0, *self._version)

    def probe(self) -> None:
        if self._header is not None and self._attach is not None:
            self._attach(self._header)

    # -- transactions ----------------------------------------------------------------------

    def transaction(self, *, write: bool, tolerant: bool = False, tail: int | None = None) -> Hold:
        return Hold(self._begin, self._end, write)

    def _begin(self, write: bool) -> None:
        self._mutex.acquire()
        if self._depth and write and not self._writable:
            self._mutex.release()
            raise RuntimeError("cannot upgrade a read transaction to a write")
        if not self._depth:
            self._writable = write
        self._depth += 1

    def _end(self, error: BaseException | None = None) -> None:
        self._depth -= 1
        self._mutex.release()

    def _check_write(self) -> LogFormat:
        if not (self._depth and self._writable):
            raise RuntimeError("write outside a write transaction")
        if self._fmt is None:
            raise RuntimeError("no log yet: create() it first")
        return self._fmt

    # -- writes ------------------------------------------------------------------------------

    def create(self, header: bytes, fmt: LogFormat) -> None:
        self.rewrite(header, fmt, ())

    def append(
        self, bodies: list[bytes], tss: list[int], dictionary: tuple[int, bytes] | None = None
    ) -> None:
        fmt = self._check_write()
        if len(bodies) != len(tss):
            raise ValueError("one timestamp per body")
        if dictionary is not None:
            adopt_dictionary(fmt, dictionary[1], have_one=self._dictionary_at is not None)
            self._dictionary_at = len(self._bodies) + dictionary[0]
            self._dictionary = dictionary[1]
        self._bodies.extend(bodies)
        self._index.tss.extend(tss)
        self._version = (self._version[0] + 1, self._version[1])

    def truncate(self, count: int) -> None:
        fmt = self._check_write()
        del self._bodies[count:]
        del self._index.tss[count:]
        if self._dictionary_at is not None and self._dictionary_at >= count:
            self._dictionary_at = self._dictionary = None  # the dictionary goes too
            if isinstance(fmt.records, SealedRecords):
                fmt.records.drop_dictionary()
        self._version = (self._version[0] + 1, self._version[1] + 1)

    def rewrite(
        self,
        header: bytes,
        fmt: LogFormat,
        records: Iterable[tuple[bytes, int]],
        dictionary: bytes | None = None,
    ) -> None:
        if not (self._depth and self._writable):
            raise RuntimeError("write outside a write transaction")
        pairs = list(records)  # all or nothing: the old log stays until this succeeds
        if dictionary is not None:
            adopt_dictionary(fmt, dictionary, have_one=False)
        self._header, self._fmt = header, fmt
        self._bodies = [body for body, _ in pairs]
        self._index.tss = [ts for _, ts in pairs]
        self._dictionary_at = 0 if dictionary is not None else None
        self._dictionary = dictionary
        self._version = (self._version[0] + 1, self._version[1] + 1)

    def remove(self, also: Callable[[], None] = lambda: None) -> None:
        self._header = self._fmt = self._dictionary_at = self._dictionary = None
        self._bodies, self._index.tss = [], []
        self._version = (self._version[0] + 1, self._version[1] + 1)
        also()

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Every write is done when it returns: nothing is ever rolled back."""

    def stored(self) -> tuple[bytes, bytes | None] | None:
        return None if self._header is None else (self._header, self._dictionary)

    def remove_stale_temps(self) -> None:
        """Nothing is ever left over in memory."""

    def rebuild_index(self) -> None:
        """The index is the log itself: nothing to rebuild."""

    # -- reads -------------------------------------------------------------------------------

    def read_body(self, seq: int) -> bytes:
        self._index.span(seq)
        return self._bodies[seq]

    def read_bodies(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        for seq in range(start, stop):
            yield seq, self.read_body(seq)

    def size(self) -> int:
        """Bytes held: the header and every body."""
        return len(self._header or b"") + sum(map(len, self._bodies))

    def keyword_index(self) -> None:
        """No keyword index in memory: a search scans (it decrypts nothing from disk)."""
        return None

    def close(self) -> None:
        """The records stay: they live as long as this object."""

    def watch(self) -> Polling:
        return Polling()

    def bodies(self) -> Sequence[bytes]:
        """Every stored body in order (for tests of the storage itself)."""
        return tuple(self._bodies)


_CONFORMS: type[LogStorage] = MemoryLog  # mypy checks MemoryLog against the protocol

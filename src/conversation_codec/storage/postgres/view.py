"""The view a ``PostgresLog`` caches of its conversation: header, timestamps, dictionary.

The view (``fmt``, ``index.tss``, the dictionary) is refreshed at the start of each
transaction from the row's ``(epoch, next_seq)``: the same epoch means appends only, so
just the timestamps past the cached count are read; another epoch (a truncation, rewrite
or removal) means a full reload and ``on_change()``. A read served by one statement
(``snapshot``) brings what the refresh needs with it; a transaction reads them itself.

A row without a header is the deletion marker only as ``remove_rows`` leaves it: no
records counted, none stored. One with a NULL header and records (an edit outside the
library) is damage (``CorruptRecordError``), never taken for a deleted log, which the next
append would replace. It is checked whenever a transaction finds the row without a
header, unless this handle's previous one found that same header-less row (same
generation): a hand edit bumps no generation, so a handle that cached the header checks.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from ...errors import CorruptRecordError
from ...records import SealedRecords
from ..base import LogFormat, adopt_dictionary
from .backend import Connection, PostgresBackend
from .queries import NO_ROW, Row, holds_records, load_dictionary, load_tss
from .snapshot import Snapshot

__all__ = ["CachedView", "Incomplete", "PostgresIndex"]


class Incomplete(Exception):
    """A snapshot lacks what the refresh needs (it was asked for less): read a full one."""


class PostgresIndex:
    """Record ``seq`` lies at ``[seq, seq + 1)``: positions are sequence numbers (as for
    ``MemoryLog``); ``tss`` is the cached column ``cc_records.ts`` of the conversation."""

    __slots__ = ("tss",)

    path = ""  # no index file: the records table's primary key is the index

    def __init__(self) -> None:
        self.tss: list[int] = []

    def __len__(self) -> int:
        return len(self.tss)

    def span(self, seq: int) -> tuple[int, int]:
        if not 0 <= seq < len(self.tss):
            raise IndexError(f"no record {seq}: the log holds {len(self.tss)}")
        return seq, seq + 1

    def first_at_or_after(self, ts_us: int) -> int:
        return bisect.bisect_left(self.tss, ts_us)


class CachedView:
    """The cached view of ``PostgresLog`` (a mixin: the log sets these attributes)."""

    backend: PostgresBackend
    conversation_id: str
    fmt: LogFormat | None
    index: PostgresIndex
    on_change: Callable[[], None]
    _attach: Callable[[bytes], LogFormat]
    _header: bytes | None
    _row: Row | None  # the row as of the current transaction; None: reload
    _dict_id: int  # the dictionary fmt.records holds (0: none)
    _dict_body: bytes | None  # its sealed record, as stored
    _where: str

    def _refresh(self, conn: Connection, row: Row | None, snap: Snapshot | None = None) -> None:
        """Bring ``fmt`` and ``index`` up to date with ``row`` (appends: incrementally),
        from ``snap`` when given (``Incomplete`` when it lacks something)."""
        old, self._row = self._row, None  # None until the refresh succeeds
        if row is None or row.header is None:
            # Checked unless this handle saw this very row header-less already: a hand edit
            # leaves the generation as it was, so a cached header gone is checked too.
            if row is not None and (
                old is None or old.generation != row.generation or old.header is not None
            ):
                self._check_removed(conn, row)
            if self.fmt is not None or self._header is not None:
                self._forget_log()
                self.on_change()
            self._row = row or NO_ROW
            return
        if (
            old is not None
            and old.epoch == row.epoch
            and self._header == row.header
            and row.next_seq >= len(self.index)
        ):
            self._load_tss(conn, len(self.index), row.next_seq, snap)
            if row.dict_id != self._dict_id:
                self._load_dictionary(conn, row.dict_id, snap)
            self._row = row
            return
        self._reload(conn, row, snap)
        self._row = row
        self.on_change()

    def _check_removed(self, conn: Connection, row: Row) -> None:
        """Refuse a row without a header that is not the deletion marker (module docstring)."""
        if (
            row.next_seq
            or row.dict_id
            or row.body_bytes
            or holds_records(conn, self.conversation_id, row.generation)
        ):
            raise self._damaged()

    def _damaged(self) -> CorruptRecordError:
        return CorruptRecordError(
            f"{self._where} has no header, yet records are counted or stored: the tables "
            "were changed outside conversation-codec",
            path=self.backend.name,
            offset=0,
        )

    def _reload(self, conn: Connection, row: Row, snap: Snapshot | None = None) -> None:
        """Read the whole view again: the header (attached when it changed), every
        timestamp and the dictionary."""
        assert row.header is not None
        if snap is not None and snap.tss_from:
            raise Incomplete  # before anything changes: the caller reads a full snapshot
        if row.header != self._header or self.fmt is None:
            self._forget_log()
            self.fmt = self._attach(row.header)
            self._header = row.header
        else:
            self._drop_dictionary()
        self.index.tss = []
        self._load_tss(conn, 0, row.next_seq, snap)
        self._load_dictionary(conn, row.dict_id, snap)

    def _forget_log(self) -> None:
        self._drop_dictionary()
        self.fmt, self._header = None, None
        self.index.tss = []

    def _load_tss(self, conn: Connection, start: int, stop: int, snap: Snapshot | None) -> None:
        if start >= stop:
            return
        if snap is not None:
            if snap.tss_from != start:
                raise Incomplete
            got, ends = snap.tss, (start, stop - 1)  # seqs bounded: the count proves them
        else:
            rows = load_tss(conn, self.conversation_id, start)
            got = [ts for _, ts in rows]
            ends = (rows[0][0], rows[-1][0]) if rows else (start, stop - 1)
        if len(got) != stop - start or ends != (start, stop - 1):
            raise CorruptRecordError(
                f"{self._where} holds {len(got)} records from seq {start} where its row "
                f"counts {stop - start}: the tables were changed outside conversation-codec",
                path=self.backend.name,
                offset=start,
            )
        self.index.tss.extend(got)

    def _load_dictionary(self, conn: Connection, dict_id: int, snap: Snapshot | None) -> None:
        self._drop_dictionary()
        if not dict_id:
            return
        if snap is None:
            body = load_dictionary(conn, self.conversation_id, dict_id)
        elif snap.dictionary is None and not snap.full:
            raise Incomplete
        else:
            body = snap.dictionary
        if body is None:
            raise CorruptRecordError(
                f"{self._where} names dictionary {dict_id}, which is missing",
                path=self.backend.name,
                offset=0,
            )
        assert self.fmt is not None
        self._adopt(self.fmt, body, dict_id, have_one=False)

    def _adopt(self, fmt: LogFormat, body: bytes, dict_id: int, *, have_one: bool) -> None:
        adopt_dictionary(fmt, body, have_one=have_one)
        self._dict_id, self._dict_body = dict_id, body

    def _drop_dictionary(self) -> None:
        if self._dict_id and self.fmt is not None and isinstance(self.fmt.records, SealedRecords):
            self.fmt.records.drop_dictionary()
        self._dict_id, self._dict_body = 0, None

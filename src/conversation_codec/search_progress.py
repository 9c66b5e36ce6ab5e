"""SearchProgress: how far one ``ConversationCodec.search`` has read, kept across re-plans.

A search plans the records to read under one lock hold and reads a batch of them per later
hold. Another process may replace the log in between (a compaction or a key rotation: the
same messages, seqs and times under a new ``log_id``) or truncate it (``pop()``). The
search then plans again, under its next hold, for the positions it has not read yet: it
never reads a position twice and skips none. Before that it checks the last record it read
(its time and message): if that is gone or changed, the history it has already handed out
was rewritten (``save()`` that rewrote it, ``clear()``, ``pop()`` of what it read), and the
search raises ``LogReplacedError`` rather than mix two histories silently.

So a search returns, once per position of the log as it was when the search started, the
message that position holds when its batch is read: a compaction changes nothing, and a
``pop()`` and re-``append()`` of messages the search has not reached yet are read as they
are then (the popped message, the new one, or none if it reads in between; never two at one
position), and those it has read stay as read. Appends made after it started are not read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import LogReplacedError

__all__ = ["MAX_REPLANS", "SearchProgress"]

# Re-plans in a row with no batch read in between before a search gives up: another writer
# that replaces the log faster than one batch can be read (a compaction per few ms).
MAX_REPLANS = 8

Record = tuple[int, bytes]  # (ts_us, message JSON text) of an authenticated record


@dataclass(slots=True)
class SearchProgress:
    """The positions ``[lo, hi)`` a search has still to read, the visible start ``base``
    its hits count from (both fixed by the first plan), and the last record it read."""

    base: int | None = None
    lo: int = 0
    hi: int = 0
    edge: tuple[int, int, bytes] | None = None  # (seq, ts_us, text) of the last record read
    replans: int = 0
    rewritten: bool = False
    seen: dict[int, Record] = field(default_factory=dict)  # edges of the batch being read

    def plan(
        self,
        base: int,
        first: int,
        stop: int,
        read: Callable[[int], Record | None],
        parse: Callable[[int, bytes], Any],
    ) -> tuple[int, int, int]:
        """Return ``(base, first, stop)`` of what is left to read (under the read hold):
        the first plan's, clipped to ``[first, stop)`` as the log now is.

        :raises LogReplacedError: the last record read is gone or no longer the same.
        """
        if self.base is None:
            self.base, self.lo, self.hi = base, first, stop
            return base, first, stop
        if self.edge is not None:
            seq, ts, text = self.edge
            now = read(seq)
            if (
                now is None
                or now[0] != ts
                or (now[1] != text and parse(seq, now[1]) != parse(seq, text))
            ):
                self.rewritten = True
                raise LogReplacedError(
                    "the messages this search had already read were rewritten meanwhile "
                    "(by save(), clear() or pop() in another writer): search again"
                )
        first = max(first, self.lo)
        return self.base, first, max(first, min(stop, self.hi))

    def saw(self, seq: int, ts_us: int, text: bytes) -> None:
        """Note a record read at an edge of the batch being read."""
        self.seen[seq] = (ts_us, text)

    def passed(self, start: int, stop: int, *, newest_first: bool) -> None:
        """Records ``start .. stop`` were read and their hits handed out."""
        if newest_first:
            self.hi, edge = min(self.hi, start), start
        else:
            self.lo, edge = max(self.lo, stop), stop - 1
        got = self.seen.get(edge)
        self.edge = None if got is None else (edge, *got)
        self.seen.clear()
        self.replans = 0

    def retry(self, exc: LogReplacedError) -> None:
        """Count a replacement seen by the search; raise when it should not plan again.

        :raises LogReplacedError: what was read was rewritten, or the log was replaced
            ``MAX_REPLANS`` times in a row with no batch read in between.
        """
        self.seen.clear()
        if self.rewritten:
            raise exc
        self.replans += 1
        if self.replans > MAX_REPLANS:
            raise LogReplacedError(
                f"the log was replaced {self.replans} times in a row while a search read "
                "it, too often to read one batch in between: search again later"
            ) from exc

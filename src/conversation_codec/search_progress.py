"""SearchProgress: how far one search has read, kept across re-plans (and reopens).

A search plans the records to read under one lock hold and reads a batch of them per later
hold. Another process may replace the log in between: a compaction or a key rotation (the
same messages and times under a new ``log_id``), one that drops a prefix (``prune()``, a
compaction under ``max_messages``), or a truncation (``pop()``). The search then plans
again, under its next hold, for what it has not read yet: it never reads a position twice
and skips none.

Positions are kept as the log held them when the search began ("start positions"); a
re-plan finds how many records were dropped from the front since (``shift``) by finding
again the first and the last record the search has read (or, when a prune dropped both,
the last record it planned to read), by what they are (their time and message), not by
where they were. If either end of what was read is changed, or gone other than with a
dropped prefix, what the search has handed out was rewritten (a ``save()`` that rewrote
it, ``clear()``, ``pop()`` of what it read) and it raises ``LogReplacedError`` rather
than mix two histories silently (so it does when it cannot tell: a prune past what it read
and a ``pop()`` of its last planned record). A rewrite that leaves both ends of what was
read as they were (a message in between changed, every later one kept, time included) is
not seen.

So a search returns, once per position of the log as it was when the search started, the
message that position holds when its batch is read, numbered as then: a compaction or a
prune changes nothing, and a ``pop()`` and re-``append()`` of messages the search has not
reached yet are read as they are then (the popped message, the new one, or none if it
reads in between; never two at one position). Appends made after it started are not read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import LogReplacedError

__all__ = ["MAX_REPLANS", "SearchProgress"]

# Re-plans in a row with no batch read in between before a search gives up: another writer
# that replaces the log faster than one batch can be read (a compaction per few ms).
MAX_REPLANS = 8

Record = tuple[int, bytes]  # (ts_us, message JSON text) of an authenticated record
Read = Callable[[int], Record | None]
# same(ts_us, top): the records ``(seq, ts_us, text)`` the index gives that time, at seqs up
# to ``top``, from there down (read a batch at a time)
Same = Callable[[int, int], Iterator[tuple[int, int, bytes]]]


@dataclass(slots=True)
class SearchProgress:
    """The start positions ``[lo, hi)`` a search has still to read and the visible start
    ``base`` its hits count from (all fixed by the first plan); ``shift``, the records
    dropped from the front since; and the first and last record read."""

    base: int | None = None
    lo: int = 0
    hi: int = 0
    shift: int = 0
    low: tuple[int, int, bytes] | None = None  # (start position, ts_us, text)
    high: tuple[int, int, bytes] | None = None
    top: int = 0  # the first plan's stop
    end: tuple[int, int, bytes] | None = None  # the last record planned (top - 1)
    replans: int = 0
    rewritten: bool = False

    def plan(
        self,
        base: int,
        first: int,
        stop: int,
        read: Read,
        parse: Callable[[int, bytes], Any],
        same: Same,
    ) -> tuple[int, int, int]:
        """Return ``(base, first, stop)`` of what is left to read (under the read hold), as
        records of the log as it is now: the first plan's, clipped to ``[first, stop)``.

        :raises LogReplacedError: what was read is gone or no longer the same.
        """
        if self.base is None or self.high is None:  # nothing read yet: (re)start here
            self.base, self.lo, self.hi, self.shift, self.end = base, first, stop, 0, None
            self.top = stop
            return base, first, stop
        shift = self._find(read, parse, same)
        if shift is None:
            self.rewritten = True
            raise LogReplacedError(
                "the messages this search had already read were rewritten or removed "
                "meanwhile (by save(), clear(), pop() or prune() in another writer): "
                "search again"
            )
        self.shift = shift
        first = max(first, self.lo - shift)
        return self.base - shift, first, max(first, min(stop, self.hi - shift))

    def _find(self, read: Read, parse: Callable[[int, bytes], Any], same: Same) -> int | None:
        """The shift at which the first and the last record read are (unless dropped),
        found from the last one read, or from the last one planned when every record
        read was dropped (a prune past them)."""
        read_ends = [r for r in (self.low, self.high) if r is not None]
        for anchor in (self.high, self.end):
            if anchor is None:
                continue
            top, ts, text = anchor
            message: Any = None
            for at, now_ts, now_text in same(ts, top - self.shift):
                if now_ts != ts:
                    continue
                if now_text != text:  # the same message, encoded again (or another one)
                    message = parse(top, text) if message is None else message
                    if parse(at, now_text) != message:
                        continue
                shift = top - at
                if all(r[0] < shift or _same(read, parse, r[0] - shift, r) for r in read_ends):
                    return shift
        return None

    def batch(self, read: Read, *, last: bool) -> None:
        """A batch was read (still under its hold): unless it was the ``last``, note the
        last record planned, if no batch read it (once: a search of one batch never
        needs it, and newest-first reads it first)."""
        if self.end is None and not last and self.base is not None:
            got = read(self.top - 1 - self.shift)
            self.end = None if got is None else (self.top - 1, *got)

    def saw(self, seq: int, ts_us: int, text: bytes) -> None:
        """Note record ``seq`` (of the log as it is now) as read."""
        at = seq + self.shift
        if at == self.top - 1:
            self.end = (at, ts_us, text)
        if self.low is None or at < self.low[0]:
            self.low = (at, ts_us, text)
        if self.high is None or at > self.high[0]:
            self.high = (at, ts_us, text)

    def passed(self, start: int, stop: int, *, newest_first: bool) -> None:
        """Records ``start .. stop`` (of the log as it is now) were read and their hits
        handed out."""
        if newest_first:
            self.hi = min(self.hi, start + self.shift)
        else:
            self.lo = max(self.lo, stop + self.shift)
        self.replans = 0

    def retry(self, exc: LogReplacedError) -> None:
        """Count a replacement seen by the search; raise when it should not plan again.

        :raises LogReplacedError: what was read was rewritten, or the log was replaced
            ``MAX_REPLANS`` times in a row with no batch read in between.
        """
        if self.rewritten:
            raise exc
        self.replans += 1
        if self.replans > MAX_REPLANS:
            raise LogReplacedError(
                f"the log was replaced {self.replans} times in a row while a search read "
                "it, too often to read one batch in between: search again later"
            ) from exc


def _same(
    read: Read, parse: Callable[[int, bytes], Any], at: int, was: tuple[int, int, bytes]
) -> bool:
    """Whether record ``at`` is the one read as ``was``: the same time and message."""
    now = read(at) if at >= 0 else None
    return now is not None and (
        now[0] == was[1] and (now[1] == was[2] or parse(at, now[1]) == parse(at, was[2]))
    )

"""LiveTail: ``wait()``, a live tail's wait for a message newer than a given one.

A mixin of ``ConversationCodec`` (on ``CodecCore``). Seqs are positions in the visible
history: under ``max_messages`` a full window slides by one at every append, so the visible
count stops growing and a seq names a given message only until the next write (review r2,
4: a wait compared that count with ``after`` and never woke). A wait therefore reads
``after`` once, against the window at its first look, and from then on counts the log's
records, which only grow while nothing rewrites the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .core import CodecCore
from .options import check_int, check_seconds

__all__ = ["LiveTail", "WaitMark"]


class WaitMark:
    """Where one wait stands: the record whose successor it waits for.

    ``after`` is a position in the visible history (-1: before the first). At the first
    look it becomes a record number, ``base + after`` (``base``: the first visible record;
    past the newest, the number that many places after the window's first record). Records
    keep their numbers while the log's ``log_id`` stays: appends add after them, and a pop
    takes the newest away, so the one appended next takes the popped one's number, as a
    position would. A rewrite or ``clear()`` gives the log a new ``log_id`` (FORMAT.md §8.1)
    and may renumber every record (a compaction drops the ones ``max_messages`` hides): then
    ``after`` is read again, against the rewritten log's window, which a compaction keeps.
    Rejected: counting records alone (a compaction would make a wait count the dropped
    records again) and reading ``after`` again at each look (a full window never grows).
    """

    def __init__(self, after: int) -> None:
        self.after = after
        self._log_id: bytes | None = None
        self._record: int | None = None  # the record numbered so; None: not looked yet

    def reached(self, log_id: bytes | None, count: int, base: int) -> bool:
        """Take one look (``count`` records, the first visible at ``base``): True once a
        record after the marked one is stored."""
        if self._record is None or log_id != self._log_id:
            self._log_id, self._record = log_id, base + self.after
        return count > self._record + 1


class LiveTail(CodecCore):
    """``wait()``, and the look it repeats (which ``AsyncConversationCodec.wait`` shares)."""

    def wait(self, after: int, timeout: float | None = None) -> bool:
        """Block until a message newer than the one at seq ``after`` is stored (a live
        tail; -1: any message); return False when ``timeout`` seconds pass first (None: wait
        for ever).

        ``after`` is a position in the visible history as it is at the wait's first look.
        Without ``max_messages`` (or while its window is not full) that is the message's
        seq, and this returns once seq ``after + 1`` exists. Once the window is full, every
        append slides it by one (the newest message is always at N - 1): the wait then
        returns once a message is appended after the one that was at ``after`` when it first
        looked, however far the window slides meanwhile. So ``seq = codec.append(m)`` (or
        ``len(codec) - 1``), ``codec.wait(seq)``, then ``codec.tail(k)`` wakes for the next
        message on every storage; but if another writer appends between the append and
        the wait's first look, ``seq`` names that writer's message by then, and the wait
        is for the one after it (positions move; a tail that must not miss it reads on
        from the last message's time: ``search(since=...)``). A pop then an append gives
        the popped message's position to the new one, which is not newer; a rewrite by
        another writer meanwhile (``compact`` and ``prune`` included) reads ``after`` again
        against the rewritten window.

        Polls the storage (another process's or host's appends included), backing off
        from 1 ms to 100 ms: a message is seen within ~100 ms of its commit. On PostgreSQL
        the writer's commit notifies the waiters at once (LISTEN/NOTIFY), and the polls
        are ``poll_interval`` apart (``PostgresBackend``) while that works.
        """
        arrived = self._arrival(after)
        check_seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._log.watch() as pauses:
            while not arrived():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                pauses.sleep(left)
        return True

    def _arrival(self, after: int) -> Callable[[], bool]:
        """The look ``wait(after)`` repeats, one read of the index per call (no decryption):
        True once a message newer than the one at ``after`` is stored (``WaitMark``).

        :raises TypeError, ValueError: ``after`` is not an int >= -1.
        """
        mark = WaitMark(check_int(after, "after", -1))

        def arrived() -> bool:
            with self._holding(write=False, tail=0):
                fmt = self._log.fmt
                log_id = None if fmt is None else fmt.log_id
                return mark.reached(log_id, len(self._log.index), self._base())

        return arrived

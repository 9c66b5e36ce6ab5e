"""``PostgresSegments``: a conversation's keyword index in ``cc_kwi_segments``.

The same sealed segments as the file's sidecar ``P.kwi`` (FORMAT.md §17.3), one row each,
written in the transaction that writes the records they index (``exact``): every append
adds its segment, a pop or rewrite replaces the whole index, a deletion removes it, all
committed (or rolled back) with the records. So the index never lags nor disagrees, and
needs none of the file's checks against the log. The conversation's row carries the
index's version (``kwi``: 0 for none, bumped at every replacement), read with the row at
the start of every transaction: a reader's segments stay valid while ``(epoch, kwi)``
stands (only appends happened), and it then reads just the segments past those it holds.
"""

from __future__ import annotations

from collections.abc import Callable

from ...crypto import RecordKey
from ...keyword_index import Postings
from ..file.kwi import KwiState, Segment, read_frames
from ..postings import ChainMoved, Identity
from .backend import Connection, PostgresBackend
from .queries import Row, append_segment, read_segments, remove_segments, replace_segments

__all__ = ["PostgresSegments", "Session"]

# The log's transaction: session(write) returns its connection and the conversation's row
# as of now; session(write, kwi) first records that the row's ``kwi`` is now ``kwi``.
Session = Callable[..., tuple[Connection, Row]]


class PostgresSegments:
    """The keyword index segments of ``conversation_id`` in ``backend``'s database, read
    and written on the log's own transaction (``session``)."""

    exact = True
    name = None  # a codec's state is read again on (epoch, kwi): none kept across reopens

    def __init__(self, backend: PostgresBackend, conversation_id: str, session: Session) -> None:
        self._backend = backend
        self._id = conversation_id
        self._session = session
        self._where = f"the keyword index of conversation {conversation_id!r}"
        self._staged: tuple[int, int, bytes] | None = None  # offered for the next append
        self._done: tuple[bytes, tuple[int, int] | None] | None = None  # frame, as written

    def identity(self, state: KwiState | None = None) -> Identity | None:
        return None

    def exists(self) -> bool:
        return self._session(False)[1].kwi > 0

    def load(self, log_id: bytes, key: RecordKey) -> KwiState | None:
        conn, row = self._session(False)
        if row.kwi <= 0:
            return None
        state = KwiState(log_id=log_id, ident=(row.epoch, row.kwi))
        with self._backend.errors(f"read {self._where}"):
            frames = read_segments(conn, self._id, -1)
        read_frames(b"".join(frames), key, state)
        return state

    def more(self, key: RecordKey, state: KwiState) -> bool:
        conn, row = self._session(False)
        if state.problem or (row.epoch, row.kwi) != state.ident:
            return False  # replaced (a merge, pop or rewrite) or removed: load it again
        if state.covered < row.next_seq:  # appended by others since: their segments only
            with self._backend.errors(f"read {self._where}"):
                frames = read_segments(conn, self._id, state.covered)
            read_frames(b"".join(frames), key, state)
        return True

    def unchanged(self, state: KwiState) -> bool:
        row = self._session(False)[1]
        return (row.epoch, row.kwi) == state.ident and state.covered >= row.next_seq

    def stage(self, frame: bytes | None, segment: Segment | None) -> None:
        """Offer the segment of the records about to be appended (None: none):
        ``PostgresLog.append`` writes it in the records' own statement."""
        self._done = None
        self._staged = None if frame is None or segment is None else (segment.lo, segment.hi, frame)

    def staged(self) -> tuple[int, int, bytes] | None:
        """Take the segment offered for this append (``queries.append_records`` writes it
        only where it starts at the records' first seq)."""
        got, self._staged = self._staged, None
        return got

    def written(
        self, segment: tuple[int, int, bytes] | None, counted: tuple[int, int] | None
    ) -> None:
        """Note what the records' statement made of ``segment``: ``append_segment``'s
        answer, ``(-1, -1)`` when the chain ends elsewhere; None: it was not for them."""
        self._done = None if segment is None or counted is None else (segment[2], counted)

    def append(self, frame: bytes, segment: Segment, at: int) -> tuple[int, int] | None:
        done, self._done = self._done, None
        if done is not None and done[0] is frame:  # written with the records just now
            if done[1] is None or done[1][0] < 0:
                raise ChainMoved(segment.lo)  # the rebuild follows in this transaction
            return done[1]
        conn, _ = self._session(True)
        with self._backend.errors(f"append to {self._where}"):
            counted = append_segment(conn, self._id, segment.lo, segment.hi, frame)
        if counted is None:
            raise ChainMoved(segment.lo)
        return counted

    def replace(
        self,
        log_id: bytes,
        frame: bytes,
        segment: Segment,
        postings: Postings,
        *,
        merge: bool = False,
    ) -> KwiState | None:
        conn, _ = self._session(True)
        with self._backend.errors(f"write {self._where}"):
            kwi = replace_segments(conn, self._id, segment.lo, segment.hi, frame)
        row = self._session(True, kwi)[1]
        size = len(frame)
        return KwiState(log_id, postings, segment.hi, segment.tag, 1, size, size, (row.epoch, kwi))

    def remove(self) -> None:
        conn, _ = self._session(True)
        with self._backend.errors(f"remove {self._where}"):
            remove_segments(conn, self._id)
        self._session(True, 0)

"""A read in one round trip: the conversation's state and the records a read needs, in one
statement under autocommit.

A read transaction that says what it will read (``PostgresLog.transaction(write=False,
tail=n)``: at most the last ``n`` records; ``tail=0``: none, as ``len()``) sends no BEGIN
and no COMMIT: one statement (``read_snapshot``) returns the conversation row (epoch,
generation, next_seq, header, dict_id, body_bytes, kwi), the timestamps the handle's cache
lacks, the dictionary record when the cached one is not the row's, and the last ``n``
record bodies. A single statement sees one MVCC snapshot, so all of it agrees, as the
REPEATABLE READ transaction it replaces did (which cost BEGIN + the row, the records, and
COMMIT: three or four round trips).

The cache a handle keeps (header, timestamps, dictionary) is guarded by the row's epoch,
which every change but an append bumps (truncate, rewrite, compaction, rotation, removal):
within one epoch the records below ``next_seq`` never change and the dictionary, once set,
stays. So the statement sends the cached epoch and count; on the same epoch it returns only
the timestamps from that count on, on another every timestamp (a full reload). A read the
snapshot did not prefetch (``read_range_at``) names the epoch too, and finds no records
when a rewrite committed in between: the caller then reports ``LogReplacedError`` rather
than mix two logs.

Rejected: keeping a REPEATABLE READ transaction and pipelining BEGIN with the reads (psycopg
needs a flush and a sync per pipeline, and COMMIT is one more round trip), and
``LISTEN``-driven cache invalidation (a notification can be lost; the epoch cannot).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.types.numeric import Int8

from .queries import Conn, Row

__all__ = ["Snapshot", "read_range_at", "read_snapshot"]

_MAX_BIGINT = 2**63 - 1  # the largest value of a bigint (int8) parameter

# $epoch: the handle's cached epoch (-1: nothing cached); $known: its cached record count.
# The timestamps come from $known on when the epoch is the cached one, else from 0; the
# seq < next_seq bound makes the count check below prove the seqs contiguous.
_SNAPSHOT = """
SELECT c.epoch, c.generation, c.next_seq, c.header, c.dict_id, c.body_bytes, c.kwi,
       ARRAY(SELECT r.ts FROM cc_records r
              WHERE r.conversation_id = c.id AND r.seq < c.next_seq
                AND r.seq >= CASE WHEN c.epoch = %(epoch)s AND c.next_seq >= %(known)s
                                  THEN %(known)s ELSE 0 END
              ORDER BY r.seq),
       CASE WHEN c.dict_id <> 0 AND (c.epoch <> %(epoch)s OR c.dict_id <> %(dict_id)s)
            THEN (SELECT d.record FROM cc_dictionaries d
                   WHERE d.conversation_id = c.id AND d.dict_id = c.dict_id) END,
       ARRAY(SELECT r.record FROM cc_records r
              WHERE %(tail)s > 0 AND r.conversation_id = c.id
                AND r.seq >= c.next_seq - %(tail)s AND r.seq < c.next_seq
              ORDER BY r.seq)
  FROM cc_conversations c
 WHERE c.id = %(id)s
"""

_RANGE_AT = """
SELECT c.epoch, r.seq, r.record
  FROM cc_conversations c
  LEFT JOIN cc_records r
    ON r.conversation_id = c.id AND c.epoch = %(epoch)s
   AND r.seq >= %(start)s AND r.seq < %(stop)s
 WHERE c.id = %(id)s
 ORDER BY r.seq
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ``read_snapshot`` found: the row, timestamps from ``tss_from`` on (to
    ``row.next_seq``), the dictionary record (None: not sent), the last bodies."""

    row: Row
    full: bool  # asked for everything: every timestamp, the dictionary
    tss_from: int
    tss: list[int]
    dictionary: bytes | None
    bodies: list[bytes]  # records next_seq - len(bodies) .. next_seq - 1

    @property
    def bodies_from(self) -> int:
        return self.row.next_seq - len(self.bodies)


def read_snapshot(
    conn: Conn, conversation_id: str, *, epoch: int, known: int, dict_id: int, tail: int
) -> Snapshot | None:
    """Read the row, the timestamps past a cache of ``known`` records at ``epoch`` (-1:
    none cached), the dictionary unless ``dict_id`` is cached at that epoch, and the last
    ``tail`` bodies, in one statement; None when the conversation has no row.

    Bodies missing from the table (changed outside the library) are not prefetched: the
    reads then find the hole themselves and say so.
    """
    # Int8: one parameter type whatever the values (psycopg picks int2/int4/int8 by value,
    # and prepares a statement per combination). Binary: the bytea arrays need no parsing.
    # A tail past any seq is every record: clamped to a bigint (tail(2**64) read all of a
    # file's history but raised OverflowError here: review r2, defect 6). The others come
    # from the database.
    tail = min(tail, _MAX_BIGINT)
    params = {"epoch": epoch, "known": known, "dict_id": dict_id, "tail": tail}
    got = conn.execute(
        _SNAPSHOT,
        {"id": conversation_id, **{k: Int8(v) for k, v in params.items()}},
        binary=True,
    ).fetchone()
    if got is None:
        return None
    c_epoch, generation, next_seq, header, c_dict, body_bytes, kwi, tss, dictionary, bodies = got
    header = None if header is None else bytes(header)
    row = Row(c_epoch, generation, next_seq, header, c_dict, body_bytes, kwi)
    same = c_epoch == epoch and next_seq >= known
    if len(bodies) != min(tail, next_seq):
        bodies = []
    return Snapshot(
        row,
        epoch == -1,
        known if same else 0,
        [int(ts) for ts in tss],
        None if dictionary is None else bytes(dictionary),
        [bytes(body) for body in bodies],
    )


def read_range_at(
    conn: Conn, conversation_id: str, epoch: int, start: int, stop: int
) -> list[tuple[int, bytes]] | None:
    """Return ``(seq, body)`` for ``start <= seq < stop`` if the conversation is still at
    ``epoch`` (one statement, one snapshot); None when it is not (a rewrite, truncation or
    removal committed since)."""
    params = {"epoch": epoch, "start": start, "stop": stop}
    rows = conn.execute(
        _RANGE_AT, {"id": conversation_id, **{k: Int8(v) for k, v in params.items()}}
    ).fetchall()
    if not rows or rows[0][0] != epoch:
        return None
    return [(int(seq), bytes(body)) for _, seq, body in rows if seq is not None]

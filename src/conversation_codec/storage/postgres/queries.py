"""The SQL of the PostgreSQL storage: every statement that touches one conversation.

Each function runs on a connection inside the caller's transaction and names one
conversation: no statement here crosses conversations (``conversation_id`` leads every
WHERE clause and primary key), which is what lets the tables be partitioned or distributed
by it (README, "Scaling out"). A write runs under the writer lock the caller took
(``begin``) and changes the records and the counter row in one statement where it can.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Connection, sql
from psycopg.rows import TupleRow

__all__ = [
    "NO_ROW",
    "STAGE_ROWS",
    "STORED",
    "Conn",
    "Row",
    "append_records",
    "append_segment",
    "begin",
    "holds_records",
    "load_dictionary",
    "load_tss",
    "read_range",
    "read_row",
    "read_segments",
    "remove_rows",
    "remove_segments",
    "replace_log",
    "replace_segments",
    "truncate_records",
]

_MAX_LOCK_TIMEOUT_MS = 2_147_483_647  # PostgreSQL's bound for lock_timeout (INT_MAX ms)

Conn = Connection[TupleRow]
STAGE_ROWS = 1024  # records sent per statement when rewriting

# A row ``c`` of cc_conversations that stands for something stored: a log, or a row damaged by
# hand (no header, yet records counted or stored: ``view.CachedView._check_removed``). Only
# the deletion marker (``remove_rows``) and a row never written are not.
STORED = sql.SQL(
    "c.header IS NOT NULL OR c.next_seq <> 0 OR c.dict_id <> 0 OR c.body_bytes <> 0 "
    "OR EXISTS (SELECT FROM cc_records r WHERE r.conversation_id = c.id) "
    "OR EXISTS (SELECT FROM cc_dictionaries d WHERE d.conversation_id = c.id)"
)
_ROW = "SELECT epoch, generation, next_seq, header, dict_id, body_bytes, kwi FROM cc_conversations"


@dataclass(frozen=True, slots=True)
class Row:
    """A conversation's counter row (``cc_conversations``) as one transaction read it."""

    epoch: int  # bumped by anything but an append
    generation: int  # bumped by every write
    next_seq: int
    header: bytes | None  # None: no log
    dict_id: int  # the dictionary in use (0: none)
    body_bytes: int
    kwi: int  # the keyword index's version (0: none; FORMAT.md §17.9)


NO_ROW = Row(0, 0, 0, None, 0, 0, 0)


def _row(got: tuple[Any, ...] | None) -> Row | None:
    if got is None:
        return None
    epoch, generation, next_seq, header, dict_id, body_bytes, kwi = got
    header = None if header is None else bytes(header)
    return Row(epoch, generation, next_seq, header, dict_id, body_bytes, kwi)


def read_row(conn: Conn, conversation_id: str, *, lock: bool) -> Row | None:
    """Read the counter row (``FOR UPDATE`` when ``lock``); None when there is none."""
    query = _ROW + " WHERE id = %s FOR UPDATE" if lock else _ROW + " WHERE id = %s"
    return _row(conn.execute(query, (conversation_id,)).fetchone())


def begin(
    conn: Conn, conversation_id: str, *, write: bool, lock_timeout: float | None
) -> Row | None:
    """Start a transaction and read the conversation's row: for a write, take its writer
    lock (the row lock, or for a conversation without a row the advisory lock on its id).

    One round trip (a pipeline) where the row exists. A read is a REPEATABLE READ READ ONLY
    snapshot: the row and every record it then reads agree.
    """
    with conn.pipeline():
        if not write:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return _row(conn.execute(_ROW + " WHERE id = %s", (conversation_id,)).fetchone())
        conn.execute("BEGIN")
        if lock_timeout is not None and lock_timeout != math.inf:  # inf waits, as None does
            ms = max(1, round(min(lock_timeout * 1000, _MAX_LOCK_TIMEOUT_MS)))
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{ms}ms",))
        row = _row(conn.execute(_ROW + " WHERE id = %s FOR UPDATE", (conversation_id,)).fetchone())
    if row is None:
        # No row to lock yet: serialise the creators on the id instead; the one that
        # creates the log inserts the row before this lock goes at its commit.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            ("cc_conversations:" + conversation_id,),
        )
        row = read_row(conn, conversation_id, lock=True)
    return row


def holds_records(conn: Conn, conversation_id: str, generation: int) -> bool:
    """Whether any record or dictionary record of the conversation is stored while its row
    is still at ``generation`` (False once a write changed it: one statement, one
    snapshot, so a later writer's records are never mistaken for the row's)."""
    got = conn.execute(
        "SELECT EXISTS (SELECT FROM cc_records WHERE conversation_id = %(id)s) "
        "OR EXISTS (SELECT FROM cc_dictionaries WHERE conversation_id = %(id)s) "
        "FROM cc_conversations WHERE id = %(id)s AND generation = %(generation)s",
        {"id": conversation_id, "generation": generation},
    ).fetchone()
    return bool(got and got[0])


def load_tss(conn: Conn, conversation_id: str, start: int) -> list[tuple[int, int]]:
    """Return ``(seq, ts)`` of the records from ``start`` on, in order."""
    return [
        (int(seq), int(ts))
        for seq, ts in conn.execute(
            "SELECT seq, ts FROM cc_records WHERE conversation_id = %s AND seq >= %s ORDER BY seq",
            (conversation_id, start),
        )
    ]


def load_dictionary(conn: Conn, conversation_id: str, dict_id: int) -> bytes | None:
    """Return the body of the conversation's dictionary record ``dict_id``."""
    got = conn.execute(
        "SELECT record FROM cc_dictionaries WHERE conversation_id = %s AND dict_id = %s",
        (conversation_id, dict_id),
    ).fetchone()
    return None if got is None else bytes(got[0])


def read_range(conn: Conn, conversation_id: str, start: int, stop: int) -> list[tuple[int, bytes]]:
    """Return ``(seq, body)`` for ``start <= seq < stop`` (a primary-key range scan)."""
    return [
        (int(seq), bytes(body))
        for seq, body in conn.execute(
            "SELECT seq, record FROM cc_records WHERE conversation_id = %s "
            "AND seq >= %s AND seq < %s ORDER BY seq",
            (conversation_id, start, stop),
        )
    ]


def append_records(
    conn: Conn,
    row: Row,
    conversation_id: str,
    bodies: Sequence[bytes],
    tss: Sequence[int],
    dictionary: tuple[int, int, bytes] | None,
    segment: tuple[int, int, bytes] | None = None,
) -> tuple[Row, tuple[int, int] | None]:
    """Insert records at ``row.next_seq`` onwards, and ``dictionary`` ``(dict_id, at_seq,
    body)`` if given, advancing the row: one statement. With ``segment`` ``(lo, hi,
    frame)``, the keyword index segment of these records goes in the same statement, as
    ``append_segment`` adds it (the round trip of a statement of its own saved). Return
    the row after it, and what ``append_segment`` returns (None: no segment given)."""
    first, added = row.next_seq, sum(map(len, bodies))
    dict_id = row.dict_id if dictionary is None else dictionary[0]
    got = conn.execute(
        """
        WITH r AS (
            INSERT INTO cc_records (conversation_id, seq, ts, record)
            SELECT %(id)s, %(first)s + u.i - 1, u.ts, u.record
              FROM unnest(%(tss)s::bigint[], %(bodies)s::bytea[])
                   WITH ORDINALITY AS u(ts, record, i)
        ), d AS (
            INSERT INTO cc_dictionaries (conversation_id, dict_id, at_seq, record)
            SELECT %(id)s, %(dict_id)s, %(dict_at)s, %(dict)s::bytea
             WHERE %(dict)s::bytea IS NOT NULL
        ), k AS (
            INSERT INTO cc_kwi_segments (conversation_id, lo, hi, n, head, segment)
            SELECT %(id)s, %(first)s, %(khi)s::bigint, p.n + 1, p.head, %(kseg)s::bytea
              FROM (SELECT hi, n, head FROM cc_kwi_segments WHERE conversation_id = %(id)s
                     ORDER BY hi DESC LIMIT 1) p
             WHERE %(kseg)s::bytea IS NOT NULL AND p.hi = %(first)s
            RETURNING n, head
        )
        UPDATE cc_conversations
           SET next_seq = %(next)s, last_ts = greatest(last_ts, %(last)s),
               dict_id = %(dict_id)s, body_bytes = body_bytes + %(added)s,
               generation = generation + 1
         WHERE id = %(id)s
        RETURNING generation, (SELECT head FROM k), (SELECT n FROM k)
        """,
        {
            "id": conversation_id,
            "first": first,
            "tss": list(tss),
            "bodies": list(bodies),
            "dict_id": dict_id,
            "dict_at": None if dictionary is None else dictionary[1],
            "dict": None if dictionary is None else dictionary[2],
            "next": first + len(bodies),
            "last": tss[-1] if tss else 0,
            "added": added,
            "khi": None if segment is None or segment[0] != first else segment[1],
            "kseg": None if segment is None or segment[0] != first else segment[2],
        },
    ).fetchone()
    assert got is not None
    added_bytes = row.body_bytes + added
    after = Row(row.epoch, got[0], first + len(bodies), row.header, dict_id, added_bytes, row.kwi)
    if segment is None or segment[0] != first:
        return after, None
    return after, (-1, -1) if got[1] is None else (int(got[1]), int(got[2]))


def truncate_records(conn: Conn, row: Row, conversation_id: str, count: int, last_ts: int) -> Row:
    """Delete the records from ``count`` on, and the dictionary record if it stood there
    (``at_seq >= count``); bump the epoch. Return the row after it."""
    got = conn.execute(
        """
        WITH r AS (
            DELETE FROM cc_records WHERE conversation_id = %(id)s AND seq >= %(count)s
            RETURNING octet_length(record) AS n
        ), d AS (
            DELETE FROM cc_dictionaries WHERE conversation_id = %(id)s AND at_seq >= %(count)s
            RETURNING dict_id
        )
        UPDATE cc_conversations
           SET next_seq = %(count)s, last_ts = %(last)s,
               body_bytes = body_bytes - (SELECT coalesce(sum(n), 0) FROM r),
               dict_id = CASE WHEN EXISTS (SELECT FROM d) THEN 0 ELSE dict_id END,
               epoch = epoch + 1, generation = generation + 1
         WHERE id = %(id)s
        RETURNING epoch, generation, dict_id, body_bytes
        """,
        {"id": conversation_id, "count": count, "last": last_ts},
    ).fetchone()
    assert got is not None
    return Row(got[0], got[1], count, row.header, got[2], got[3], row.kwi)


def _take(items: Iterator[tuple[bytes, int]], n: int) -> list[tuple[bytes, int]]:
    out = []
    for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out


def _insert(
    conn: Conn, conversation_id: str | None, first: int, batch: list[tuple[bytes, int]]
) -> None:
    """Insert ``batch`` at seqs ``first, first + 1, …`` into the records table, or into the
    rewrite's staging table when ``conversation_id`` is None."""
    if not batch:
        return
    params = {
        "id": conversation_id,
        "first": first,
        "tss": [ts for _, ts in batch],
        "bodies": [body for body, _ in batch],
    }
    if conversation_id is None:
        conn.execute(
            """
            INSERT INTO pg_temp.cc_rewrite (seq, ts, record)
            SELECT %(first)s + u.i - 1, u.ts, u.record
              FROM unnest(%(tss)s::bigint[], %(bodies)s::bytea[])
                   WITH ORDINALITY AS u(ts, record, i)
            """,
            params,
        )
    else:
        conn.execute(
            """
            INSERT INTO cc_records (conversation_id, seq, ts, record)
            SELECT %(id)s, %(first)s + u.i - 1, u.ts, u.record
              FROM unnest(%(tss)s::bigint[], %(bodies)s::bytea[])
                   WITH ORDINALITY AS u(ts, record, i)
            """,
            params,
        )


def replace_log(
    conn: Conn,
    conversation_id: str,
    header: bytes,
    log_id: bytes,
    records: Iterator[tuple[bytes, int]],
    dictionary: bytes | None,
) -> tuple[Row, list[int], int]:
    """Replace the conversation's log with ``header``, ``records`` (``(body, ts)`` at seq
    0, 1, …) and ``dictionary`` (a dictionary record before record 0). Return the new row,
    the records' timestamps, and how many records and dictionary records it deleted (for
    a log created where none was, any is damage: ``PostgresLog.rewrite``).

    ``records`` may read this very log while it is consumed (a compaction re-seals the
    old records): the new records are all in hand — in the first batch, or staged in a
    temporary table when they do not fit in one — before the old ones are deleted.
    """
    batch = _take(records, STAGE_ROWS)
    staged = len(batch) == STAGE_ROWS
    count, added, tss = 0, 0, []
    if staged:
        conn.execute("DROP TABLE IF EXISTS pg_temp.cc_rewrite")
        conn.execute(
            "CREATE TEMP TABLE cc_rewrite (seq bigint, ts bigint, record bytea) ON COMMIT DROP"
        )
    while batch:
        if staged:
            _insert(conn, None, count, batch)
        count, added = count + len(batch), added + sum(len(b) for b, _ in batch)
        tss += [ts for _, ts in batch]
        if not staged:
            break
        batch = _take(records, STAGE_ROWS)
    removed = conn.execute(  # the keyword index's segments go too: they name the old records
        "WITH r AS (DELETE FROM cc_records WHERE conversation_id = %(id)s RETURNING 1), "
        "k AS (DELETE FROM cc_kwi_segments WHERE conversation_id = %(id)s), "
        "d AS (DELETE FROM cc_dictionaries WHERE conversation_id = %(id)s RETURNING 1) "
        "SELECT (SELECT count(*) FROM r) + (SELECT count(*) FROM d)",
        {"id": conversation_id},
    ).fetchone()
    if staged:
        conn.execute(
            "INSERT INTO cc_records (conversation_id, seq, ts, record) "
            "SELECT %s, seq, ts, record FROM pg_temp.cc_rewrite ORDER BY seq",
            (conversation_id,),
        )
        conn.execute("DROP TABLE pg_temp.cc_rewrite")
    else:
        _insert(conn, conversation_id, 0, batch)
    if dictionary is not None:
        conn.execute(
            "INSERT INTO cc_dictionaries (conversation_id, dict_id, at_seq, record) "
            "VALUES (%s, 1, 0, %s)",
            (conversation_id, dictionary),
        )
    dict_id = 0 if dictionary is None else 1
    got = conn.execute(
        """
        INSERT INTO cc_conversations AS c
               (id, header, log_id, next_seq, last_ts, dict_id, body_bytes)
        VALUES (%(id)s, %(header)s, %(log_id)s, %(next)s, %(last)s, %(dict_id)s, %(added)s)
        ON CONFLICT (id) DO UPDATE
           SET header = EXCLUDED.header, log_id = EXCLUDED.log_id,
               next_seq = EXCLUDED.next_seq, last_ts = EXCLUDED.last_ts,
               dict_id = EXCLUDED.dict_id, body_bytes = EXCLUDED.body_bytes,
               epoch = c.epoch + 1, generation = c.generation + 1
        RETURNING epoch, generation, kwi
        """,
        {
            "id": conversation_id,
            "header": header,
            "log_id": log_id,
            "next": count,
            "last": tss[-1] if tss else 0,
            "dict_id": dict_id,
            "added": added,
        },
    ).fetchone()
    assert got is not None
    row = Row(got[0], got[1], count, header, dict_id, added, got[2])
    return row, tss, int(removed[0]) if removed else 0


def remove_rows(conn: Conn, conversation_id: str) -> Row:
    """Delete a conversation's records and dictionary and keep its row as a tombstone with
    the epoch bumped (the caller holds the row lock). Return the row after it."""
    got = conn.execute(
        """
        WITH r AS (DELETE FROM cc_records WHERE conversation_id = %(id)s),
             d AS (DELETE FROM cc_dictionaries WHERE conversation_id = %(id)s),
             k AS (DELETE FROM cc_kwi_segments WHERE conversation_id = %(id)s)
        UPDATE cc_conversations
           SET header = NULL, log_id = NULL, next_seq = 0, last_ts = 0, dict_id = 0,
               body_bytes = 0, kwi = 0, epoch = epoch + 1, generation = generation + 1
         WHERE id = %(id)s
        RETURNING epoch, generation
        """,
        {"id": conversation_id},
    ).fetchone()
    return NO_ROW if got is None else Row(got[0], got[1], 0, None, 0, 0, 0)


# -- the keyword index (FORMAT.md §17.9) ---------------------------------------------------


def read_segments(conn: Conn, conversation_id: str, start: int) -> list[bytes]:
    """Return the framed keyword index segments that cover records past ``start``, in
    order (all of them for ``start`` = -1)."""
    return [
        bytes(segment)
        for (segment,) in conn.execute(
            "SELECT segment FROM cc_kwi_segments WHERE conversation_id = %s AND hi > %s "
            "ORDER BY hi",
            (conversation_id, start),
        )
    ]


def append_segment(
    conn: Conn, conversation_id: str, lo: int, hi: int, frame: bytes
) -> tuple[int, int] | None:
    """Add the segment ``[lo, hi)`` after the last one, if that one ends at ``lo``: one
    statement, which reads the last row only (each row carries its place ``n`` in the
    chain and the chain's ``head``). Return ``(head, count)``: the records the first
    segment covers and the segments there are now; None when the chain does not end at
    ``lo`` (nothing added)."""
    got = conn.execute(
        """
        INSERT INTO cc_kwi_segments (conversation_id, lo, hi, n, head, segment)
        SELECT %(id)s, %(lo)s, %(hi)s, p.n + 1, p.head, %(segment)s
          FROM (SELECT hi, n, head FROM cc_kwi_segments WHERE conversation_id = %(id)s
                 ORDER BY hi DESC LIMIT 1) p
         WHERE p.hi = %(lo)s
        RETURNING head, n
        """,
        {"id": conversation_id, "lo": lo, "hi": hi, "segment": frame},
    ).fetchone()
    return None if got is None else (int(got[0]), int(got[1]))


def replace_segments(conn: Conn, conversation_id: str, lo: int, hi: int, frame: bytes) -> int:
    """Replace the conversation's keyword index with one segment and bump its version on
    the conversation's row (which the caller holds locked). Return the new version."""
    conn.execute("DELETE FROM cc_kwi_segments WHERE conversation_id = %s", (conversation_id,))
    got = conn.execute(
        """
        WITH ins AS (
            INSERT INTO cc_kwi_segments (conversation_id, lo, hi, n, head, segment)
            VALUES (%(id)s, %(lo)s, %(hi)s, 1, %(hi)s, %(segment)s)
        )
        UPDATE cc_conversations SET kwi = kwi + 1 WHERE id = %(id)s RETURNING kwi
        """,
        {"id": conversation_id, "lo": lo, "hi": hi, "segment": frame},
    ).fetchone()
    assert got is not None
    return int(got[0])


def remove_segments(conn: Conn, conversation_id: str) -> None:
    """Delete the conversation's keyword index (its version goes back to 0: none)."""
    conn.execute(
        "WITH k AS (DELETE FROM cc_kwi_segments WHERE conversation_id = %(id)s) "
        "UPDATE cc_conversations SET kwi = 0 WHERE id = %(id)s",
        {"id": conversation_id},
    )

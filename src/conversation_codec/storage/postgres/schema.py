"""The database schema of the PostgreSQL storage, its version table and forward migrations.

The library creates the schema itself (``ensure_schema``), in the tables' schema on the
connection's ``search_path``. Every step runs in one transaction under a transaction-level
advisory lock, so any number of processes may start at once: one creates or migrates, the
others wait for it and then find the schema current. A process that finds the schema
current reads one row and takes no lock, so an application role without the CREATE
privilege works once the schema exists.

Tables (schema version 3; spec: ``storage/postgres/__init__.py``):

- ``cc_schema_version (singleton, version)``: one row, the schema version.
- ``cc_conversations``: one row per conversation id, the counter row every writer locks.
- ``cc_records``: one row per record, ``(conversation_id, seq)`` the primary key; ``record``
  holds exactly the record body of FORMAT.md (a Fernet token, or a plain JSON line).
- ``cc_dictionaries``: the conversation's zstd dictionary record (FORMAT.md §5.3), if any.
- ``cc_kwi_segments``: the sealed segments of a conversation's keyword index (§17.9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import TupleRow

from ...errors import UnsupportedVersionError

if TYPE_CHECKING:
    from typing_extensions import LiteralString

__all__ = ["SCHEMA_VERSION", "ensure_schema"]

# pg_advisory_xact_lock key of schema changes: the bytes "cc_schem" as a signed 64-bit int.
_SCHEMA_LOCK = int.from_bytes(b"cc_schem", "big")

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS cc_schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL
)
"""

# Forward migrations: _MIGRATIONS[v - 1] takes the schema from version v - 1 to v. Never
# edit a released step; append a new one (and bump SCHEMA_VERSION).
_MIGRATIONS: tuple[tuple[LiteralString, ...], ...] = (
    (
        """
        CREATE TABLE cc_conversations (
            id          text PRIMARY KEY,
            epoch       bigint  NOT NULL DEFAULT 0,  -- bumped by anything but an append
            generation  bigint  NOT NULL DEFAULT 0,  -- bumped by every write
            next_seq    bigint  NOT NULL DEFAULT 0,  -- records hold seq 0 .. next_seq - 1
            last_ts     bigint  NOT NULL DEFAULT 0,  -- ts of record next_seq - 1 (µs)
            log_id      bytea,                       -- FORMAT.md log_id; NULL: no log
            header      bytea,                       -- the log's header bytes; NULL: no log
            dict_id     integer NOT NULL DEFAULT 0,  -- cc_dictionaries row in use; 0: none
            body_bytes  bigint  NOT NULL DEFAULT 0   -- sum of octet_length(record)
        )
        """,
        """
        CREATE TABLE cc_records (
            conversation_id text   NOT NULL,
            seq             bigint NOT NULL,
            ts              bigint NOT NULL,
            record          bytea  NOT NULL,
            PRIMARY KEY (conversation_id, seq)
        )
        """,
        # Bodies are compressed and encrypted already: TOAST compression would cost CPU for
        # nothing, so they are stored out of line uncompressed when large.
        "ALTER TABLE cc_records ALTER COLUMN record SET STORAGE EXTERNAL",
        "CREATE INDEX cc_records_ts ON cc_records (conversation_id, ts)",
        """
        CREATE TABLE cc_dictionaries (
            conversation_id text    PRIMARY KEY,
            dict_id         integer NOT NULL,
            at_seq          bigint  NOT NULL,  -- the seq of the record the dictionary precedes
            record          bytea   NOT NULL   -- its sealed dictionary record body
        )
        """,
    ),
    # Version 2: no index on (conversation_id, ts). No query used it: a time range is found
    # in the timestamps each handle caches (refreshed by next_seq), then read by seq on the
    # primary key. It cost ~38 B of the ~320 B a small message takes, and an index update
    # on every append (measured: benchmarks/results/postgres.md).
    ("DROP INDEX IF EXISTS cc_records_ts",),
    # Version 3: the blind keyword index (FORMAT.md §17.9). Its sealed segments, one row
    # each, as in the file's sidecar, and on the conversation's row the index's version
    # (0: no index; +1 at every replacement), which every writer reads with the row it
    # locks: an index, once there, is kept by every writer, in the records' transaction.
    (
        "ALTER TABLE cc_conversations ADD COLUMN IF NOT EXISTS kwi bigint NOT NULL DEFAULT 0",
        """
        CREATE TABLE IF NOT EXISTS cc_kwi_segments (
            conversation_id text   NOT NULL,
            lo              bigint NOT NULL,  -- the segment covers seqs lo .. hi - 1
            hi              bigint NOT NULL,
            n               bigint NOT NULL,  -- its place in the chain, from 1
            head            bigint NOT NULL,  -- hi of the chain's first segment
            segment         bytea  NOT NULL,  -- varint(length) || sealed body (§17.3)
            PRIMARY KEY (conversation_id, hi)  -- not lo: an empty log's (0, 0) comes first
        )
        """,
        "ALTER TABLE cc_kwi_segments ALTER COLUMN segment SET STORAGE EXTERNAL",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)


def ensure_schema(conn: psycopg.Connection[TupleRow]) -> int:
    """Create or migrate the schema to ``SCHEMA_VERSION`` on an autocommit connection.

    Return the version found before (0: none). Idempotent, and safe when several processes
    call it at once.

    :raises UnsupportedVersionError: the database holds a newer schema than this library.
    """
    found = _version(conn, lock=False)
    if found == SCHEMA_VERSION:
        return found
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_VERSION_TABLE)
        found = _version(conn, lock=True)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1]:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO cc_schema_version (version) VALUES (%s) "
            "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
            (SCHEMA_VERSION,),
        )
    return found


def _version(conn: psycopg.Connection[TupleRow], *, lock: bool) -> int:
    """The schema version in the database (0: none); refuse a newer one."""
    if not lock:
        row = conn.execute("SELECT to_regclass('cc_schema_version') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return 0
    row = conn.execute("SELECT version FROM cc_schema_version").fetchone()
    version = int(row[0]) if row is not None else 0
    if version > SCHEMA_VERSION:
        raise UnsupportedVersionError(
            f"the database holds conversation-codec schema version {version}; this library "
            f"knows up to version {SCHEMA_VERSION} — upgrade conversation-codec"
        )
    return version

"""PostgreSQL storage: the same record bodies as the file format, in a shared database.

Needs the ``postgres`` extra (``pip install "conversation-codec[postgres]"``: psycopg 3 and
psycopg-pool). ``PostgresBackend`` is one database (one connection pool per URL, the
schema made sure of); ``PostgresLog`` is one conversation's log in it, the third
implementation of ``storage.base.LogStorage`` (after ``FileLog`` and ``MemoryLog``).

Schema, version 3 (created and migrated by the library: ``schema.py``)::

    cc_schema_version  singleton bool PK, version int         one row: the schema version
    cc_conversations   id text PK                             the conversation id
                       epoch bigint                           +1 on truncate/rewrite/remove
                       generation bigint                      +1 on every write
                       next_seq bigint                        records hold seq 0..next_seq-1
                       last_ts bigint                         ts of record next_seq-1 (µs)
                       log_id bytea, header bytea             FORMAT.md header; NULL: no log
                       dict_id int                            dictionary in use (0: none)
                       body_bytes bigint                      sum of the records' lengths
                       kwi bigint                             keyword index version (0: none)
    cc_records         (conversation_id text, seq bigint) PK
                       ts bigint                              µs since the epoch, by seq
                       record bytea                           the record body, as FORMAT.md
    cc_dictionaries    conversation_id text PK, dict_id int,
                       at_seq bigint                          the record it precedes
                       record bytea                           the sealed dictionary record
    cc_kwi_segments    (conversation_id text, hi bigint) PK   FORMAT.md §17.9: the keyword
                       lo bigint, n bigint, head bigint       index's sealed segments, each
                       segment bytea                          covering seqs lo .. hi-1

``record`` holds exactly the body ``append`` is handed, byte for byte the body of the file
format (FORMAT.md §5: a Fernet token; §6: a plain JSON line), without the file's length
prefix; a database row frames it. A removed conversation keeps its row (``header`` NULL, the
epoch bumped) so that no writer holding an older view can mistake it for its log.

Every statement names one conversation (``conversation_id`` leads every key); only listings
(``PostgresBackend.conversations``, ``summaries``) and schema changes cross conversations.

Notifications (``notify.py``): channel ``cc_changes``, payload 16 hex digits of
SHA-256("conversation-codec notify\0" + id), sent by a write's COMMIT while the
conversation is watched (a waiter's listener holds the shared advisory lock of the same 64
bits, as a signed big-endian integer).
"""

from __future__ import annotations

from ...errors import BackendUnavailableError

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # tests: test_store.py, in a process where the import fails
    # BackendUnavailableError is an ImportError too; the library's own class lets the CLI
    # say it in one line and callers catch it with every other ConversationCodecError.
    raise BackendUnavailableError(
        f"a postgresql:// store needs psycopg 3 and psycopg-pool ({exc}): "
        "pip install 'conversation-codec[postgres]'"
    ) from None

from .backend import ConversationSummary, PostgresBackend, display_url, is_database_url
from .log import PostgresLog
from .schema import SCHEMA_VERSION, ensure_schema
from .store import PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "ConversationSummary",
    "PostgresBackend",
    "PostgresLog",
    "PostgresStore",
    "display_url",
    "ensure_schema",
    "is_database_url",
]

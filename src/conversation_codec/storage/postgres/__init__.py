"""PostgreSQL storage: the same record bodies as the file format, in a shared database.

Needs the ``postgres`` extra (``pip install "conversation-codec[postgres]"``: psycopg 3 and
psycopg-pool). ``PostgresBackend`` is one database (one connection pool per URL, the
schema made sure of); ``PostgresLog`` one conversation's log in it, the third
implementation of ``storage.base.LogStorage`` (after ``FileLog`` and ``MemoryLog``).
"""

from __future__ import annotations

from .backend import PostgresBackend, display_url, is_database_url
from .log import PostgresLog
from .schema import SCHEMA_VERSION, ensure_schema

__all__ = [
    "SCHEMA_VERSION",
    "PostgresBackend",
    "PostgresLog",
    "display_url",
    "ensure_schema",
    "is_database_url",
]

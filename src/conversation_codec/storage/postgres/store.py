"""PostgresStore: the ``StoreBackend`` of a ``ConversationStore`` whose root is a URL.

``ConversationStore("postgresql://app@db/agents")`` keeps every conversation in that
database (``storage.backend_for`` picks this class): ``locate`` opens a ``PostgresLog``
on the process's shared ``PostgresBackend`` (one pool per URL). Listings are the only
queries that cross conversations.

Ids: ``backend.check_id``. ``locate`` refuses an id no database row can hold with
``ValueError`` (as ``PostgresLog`` does), and so an id over ``MAX_ID_BYTES`` bytes unless
the database holds its conversation already (``backend.check_new_id``: stored before that
limit); the other methods answer for a refused id as for a conversation that has no log,
but ``has_files`` raises for an id no store accepts, as a directory's does (``encode_id``).
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg import sql

from ...format.header import sniff_log
from ..base import LogFormat, StorageOpener
from ..file.peek import LogPeek
from ..file.store import encode_id
from .backend import PostgresBackend, check_id, check_new_id, id_fits
from .log import PostgresLog
from .queries import STORED

__all__ = ["PostgresStore"]


class PostgresStore:
    """The conversations of one PostgreSQL database (``url``), through its shared pool."""

    def __init__(self, url: str) -> None:
        self.backend = PostgresBackend.shared(url)

    @property
    def name(self) -> str:
        return self.backend.name  # the URL without its password

    def locate(
        self, conversation_id: str, *, lock_timeout: float | None = None
    ) -> tuple[str, StorageOpener]:
        check_id(conversation_id)
        backend = self.backend
        try:
            check_new_id(conversation_id)
        except ValueError:  # too long for a new row: open it only if it has one already
            if not self._has_row(conversation_id):
                raise

        def opener(attach: Callable[[bytes], LogFormat]) -> PostgresLog:
            return PostgresLog(backend, conversation_id, attach=attach, lock_timeout=lock_timeout)

        return f"{backend.name} conversation {conversation_id!r}", opener

    def exists(self, conversation_id: str) -> bool:
        """Whether the conversation has a log, or a row damaged by hand (no header, yet
        records counted or stored: opening it says so): as ``has_files``."""
        return self.has_files(conversation_id)

    def _has_row(self, conversation_id: str) -> bool:
        row = self.backend.run(
            f"look up {conversation_id!r}",
            lambda conn: conn.execute(
                "SELECT EXISTS (SELECT FROM cc_conversations WHERE id = %s)", (conversation_id,)
            ).fetchone(),
        )
        return bool(row and row[0])

    def peek(self, conversation_id: str) -> LogPeek:
        """The conversation as its row tells without the key: count, first and last time.

        Not authenticated (the key checks the header, and each record's own seq and time);
        the row is what the library's last committed transaction wrote.
        """
        row = None
        if id_fits(conversation_id):
            row = self.backend.run(
                f"peek at {conversation_id!r}",
                lambda conn: conn.execute(
                    "SELECT c.next_seq, c.last_ts, substring(c.header for 64), "
                    "octet_length(c.header) + c.body_bytes, (SELECT r.ts FROM cc_records r "
                    "WHERE r.conversation_id = c.id AND r.seq = 0) "
                    "FROM cc_conversations c WHERE c.id = %s AND c.header IS NOT NULL",
                    (conversation_id,),
                ).fetchone(),
            )
        if row is None:
            raise FileNotFoundError(f"{conversation_id!r} has no log")
        count, last, prefix, size, first = row
        kind = sniff_log(bytes(prefix))
        return LogPeek(kind, int(size), 0, int(count), first, last if count else None, 0)

    def has_files(self, conversation_id: str) -> bool:
        """Whether anything of the conversation is stored: a log, a row damaged by hand
        (``queries.STORED``), or records without a row (deleting it then reports the damage
        or removes them). An id no store accepts raises, as ``FileStore.has_files`` does
        (``store.delete`` asks this first: review r2, defect 7); one only a database cannot
        hold (``id_fits``) has nothing stored.

        :raises TypeError: the id is not a str.
        :raises ValueError: empty, or not valid Unicode (``encode_id``).
        """
        encode_id(conversation_id)
        if not id_fits(conversation_id):
            return False
        row = self.backend.run(
            f"look up {conversation_id!r}",
            lambda conn: conn.execute(
                sql.SQL(
                    "SELECT EXISTS (SELECT FROM cc_conversations c WHERE c.id = %(id)s "
                    "AND ({})) OR EXISTS (SELECT FROM cc_records WHERE conversation_id = %(id)s)"
                ).format(STORED),
                {"id": conversation_id},
            ).fetchone(),
        )
        return bool(row and row[0])

    def ids(self) -> list[str]:
        return self.backend.conversations()

    def footprint(self, conversation_id: str) -> tuple[int, bytes]:
        if not id_fits(conversation_id):
            return 0, b""
        row = self.backend.run(
            f"size of {conversation_id!r}",
            lambda conn: conn.execute(
                "SELECT coalesce(length(header), 0) + body_bytes, substring(header for 64) "
                "FROM cc_conversations WHERE id = %s",
                (conversation_id,),
            ).fetchone(),
        )
        if row is None:
            return 0, b""
        return int(row[0]), bytes(row[1] or b"")

    def close(self) -> None:
        """The pool is the process's (``PostgresBackend.shared``): it stays open."""

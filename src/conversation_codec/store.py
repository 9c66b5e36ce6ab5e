"""ConversationStore: many conversations, one log each, under one root.

The root names the backend (``storage.backend_for``): a directory keeps one log file per
conversation (``storage.file.store.FileStore``, which also says how an id becomes a file
name), a ``postgresql://`` URL keeps them in a database (``storage.postgres``). A root that
looks like any other URL is refused, never taken as a relative directory.

>>> import tempfile
>>> from conversation_codec import generate_key
>>> store = ConversationStore(tempfile.mkdtemp(), encryption_key=generate_key())
>>> with store.open("user-42/chat") as codec:
...     codec.append({"role": "user", "content": "Where is my refund?"})
0
>>> [(c.conversation_id, c.message_count) for c in store.infos()]
[('user-42/chat', 1)]
>>> [(cid, hit.seq) for cid, hit in store.search("refund")]
[('user-42/chat', 0)]
>>> store.delete("user-42/chat"), store.infos()
(True, [])
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import heapq
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from ._fsio import FileIO
from ._time import EPOCH, NOT_A_CUTOFF, ONE_US, age_cutoff_us, datetime_to_us, to_datetime
from .codec import ConversationCodec, Message, TimeInput
from .crypto import KeyInput, Keyring
from .errors import (
    ConversationCodecError,
    CorruptRecordError,
    KeyRequiredError,
    StorageError,
)
from .format.header import ContextDigest, LogKind, sniff_log
from .index_cache import IndexCache
from .maintenance.pack import PackReport, pack_store
from .options import check_seconds
from .sealing import check_password
from .search import Hit, SearchQuery
from .storage import StoreBackend, backend_for
from .storage.file.store import MAX_ENCODED_ID, FileStore, decode_id, encode_id, hashed_digest
from .store_search import OnError as OnError  # re-exported: aio and callers type with it
from .store_search import conversation_hits
from .store_walk import Scan, Unlisted, expire, hashed_error, report, reported

__all__ = ["MAX_ENCODED_ID", "ConversationInfo", "ConversationStore", "decode_id", "encode_id"]

KeyFn = Callable[[str], KeyInput | None]


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """One conversation as ``ConversationStore.infos()`` reports it (from header and index).

    ``status`` is ``"ok"``, or the name of the library error that kept the log from being
    opened (``"DecryptionError"``, ``"NotEncryptedError"``, ``"KeyRequiredError"``,
    ``"FormatError"``, ``"CorruptRecordError"``, ``"StorageError"``, ...), with its message
    in ``error``; then ``message_count`` is 0 and the times are None, and ``encrypted`` says
    whether the file starts like a sealed log.
    """

    conversation_id: str
    message_count: int
    first_timestamp: datetime | None
    last_timestamp: datetime | None
    encrypted: bool
    disk_bytes: int  # log + index
    status: str = "ok"
    error: str | None = None


class ConversationStore:
    """Many conversations under ``root``: one ``ConversationCodec`` log per conversation id.

    :param root: a directory (created 0700 by the first write), or a ``postgresql://``
        URL (``pip install "conversation-codec[postgres]"``; without it, a URL raises
        ``BackendUnavailableError``); any other URL is refused.
    :param encryption_key: one key (or rotation list) for every conversation; None for
        plaintext. Exclusive with ``key_fn``.
    :param key_fn: ``key_fn(conversation_id)`` returns that conversation's key (or None for
        plaintext): per-user keys. Called on every open.
    :param durability, redact_fn, clock, lock_timeout: passed to every ``ConversationCodec``.
    :param search_index: every conversation keeps a blind keyword index (``ConversationCodec``),
        so ``search()`` reads only candidate records.
    :param index_cache: where decrypted keyword indexes wait between the codecs that
        ``search()`` opens and closes (``index_cache.IndexCache``; default: a new one of
        64 MiB), so an unchanged conversation's index is decrypted once. Directories only.
        ``clock`` (microseconds since the epoch) is also "now" for ``prune(older_than=timedelta)``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        encryption_key: KeyInput | None = None,
        key_fn: KeyFn | None = None,
        durability: str = "fsync",
        redact_fn: Callable[[Message], Message] | None = None,
        clock: Callable[[], int] | None = None,
        lock_timeout: float | None = None,
        password: str | None = None,
        max_messages: int | None = None,
        attachments: str = "keep",
        io: FileIO | None = None,
        search_index: bool = False,
        index_cache: IndexCache | None = None,
    ) -> None:
        if encryption_key is not None and key_fn is not None:
            raise ValueError("pass encryption_key= or key_fn=, not both")
        if password is not None and (encryption_key is not None or key_fn is not None):
            raise ValueError("pass password= or encryption_key=/key_fn=, not both")
        if password is not None:  # now, as a bad key fails now, not at the first open
            check_password(password)
        if durability not in ("fsync", "flush"):
            raise ValueError(f'durability must be "fsync" or "flush", not {durability!r}')
        if attachments not in ("keep", "strip", "external"):  # now, not at the first write
            raise ValueError('attachments must be "keep", "strip" or "external"')
        check_seconds(lock_timeout, "lock_timeout")  # now, not at the first open
        # Parsed once: a bad key fails here, and no open parses it again (issue 15).
        keyring = None if encryption_key is None else Keyring.from_input(encryption_key)
        self._backend: StoreBackend = backend_for(root, io=io)
        self._key: KeyInput | None = keyring
        self._key_fn = key_fn
        self._durability = durability
        self._redact = redact_fn
        self._clock = clock
        self._lock_timeout = lock_timeout
        # The options every conversation's codec gets, as ConversationCodec takes them (one
        # password for the store: each log keeps its own salt, so keys still differ per log).
        self._options: dict[str, Any] = {
            "password": password,
            "max_messages": max_messages,
            "attachments": attachments,
        }
        if io is not None:  # else each codec gets the operating system's own
            self._options["io"] = io
        if isinstance(self._backend, FileStore):
            # Decrypted keyword indexes outlive the codecs search() opens and closes per
            # chunk: an unchanged conversation's sidecar is decrypted once (index_cache).
            self._options["index_cache"] = IndexCache() if index_cache is None else index_cache
        if search_index:  # FORMAT.md §17: a sidecar per log file, or a database table
            if encryption_key is None and key_fn is None and password is None:
                raise ValueError("search_index=True needs encrypted logs: give a key or password")
            self._options["search_index"] = True

    @property
    def root(self) -> Path | str:
        """The directory holding the logs (for a database: its URL, without a password)."""
        backend = self._backend
        return backend.root if isinstance(backend, FileStore) else backend.name

    @property
    def backend(self) -> StoreBackend:
        """Where the conversations live (``FileStore``, or a database's backend)."""
        return self._backend

    def path(self, conversation_id: str) -> Path:
        """Return the log file of ``conversation_id`` (which may not exist yet).

        :raises StorageError: the store keeps its logs in a database, not in files.
        """
        if not isinstance(self._backend, FileStore):
            encode_id(conversation_id)  # a bad id still raises TypeError/ValueError first
            raise StorageError(
                errno.EOPNOTSUPP, f"{self._backend.name} keeps conversations in a database"
            )
        return self._backend.path(conversation_id)

    def open(self, conversation_id: str) -> ConversationCodec:
        """Open (not create: the first append creates) a conversation's log; close it after.

        The log is bound to ``conversation_id`` (``context=``, FORMAT.md §4.2): another
        conversation's log copied or swapped over this one's file is refused with
        ``BindingError``, even under the same key.

        :raises KeyRequiredError, NotEncryptedError, DecryptionError: as ``ConversationCodec``.
        :raises BindingError: the file holds another conversation's log.
        """
        encode_id(conversation_id)  # a bad id raises TypeError/ValueError on any backend
        where, storage = self._backend.locate(conversation_id, lock_timeout=self._lock_timeout)
        key = self._key_fn(conversation_id) if self._key_fn is not None else self._key
        return self._codec(where, storage, key, conversation_id)

    def _open_hashed(self, path: str) -> ConversationCodec:
        """Open the log at ``path`` (a hashed name, never packed: ``FileStore.scan``) by the
        id's digest its name carries: it must be bound to that id, as ``open(id)`` checks."""
        digest = hashed_digest(os.path.basename(path)[: -len(".log")]) or b"(not hashed)"
        return self._codec(path, None, self._key, ContextDigest(digest))

    def _codec(self, where: Any, storage: Any, key: Any, context: Any) -> ConversationCodec:
        return ConversationCodec(
            where,
            storage=storage,
            encryption_key=key,
            redact_fn=self._redact,
            durability=self._durability,
            clock=self._clock,
            lock_timeout=self._lock_timeout,
            context=context,
            **self._options,
        )

    def __contains__(self, conversation_id: object) -> bool:
        if not isinstance(conversation_id, str):
            return False
        try:
            encode_id(conversation_id)
        except ValueError:
            return False
        return self._backend.exists(conversation_id)

    def ids(self, *, on_error: OnError | None = None) -> builtins.list[str]:
        """Return the ids of every conversation with a log, sorted; no log is opened.

        An unreadable pack may hold any ids (FORMAT.md §18.2.3); a log under a hashed name
        (an id too long for a file name) does not give its id. Without ``on_error`` the
        first one's ``FormatError`` or ``HashedIdError`` is raised: a partial list is never
        returned as the whole. With it, ``on_error(path, error)`` is called for each
        (``store_walk``), and the ids of every other log are returned.
        """
        found, unlisted = self._listing()
        report(unlisted, on_error)
        return found

    def _listing(self) -> tuple[builtins.list[str], Unlisted]:
        found, hashed, broken = self._scan()
        return found, [*broken, *((path, hashed_error(path)) for path in hashed)]

    def _scan(self) -> Scan:
        backend = self._backend
        return backend.scan() if isinstance(backend, FileStore) else (backend.ids(), [], [])

    def list(self) -> builtins.list[ConversationInfo]:
        """Deprecated alias of :meth:`infos` (it shadowed the builtin); kept for one release."""
        warnings.warn(
            "ConversationStore.list() is deprecated: call infos()", DeprecationWarning, stacklevel=2
        )
        return self.infos()

    def infos(
        self, *, keyless: bool = False, on_error: OnError | None = None
    ) -> builtins.list[ConversationInfo]:
        """Describe every conversation, sorted by id, from headers and indexes alone.

        No message is decrypted, but an encrypted log's header is authenticated, so the
        store needs each conversation's key. A conversation deleted meanwhile is left out.
        One that cannot be opened (no key, a wrong key, a plaintext log in an encrypted
        store, a foreign or damaged file) is listed with its ``status`` and ``error``;
        the others are listed as usual.

        With ``keyless``, a log that needs a key (or password) this store lacks is described
        without one, with status ``"unverified"``: count and times are what its
        unauthenticated index says (``storage.file.peek``; in a database, its row), and
        ``error`` notes log bytes the index does not cover.

        An unreadable pack, a log under a hashed name: as for ``ids()`` (``on_error`` is
        called after the rest is listed).
        """
        out = []
        found, broken = self._listing()
        if on_error is None:
            report(broken, None)  # raises
        for conversation_id in found:
            try:
                with self.open(conversation_id) as codec:
                    info = codec.info()
            except KeyRequiredError as exc:
                failed = self._failed(conversation_id, exc)
                out.append(self._peeked(failed) if keyless else failed)
                continue
            except ConversationCodecError as exc:
                out.append(self._failed(conversation_id, exc))
                continue
            if info.format_version is None:
                continue  # deleted between listdir() and open()
            out.append(
                ConversationInfo(
                    conversation_id=conversation_id,
                    message_count=info.message_count,
                    first_timestamp=info.first_timestamp,
                    last_timestamp=info.last_timestamp,
                    encrypted=info.encrypted,
                    disk_bytes=info.log_bytes + info.index_bytes,
                )
            )
        report(broken, on_error)
        return out

    def _peeked(self, failed: ConversationInfo) -> ConversationInfo:
        """``failed`` (no key), told from the log's index where the backend can peek."""
        peek = getattr(self._backend, "peek", None)  # FileStore, PostgresStore
        if peek is None:
            return failed
        try:
            seen = peek(failed.conversation_id)
        except OSError:
            return failed
        if seen.indexed is None:
            return dataclasses.replace(failed, status="unverified", error="no usable index")
        lag = seen.unindexed_bytes
        return dataclasses.replace(
            failed,
            message_count=seen.indexed,
            first_timestamp=None if seen.first_ts_us is None else to_datetime(seen.first_ts_us),
            last_timestamp=None if seen.last_ts_us is None else to_datetime(seen.last_ts_us),
            status="unverified",
            error=f"{lag} log bytes past the index: more messages may exist" if lag else None,
        )

    def _failed(self, conversation_id: str, exc: ConversationCodecError) -> ConversationInfo:
        """The entry of a conversation whose log could not be opened (never its key)."""
        sizes, prefix = self._backend.footprint(conversation_id)
        sealed = sniff_log(prefix) is LogKind.SEALED
        return ConversationInfo(
            conversation_id, 0, None, None, sealed, sizes, type(exc).__name__, str(exc)
        )

    def delete(self, conversation_id: str) -> bool:
        """Delete every file of a conversation; return False when it had none.

        Needs the conversation's key, like any writer: the log is removed under its
        writer lock, following the engine's protocol, so concurrent readers see it go.
        """
        return self._delete(conversation_id, None)

    def _delete(self, conversation_id: str, cutoff_us: int | None) -> bool:
        if not self._backend.has_files(conversation_id):
            return False
        try:
            return self._delete_open(self.open(conversation_id), cutoff_us)
        except CorruptRecordError:
            # A packed log too damaged to unpack is erased from its pack unread (the other
            # conversations there cannot be rewritten by hand); retention keeps it.
            backend, timeout = self._backend, self._lock_timeout
            if cutoff_us is not None or not isinstance(backend, FileStore):
                raise
            if backend.erase_packed(conversation_id, lock_timeout=timeout):
                return True
            raise

    def _delete_open(self, opened: ConversationCodec, cutoff_us: int | None) -> bool:
        with opened as codec, codec.transaction():  # re-entrant
            # Decided under the lock, so a message appended after prune() listed the
            # store keeps the conversation.
            last = codec.info().last_timestamp
            fresh = last is not None and (last - EPOCH) // ONE_US >= (cutoff_us or 0)
            if cutoff_us is not None and fresh:
                return False
            # clear() deletes the log's files and leftovers under the lock, whose file goes
            # last: another process may then create the conversation again at once.
            codec.clear()
        return cutoff_us is None or last is not None

    def prune(
        self, older_than: datetime | timedelta, *, on_error: OnError | None = None
    ) -> builtins.list[str]:
        """Delete the conversations whose last message is older than a cutoff; return their ids.

        :param older_than: an aware datetime (the cutoff itself), or a timedelta >= 0: the
            cutoff is now (the store's clock) minus it; not a number (age or epoch seconds?).
            Empty conversations are kept.
        :param on_error: called with ``(conversation_id, error)`` for each conversation
            that could not be read or deleted; it is kept, and pruning carries on. (Such
            conversations also show in ``infos()`` with their status.)
        :raises FormatError: a pack is unreadable: what it holds is kept, all else pruned.
        :raises HashedIdError: ``key_fn`` and no ``on_error``: a log under a hashed name
            was kept, all else pruned (see ``store_walk``).

        A log under a hashed name (an id too long for a file name) is pruned as any other,
        opened by the id's digest its name carries, and listed in the result (and to
        ``on_error``) by its path: the name does not give the id (``store_walk``).
        """
        if isinstance(older_than, timedelta):
            clock = self._clock
            now_us = datetime_to_us(datetime.now(timezone.utc), "now") if clock is None else clock()
            cutoff_us = age_cutoff_us(now_us, older_than, "older_than")  # ValueError if < 0
        elif isinstance(older_than, datetime):
            cutoff_us = datetime_to_us(older_than, "older_than")  # NaiveDatetimeError
        else:
            raise TypeError(NOT_A_CUTOFF)
        ids, hashed, bad = self._scan()
        deleted = expire(ids, self.open, lambda c: self._delete(c, cutoff_us), cutoff_us, on_error)
        kept = [(path, hashed_error(path, key_fn=True)) for path in hashed if self._key_fn]
        deleted += expire(
            [] if kept else hashed,
            self._open_hashed,
            lambda path: self._delete_open(self._open_hashed(path), cutoff_us),
            cutoff_us,
            on_error,
        )
        if bad:
            raise bad[0][1]
        report(kept, on_error)
        return deleted

    def pack(
        self,
        older_than: datetime | timedelta | None = None,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        max_log_bytes: int = 64 * 1024,
    ) -> PackReport:
        """Move small conversations whose last message is older than ``older_than`` (all
        when None) into pack files (FORMAT.md §18); see ``maintenance.pack.pack_store``.

        A maintenance step: a packed conversation reads with one ``pread`` and costs no
        file-system block of its own; its first write moves it back to its own log file.

        >>> import tempfile
        >>> from conversation_codec import generate_key
        >>> store = ConversationStore(tempfile.mkdtemp(), encryption_key=generate_key())
        >>> with store.open("a") as codec:
        ...     codec.append({"role": "user", "content": "hi"})
        0
        >>> store.pack().packed, store.path("a").exists(), store.ids()
        (['a'], False, ['a'])
        """
        now = None if self._clock is None else EPOCH + self._clock() * ONE_US
        return pack_store(
            self, older_than=older_than, max_bytes=max_bytes, max_log_bytes=max_log_bytes, now=now
        )

    def search(
        self,
        query: str | None = None,
        *,
        since: TimeInput | None = None,
        until: TimeInput | None = None,
        role: str | Iterable[str] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        regex: bool = False,
        case_sensitive: bool = False,
        conversation_ids: Iterable[str] | None = None,
        on_error: OnError | None = None,
    ) -> Iterator[tuple[str, Hit]]:
        """Stream ``(conversation_id, Hit)`` across conversations, in time order.

        Arguments mean what they mean for ``ConversationCodec.search``; ``limit`` and
        ``newest_first`` apply to the merged stream (ties: by id, then seq).
        ``conversation_ids`` restricts the search (ids without a log are skipped).

        A conversation that cannot be read (no key or a wrong one, a foreign or damaged
        file) does not stop the search: its hits read before the failure are kept, the
        rest of it is skipped, and ``on_error(conversation_id, error)`` is called (from
        the thread consuming the stream). ``infos()`` reports the same conversations.
        An unreadable pack: as for ``ids()`` (``on_error`` is called before the first hit).
        A conversation compacted or pruned meanwhile loses no hit; one rewritten while it
        was read raises ``LogReplacedError``: each gives what its own search gives.

        Each conversation is read a chunk of hits per open (64, then 4x larger each time),
        and its log is closed between chunks: merging thousands of conversations does not
        exhaust file descriptors, as the rejected alternative — one open codec per
        conversation for the whole merge — would.
        """
        parsed = SearchQuery.parse(  # raise now, not at the first next()
            query,
            since=since,
            until=until,
            role=role,
            limit=limit,
            newest_first=newest_first,
            regex=regex,
            case_sensitive=case_sensitive,
        )
        broken: Unlisted = []
        if conversation_ids is None:
            ids, broken = self._listing()
            if on_error is None:
                report(broken, None)  # raises (an unreadable pack's error), before any read
        else:  # refuse bad ids before anything is read; skip (and ask no key for) absent ones
            wanted = sorted({encode_id(cid): cid for cid in conversation_ids}.values())
            ids = [cid for cid in wanted if self._backend.exists(cid)]
        options: dict[str, Any] = {
            "role": parsed.roles,  # once: ``role`` may be a one-shot iterator
            "regex": regex,
            "case_sensitive": case_sensitive,
            "newest_first": newest_first,
        }
        streams = [
            conversation_hits(self.open, cid, query, parsed.span, options, limit, on_error)
            for cid in ids
        ]
        merged = heapq.merge(*streams, reverse=newest_first)
        cap = None if limit is None else min(limit, sys.maxsize)  # islice's own bound
        return reported(broken, on_error, (pair for _, pair in islice(merged, cap)))

"""ConversationStore: many conversations, one log each, under one root directory.

A conversation id becomes a file name by a reversible, case-insensitive-safe encoding
(``encode_id``): lowercase ASCII letters, digits, ``_``, ``-`` and a non-leading ``.`` are
kept; every other byte of the id's UTF-8 (uppercase letters, ``/``, ``%``, NUL, a leading
dot, non-ASCII) becomes ``%`` plus two lowercase hex digits. So ``../etc/passwd`` is stored
as ``%2e.%2fetc%2fpasswd.log`` inside the root and no id can name a path outside it;
``Alice`` and ``alice`` stay two files even on a case-insensitive file system; and ``list()``
recovers every id from the file names alone. An id whose encoding is longer than
``MAX_ENCODED_ID`` bytes is stored under a hashed name instead: the encoding's first 128
bytes, ``~``, and the SHA-256 of the id's UTF-8 (``~`` is never in an encoding, so the two
kinds cannot collide); its log is bound to the full id like every other (FORMAT.md §4.2).
Such a name does not decode: ``list()``, ``search()`` and ``prune()`` skip those logs (a
sidecar holding the id would be one more file that can disagree with the log).

Files of conversation ``c``: ``<root>/<encode_id(c)>.log`` and its sidecars ``.log.idx``,
``.log.lock`` and (after a crash mid-rewrite) ``.log.tmp-<16 hex>``. The root is created
(mode 0700) by the first write, not by the constructor, so building a store does no I/O.

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
import contextlib
import hashlib
import heapq
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from ._fsio import FileIO, unlink_file
from ._time import EPOCH, ONE_US, datetime_to_us, to_datetime, to_us
from .codec import ConversationCodec, Message, TimeInput
from .crypto import KeyInput, Keyring
from .errors import ConversationCodecError, StorageError
from .format.header import LogKind, sniff_log
from .paths import index_path, is_log_file
from .search import Hit, Query, parse_roles

__all__ = ["MAX_ENCODED_ID", "ConversationInfo", "ConversationStore", "decode_id", "encode_id"]

MAX_ENCODED_ID = 200  # bytes; + ".log.tmp-<16 hex>" (25) stays under NAME_MAX (255)
LOG_SUFFIX = ".log"
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-.")
_ENCODED = re.compile(r"(?:[a-z0-9_\-.]|%[0-9a-f]{2})+")
_FIRST_CHUNK = 64  # hits read from one conversation per open, growing x4 per reopen
_MAX_CHUNK = 4096

KeyFn = Callable[[str], KeyInput | None]
# Called with (conversation_id, error) for each conversation search() or prune() skipped.
OnError = Callable[[str, ConversationCodecError], None]


def encode_id(conversation_id: str) -> str:
    """Return the file-name stem for ``conversation_id`` (see the module docstring).

    >>> encode_id("Alice/../x"), encode_id(".hidden"), encode_id("a.b-c_d")
    ('%41lice%2f..%2fx', '%2ehidden', 'a.b-c_d')

    :raises TypeError: the id is not a str.
    :raises ValueError: empty, or not encodable as UTF-8.
    """
    if not isinstance(conversation_id, str):
        raise TypeError(f"conversation id must be a str, not {type(conversation_id).__name__}")
    if not conversation_id:
        raise ValueError("conversation id must not be empty")
    try:
        raw = conversation_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("conversation id is not valid Unicode (lone surrogate)") from None
    out = [
        chr(b) if b in _SAFE and not (i == 0 and b == ord(".")) else f"%{b:02x}"
        for i, b in enumerate(raw)
    ]
    stem = "".join(out)
    if len(stem) > MAX_ENCODED_ID:  # hashed (module docstring); 128 + 1 + 64 bytes
        return stem[:128] + "~" + hashlib.sha256(raw).hexdigest()
    return stem


def decode_id(stem: str) -> str | None:
    """Return the id whose encoding is ``stem``, or None when ``stem`` is not one.

    Only the canonical encoding decodes, so every file name maps to at most one id.
    """
    if not _ENCODED.fullmatch(stem):
        return None
    raw = bytearray()
    i = 0
    while i < len(stem):
        if stem[i] == "%":
            raw.append(int(stem[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(stem[i]))
            i += 1
    try:
        conversation_id = raw.decode("utf-8")
        return conversation_id if encode_id(conversation_id) == stem else None
    except ValueError:
        return None


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

    :param root: the directory; created 0700 by the first write.
    :param encryption_key: one key (or rotation list) for every conversation; None for
        plaintext. Exclusive with ``key_fn``.
    :param key_fn: ``key_fn(conversation_id)`` returns that conversation's key (or None for
        plaintext): per-user keys. Called on every open.
    :param durability, redact_fn, clock, lock_timeout: passed to every ``ConversationCodec``.
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
    ) -> None:
        if encryption_key is not None and key_fn is not None:
            raise ValueError("pass encryption_key= or key_fn=, not both")
        if password is not None and (encryption_key is not None or key_fn is not None):
            raise ValueError("pass password= or encryption_key=/key_fn=, not both")
        if durability not in ("fsync", "flush"):
            raise ValueError(f'durability must be "fsync" or "flush", not {durability!r}')
        if encryption_key is not None:
            Keyring.from_input(encryption_key)  # a bad key fails here, not at the first open
        self._root = Path(root)
        self._key = encryption_key
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

    @property
    def root(self) -> Path:
        """The directory holding the logs."""
        return self._root

    def path(self, conversation_id: str) -> Path:
        """Return the log file of ``conversation_id`` (which may not exist yet)."""
        return self._root / (encode_id(conversation_id) + LOG_SUFFIX)

    def open(self, conversation_id: str) -> ConversationCodec:
        """Open (not create: the first append creates) a conversation's log; close it after.

        The log is bound to ``conversation_id`` (``context=``, FORMAT.md §4.2): another
        conversation's log copied or swapped over this one's file is refused with
        ``BindingError``, even under the same key.

        :raises KeyRequiredError, NotEncryptedError, DecryptionError: as ``ConversationCodec``.
        :raises BindingError: the file holds another conversation's log.
        """
        path = self.path(conversation_id)
        key = self._key_fn(conversation_id) if self._key_fn is not None else self._key
        return ConversationCodec(
            path,
            encryption_key=key,
            redact_fn=self._redact,
            durability=self._durability,
            clock=self._clock,
            lock_timeout=self._lock_timeout,
            context=conversation_id,
            **self._options,
        )

    def __contains__(self, conversation_id: object) -> bool:
        try:
            return self.path(conversation_id).is_file()  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def ids(self) -> list[str]:
        """Return the ids of every conversation with a log, sorted; no log is opened."""
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []
        except OSError as exc:  # e.g. a root name too long for the file system
            raise StorageError(exc.errno or 0, f"store root {self._root}: {exc.strerror}") from None
        found = []
        for entry in entries:
            if entry.name.endswith(LOG_SUFFIX) and entry.is_file():
                conversation_id = decode_id(entry.name[: -len(LOG_SUFFIX)])
                if conversation_id is not None:
                    found.append(conversation_id)
        return sorted(found)

    def list(self) -> builtins.list[ConversationInfo]:
        """Deprecated alias of :meth:`infos` (it shadowed the builtin); kept for one release."""
        warnings.warn(
            "ConversationStore.list() is deprecated: call infos()", DeprecationWarning, stacklevel=2
        )
        return self.infos()

    def infos(self) -> builtins.list[ConversationInfo]:
        """Describe every conversation, sorted by id, from headers and indexes alone.

        No message is decrypted, but an encrypted log's header is authenticated, so the
        store needs each conversation's key. A conversation deleted meanwhile is left out.
        One that cannot be opened (no key, a wrong key, a plaintext log in an encrypted
        store, a foreign or damaged file) is listed with its ``status`` and ``error``;
        the others are listed as usual.
        """
        out = []
        for conversation_id in self.ids():
            try:
                with self.open(conversation_id) as codec:
                    info = codec.info()
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
        return out

    def _failed(self, conversation_id: str, exc: ConversationCodecError) -> ConversationInfo:
        """The entry of a conversation whose log could not be opened (never its key)."""
        path = self.path(conversation_id)
        sizes, prefix = 0, b""
        for file in (path, Path(index_path(path))):
            with contextlib.suppress(OSError):
                sizes += file.stat().st_size
        with contextlib.suppress(OSError), open(path, "rb") as f:
            prefix = f.read(64)
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
        path = self.path(conversation_id)
        if not _files_of(path):
            return False
        with self.open(conversation_id) as codec, codec.transaction():  # re-entrant
            # Decided under the lock, so a message appended after prune() listed the
            # store keeps the conversation.
            last = codec.info().last_timestamp
            fresh = last is not None and (last - EPOCH) // ONE_US >= (cutoff_us or 0)
            if cutoff_us is not None and fresh:
                return False
            codec.clear()
            for leftover in _files_of(path):  # temp files of writers that crashed mid-rewrite
                unlink_file(leftover, io=codec.options.io)  # refuses a planted link
        return cutoff_us is None or last is not None

    def prune(
        self, older_than: datetime | timedelta, *, on_error: OnError | None = None
    ) -> builtins.list[str]:
        """Delete the conversations whose last message is older than a cutoff; return their ids.

        :param older_than: an aware datetime (the cutoff itself), or a timedelta: the
            cutoff is now (the store's clock) minus it. Empty conversations are kept.
        :param on_error: called with ``(conversation_id, error)`` for each conversation
            that could not be read or deleted; it is kept, and pruning carries on. (Such
            conversations also show in ``list()`` with their status.)
        """
        if isinstance(older_than, timedelta):
            now_us = self._clock() if self._clock is not None else None
            now = datetime.now(timezone.utc) if now_us is None else EPOCH + now_us * ONE_US
            cutoff = now - older_than
        elif isinstance(older_than, datetime):
            datetime_to_us(older_than, "older_than")  # a naive one: NaiveDatetimeError
            cutoff = older_than
        else:
            raise TypeError("older_than must be an aware datetime or a timedelta")
        cutoff_us = (cutoff - EPOCH) // ONE_US
        deleted = []
        for conversation_id in self.ids():
            try:
                with self.open(conversation_id) as codec:
                    last = codec.info().last_timestamp
                stale = last is not None and (last - EPOCH) // ONE_US < cutoff_us
                if stale and self._delete(conversation_id, cutoff_us):
                    deleted.append(conversation_id)
            except ConversationCodecError as exc:
                if on_error is not None:
                    on_error(conversation_id, exc)
        return deleted

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
        the thread consuming the stream). ``list()`` reports the same conversations.

        Each conversation is read a chunk of hits per open (64, then 4x larger each time),
        and its log is closed between chunks: merging thousands of conversations does not
        exhaust file descriptors, as the rejected alternative — one open codec per
        conversation for the whole merge — would.
        """
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError("limit must be a non-negative int or None")
        if conversation_ids is None:
            ids = self.ids()
        else:  # refuse bad ids before anything is read; skip (and ask no key for) absent ones
            wanted = sorted({self.path(cid): cid for cid in conversation_ids}.items())
            ids = [cid for path, cid in wanted if path.is_file()]
        options: dict[str, Any] = {
            "role": parse_roles(role),  # once: ``role`` may be a one-shot iterator
            "regex": regex,
            "case_sensitive": case_sensitive,
            "newest_first": newest_first,
        }
        lo = None if since is None else to_us(since, "since")
        hi = None if until is None else to_us(until, "until")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"since ({since!r}) is after until ({until!r})")
        Query(query, regex=regex, case_sensitive=case_sensitive)  # raise now, not at next()
        streams = [self._hits(cid, query, lo, hi, options, limit, on_error) for cid in ids]
        merged = heapq.merge(*streams, reverse=newest_first)
        return (pair for _, pair in islice(merged, limit))

    def _hits(
        self,
        conversation_id: str,
        query: str | None,
        lo: int | None,
        hi: int | None,
        options: dict[str, Any],
        limit: int | None,
        on_error: OnError | None = None,
    ) -> Iterator[tuple[tuple[int, str, int], tuple[str, Hit]]]:
        """Yield one conversation's hits keyed for the merge, reopening the log per chunk.

        A chunk resumes at the last hit's timestamp and skips hits already yielded (records
        sharing that timestamp), so the position survives closing the log in between.
        """
        newest_first = options["newest_first"]
        chunk = min(limit, _FIRST_CHUNK) if limit is not None else _FIRST_CHUNK
        after: tuple[int, int] | None = None  # (ts_us, seq) of the last hit yielded
        while chunk:
            batch: builtins.list[Hit] = []
            failed = None
            try:
                with self.open(conversation_id) as codec:
                    hits = codec.search(
                        query,
                        since=_at(lo) if lo is not None else None,
                        until=_at(hi) if hi is not None else None,
                        **options,
                    )
                    if after is not None:
                        hits = (h for h in hits if _is_past(h, after, newest_first))
                    batch.extend(islice(hits, chunk))  # keeps what was read before a failure
            except ConversationCodecError as exc:
                failed = exc
            for hit in batch:
                ts = (hit.timestamp - EPOCH) // ONE_US
                yield (ts, conversation_id, hit.seq), (conversation_id, hit)
            if failed is not None:
                if on_error is not None:
                    on_error(conversation_id, failed)
                return
            if len(batch) < chunk:
                return
            last = batch[-1]
            after = ((last.timestamp - EPOCH) // ONE_US, last.seq)
            if newest_first:
                hi = after[0] + 1
            else:
                lo = after[0]
            chunk = min(chunk * 4, _MAX_CHUNK)


def _at(us: int) -> datetime:
    return to_datetime(us)


def _is_past(hit: Hit, after: tuple[int, int], newest_first: bool) -> bool:
    key = ((hit.timestamp - EPOCH) // ONE_US, hit.seq)
    return key < after if newest_first else key > after


def _files_of(path: Path) -> list[Path]:
    """Return the files of one log present on disk: the log, its index, lock and temps."""
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return [path.parent / name for name in names if is_log_file(name, path.name)]

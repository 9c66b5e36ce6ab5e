"""CodecCore: what every part of ``ConversationCodec``'s API stands on.

Opening a log (options, secrets, the storage: a file, memory, or another ``LogStorage``),
its transactions, the visible window (``max_messages``), and the components the API is
built from: ``LogReader``, ``LogWriter``, ``Compactor`` and ``HistoryView`` (save()'s rule).
``ConversationCodec`` (``codec``) adds the everyday API; ``maintenance.api`` the rewrites,
checks, export and import; ``chat_api`` the model-API message lists.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from ._fsio import DEFAULT_IO, FileIO, remove_flat_dir
from .attachments import BlobStore, references, restore
from .crypto import KeyInput, Keyring
from .encoding import MessageEncoder
from .errors import ClosedError, ConversationCodecError, StorageError
from .format.header import ContextDigest, context_digest
from .index_cache import IndexCache
from .indexing import KeywordIndexer
from .maintenance.compact import Compactor
from .options import AttachmentMode, CodecOptions, Durability
from .paths import blobs_path, check_log_path
from .reading import LogReader
from .saving import HistoryView
from .sealing import LogSecrets, check_password
from .storage.base import LogStorage, StorageOpener
from .storage.file.log import FileLog
from .storage.file.quick import QuickAppend, quick_append
from .storage.file.store import packed_opener
from .storage.memory import MemoryLog
from .writing import LogWriter

__all__ = ["MEMORY", "CodecCore", "Message", "TimeInput", "TimestampInput"]

Message = dict[str, Any]
TimestampInput = datetime | int | float
TimeInput = datetime | int | float | str
MEMORY = ":memory:"  # the path of a log kept in memory
# A pop of a message with attachments deletes their blobs when no record left refers to them
# (FORMAT.md §15), which it can tell only by reading every record left: it does so for a log
# left with at most this many (reading 256 sealed records measured ~1.5 ms, about what a
# synced pop costs), and a longer log keeps them until its next rewrite or compaction.
POP_SWEEP_RECORDS = 256
_Core = TypeVar("_Core", bound="CodecCore")


class CodecCore:
    """One open log and the components that read, write and rewrite it (see the module
    docstring; the parameters are documented on ``ConversationCodec``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        encryption_key: KeyInput | None = None,
        redact_fn: Callable[[Message], Message] | None = None,
        durability: str = "fsync",
        *,
        clock: Callable[[], int] | None = None,
        lock_timeout: float | None = None,
        password: str | None = None,
        max_messages: int | None = None,
        attachments: str = "keep",
        context: str | ContextDigest | None = None,
        io: FileIO = DEFAULT_IO,
        storage: StorageOpener | None = None,
        search_index: bool = False,
        index_cache: IndexCache | None = None,
    ) -> None:
        self._options = CodecOptions(
            durability=cast(Durability, durability),
            attachments=cast(AttachmentMode, attachments),
            clock=clock,
            lock_timeout=lock_timeout,
            io=io,
        )
        if password is not None and encryption_key is not None:
            raise ValueError("pass encryption_key= or password=, not both")
        if password is not None:
            check_password(password)
        if max_messages is not None and (not isinstance(max_messages, int) or max_messages < 1):
            raise ValueError("max_messages must be a positive int or None")
        # A store's wrapper of the log file (``wraps_file(file_log, attach)``, packs:
        # FORMAT.md §18) keeps the log a file; any other ``storage`` replaces it.
        wrap = getattr(storage, "wraps_file", None)
        self._file = (storage is None or wrap is not None) and os.fspath(path) != MEMORY
        self._where: Path | None = None  # self._path, made when first asked for
        if self._file and getattr(storage, "checked_path", None) != path:
            self._where = check_log_path(path)
            self._name = str(self._where)  # named in errors
        else:  # a store's wrapper for the path its locate() checked (FileStore.locate): a
            # str, taken as is (a Path built and formatted per open cost ~4 us, issue 15)
            self._name = os.fspath(path)
        if storage is None and self._file:  # a store log's path, in a store with packs
            storage = packed_opener(self._name, lock_timeout, io)
            wrap = getattr(storage, "wraps_file", None)
        if attachments == "external" and not self._file:
            raise ValueError('attachments="external" keeps blobs beside a log file')
        if attachments == "external" and password is not None:
            raise ValueError("external attachments need encryption_key=, not password=")
        if search_index and encryption_key is None and password is None:
            raise ValueError(
                "search_index=True keeps a sealed index of an encrypted log: give "
                "encryption_key= or password="
            )
        keyring = None if encryption_key is None else Keyring.from_input(encryption_key)
        binding = None if context is None else context_digest(context)
        named = context if isinstance(context, str) else None  # (advice only)
        self._secrets = LogSecrets(self._name, keyring, password, binding, named)
        self._max = max_messages
        blobs = None
        if attachments == "external":
            blobs = BlobStore.for_key(blobs_path(self._name), keyring, io=io)
        self._encoder = MessageEncoder(redact_fn, attachments, blobs)
        self._adopt_blobs()  # a log that has a blob store uses it, whatever the option says
        # The log's ``refreshes`` when blobs were last sought: 1, the first transaction's
        # load, which follows the look just taken (no second faccessat per reopen).
        self._blob_stamp: int | None = 1
        self._closed = False
        attach = self._secrets.attach
        if storage is not None and wrap is None:
            self._log: LogStorage = storage(attach)
        elif not self._file:
            self._log = MemoryLog(attach=attach)
        else:
            file_log = FileLog(
                self._name, attach=attach, durability=durability, lock_timeout=lock_timeout, io=io
            )
            self._log = file_log if wrap is None else wrap(file_log, attach)
        if search_index and self._log.keyword_index() is None:
            raise ValueError(
                "search_index=True needs a storage that keeps a keyword index: a log file "
                "or a database (not :memory:)"
            )
        self._reader = LogReader(self._log, self._name)
        self._writer = LogWriter(self._log, self._reader, self._secrets, clock)
        self._kwi = KeywordIndexer(self._log, self._reader, wanted=search_index, cache=index_cache)
        self._compactor = Compactor(
            self._log, self._reader, self._secrets, self._encoder, self._kwi
        )
        self._history = HistoryView(self._log, self._reader, self._encoder, self._name)
        self._log.on_change = self._history.forget
        # append() in the steady state (issue 15): a log file of its own (not a store's
        # wrapper), no sidecar to keep on append, no blob written under the lock, no window.
        self._quick: QuickAppend | None = None
        log = self._log
        if isinstance(log, FileLog) and not search_index and blobs is None and not max_messages:
            self._quick = quick_append(log, self._writer.single, self._history.appended)
        try:  # fail fast on a wrong key or a foreign file
            self._log.probe()
        except FileNotFoundError:  # the log was there, and was removed before it was opened
            pass  # (a clear, a pack, by another process): the first transaction looks again
        except OSError as exc:
            if isinstance(exc, ConversationCodecError):
                raise
            raise StorageError(exc.errno or 0, f"{self._name}: {exc.strerror or exc}") from None

    @property
    def options(self) -> CodecOptions:
        """The options this codec was opened with (durability, attachments, seams)."""
        return self._options

    # -- transactions ----------------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Hold the writer lock across several calls, with a current view of the log.

        Inside, no other process or thread writes the log, and every method of this codec
        works (the lock is re-entrant within one thread), so a read followed by a write
        decided on it cannot race another writer:

        >>> from conversation_codec import ConversationCodec
        >>> codec = ConversationCodec(":memory:")
        >>> with codec.transaction():
        ...     if len(codec) == 0:
        ...         codec.append({"role": "system", "content": "be brief"})
        0
        >>> codec.close()

        Keep it short: other writers (and, under the lock's timeout, readers that must
        catch up) wait for it.

        A block left by an exception is all-or-nothing on PostgreSQL only. There the
        outermost block is one SQL transaction: its writes commit when it ends, and an
        exception leaving it rolls every one of them back. A log file, ``":memory:"`` and
        a store's directory commit each write when its call returns (under ``"fsync"``: on
        stable storage), so the writes made before the exception stay, a ``pop()`` or a
        rewrite included, and the block only lets the lock go. Decide before the first
        write, or undo what was written. An exception caught inside the block (a nested
        ``transaction()``'s included) does not leave it: nothing is rolled back.

        :raises ClosedError: the codec is closed.
        :raises StorageError: the lock cannot be taken, or an earlier fsync failed (writes
            are refused until the log is reopened).
        :raises LockTimeoutError: another process held the lock past ``lock_timeout``.
        """
        return self._holding(write=True)

    def _holding(
        self, *, write: bool, tail: int | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """A transaction of the storage; ``tail``: a read of at most the last n records."""
        if self._closed:
            raise ClosedError("this ConversationCodec is closed; open a new one")
        return self._log.transaction(write=write, tail=tail)

    def _append_locked(
        self, encoded: list[tuple[Message, bytes]], timestamps: Sequence[TimestampInput] | None
    ) -> list[int]:
        messages, datas = map(list, zip(*encoded, strict=True))  # never empty: two lists
        if self._file and not self._kwi.wanted and self._writer.create_with(datas, timestamps):
            self._history.created()  # a new log file, created holding them
            first = 0
        else:
            if self._writer.ensure_log():
                self._history.created()
            self._kwi.appending(len(self._log.index), messages)
            first = self._writer.append(datas, timestamps)
        self._kwi.appended(first, messages)
        self._history.appended(first, datas)
        base = self._base()
        return list(range(first - base, first - base + len(encoded)))

    def _append_one(self, encoded: tuple[Message, bytes]) -> int:
        """``append()`` of one encoded message where the quick append declined."""
        with self._holding(write=True):
            return self._append_locked([encoded], None)[0]

    def _rewrite(self, encoded: list[tuple[Message, bytes]], tss: list[int], keep: int = 0) -> None:
        """Atomically replace the log with these messages and timestamps after its first
        ``keep`` records, kept as they are (lock held)."""
        datas = [data for _, data in encoded]
        self._adopt_blobs()  # its blobs that no record left refers to go after the commit
        self._compactor.rewrite(datas, tss, [message for message, _ in encoded], keep)
        self._history.rewritten(datas, keep)
        self._history.whole(keep)

    def _adopt_blobs(self) -> None:
        """Use the log's blob store if it has one (FORMAT.md §15): at the open, and again
        before a rewrite, which must move its attachments too (another writer may have
        created it since). A log whose attachments live in a blob store keeps them there
        whatever ``attachments=`` says (outside review 1, 3, 9): read back restored, moved
        on rotation, checked by verify(), new ones put there too ("keep" acts as
        "external"; "strip" still strips). One faccessat (~1 us; os.path.lexists raises and
        catches for a missing path: twice that); a password log has none (attachments=
        "external" needs a key)."""
        encoder = self._encoder
        if encoder.blobs is not None or not self._file or self._secrets.password is not None:
            return
        where = blobs_path(self._name)
        if os.access(where, os.F_OK, follow_symlinks=False):
            encoder.blobs = BlobStore.for_key(where, self._secrets.keyring, io=self._options.io)
            if encoder.attachments == "keep":
                encoder.attachments = "external"

    def _popped_blobs(self, popped: Message, count: int) -> None:
        """After a pop that left ``count`` records (lock held): delete the blobs of the
        ``popped`` message (as stored) that none of them refers to, when there are at most
        ``POP_SWEEP_RECORDS`` (``BlobStore.delete_unreferenced``: any other blob no record
        refers to goes too, as in a compaction)."""
        blobs = self._encoder.blobs
        if blobs is None or count > POP_SWEEP_RECORDS or not references(popped):
            return
        # The pop is committed: a caller told it failed would pop another. A blob that
        # cannot be deleted (a damaged record, a link planted in P.blobs, an I/O error)
        # waits for a rewrite, which reports what stops it before its commit.
        with contextlib.suppress(OSError, ConversationCodecError):
            referenced: set[str] = set()
            for _, _, parsed, _ in self._reader.parsed(0, count):
                referenced.update(*map(references, parsed))
            blobs.delete_unreferenced(referenced)

    def _remove_blobs(self) -> None:
        if self._encoder.blobs is not None:
            self._encoder.blobs.clear()
        elif self._file:
            remove_flat_dir(blobs_path(self._path), io=self._options.io)

    def _blobs_now(self) -> BlobStore | None:
        """The blob store, looked for again once another writer changed the log since the
        last look (one may have created it after this codec opened). Transaction held."""
        if self._encoder.blobs is None and self._file:
            stamp = getattr(self._log, "refreshes", None)
            if stamp != self._blob_stamp:
                self._blob_stamp = stamp
                self._adopt_blobs()
        return self._encoder.blobs

    def _present(self, message: Message) -> Message:
        """Turn a stored message into what callers see (external attachments restored)."""
        blobs = self._blobs_now()
        return message if blobs is None else restore(message, blobs)

    def _base(self) -> int:
        """The seq of the first visible record: ``max_messages`` hides older ones."""
        count = len(self._log.index)
        return count - self._max if self._max is not None and count > self._max else 0

    def _position(self, seq: int) -> int:
        """Turn a public position (negative from the end) into a record's seq."""
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError(f"seq must be an int, not {type(seq).__name__}")
        base, count = self._base(), len(self._log.index)
        pos = (count if seq < 0 else base) + seq
        if not base <= pos < count:
            raise IndexError(f"seq {seq} out of range for a log of {count - base} messages")
        return pos

    # -- life cycle ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The log file's path (for another storage: the name it was opened with)."""
        return self._path

    @property
    def _path(self) -> Path:
        if self._where is None:
            self._where = Path(self._name)
        return self._where

    @property
    def storage(self) -> LogStorage:
        """The storage this codec reads and writes (read only; for maintenance tools).

        ``salvage()`` scans a ``FileLog``'s bytes through it. Writing to it directly
        bypasses the codec's checks: use the codec's methods for that.
        """
        return self._log

    @property
    def encrypted(self) -> bool:
        """True when this codec writes sealed records (it was given a key or a password)."""
        return self._secrets.encrypted

    def close(self) -> None:
        """Release file descriptors; further calls raise ``ClosedError``."""
        if not self._closed:
            self._closed = True
            self._quick = None
            with contextlib.suppress(OSError):  # the cache is an optimisation
                self._kwi.release()
            self._log.close()

    def __enter__(self: _Core) -> _Core:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:  # never the key
        state = "closed" if self._closed else ("encrypted" if self.encrypted else "plaintext")
        return f"<ConversationCodec {self._name!r} {state}>"

"""FileStore: a store's conversations as log files under one root directory.

A conversation id becomes a file name by a reversible, case-insensitive-safe encoding
(``encode_id``): lowercase ASCII letters, digits, ``_``, ``-`` and a non-leading ``.`` are
kept; every other byte of the id's UTF-8 (uppercase letters, ``/``, ``%``, NUL, a leading
dot, non-ASCII) becomes ``%`` plus two lowercase hex digits. So ``../etc/passwd`` is stored
as ``%2e.%2fetc%2fpasswd.log`` inside the root and no id can name a path outside it;
``Alice`` and ``alice`` stay two files even on a case-insensitive file system; and ``ids()``
recovers every id from the file names alone. An id whose encoding is longer than
``MAX_ENCODED_ID`` bytes is stored under a hashed name instead: the encoding's first 128
bytes, ``~``, and the SHA-256 of the id's UTF-8 (``~`` is never in an encoding, so the two
kinds cannot collide); its log is bound to the full id like every other (FORMAT.md §4.2).

Such a name does not decode, but it carries ``binding = SHA-256(UTF-8(id))``, the very
digest the log is bound to: ``hashed_digest`` reads it, and a codec opened with
``context=ContextDigest(digest)`` authenticates the log as the one of that id without
knowing the id. So a store lists every loose log under a hashed name apart
(``scan()``), and ``ConversationStore`` never skips one in silence: ``prune()`` applies
retention to it (opened by its digest; listed by its path), while ``ids()``, ``infos()``
and ``search()``, which would have to name it, report it as ``HashedIdError`` through
``on_error`` (or raise that). Packs are keyed by the id itself (FORMAT.md §18.1), so a
packed conversation is always listed by its id; ``pack()`` leaves hashed logs loose.
Rejected for now: a sidecar ``P.id`` holding the id, checked against the name's digest
(it would list these conversations by their ids, but it is one more file to create
before the log and delete after it, and it holds the whole id in plaintext where the
name holds only its first 128 encoded bytes).

Files of conversation ``c``: ``<root>/<encode_id(c)>.log`` and its sidecars ``.log.idx``,
``.log.lock`` and (after a crash mid-rewrite) ``.log.tmp-<16 hex>``; or, once packed
(``ConversationStore.pack()``), an entry of a pack in ``<root>/.packs/`` (FORMAT.md §18).
The root is created (mode 0700) by the first write, not by the constructor, so building a
store does no I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..._fsio import DEFAULT_IO, FileIO, unlink_file
from ...errors import FormatError, StorageError
from ...format.header import sniff_log
from ...paths import check_log_path, index_path, is_log_file
from ..base import LogFormat, LogStorage, StorageOpener
from .lock import LogLock
from .log import FileLog
from .packed import StoreLog
from .packs import PACKS_DIR, Packs
from .peek import LogPeek, peek_log

__all__ = [
    "LOG_SUFFIX",
    "MAX_ENCODED_ID",
    "FileStore",
    "decode_id",
    "encode_id",
    "hashed_digest",
]

MAX_ENCODED_ID = 200  # bytes; + ".log.tmp-<16 hex>" (25) stays under NAME_MAX (255)
LOG_SUFFIX = ".log"
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-.")
_ENCODED = re.compile(r"(?:[a-z0-9_\-.]|%[0-9a-f]{2})+")
_KEPT = re.compile(r"[a-z0-9_\-][a-z0-9_\-.]*")  # an id that is its own encoding
_HASHED = re.compile(r"[a-z0-9_.%-]{128}~([0-9a-f]{64})")  # encode_id of a long id


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
    if len(conversation_id) <= MAX_ENCODED_ID and _KEPT.fullmatch(conversation_id):
        return conversation_id  # every character kept as it is (most ids): no loop
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


def packed_opener(path: str, lock_timeout: float | None, io: FileIO) -> StorageOpener | None:
    """The store's wrapper for a codec opened on a store log's own path, when that store
    has packs (FORMAT.md §18); None otherwise. Opened on the path alone, a packed
    conversation would read as empty and its first write would start it afresh, "loose
    wins" then hiding the packed history for good (found in review, through the CLI)."""
    found = _in_store_with_packs(path, io)
    return None if found is None else found[0].locate(found[1], lock_timeout=lock_timeout)[1]


def is_packed(path: str) -> bool:
    """Whether ``path`` is a store log's path whose conversation a pack holds (no file)."""
    found = _in_store_with_packs(path, DEFAULT_IO)
    return found is not None and found[0].packs.find(found[1]) is not None


def _in_store_with_packs(path: str, io: FileIO) -> tuple[FileStore, str] | None:
    folder, name = os.path.split(path)
    stem = name[: -len(LOG_SUFFIX)] if name.endswith(LOG_SUFFIX) else None
    conversation_id = None if stem is None else decode_id(stem)
    if conversation_id is None or not os.path.isdir(os.path.join(folder or ".", PACKS_DIR)):
        return None
    return FileStore(Path(folder or "."), io=io), conversation_id


def hashed_digest(stem: str) -> bytes | None:
    """Return SHA-256 of the id a hashed file-name stem stands for (the binding its log is
    bound to, FORMAT.md §4.2), or None when ``stem`` is not a hashed name.

    >>> hashed_digest(encode_id("A" * 67)) == hashlib.sha256(b"A" * 67).digest()
    True
    >>> hashed_digest("alice") is None
    True
    """
    found = _HASHED.fullmatch(stem)
    return None if found is None else bytes.fromhex(found.group(1))


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


class FileStore:
    """The ``StoreBackend`` of a directory: one log file (and sidecars) per conversation."""

    def __init__(self, root: Path, *, io: FileIO | None = None) -> None:
        self.root = root
        self.io = io or DEFAULT_IO
        self.packs = Packs(root, io=self.io)
        self._root_checked = False  # see locate()
        self._root_name = "" if root == Path(".") else str(root)  # as root / name names it

    @property
    def name(self) -> str:
        return str(self.root)

    def path(self, conversation_id: str) -> Path:
        """The log file of ``conversation_id`` (which may not exist yet)."""
        return self.root / (encode_id(conversation_id) + LOG_SUFFIX)

    def locate(
        self, conversation_id: str, *, lock_timeout: float | None = None
    ) -> tuple[str, StorageOpener | None]:
        # The codec opens the file (and its lock) and hands its FileLog to _Wrap, which
        # reads the packed copy when there is no file (storage.file.packed). A str, which
        # the codec takes as is: a Path costs ~4 us to build and format (issue 15).
        path = os.path.join(self._root_name, encode_id(conversation_id) + LOG_SUFFIX)
        if not self._root_checked:
            # Every log name is an encode_id() (at most MAX_ENCODED_ID bytes, no NUL): once
            # one path passed, so does every other; the codec skips the check (~13 us of a
            # reopen between other work, issue 15), its probe refusing a directory there.
            check_log_path(path)
            self._root_checked = True
        return path, _Wrap(self.packs, conversation_id, lock_timeout, path)

    def exists(self, conversation_id: str) -> bool:
        if self.path(conversation_id).is_file():
            return True
        return self.packs.find(conversation_id) is not None

    def ids(self) -> list[str]:
        """The ids of every conversation with a log, sorted; no log is opened.

        :raises FormatError: a pack is unreadable (``readable_ids`` lists the others).
        """
        found, broken = self.readable_ids()
        if broken:
            raise broken[0][1]
        return found

    def readable_ids(self) -> tuple[list[str], list[tuple[str, FormatError]]]:
        """``ids()`` but for the unreadable packs, whose paths and errors come second
        (store-wide operations go on elsewhere; what such a pack holds is kept). Logs
        under hashed names are not in it: see ``scan()``."""
        found, _hashed, broken = self.scan()
        return found, broken

    def scan(self) -> tuple[list[str], list[str], list[tuple[str, FormatError]]]:
        """``readable_ids()`` with, second, the paths of the loose logs under hashed names
        (sorted), whose ids their names do not give (module docstring)."""
        loose, hashed = self._loose_ids()  # the root first: its errors name it
        packed, broken = self.packs.readable_ids()
        return sorted(set(loose) | packed), sorted(hashed), broken

    def _loose_ids(self) -> tuple[list[str], list[str]]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return [], []
        except OSError as exc:  # e.g. a root name too long for the file system
            raise StorageError(exc.errno or 0, f"store root {self.root}: {exc.strerror}") from None
        found, hashed = [], []
        for entry in entries:
            if entry.name.endswith(LOG_SUFFIX) and entry.is_file():
                stem = entry.name[: -len(LOG_SUFFIX)]
                conversation_id = decode_id(stem)
                if conversation_id is not None:
                    found.append(conversation_id)
                elif hashed_digest(stem) is not None:
                    hashed.append(os.path.join(self._root_name, entry.name))
        return found, hashed

    def footprint(self, conversation_id: str) -> tuple[int, bytes]:
        """Bytes the log and its index take, and the log's first bytes (for a listing of
        a log that could not be opened)."""
        path = self.path(conversation_id)
        sizes, prefix = 0, b""
        where = None if path.exists() else self.packs.find(conversation_id)
        if where is not None:
            with contextlib.suppress(OSError):
                prefix = self.packs.read(where, check=False)[:64]
            return where.entry.length, prefix
        for file in (path, Path(index_path(path))):
            with contextlib.suppress(OSError):
                sizes += file.stat().st_size
        with contextlib.suppress(OSError), open(path, "rb") as f:
            prefix = f.read(64)
        return sizes, prefix

    def peek(self, conversation_id: str) -> LogPeek:
        """The log of ``conversation_id`` as seen without its key (``peek.peek_log``; a
        packed one: its table-of-contents entry)."""
        path = self.path(conversation_id)
        where = None if path.exists() else self.packs.find(conversation_id)
        if where is None:
            return peek_log(path)
        length, prefix = self.footprint(conversation_id)
        tss = where.entry.tss
        first, last = (tss[0], tss[-1]) if tss else (None, None)
        return LogPeek(sniff_log(prefix), length, 0, len(tss), first, last, 0)

    def has_files(self, conversation_id: str) -> bool:
        if self._files_of(self.path(conversation_id)):
            return True
        return self.packs.find(conversation_id) is not None

    def erase_packed(self, conversation_id: str, *, lock_timeout: float | None = None) -> bool:
        """Drop a conversation's packed entry without reading it (one too damaged to
        unpack: erasure must not need it readable); False when it has a log file, or is in
        no pack. Under its log's lock, as any writer of it."""
        path = self.path(conversation_id)
        lock = LogLock(str(path), lock_timeout, io=self.io)
        lock.acquire(exclusive=True)
        try:
            if os.path.lexists(path):
                return False  # loose: deleted through its codec, or by hand
            dropped = self.packs.drop(conversation_id, timeout=lock_timeout)
            lock.forget_created(keep=dropped)  # in no pack: leave no lock file of ours
            if dropped:  # as a clear (FORMAT.md §8.5): announced, then the lock file goes
                _ino, gen, truncs = lock.state()
                lock.write_state(gen + 1, truncs + 1)
                unlink_file(lock.path, io=self.io)
            return dropped
        finally:
            lock.release()
            lock.close()

    @staticmethod
    def _files_of(path: Path) -> list[Path]:
        """The files of one log present on disk: the log, its index, lock and temps."""
        try:
            names = os.listdir(path.parent)
        except FileNotFoundError:
            return []
        except OSError as exc:  # e.g. the store root is a regular file
            raise StorageError(
                exc.errno or 0, f"store root {path.parent}: {exc.strerror}"
            ) from None
        return [path.parent / name for name in names if is_log_file(name, path.name)]

    def close(self) -> None:
        """Close the cached packs (each codec opens and closes its own files)."""
        self.packs.close()


class _Wrap:
    """The ``storage=`` of a store conversation's codec: ``wraps_file`` marks it as the
    wrapper of the codec's own ``FileLog`` (``core.CodecCore``), so the log stays a file
    (keyword index, blobs) and is read from a pack while it has no file."""

    __slots__ = ("_cid", "_packs", "_timeout", "checked_path")

    def __init__(
        self, packs: Packs, conversation_id: str, timeout: float | None, checked_path: str
    ) -> None:
        self._packs, self._cid, self._timeout = packs, conversation_id, timeout
        self.checked_path = checked_path  # the log path locate() vouched for (core.CodecCore)

    def __call__(self, attach: Callable[[bytes], LogFormat]) -> LogStorage:
        raise TypeError("a store conversation's log is a file: open it through the store")

    def wraps_file(self, log: FileLog, attach: Callable[[bytes], LogFormat]) -> LogStorage:
        return StoreLog(log, self._cid, self._packs, attach, lock_timeout=self._timeout)

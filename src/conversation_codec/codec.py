"""ConversationCodec: one conversation log, the class most users touch.

The codec validates and encodes messages, assigns seqs and timestamps, and turns them into
record bodies (``records``); the file backend (``log``) stores bodies and keeps the index.
Every public method runs inside one lock-holding transaction of the backend, so threads
and processes sharing a log see each other's writes and never tear a record.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from ._fsio import DEFAULT_IO, FileIO, remove_flat_dir
from ._time import to_us
from .attachments import BlobStore, restore
from .chat_formats import (
    context_window,
    to_anthropic_messages,
    to_ollama_messages,
    to_openai_messages,
)
from .crypto import (
    KeyInput,
    Keyring,
)
from .encoding import MessageEncoder, digest, encode_json
from .errors import (
    ClosedError,
    ConflictError,
    ConversationCodecError,
    KeyRequiredError,
    LogReplacedError,
    StorageError,
)
from .format.header import (
    context_digest,
)
from .maintenance.compact import CompactionReport, Compactor
from .maintenance.transfer import ImportReport, export_history, import_history
from .options import AttachmentMode, CodecOptions, Durability
from .paths import blobs_path, check_log_path
from .reading import READ_BATCH, LogReader
from .sealing import LogSecrets, check_password
from .search import Hit, Query, parse_roles
from .storage.base import LogStorage
from .storage.file.check import VerifyReport, check_file_log
from .storage.file.log import FileLog
from .writing import LogWriter, check_timestamp

__all__ = ["ConversationCodec", "LogInfo", "Message"]

Message = dict[str, Any]
TimestampInput = datetime | int | float
TimeInput = datetime | int | float | str


# (log_id, the lock's (inode, generation, truncations), record count): equal states mean no
# writer changed the log in between (FORMAT.md §8.1; a rewrite or clear() changes log_id).
_State = tuple[bytes | None, tuple[int, int, int] | None, int]
# A state, and whether the caller was handed (load, iteration) or gave (save, replace) the
# whole history at that state.
_View = tuple[_State, bool]


class ConversationCodec:
    """One conversation history stored as an append-only, optionally encrypted log.

    :param path: the log file. Its sidecars are ``<path>.idx`` and ``<path>.lock``.
    :param encryption_key: None for a plaintext (JSONL) log; a Fernet key (str or bytes);
        or a list of keys, the first of which seals new records while all open old ones.
    :param redact_fn: applied to each message before it is written. It must be
        deterministic, so ``save()`` can tell kept messages from changed ones.
    :param durability: ``"fsync"`` (a returned call is on stable storage) or ``"flush"``
        (handed to the OS: survives a process crash, not a power loss).
    :param clock: seam returning microseconds since the epoch (UTC) for new records.
    :param lock_timeout: seconds to wait for another process's lock; None waits forever.
    :param io: the filesystem seam (LevelDB's ``Env``), a ``FileIO``: every write, sync,
        truncate, rename, link and unlink of the log, its index, lock file and blobs goes
        through it. Default: the operating system. For fault injection: pass a subclass
        that records calls or fails the Nth one (see :class:`CodecOptions`).
    :param password: instead of a key: a scrypt-derived key, salt and cost in the header.
    :param max_messages: reads see only the newest N messages; compaction drops the rest.
    :param attachments: ``"keep"`` inline base64 data; ``"strip"`` it to a placeholder
        (type, size, sha256); or move it to an ``"external"`` encrypted, deduplicated blob
        store beside the log (``<path>.blobs``), restored transparently on read.
    :param context: the identity the log is stored under (``ConversationStore`` passes the
        conversation id). A log created or rewritten with a context is bound to it, and then
        opens only with that same context: a log copied or swapped in from another
        conversation raises ``BindingError`` (FORMAT.md §4.2). An unbound log (written
        without one, or by an older version) still opens, and is bound when next rewritten
        (``compact``, ``save`` that rewrites, ``replace``, ``prune``).
    :raises InvalidKeyError: ``encryption_key`` or ``password`` is unusable (its subclass
        ``KeyTypeError``, also a ``TypeError``, for a wrong type); the value is never shown.
    :raises StorageError: ``path`` is a directory, or too long for the log and its sidecars.
    :raises DecryptionError: no key given opens the existing log.
    :raises BindingError: the log is bound to another context, or to one not given.
    :raises KeyRequiredError: the log is encrypted and no key was given.
    :raises NotEncryptedError: a key was given but the log is plaintext.
    :raises FormatError: the file is not a conversation-codec log (see ``migrate``).

    >>> import tempfile, os
    >>> from conversation_codec import generate_key
    >>> path = os.path.join(tempfile.mkdtemp(), "chat.log")
    >>> with ConversationCodec(path, encryption_key=generate_key()) as codec:
    ...     codec.append({"role": "user", "content": "hi"})
    ...     codec.tail(1)
    0
    [{'role': 'user', 'content': 'hi'}]
    """

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
        context: str | None = None,
        io: FileIO = DEFAULT_IO,
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
        binding = None if context is None else context_digest(context)
        self._path = check_log_path(path)
        keyring = None if encryption_key is None else Keyring.from_input(encryption_key)
        self._secrets = LogSecrets(self._path, keyring, password, binding)
        self._max = max_messages
        if attachments == "external" and password is not None:
            raise ValueError("external attachments need encryption_key=, not password=")
        self._encoder = MessageEncoder(
            redact_fn,
            attachments,
            BlobStore.for_key(blobs_path(self._path), encryption_key, io=io)
            if attachments == "external"
            else None,
        )
        self._digests: list[bytes] | None = None  # of stored messages, for save()
        self._dbase = 0  # the seq of the first message self._digests covers
        self._view: _View | None = None  # what this instance last knew of the log: see save()
        self._closed = False
        self._log: LogStorage = FileLog(
            self._path,
            attach=self._secrets.attach,
            durability=durability,
            lock_timeout=lock_timeout,
            io=io,
        )
        self._log.on_change = self._forget
        self._reader = LogReader(self._log, self._path)
        self._writer = LogWriter(self._log, self._reader, self._secrets, clock)
        self._compactor = Compactor(self._log, self._reader, self._secrets, self._encoder)
        try:  # fail fast on a wrong key or a foreign file
            self._log.probe()
        except OSError as exc:
            if isinstance(exc, ConversationCodecError):
                raise
            raise StorageError(exc.errno or 0, f"{self._path}: {exc.strerror or exc}") from None

    @property
    def options(self) -> CodecOptions:
        """The options this codec was opened with (durability, attachments, seams)."""
        return self._options

    def _forget(self) -> None:
        self._digests = None

    # -- transactions ----------------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Hold the writer lock across several calls, with a current view of the log.

        Inside, no other process or thread writes the log, and every method of this codec
        works (the lock is re-entrant within one thread), so a read followed by a write
        decided on it cannot race another writer:

        >>> import tempfile, os
        >>> codec = ConversationCodec(os.path.join(tempfile.mkdtemp(), "chat.log"))
        >>> with codec.transaction():
        ...     if len(codec) == 0:
        ...         codec.append({"role": "system", "content": "be brief"})
        0
        >>> codec.close()

        Keep it short: other writers (and, under the lock's timeout, readers that must
        catch up) wait for it.

        :raises ClosedError: the codec is closed.
        :raises StorageError: the lock cannot be taken, or an earlier fsync failed (writes
            are refused until the log is reopened).
        :raises LockTimeoutError: another process held the lock past ``lock_timeout``.
        """
        return self._writing()

    def _reading(self) -> contextlib.AbstractContextManager[None]:
        if self._closed:
            raise ClosedError("this ConversationCodec is closed; open a new one")
        return self._log.transaction(write=False)

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        if self._closed:
            raise ClosedError("this ConversationCodec is closed; open a new one")
        return self._log.transaction(write=True)

    # -- writing ---------------------------------------------------------------------------

    def append(self, message: Message, *, timestamp: TimestampInput | None = None) -> int:
        """Append one message as one new record; return its seq.

        :param timestamp: the record's time (aware datetime or epoch seconds); default now.
        :raises NotSerializableError: the message is not a JSON object that round-trips.
        :raises ValueError: ``timestamp`` is earlier than the last record's.
        """
        return self.extend([message], timestamps=None if timestamp is None else [timestamp])[0]

    def extend(
        self,
        messages: Iterable[Message],
        *,
        timestamps: Sequence[TimestampInput] | None = None,
    ) -> list[int]:
        """Append many messages under one lock with one write and one sync; return their seqs.

        A crash during ``extend`` may keep a prefix of the batch; an error raised before
        anything is written (a bad message) keeps none of it.
        """
        messages = list(messages)
        if self._encoder.blobs is None:  # validate outside the lock: other writers wait less
            encoded = [self._encoder.encode(m) for m in messages]
            if not encoded:
                return []
        with self._writing():
            if self._encoder.blobs is not None:
                # Blobs are stored under the lock, so a compaction in another process
                # cannot delete them as unreferenced before this record refers to them.
                encoded = [self._encoder.encode(m) for m in messages]
                if not encoded:
                    return []
            return self._append_locked(encoded, timestamps)

    def save(self, messages: Sequence[Message]) -> None:
        """Make the stored history equal ``messages``, deleting nothing this instance never saw.

        When the stored history is a prefix of ``messages`` only the new tail is appended
        (kept messages keep their seq and timestamp). Otherwise the log is replaced
        atomically (temp file, fsync, rename), keeping the timestamps of the common prefix —
        but only when this instance has seen the whole current history: its last ``load()``
        (or complete iteration, ``save()`` or ``replace()``) and no change since, by any
        writer, this instance's own ``append``/``extend`` included. With ``max_messages``,
        "the stored history" is the visible window.

        :raises ConflictError: the list diverges from a history this instance has not seen
            whole, or would append again messages another writer removed since this
            instance last read the log. Nothing is changed: reload, or call ``replace()``.
        :raises NotSerializableError: a new message cannot be stored.
        """
        messages = list(messages)
        with self._writing():
            # The kept prefix is only compared, by digest: validating and encoding every
            # kept message again on every save would cost ~3x as much (measured at 10k).
            digests = self._stored_digests()
            base = self._base()
            keep = 0
            for message, stored in zip(messages, digests, strict=False):
                if self._encoder.digest_of(message) != stored and not self._same_as_stored(
                    message, base + keep
                ):
                    break
                keep += 1
            if keep == len(digests):
                if len(messages) > keep:
                    self._refuse_resurrection()
                    self._append_locked([self._encoder.encode(m) for m in messages[keep:]], None)
                self._view = (self._state(), True)
                return
            self._refuse_blind_rewrite()
            encoded = [self._encoder.encode(m) for m in messages]
            kept = list(self._log.index.tss[base : base + keep])
            tail = self._writer.stamps(len(encoded) - keep, None) if len(encoded) > keep else []
            self._rewrite(encoded, kept + tail)
            self._view = (self._state(), True)

    # The rule save() follows. Rejected alternatives: trusting this instance's own appends
    # (then load(); extend(100 messages); save(tail(20) + [reply]) still deletes 80 of them),
    # and comparing contents only (a list built before another process's append or pop
    # cannot tell "deleted here" from "never seen").

    def _state(self) -> _State:
        """The log's current state, inside a transaction (see ``_State``)."""
        fmt = self._log.fmt
        return (fmt.log_id if fmt else None, self._log.seen, len(self._log.index))

    def _refuse_blind_rewrite(self) -> None:
        """Raise unless the caller was handed (or gave) the whole history as it is now."""
        if self._view is not None and self._view == (self._state(), True):
            return
        raise ConflictError(
            f"{self._path}: save() would rewrite a history this instance has not read in full "
            "since it last changed (another writer, or this instance's own append, changed it "
            "after the last load()); nothing was changed — reload with load(), or call "
            "replace() to overwrite"
        )

    def _refuse_resurrection(self) -> None:
        """Raise when appending would bring back records removed since this instance's view."""
        if self._view is not None and len(self._log.index) < self._view[0][2]:
            raise ConflictError(
                f"{self._path}: save() would append again messages that another writer removed "
                "(pop, prune, clear or rewrite) since this instance last read the log; nothing "
                "was changed — reload with load(), or call replace() to overwrite"
            )

    def _moved(self, before: _State, *, keeps_view: bool) -> None:
        """Record a change this instance made: the caller still holds the whole history
        only if it did before and the change keeps that true (a pop, a compaction)."""
        whole = keeps_view and self._view == (before, True)
        self._view = (self._state(), whole)

    def _append_locked(
        self, encoded: list[tuple[Message, bytes]], timestamps: Sequence[TimestampInput] | None
    ) -> list[int]:
        if self._writer.ensure_log():
            self._digests, self._dbase = [], 0
        first = self._writer.append([data for _, data in encoded], timestamps)
        if self._digests is not None and self._dbase + len(self._digests) == first:
            self._digests.extend(digest(data) for _, data in encoded)
        else:
            self._digests = None
        self._view = (self._state(), False)  # save() sets it whole again when it appended
        base = self._base()
        return list(range(first - base, first - base + len(encoded)))

    def _same_as_stored(self, message: Message, seq: int) -> bool:
        """Compare with the stored record itself (one decryption), ignoring key order."""
        try:
            return self._encoder.transform(message) == self._reader.read_one(seq)
        except (ConversationCodecError, TypeError, ValueError, RecursionError):
            return False

    def _stored_digests(self) -> list[bytes]:
        """Digests of the visible stored messages (decrypting them once per instance)."""
        base, count = self._base(), len(self._log.index)
        if self._digests is None or self._dbase > base or self._dbase + len(self._digests) != count:
            self._digests = [
                digest(encode_json(m)) for _, m, _ in self._reader.decoded(base, count)
            ]
            self._dbase = base
        return self._digests[base - self._dbase :]

    def _rewrite(self, encoded: list[tuple[Message, bytes]], tss: list[int]) -> None:
        """Atomically replace the log with these messages and timestamps (lock held)."""
        self._compactor.rewrite([data for _, data in encoded], tss)
        self._digests, self._dbase = [digest(data) for _, data in encoded], 0

    def replace(
        self,
        messages: Sequence[Message],
        *,
        timestamps: Sequence[TimestampInput] | None = None,
    ) -> None:
        """Atomically replace the whole history, giving each message its time.

        Unlike ``save()``, nothing is kept: the log is rewritten (temp file, fsync, rename).
        ``timestamps`` must not decrease; None stamps every message with now.
        """
        if timestamps is not None and len(timestamps) != len(messages):
            raise ValueError(f"got {len(timestamps)} timestamps for {len(messages)} messages")
        with self._writing():
            encoded = [self._encoder.encode(m) for m in messages]
            if timestamps is None:
                now = self._writer.clock()
                tss = [now] * len(encoded)
            else:
                tss = [check_timestamp(t) for t in timestamps]
                if any(b < a for a, b in itertools.pairwise(tss)):
                    raise ValueError("timestamps must not decrease")
            self._rewrite(encoded, tss)
            self._view = (self._state(), True)

    def compact(self, *, encryption_key: KeyInput | None = None) -> CompactionReport:
        """Rewrite the log: re-seal every record under the first key (or ``encryption_key``,
        which rotates the key), re-compress, and rebuild the index.

        Every message keeps its timestamp and its position in the visible history; records
        hidden by ``max_messages`` are dropped. The rewrite holds the writer lock and is
        atomic (temp file, fsync, rename, directory fsync): a crash leaves the old log or the
        new one. Giving a key to a plaintext or password log switches it to that key. After
        a rotation only the new key opens the log.
        """
        with self._writing():
            before = self._state()
            self._digests = None
            report = self._compactor.compact(self._base(), encryption_key)
            self._moved(before, keeps_view=True)  # same messages: what was seen stays seen
            return report

    def rotate_key(self, new_key: KeyInput) -> CompactionReport:
        """Re-encrypt the whole log under ``new_key``; afterwards the old key fails.

        :raises KeyRequiredError: ``new_key`` is None. Rotation needs the new key; a log is
            never decrypted in place (``export()`` writes a plaintext copy).
        """
        if new_key is None:
            # compact(encryption_key=None) means "keep the key": taking None here would
            # compact and report success while the old key still opens the log.
            raise KeyRequiredError(
                "rotate_key() needs the new key: pass it (generate one with "
                "conversation_codec.generate_key()); to keep a decrypted copy of the history, "
                "use export(), which writes plaintext JSONL"
            )
        return self.compact(encryption_key=new_key)

    def change_password(self, old: str, new: str) -> CompactionReport:
        """Re-encrypt a password-protected log under a new password (and a new salt).

        The rewrite is atomic: a crash leaves a log that opens with one of the two.

        :raises DecryptionError: ``old`` is not the password this codec opened the log with.
        """
        if not isinstance(new, str) or not new:
            raise ValueError("the new password must be a non-empty str")
        with self._writing():
            before = self._state()
            self._digests = None
            report = self._compactor.change_password(self._base(), old, new)
            self._moved(before, keeps_view=True)
            return report

    def prune(self, before: TimeInput) -> int:
        """Permanently remove the messages older than ``before``; return how many went.

        The log is rewritten without them (atomically), so their ciphertext is gone from
        every file; the remaining messages keep their timestamps. The cut is found in the
        index and confirmed by authenticating the records on both sides of it: a deletion
        never rests on the index alone (see ``_first_at_or_after``).
        """
        cutoff = to_us(before, "before")
        with self._writing():
            start = max(self._base(), self._reader.first_at_or_after(cutoff, (-1, 0)))
            if start == 0:
                return 0
            removed = start - self._base()
            self._digests = None
            self._compactor.rewrite_from(start)
            self._view = (self._state(), False)  # a list loaded before still holds them
            return removed

    def pop(self) -> Message | None:
        """Remove and return the last message (None when empty); O(1), a truncation."""
        with self._writing():
            count = len(self._log.index)
            if count == self._base():
                return None
            message = self._present(self._reader.read_one(count - 1))
            before = self._state()
            self._log.truncate(count - 1)
            # The caller gets the message back: a history it held whole stays whole.
            self._moved(before, keeps_view=True)
            if self._digests is not None and self._dbase + len(self._digests) == count:
                self._digests.pop()
            else:
                self._digests = None
            return message

    def clear(self) -> None:
        """Delete the whole history: the log, its index, its blob store, the temp copies
        crashed rewrites left, and its lock file (FORMAT.md §8.5). A migration's
        ``<path>.bak`` is the user's original and stays."""
        with self._writing():
            # A link or a stray entry at P.blobs is refused before the log goes, not after.
            remove_flat_dir(blobs_path(self._path), check_only=True)
            self._log.remove(also=self._remove_blobs)
            self._digests = None
            self._view = ((None, None, 0), False)

    def _remove_blobs(self) -> None:
        if self._encoder.blobs is not None:
            self._encoder.blobs.clear()
        else:
            remove_flat_dir(blobs_path(self._path))

    # -- reading ---------------------------------------------------------------------------

    def _present(self, message: Message) -> Message:
        """Turn a stored message into what callers see (external attachments restored)."""
        return message if self._encoder.blobs is None else restore(message, self._encoder.blobs)

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

    def load(self) -> list[Message] | None:
        """Return the whole (visible) history in order, or None when there is none."""
        with self._reading():
            base, count = self._base(), len(self._log.index)
            if count == base:
                self._view = (self._state(), True)
                return None
            messages: list[Message] = []
            digests: list[bytes] = []
            sealed = self._log.fmt is not None and self._log.fmt.sealed
            for seq, text, _ in self._reader.payloads(base, count):
                message = self._reader.parse(seq, text)
                messages.append(self._present(message))
                # A sealed record's text is the stored JSON; a plain one's is the whole line.
                digests.append(digest(text if sealed else encode_json(message)))
            # The seed pattern calls save() next: keep what it compares against.
            self._digests, self._dbase = digests, base
            self._view = (self._state(), True)
            return messages

    def get(self, seq: int) -> Message:
        """Return one message by position; negative seqs count from the end.

        :raises IndexError: no such record.
        """
        with self._reading():
            return self._present(self._reader.read_one(self._position(seq)))

    def tail(self, n: int) -> list[Message]:
        """Return the last ``n`` messages, oldest first, reading only those records."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._reading():
            count = len(self._log.index)
            start = max(self._base(), count - n)
            return [self._present(m) for _, m, _ in self._reader.decoded(start, count)]

    def message_count(self) -> int:
        """Return the number of (visible) messages, from the index (no decryption)."""
        with self._reading():
            return len(self._log.index) - self._base()

    def __len__(self) -> int:
        return self.message_count()

    def timestamp(self, seq: int) -> datetime:
        """Return the UTC time record ``seq`` was written, from the index (no decryption).

        The index is a cache beside the log, not authenticated: someone who edits it can
        make this answer wrong (``verify()`` reports it as "index-ts-mismatch"), though
        never raise anything but a library error. Time queries (``search``, ``between``)
        and ``prune`` check the records themselves.

        :raises CorruptRecordError: the record's own time is no date in years 1..9999
            (only a key holder, or an edit of a plain log, can stamp one).
        """
        with self._reading():
            return self._reader.when(self._position(seq))

    def __iter__(self) -> Iterator[Message]:
        """Stream the messages in order, decoding a batch per lock hold (bounded memory).

        :raises LogReplacedError: another writer replaced or truncated the log meanwhile.
        """
        with self._reading():
            log_id = self._log.fmt.log_id if self._log.fmt else None
            seq, count = self._base(), len(self._log.index)
            start = self._state()
        unchanged = True
        while seq < count:
            with self._reading():
                now = self._log.fmt.log_id if self._log.fmt else None
                if now != log_id or len(self._log.index) < min(count, seq + READ_BATCH):
                    raise LogReplacedError("the log was replaced or truncated while iterating")
                stop = min(count, seq + READ_BATCH)
                batch = [self._present(m) for _, m, _ in self._reader.decoded(seq, stop)]
                unchanged = unchanged and self._state() == start
            yield from batch
            seq += len(batch)
        if unchanged:  # every message was handed out, and no writer came in between
            self._view = (start, True)

    # -- search ----------------------------------------------------------------------------

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
    ) -> Iterator[Hit]:
        """Stream the messages that match, as ``Hit(seq, timestamp, message)``.

        The matching rules are those of ``conversation_codec.search``: the text a person would
        search (string content, content-part text, tool-call names and arguments), Unicode
        case folding unless ``case_sensitive``, several words all required, a "quoted phrase"
        as written, or one regular expression with ``regex=True``; ``None`` matches all.

        ``since`` (inclusive) and ``until`` (exclusive) accept aware or naive (UTC) datetimes,
        epoch seconds or ISO-8601 strings. The index's timestamps are binary-searched, so only
        records inside the range are decrypted. ``limit`` and ``newest_first`` stop early:
        the 5 newest matches read from the end. Records are decoded a batch per lock hold,
        in bounded memory.

        :raises QueryTypeError: ``query`` is not a str or None.
        :raises SearchError: an invalid regex, or ``regex=True`` without RE2 installed
            (``pip install "conversation-codec[regex]"``; see ``conversation_codec.search``).
        :raises ValueError: ``since`` after ``until``, a negative limit.
        :raises TypeError: a role that is not a string or a collection of strings.
        :raises LogReplacedError: another writer replaced the log while results streamed.
        """
        matcher = Query(query, regex=regex, case_sensitive=case_sensitive)
        roles = parse_roles(role)
        lo = None if since is None else to_us(since, "since")
        hi = None if until is None else to_us(until, "until")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"since ({since!r}) is after until ({until!r})")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError("limit must be a non-negative int or None")
        return self._reader.search(
            matcher,
            roles,
            (lo, hi),
            limit,
            newest_first,
            reading=self._reading,
            base=self._base,
            present=self._present,
        )

    def between(self, since: TimeInput, until: TimeInput) -> list[Hit]:
        """Return every message with ``since <= timestamp < until`` (a pure date range)."""
        return list(self.search(None, since=since, until=until))

    def verify(self) -> VerifyReport:
        """Check every record's authentication, seq continuity, log binding and time order,
        the header, and the index's agreement; report each problem with its byte offset.

        Reads only: nothing is modified, a damaged log included (see ``salvage``).
        """
        if not isinstance(self._log, FileLog):  # the checks read a log file's bytes
            raise StorageError(errno.EOPNOTSUPP, f"{self._path}: verify() checks log files only")
        return check_file_log(self._log)

    # -- formats for model APIs, export and import -------------------------------------------

    def _context(self, max_context: int | None) -> list[Message]:
        if max_context is None:
            return self.load() or []
        return context_window(self.tail, max_context)  # widened: tool pairs stay whole

    def to_openai_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """The newest ``max_context`` messages (read through the index), as an OpenAI
        ``messages`` list, with ``system_prompt`` first. The window is widened backwards so
        that no tool result is cut from its call (``chat_formats.context_window``)."""
        return to_openai_messages(self._context(max_context), system_prompt)

    def to_ollama_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """Like ``to_openai_messages`` in Ollama's chat format (tool arguments as objects)."""
        return to_ollama_messages(self._context(max_context), system_prompt)

    def to_anthropic_messages(
        self, max_context: int | None = None
    ) -> tuple[str | None, list[Message]]:
        """``(system, messages)`` for Anthropic's Messages API: content blocks, tool calls
        as ``tool_use`` and tool results as ``tool_result`` blocks."""
        return to_anthropic_messages(self._context(max_context))

    def export(
        self, dst: str | os.PathLike[str], format: str = "jsonl", with_timestamps: bool = True
    ) -> int:
        """Write the history as **unencrypted** JSONL or JSON to ``dst`` (0600, atomic).

        Warning: the file holds every message in plaintext. Returns the message count.
        """
        return export_history(self, dst, format=format, with_timestamps=with_timestamps)

    def import_(
        self,
        src: str | os.PathLike[str],
        merge: bool = False,
        *,
        replace: bool = False,
        legacy_key: KeyInput | None = None,
        password: str | None = None,
    ) -> ImportReport:
        """Read any history ``migrate`` understands into this log, keeping what is there:
        add every message (in time order), or with ``merge`` only those not already present
        (same time, role and content). Only ``replace=True`` discards the stored history.
        See ``transfer.import_history``."""
        with self._writing():
            report = import_history(
                self, src, merge=merge, legacy_key=legacy_key, password=password, replace=replace
            )
            if replace or report.added:  # the caller was handed no list of the new history
                self._moved(self._state(), keeps_view=False)
            return report

    def info(self) -> LogInfo:
        """Describe the log from its header and index alone (no message is decrypted).

        The first and last times come from the index, as ``timestamp()`` does (the last
        entry is authenticated whenever a process opens the log).
        """
        with self._reading():
            index, fmt = self._log.index, self._log.fmt
            base = self._base()
            count = len(index) - base
            index_bytes = self._reader.index_size() if fmt else 0
            return LogInfo(
                path=self._path,
                encrypted=self.encrypted,
                format_version=fmt.format_version if fmt else None,
                message_count=count,
                first_timestamp=self._reader.when(base) if count else None,
                last_timestamp=self._reader.when(len(index) - 1) if count else None,
                log_bytes=self._log.size(),
                index_bytes=index_bytes,
            )

    # -- life cycle ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The log file's path."""
        return self._path

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
            self._log.close()

    def __enter__(self) -> ConversationCodec:
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
        return f"<ConversationCodec {str(self._path)!r} {state}>"


@dataclass(frozen=True, slots=True)
class LogInfo:
    """What ``ConversationCodec.info()`` reports; nothing in it needs the key to learn."""

    path: Path
    encrypted: bool
    format_version: int | None  # None when no log exists yet
    message_count: int
    first_timestamp: datetime | None
    last_timestamp: datetime | None
    log_bytes: int
    index_bytes: int

"""ConversationCodec: one conversation log, the class most users touch.

The codec validates and encodes messages, assigns seqs and timestamps, and turns them into
record bodies (``records``); the file backend (``log``) stores bodies and keeps the index.
Every public method runs inside one lock-holding transaction of the backend, so threads
and processes sharing a log see each other's writes and never tear a record.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from .attachments import BlobStore, apply_mode, references, restore
from .chat_formats import to_anthropic_messages, to_ollama_messages, to_openai_messages
from .compression import DICTIONARY_BYTES, TRAIN_AFTER, Compressor, train_dictionary
from .crypto import (
    SCRYPT_LOG2_N,
    SCRYPT_P,
    SCRYPT_R,
    KeyInput,
    Keyring,
    LogCipher,
    new_log_id,
    new_salt,
    password_master,
)
from .errors import (
    ClosedError,
    ConflictError,
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    FormatError,
    KeyRequiredError,
    LogReplacedError,
    NotEncryptedError,
    NotSerializableError,
    RecordTooLargeError,
    StorageError,
)
from .format.header import (
    FORMAT_VERSION,
    SEALED_HEADER_BYTES,
    Kdf,
    LogKind,
    PlainHeader,
    SealedHeader,
    decode_plain_header,
    decode_sealed_header,
    encode_plain_header,
    sniff_log,
)
from .format.record import MAX_DEPTH, MAX_MESSAGE_BYTES, nests_deeper_than
from .log import FileLog, LogFormat, _IndexMismatch, _Transaction
from .records import DictionaryMissing, PlainRecords, RecordRejected, SealedRecords
from .search import Hit, Query, parse_roles, to_us
from .transfer import ImportReport, export_history, import_history
from .verify import VerifyReport, verify_log

__all__ = ["CompactionReport", "ConversationCodec", "LogInfo", "Message"]

Message = dict[str, Any]
TimestampInput = datetime | int | float
TimeInput = datetime | int | float | str
_US_PER_S = 1_000_000
_MAX_US = 253_402_300_800 * _US_PER_S  # 10000-01-01T00:00:00Z: where datetime ends
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ITER_BATCH = 256  # records decoded per lock hold while iterating
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_us(value: TimestampInput) -> int:
    """Convert an aware datetime or epoch seconds to microseconds since the epoch."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                "timestamp is a naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
            )
        us = (value - _EPOCH) // timedelta(microseconds=1)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        us = round(value * _US_PER_S)
    else:
        raise TypeError(f"timestamp must be an aware datetime or epoch seconds, not {value!r}")
    if not 0 <= us < _MAX_US:
        raise ValueError(f"timestamp {value!r} is out of range (1970 .. 9999)")
    return us


# (log_id, the lock's (inode, generation, truncations), record count): equal states mean no
# writer changed the log in between (FORMAT.md §8.1; a rewrite or clear() changes log_id).
_State = tuple[bytes | None, tuple[int, int, int] | None, int]
# A state, and whether the caller was handed (load, iteration) or gave (save, replace) the
# whole history at that state.
_View = tuple[_State, bool]


def _too_deep() -> NotSerializableError:
    return NotSerializableError(
        f"message nests objects and arrays more than {MAX_DEPTH} levels deep, the limit of "
        "the format (FORMAT.md §5.2); flatten it, or store the deep part as a JSON string"
    )


def _too_deep_or(message: object) -> Exception:
    """The error for a RecursionError met while encoding ``message``: the nesting limit,
    unless the message is within it (then the caller's own stack ran out: say so)."""
    level = [message] if isinstance(message, (dict, list)) else []
    for _ in range(MAX_DEPTH):  # walked level by level: no recursion
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
    if level:
        return _too_deep()
    return RecursionError("the call stack ran out while encoding a message (not its nesting)")


def _digest(data: bytes) -> bytes:
    """Fingerprint a stored message's JSON, for save()'s comparison of the kept prefix."""
    return hashlib.blake2b(data, digest_size=16).digest()


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
    :param password: instead of a key: a scrypt-derived key, salt and cost in the header.
    :param max_messages: reads see only the newest N messages; compaction drops the rest.
    :param attachments: ``"keep"`` inline base64 data; ``"strip"`` it to a placeholder
        (type, size, sha256); or move it to an ``"external"`` encrypted, deduplicated blob
        store beside the log (``<path>.blobs``), restored transparently on read.
    :raises DecryptionError: no key given opens the existing log.
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
    ) -> None:
        if durability not in ("fsync", "flush"):
            raise ValueError(f'durability must be "fsync" or "flush", not {durability!r}')
        if password is not None and encryption_key is not None:
            raise ValueError("pass encryption_key= or password=, not both")
        if password is not None and (not isinstance(password, str) or not password):
            raise ValueError("password must be a non-empty str")
        if max_messages is not None and (not isinstance(max_messages, int) or max_messages < 1):
            raise ValueError("max_messages must be a positive int or None")
        self._path = Path(path)
        if self._path.is_dir():
            raise StorageError(21, f"{self._path} is a directory; pass the path of a log file")
        self._keyring = None if encryption_key is None else Keyring.from_input(encryption_key)
        self._password = password
        self._masters: dict[tuple[bytes, int, int, int], bytes] = {}  # scrypt results by params
        self._kdf: SealedHeader | None = None  # the password log's KDF fields, to reuse its salt
        self._max = max_messages
        self._untrainable = False
        if attachments not in ("keep", "strip", "external"):
            raise ValueError('attachments must be "keep", "strip" or "external"')
        if attachments == "external" and password is not None:
            raise ValueError("external attachments need encryption_key=, not password=")
        self._attachments = attachments
        self._blobs = (
            BlobStore.for_key(str(self._path) + ".blobs", encryption_key)
            if attachments == "external"
            else None
        )
        self._redact = redact_fn
        self._clock = clock or _now_us
        self._zstd = Compressor()
        self._digests: list[bytes] | None = None  # of stored messages, for save()
        self._dbase = 0  # the seq of the first message self._digests covers
        self._view: _View | None = None  # what this instance last knew of the log: see save()
        self._closed = False
        self._swept = False
        self._log = FileLog(
            self._path, attach=self._attach, durability=durability, lock_timeout=lock_timeout
        )
        self._log.on_change = self._forget
        try:  # fail fast on a wrong key or a foreign file
            self._log.probe()
        except OSError as exc:
            if isinstance(exc, ConversationCodecError):
                raise
            raise StorageError(exc.errno or 0, f"{self._path}: {exc.strerror or exc}") from None

    # -- opening and creating logs ---------------------------------------------------------

    def _attach(self, prefix: bytes) -> LogFormat:
        kind = sniff_log(prefix)
        if kind is LogKind.SEALED:
            header, covered, mac = decode_sealed_header(prefix)
            cipher = LogCipher.open(self._keyring_for(header), header, covered, mac)
            records = SealedRecords(cipher, self._zstd)
            return LogFormat(header.log_id, SEALED_HEADER_BYTES, records, True)
        if kind is LogKind.PLAIN:
            if self.encrypted:
                raise NotEncryptedError(
                    f"{self._path} is a plaintext log; open it without a key, or encrypt it "
                    "with conversation_codec.migrate(..., encryption_key=...)"
                )
            end = prefix.find(b"\n")
            if end < 0:
                raise FormatError(f"{self._path}: plaintext log header line is truncated")
            plain = decode_plain_header(prefix[:end])
            return LogFormat(plain.log_id, end + 1, PlainRecords(), False)
        raise FormatError(
            f"{self._path} is not a conversation-codec log; convert it with "
            "conversation_codec.migrate()"
        )

    def _keyring_for(self, header: SealedHeader) -> Keyring:
        """Return the master keys that should open a sealed log with this header."""
        if header.kdf is Kdf.SCRYPT:
            if self._password is None:
                raise KeyRequiredError(f"{self._path} is protected by a password; pass password=")
            params = (header.kdf_salt, header.kdf_log2_n, header.kdf_r, header.kdf_p)
            if params not in self._masters:
                self._masters[params] = password_master(self._password, *params)
            self._kdf = header
            return Keyring([self._masters[params]])
        if self._keyring is None:
            raise KeyRequiredError(
                f"{self._path} is encrypted with a key; pass encryption_key= (or set the key "
                "variable)" + ("" if self._password is None else ", not password=")
            )
        return self._keyring

    def _new_log(self) -> tuple[bytes, LogFormat]:
        log_id = new_log_id()
        if not self.encrypted:
            header = encode_plain_header(PlainHeader(log_id))
            return header, LogFormat(log_id, len(header), PlainRecords(), False)
        if self._password is not None:
            # A rewrite keeps the salt of the password it already derived: no second scrypt.
            kdf = self._kdf or SealedHeader(
                log_id, Kdf.SCRYPT, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, new_salt()
            )
            fields = SealedHeader(
                log_id, Kdf.SCRYPT, kdf.kdf_log2_n, kdf.kdf_r, kdf.kdf_p, kdf.kdf_salt
            )
            keyring = self._keyring_for(fields)
        else:
            assert self._keyring is not None
            fields, keyring = SealedHeader(log_id), self._keyring
        cipher, header = LogCipher.create(keyring, fields)
        return header, LogFormat(log_id, len(header), SealedRecords(cipher, self._zstd), True)

    def _forget(self) -> None:
        self._digests = None

    # -- transactions ----------------------------------------------------------------------

    def _reading(self) -> _Transaction:
        if self._closed:
            raise ClosedError("this ConversationCodec is closed; open a new one")
        return self._log.transaction(write=False)

    def _writing(self) -> _Transaction:
        if self._closed:
            raise ClosedError("this ConversationCodec is closed; open a new one")
        return self._log.transaction(write=True)

    def _ensure_log(self) -> LogFormat:
        if not self._swept:
            self._log.remove_stale_temps()
            self._swept = True
        if self._log.fmt is None:
            header, fmt = self._new_log()
            self._log.create(header, fmt)
            self._digests, self._dbase = [], 0
        assert self._log.fmt is not None
        return self._log.fmt

    # -- encoding --------------------------------------------------------------------------

    def _transform(self, message: Message) -> Message:
        """Apply ``redact_fn`` and the attachments mode: the message as it will be stored."""
        if not isinstance(message, dict):
            raise NotSerializableError(f"a message must be a dict, not {type(message).__name__}")
        if self._redact is not None:
            message = self._redact(message)
            if not isinstance(message, dict):
                raise NotSerializableError("redact_fn must return a dict")
        if self._attachments != "keep":
            # Blobs are written before the record that refers to them: a crash leaves at
            # worst an unreferenced blob, which compaction deletes.
            message = apply_mode(message, self._attachments, self._blobs)
        return message

    def _encode(self, message: Message) -> tuple[Message, bytes]:
        """Transform, encode and validate one message; return it with its JSON."""
        try:
            message = self._transform(message)  # redact_fn and attachments walk it
        except RecursionError:
            raise _too_deep_or(message) from None
        try:
            data = _encode(message)
        except RecursionError:
            raise _too_deep_or(message) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotSerializableError(f"message is not JSON-serialisable: {exc}") from None
        if nests_deeper_than(data, MAX_DEPTH):
            # Refused on write, not only on read: a reader with less stack to spare than
            # this writer had could not decode it, and the whole log would be unreadable.
            raise _too_deep()
        if len(data) > MAX_MESSAGE_BYTES:
            raise RecordTooLargeError(
                f"message is {len(data)} bytes of JSON; one record holds at most "
                f"{MAX_MESSAGE_BYTES} — store large attachments outside the message"
            )
        if _decode(data) != message:
            raise NotSerializableError(
                "message does not round-trip through JSON exactly (tuples, non-str keys, NaN, "
                "datetimes, bytes or sets); convert those values first"
            )
        return message, data

    def _timestamps(self, count: int, given: Sequence[TimestampInput] | None) -> list[int]:
        index = self._log.index
        last = index.tss[-1] if len(index) else 0
        if given is None:
            now = max(self._clock(), last)  # a clock that steps back is clamped
            return [now] * count
        if len(given) != count:
            raise ValueError(f"got {len(given)} timestamps for {count} messages")
        out = []
        for value in given:
            us = _to_us(value)
            if us < last:
                raise ValueError(
                    "timestamps in a log never go backwards: "
                    f"{(_EPOCH + timedelta(microseconds=us)).isoformat()} is "
                    "earlier than the last record"
                )
            out.append(us)
            last = us
        return out

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
        if self._blobs is None:  # validate outside the lock: other writers wait less
            encoded = [self._encode(m) for m in messages]
            if not encoded:
                return []
        with self._writing():
            if self._blobs is not None:
                # Blobs are stored under the lock, so a compaction in another process
                # cannot delete them as unreferenced before this record refers to them.
                encoded = [self._encode(m) for m in messages]
                if not encoded:
                    return []
            return self._append_locked(encoded, timestamps)

    def _append_locked(
        self, encoded: list[tuple[Message, bytes]], timestamps: Sequence[TimestampInput] | None
    ) -> list[int]:
        fmt = self._ensure_log()
        first = len(self._log.index)
        tss = self._timestamps(len(encoded), timestamps)
        bodies = [
            fmt.records.encode(first + i, ts, data)
            for i, ((_, data), ts) in enumerate(zip(encoded, tss, strict=True))
        ]
        self._log.append(bodies, tss)
        if (
            isinstance(fmt.records, SealedRecords)
            and not fmt.records.dict_id
            and not self._untrainable
            and first + len(bodies) >= TRAIN_AFTER
        ):
            try:
                self._train(fmt.records, first + len(bodies))
            except (ConversationCodecError, OSError):
                # The messages are committed: a dictionary that could not be written (no
                # space, say) must not turn their append into a reported failure.
                self._untrainable = True
        if self._digests is not None and self._dbase + len(self._digests) == first:
            self._digests.extend(_digest(data) for _, data in encoded)
        else:
            self._digests = None
        self._view = (self._state(), False)  # save() sets it whole again when it appended
        base = self._base()
        return list(range(first - base, first - base + len(encoded)))

    def _train(self, records: SealedRecords, count: int) -> None:
        """Train the log's zstd dictionary from its last ``TRAIN_AFTER`` messages and append
        it as a sealed record (FORMAT.md §5.3); later records compress against it. Done once
        per log, when it first holds ``TRAIN_AFTER`` messages: ~20 ms, after which a typical
        chat record compresses about 3x smaller than zstd alone manages."""
        samples = [text for _, text, _ in self._payloads(count - TRAIN_AFTER, count)]
        dictionary = train_dictionary(samples)
        if dictionary is None:
            self._untrainable = True  # too few or too uniform samples: stay without one
            return
        ts = self._log.index.tss[count - 1]
        self._log.append_dictionary(records.encode_dictionary(1, ts, dictionary))

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
                if self._digest_of(message) != stored and not self._same_as_stored(
                    message, base + keep
                ):
                    break
                keep += 1
            if keep == len(digests):
                if len(messages) > keep:
                    self._refuse_resurrection()
                    self._append_locked([self._encode(m) for m in messages[keep:]], None)
                self._view = (self._state(), True)
                return
            self._refuse_blind_rewrite()
            encoded = [self._encode(m) for m in messages]
            kept = list(self._log.index.tss[base : base + keep])
            tail = self._timestamps(len(encoded) - keep, None) if len(encoded) > keep else []
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

    def _digest_of(self, message: Message) -> bytes:
        """The digest ``message`` would be stored with; empty for what cannot be stored.

        Digests cover the JSON as stored (key order included) because that is free to get
        at load and append time; a mismatch is confirmed by ``_same_as_stored`` before the
        log is rewritten, so a message whose keys were merely reordered still counts as kept.
        """
        try:
            return _digest(_encode(self._transform(message)))
        except (ConversationCodecError, TypeError, ValueError, OverflowError, RecursionError):
            return b""

    def _same_as_stored(self, message: Message, seq: int) -> bool:
        """Compare with the stored record itself (one decryption), ignoring key order."""
        try:
            return self._transform(message) == self._read_one(seq)
        except (ConversationCodecError, TypeError, ValueError, RecursionError):
            return False

    def _stored_digests(self) -> list[bytes]:
        """Digests of the visible stored messages (decrypting them once per instance)."""
        base, count = self._base(), len(self._log.index)
        if self._digests is None or self._dbase > base or self._dbase + len(self._digests) != count:
            self._digests = [_digest(_encode(m)) for _, m, _ in self._decoded(base, count)]
            self._dbase = base
        return self._digests[base - self._dbase :]

    def _rewrite(self, encoded: list[tuple[Message, bytes]], tss: list[int]) -> None:
        """Atomically replace the log with these messages and timestamps (lock held)."""
        header, fmt = self._new_log()
        records = (
            (fmt.records.encode(seq, ts, data), ts)
            for seq, ((_, data), ts) in enumerate(zip(encoded, tss, strict=True))
        )
        self._log.rewrite(header, fmt, records)
        self._digests, self._dbase = [_digest(data) for _, data in encoded], 0

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
            encoded = [self._encode(m) for m in messages]
            if timestamps is None:
                now = self._clock()
                tss = [now] * len(encoded)
            else:
                tss = [_to_us(t) for t in timestamps]
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
            secrets = (self._keyring, self._password, self._kdf)
            if encryption_key is not None:
                self._keyring, self._password, self._kdf = (
                    Keyring.from_input(encryption_key),
                    None,
                    None,
                )
            new_blobs = None
            if encryption_key is not None and self._blobs is not None:
                new_blobs = BlobStore.for_key(str(self._path) + ".blobs", encryption_key)
            committed = self._rewrites_committed()
            before = self._state()
            try:
                report = self._compact_from(self._base(), new_blobs)
            except BaseException:
                if not committed():  # past the rename the new secrets are the log's
                    self._keyring, self._password, self._kdf = secrets
                elif new_blobs is not None:
                    self._blobs = new_blobs
                raise
            self._moved(before, keeps_view=True)  # same messages: what was seen stays seen
            return report

    def _rewrites_committed(self) -> Callable[[], bool]:
        """Return a check of whether a rewrite started now has replaced the log."""
        before = self._log.fmt.log_id if self._log.fmt else None
        return lambda: (self._log.fmt.log_id if self._log.fmt else None) != before

    def _compact_from(self, start: int, new_blobs: BlobStore | None = None) -> CompactionReport:
        """Rewrite the records from ``start`` on under the current secrets (lock held).

        ``new_blobs``: a blob store under a new key; every attachment is moved into it (a key
        rotation must re-seal attachments too, or only the old key would open them).
        """
        before = self._log.size() + self._index_size()
        count = len(self._log.index)
        if self._log.fmt is None:
            return CompactionReport(0, 0, 0)
        header, new = self._new_log()
        dictionary = None
        if isinstance(new.records, SealedRecords) and count - start >= TRAIN_AFTER:
            # Retrain on a sample of the whole history: a better dictionary than the first
            # messages gave, and records before TRAIN_AFTER get one too.
            step = max(1, (count - start) // (4 * TRAIN_AFTER))
            samples = [
                text
                for seq in range(start, count, step)
                for _, text, _ in self._payloads(seq, seq + 1)
            ]
            trained = train_dictionary(samples, DICTIONARY_BYTES * 2)
            if trained is not None:
                new.records.use_dictionary(1, trained)
                dictionary = new.records.encode_dictionary(1, self._log.index.tss[start], trained)
        referenced: set[str] = set()
        old_blobs = self._blobs

        def reseal() -> Iterator[tuple[bytes, int]]:
            for seq, message, ts in self._decoded(start, count):
                if old_blobs is not None:
                    if new_blobs is not None:
                        message = apply_mode(restore(message, old_blobs), "external", new_blobs)
                    referenced.update(references(message))
                yield new.records.encode(seq - start, ts, _encode(message)), ts

        self._log.rewrite(header, new, reseal(), dictionary)
        self._digests = None
        if old_blobs is not None:
            self._blobs = new_blobs or old_blobs
            self._blobs.delete_unreferenced(referenced)
        return CompactionReport(count - start, before, self._log.size() + self._index_size())

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
            current = self._password or ""
            if not hmac.compare_digest(old.encode(), current.encode()) or self._keyring:
                raise DecryptionError("wrong password: the log was not opened with it")
            self._password, self._kdf = new, None
            committed = self._rewrites_committed()
            before = self._state()
            try:
                report = self._compact_from(self._base())
            except BaseException:
                if not committed():
                    self._password = old
                raise
            self._moved(before, keeps_view=True)
            return report

    def prune(self, before: TimeInput) -> int:
        """Permanently remove the messages older than ``before``; return how many went.

        The log is rewritten without them (atomically), so their ciphertext is gone from
        every file; the remaining messages keep their timestamps.
        """
        cutoff = to_us(before, "before")
        with self._writing():
            start = max(self._base(), self._log.index.first_at_or_after(cutoff))
            if start == 0:
                return 0
            removed = start - self._base()
            self._compact_from(start)
            self._view = (self._state(), False)  # a list loaded before still holds them
            return removed

    def _index_size(self) -> int:
        try:
            return os.path.getsize(self._log.index.path)
        except FileNotFoundError:
            return 0

    def pop(self) -> Message | None:
        """Remove and return the last message (None when empty); O(1), a truncation."""
        with self._writing():
            count = len(self._log.index)
            if count == self._base():
                return None
            message = self._present(self._read_one(count - 1))
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
        """Delete the whole history: the log, its index and its lock file."""
        with self._writing():
            self._log.remove(also=self._remove_blobs)
            self._digests = None
            self._view = ((None, None, 0), False)

    def _remove_blobs(self) -> None:
        blobs = str(self._path) + ".blobs"
        if self._blobs is not None:
            self._blobs.clear()
        elif os.path.isdir(blobs):
            shutil.rmtree(blobs)

    # -- reading ---------------------------------------------------------------------------

    def _corrupt(self, exc: RecordRejected, seq: int) -> CorruptRecordError:
        offset = self._log.index.span(seq)[0]
        return CorruptRecordError(f"record {seq}: {exc}", path=self._path, offset=offset)

    def _payloads(self, start: int, stop: int) -> Iterator[tuple[int, bytes, int]]:
        """Yield ``(seq, message JSON text, ts_us)`` for a range, inside a transaction.

        Every record is authenticated and checked against its position and index entry; an
        index that disagrees with the log is rebuilt once and the read resumes.
        """
        fmt = self._log.fmt
        if fmt is None or start >= stop:
            return
        for attempt in (0, 1):
            try:
                for seq, body in self._log.read_bodies(start, stop):
                    try:
                        text, ts = fmt.records.payload(body, seq)
                    except RecordRejected as exc:
                        raise self._corrupt(exc, seq) from None
                    if ts != self._log.index.tss[seq]:
                        raise _IndexMismatch(self._log.index.span(seq)[0])
                    yield seq, text, ts
                    start = seq + 1
                return
            except (_IndexMismatch, DictionaryMissing):
                if attempt:
                    raise CorruptRecordError(
                        "index and log disagree even after a rebuild",
                        path=self._path,
                        offset=self._log.index.span(start)[0],
                    ) from None
                self._log.rebuild_index()
                stop = min(stop, len(self._log.index))

    def _parse(self, seq: int, text: bytes) -> Message:
        assert self._log.fmt is not None
        try:
            return self._log.fmt.records.parse(text)
        except RecordRejected as exc:
            raise self._corrupt(exc, seq) from None

    def _present(self, message: Message) -> Message:
        """Turn a stored message into what callers see (external attachments restored)."""
        return message if self._blobs is None else restore(message, self._blobs)

    def _decoded(self, start: int, stop: int) -> Iterator[tuple[int, Message, int]]:
        """Yield ``(seq, message, ts_us)`` for a range, inside the current transaction."""
        for seq, text, ts in self._payloads(start, stop):
            yield seq, self._parse(seq, text), ts

    def _read_one(self, seq: int) -> Message:
        for _, message, _ in self._decoded(seq, seq + 1):
            return message
        raise IndexError(f"record {seq} vanished while reading")

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
            for seq, text, _ in self._payloads(base, count):
                message = self._parse(seq, text)
                messages.append(self._present(message))
                # A sealed record's text is the stored JSON; a plain one's is the whole line.
                digests.append(_digest(text if sealed else _encode(message)))
            # The seed pattern calls save() next: keep what it compares against.
            self._digests, self._dbase = digests, base
            self._view = (self._state(), True)
            return messages

    def get(self, seq: int) -> Message:
        """Return one message by position; negative seqs count from the end.

        :raises IndexError: no such record.
        """
        with self._reading():
            return self._present(self._read_one(self._position(seq)))

    def tail(self, n: int) -> list[Message]:
        """Return the last ``n`` messages, oldest first, reading only those records."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._reading():
            count = len(self._log.index)
            start = max(self._base(), count - n)
            return [self._present(m) for _, m, _ in self._decoded(start, count)]

    def message_count(self) -> int:
        """Return the number of (visible) messages, from the index (no decryption)."""
        with self._reading():
            return len(self._log.index) - self._base()

    def __len__(self) -> int:
        return self.message_count()

    def timestamp(self, seq: int) -> datetime:
        """Return the UTC time record ``seq`` was written, from the index (no decryption)."""
        with self._reading():
            us = self._log.index.tss[self._position(seq)]
        return _EPOCH + timedelta(microseconds=us)

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
                if now != log_id or len(self._log.index) < min(count, seq + _ITER_BATCH):
                    raise LogReplacedError("the log was replaced or truncated while iterating")
                stop = min(count, seq + _ITER_BATCH)
                batch = [self._present(m) for _, m, _ in self._decoded(seq, stop)]
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

        :raises ValueError: ``since`` after ``until``, an invalid regex, a negative limit.
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
        return self._search(matcher, roles, lo, hi, limit, newest_first)

    def _search(
        self,
        matcher: Query,
        roles: frozenset[str] | None,
        lo: int | None,
        hi: int | None,
        limit: int | None,
        newest_first: bool,
    ) -> Iterator[Hit]:
        with self._reading():
            index = self._log.index
            log_id = self._log.fmt.log_id if self._log.fmt else None
            base = self._base()
            first = max(base, 0 if lo is None else index.first_at_or_after(lo))
            stop = max(first, len(index) if hi is None else index.first_at_or_after(hi))
        left = limit
        bounds = range(first, stop, _ITER_BATCH)
        for start in reversed(bounds) if newest_first else bounds:
            if left == 0:
                return
            end = min(start + _ITER_BATCH, stop)
            with self._reading():
                if (self._log.fmt.log_id if self._log.fmt else None) != log_id or len(
                    self._log.index
                ) < end:
                    raise LogReplacedError("the log was replaced or truncated during a search")
                hits = self._match_batch(matcher, roles, start, end, base)
            for hit in reversed(hits) if newest_first else hits:
                if left == 0:
                    return
                yield hit
                left = None if left is None else left - 1

    def _match_batch(
        self, matcher: Query, roles: frozenset[str] | None, start: int, end: int, base: int
    ) -> list[Hit]:
        hits = []
        for seq, text, ts in self._payloads(start, end):
            if not matcher.maybe(text.decode("utf-8", "replace")):
                continue
            message = self._parse(seq, text)
            if (roles is None or message.get("role") in roles) and matcher.matches(message):
                when = _EPOCH + timedelta(microseconds=ts)
                hits.append(Hit(seq - base, when, self._present(message)))
        return hits

    def between(self, since: TimeInput, until: TimeInput) -> list[Hit]:
        """Return every message with ``since <= timestamp < until`` (a pure date range)."""
        return list(self.search(None, since=since, until=until))

    def verify(self) -> VerifyReport:
        """Check every record's authentication, seq continuity, log binding and time order,
        the header, and the index's agreement; report each problem with its byte offset.

        Reads only: nothing is modified, a damaged log included (see ``salvage``).
        """
        with self._log.transaction(write=False, tolerant=True):
            if self._log.fmt is None:
                return VerifyReport(self._path, 0, ())
            records, problems = verify_log(self._log)
        return VerifyReport(self._path, records, tuple(problems))

    # -- formats for model APIs, export and import -------------------------------------------

    def _context(self, max_context: int | None) -> list[Message]:
        if max_context is None:
            return self.load() or []
        return self.tail(max_context)

    def to_openai_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """The newest ``max_context`` messages (read through the index), as an OpenAI
        ``messages`` list, with ``system_prompt`` first."""
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
        return import_history(
            self, src, merge=merge, legacy_key=legacy_key, password=password, replace=replace
        )

    def info(self) -> LogInfo:
        """Describe the log from its header and index alone (no message is decrypted)."""
        with self._reading():
            index, fmt = self._log.index, self._log.fmt
            base = self._base()
            count = len(index) - base
            index_bytes = self._index_size() if fmt else 0
            return LogInfo(
                path=self._path,
                encrypted=self.encrypted,
                format_version=FORMAT_VERSION if fmt else None,
                message_count=count,
                first_timestamp=_EPOCH + timedelta(microseconds=index.tss[base]) if count else None,
                last_timestamp=_EPOCH + timedelta(microseconds=index.tss[-1]) if count else None,
                log_bytes=self._log.size(),
                index_bytes=index_bytes,
            )

    # -- life cycle ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The log file's path."""
        return self._path

    @property
    def encrypted(self) -> bool:
        """True when this codec writes sealed records (it was given a key or a password)."""
        return self._keyring is not None or self._password is not None

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
class CompactionReport:
    """What ``compact()`` did: messages kept and bytes (log + index) before and after."""

    messages: int
    bytes_before: int
    bytes_after: int


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

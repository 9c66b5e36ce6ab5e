"""Read one legacy file and plan its migration: nothing here writes (``migrate``, step 1).

The source is read once (its stat taken first, so the commit can tell whether it changed
meanwhile), the destination is checked, and :class:`Plan` fixes every record's timestamp
before a byte of the new log is written. Writing and publishing are ``migrate_commit``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._fsio import check_file, open_source
from .._time import MAX_US, US_PER_S, iso_z
from ..crypto import KeyInput, Keyring
from ..errors import (
    BindingError,
    DecryptionError,
    FormatError,
    KeyRequiredError,
    NotAHistoryError,
    NotSerializableError,
    PasswordRequiredError,
    RecordTooLargeError,
    StorageError,
)
from ..format.header import (
    MAX_PLAIN_HEADER_BYTES,
    LogKind,
    context_digest,
    decode_plain_header,
    decode_sealed_header,
    sniff_log,
)
from ..sealing import LogSecrets, check_password
from ..storage.file.store import LOG_SUFFIX, decode_id
from .import_source import unstorable
from .legacy import MAX_LEGACY_BYTES, LegacyFormat, LegacyHistory
from .legacy_fernet import check_key, check_legacy_password
from .legacy_messages import MESSAGE_KEYS, clamp_note, clamp_times, looks_like_message

__all__ = [
    "Plan",
    "check_history",
    "check_key",
    "check_log_header",
    "check_secrets",
    "destination",
    "header_opens",
    "plain_log_context",
    "read_source",
]

_MIN_US = -62_135_596_800 * US_PER_S  # 0001-01-01T00:00:00Z: where datetime begins


@dataclass(frozen=True, slots=True)
class Plan:
    """The messages and record timestamps (µs, or None for "now") to write."""

    messages: list[dict[str, Any]]
    times: list[int] | None
    notes: list[str]

    @classmethod
    def make(cls, history: LegacyHistory, where: Path) -> Plan:
        """Fill missing timestamps and keep every one representable in a log.

        Messages keep the file's order. An untimed message takes the time of the message
        before it (the first known time for leading ones). A time earlier than one before
        it (clocks out of step) is stored as that one: a log's timestamps never decrease,
        and sorting would reorder the conversation (a tool result before its call); a
        note says how many. With no time at all every record gets the migration time. A
        time before 1970 cannot be stored (the format counts from the epoch): it becomes
        1970-01-01 (or the time before it) and the original instant is kept in the
        message's ``"timestamp"`` key, rather than failing the whole file or silently
        dropping it. A time whose UTC instant falls outside years 1-9999 has no datetime
        at all (``"9999-12-31T23:59:59-05:00"``): that fails the file, as it fails
        ``import_`` (``check_times``).

        Every message is then checked by the codec's rules (``import_source.unstorable``),
        so that a dry run refuses what the real run would, before anything is written.

        :raises FormatError: such a time (how many; ``where`` names the file).
        :raises NotAHistoryError: see :func:`check_history` (not asked of a plaintext
            conversation-codec log being sealed: its messages are whatever it holds).
        :raises RecordTooLargeError, NotSerializableError: a message the codec would not
            store; the error names it (its number and, for JSONL, its line in ``where``).
        """
        unheld = sum(ts is not None and not _MIN_US <= ts < MAX_US for ts in history.timestamps)
        if unheld:
            raise FormatError(
                f"{where}: {unheld} message(s) have a timestamp whose UTC instant falls "
                "outside years 1-9999, which no date can hold, so nothing was changed; fix "
                "them in the file"
            )
        if history.format is not LegacyFormat.CODEC_LOG:
            check_history(where, history.format, history.messages)
        plan, lines = cls._make(history.messages, history.timestamps), history.lines
        for i, message in enumerate(plan.messages):
            reason = unstorable(message)
            if reason is not None:
                line = f" (line {lines[i]})" if lines is not None else ""
                error = RecordTooLargeError if reason.startswith("larger") else NotSerializableError
                raise error(
                    f"{where}: message {i + 1}{line} of {len(plan.messages)} cannot be stored "
                    f"({reason}); fix or remove it and retry — nothing was changed"
                )
        return plan

    @classmethod
    def _make(cls, messages: list[dict[str, Any]], stamps: Sequence[int | None]) -> Plan:
        notes: list[str] = []
        first = next((t for t in stamps if t is not None), None)
        if first is None:
            if messages:
                notes.append("no timestamps in the source: records carry the migration time")
            return cls(list(messages), None, notes)
        out, early = list(messages), 0
        for i, ts in enumerate(stamps):
            if ts is not None and ts < 0:
                out[i] = {**out[i], "timestamp": iso_z(ts)}
                early += 1
        # A pre-1970 time counts as none here (its original is kept in the message): it
        # takes the time before it, which is 1970-01-01 when it leads.
        clamped, moved = clamp_times([None if t is None or t < 0 else t for t in stamps])
        times, last = [], max(first, 0)
        for ts in clamped:
            last = last if ts is None else ts
            times.append(last)
        if early:
            notes.append(
                f"{early} timestamp(s) before 1970 stored as 1970-01-01T00:00:00Z (or as the "
                'time before them); the original kept in the message\'s "timestamp" key'
            )
        if moved:
            notes.append(clamp_note(moved))
        missing = sum(ts is None for ts in stamps)
        if missing:
            notes.append(f"{missing} message(s) without a timestamp took the previous one's")
        return cls(out, times, notes)


def check_history(source: Path, fmt: LegacyFormat, messages: list[dict[str, Any]]) -> None:
    """Refuse a file none of whose objects looks like a chat message (``looks_like_message``):
    an application's settings or session list beside its histories, not a history.

    One message-like object is enough (a JSONL file may open with a metadata line). A
    LangChain file is checked message by message when read; an empty one holds no messages.

    :raises NotAHistoryError: no object looks like a message; the file is left as it is.
    """
    if not messages or fmt is LegacyFormat.LANGCHAIN_JSON:
        return
    if any(looks_like_message(m) for m in messages):
        return
    keys = ", ".join(sorted(MESSAGE_KEYS))
    raise NotAHistoryError(
        f"not a history: no object in {source} has a role or another message key ({keys}) "
        "or a LangChain type; left as it is (to keep such objects in a log all the same, "
        "import the file into one: ConversationCodec.import_, CLI import)"
    )


def check_secrets(
    encryption_key: KeyInput | None,
    legacy_key: KeyInput | None,
    password: object,
    log_password: object,
) -> None:
    """Check every key and password argument of ``migrate`` as ``ConversationCodec`` checks
    its own, before any file is touched. None means "not given"; anything else is used,
    so an empty password is refused here, never taken for "no password" (which wrote an
    encrypted source's messages as a plaintext log: outside review, mig.md defect 1).

    :raises KeyTypeError: a key or password of the wrong type.
    :raises InvalidKeyError: a malformed key, an empty password or one with a lone surrogate.
    :raises ValueError: both ``encryption_key`` and ``log_password``.
    """
    for name, value in (("encryption_key", encryption_key), ("legacy_key", legacy_key)):
        check_key(name, value)
    if log_password is not None:
        check_password(log_password, "log_password")
        if encryption_key is not None:
            raise ValueError("pass encryption_key= or log_password= for the new log, not both")
    if password is not None:
        check_legacy_password(password)


def read_source(path: Path) -> tuple[bytes, os.stat_result]:
    """Return the source's bytes and its stat from before the read.

    :raises StorageError: a directory, a missing or an unreadable file.
    """
    try:
        fd, st = open_source(path)  # a FIFO or device is refused, without blocking
        with open(fd, "rb") as f:
            # Too large: read nothing (read_legacy raises the size error); never allocate.
            data = b"" if st.st_size > MAX_LEGACY_BYTES else f.read(MAX_LEGACY_BYTES + 1)
    except IsADirectoryError:
        raise StorageError(errno.EISDIR, f"{path} is a directory; use migrate_many") from None
    except FileNotFoundError:
        raise StorageError(errno.ENOENT, f"{path} does not exist; check the path") from None
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(exc.errno or 0, f"cannot read {path}: {exc.strerror or exc}") from None
    return data, st


def check_log_header(path: Path, data: bytes) -> None:
    """Check the header of a file that starts like a log, as opening it would (without a
    key: the version, kdf and fields; not the MAC), so that a log this library cannot
    read is reported, not taken for "already a log".

    :raises UnsupportedVersionError: written by a newer format version.
    :raises FormatError: a damaged or truncated header.
    """
    try:
        if sniff_log(data[:64]) is LogKind.SEALED:
            decode_sealed_header(data)[0].check_flags()
            return
        end = data.find(b"\n", 0, MAX_PLAIN_HEADER_BYTES + 1)
        if end < 0:
            raise FormatError("plain log header line is truncated")
        decode_plain_header(data[:end])
    except FormatError as exc:  # UnsupportedVersionError too: its message, with the path
        raise type(exc)(f"{path}: {exc}") from None


def plain_log_context(path: Path, data: bytes, context: str | None) -> str | None:
    """The context to seal the plaintext log ``data`` (at ``path``) under: ``context`` when
    given, else the id a store's log is bound to, read from its name (``<encoded id>.log``,
    checked against the header's digest), as ``ConversationStore.open`` binds it (review r2a
    defect 5: sealing a store's conversation failed with ``BindingError``).

    :raises BindingError: the log is bound to a context its name does not give (a hashed
        store name, or a renamed file): nothing was changed.
    """
    end = data.find(b"\n", 0, MAX_PLAIN_HEADER_BYTES + 1)
    digest = decode_plain_header(data[: max(end, 0)]).context_sha256
    if context is not None or digest is None:
        return context
    name = path.name
    found = decode_id(name[: -len(LOG_SUFFIX)]) if name.endswith(LOG_SUFFIX) else None
    if found is not None and context_digest(found) == digest:
        return found
    raise BindingError(
        f"{path} is bound to a context (a store's conversation id) that its name does not "
        "give: seal it with conversation_codec.migrate(path, encryption_key=..., "
        "context=<its conversation id>)"
    )


def header_opens(
    path: Path, data: bytes, key: KeyInput | None, password: str | None, context: str | None
) -> bool:
    """Whether ``key`` (or ``password``) authenticates the header of the sealed log ``data``,
    as opening it would; True when there is nothing to check (a plain log, no secret, or one
    of another kind). False cannot tell another key's log from a damaged header: the
    header MAC is one opaque check (FORMAT.md §9.1)."""
    if (key is None and password is None) or sniff_log(data[:64]) is not LogKind.SEALED:
        return True
    keyring = None if key is None else Keyring.from_input(key)
    binding = None if context is None else context_digest(context)
    try:
        LogSecrets(path, keyring, password, binding).attach(data)
    except (BindingError, KeyRequiredError, PasswordRequiredError):
        return True  # the MAC held, or the header wants a secret of the other kind
    except DecryptionError:  # after those: BindingError is one
        return False
    return True


def destination(
    real: Path, dst: str | os.PathLike[str] | None
) -> tuple[Path, bool, StorageError | None]:
    """Return the destination path, whether the migration is in place, and the error for
    an existing destination: raised unless it turns out to hold this very history (a
    migration killed after its commit, run again).

    :raises StorageError: ``dst`` is a link.
    """
    if dst is None:
        return real, True, None
    target = Path(dst)
    if os.path.islink(target):
        check_file(target)  # raises: a link is never written through, nor replaced
    if not os.path.lexists(target):
        return target, False, None
    with contextlib.suppress(OSError):
        if os.path.samefile(target, real):
            return real, True, None
    what = "a conversation-codec log" if _is_log(target) else "a file"
    return (
        target,
        False,
        StorageError(
            errno.EEXIST,
            f"{target} already exists ({what}); choose another destination or remove it first",
        ),
    )


def _is_log(path: Path) -> bool:
    try:
        with open(open_source(path)[0], "rb") as f:  # a FIFO there must not block
            return sniff_log(f.read(64)) in (LogKind.SEALED, LogKind.PLAIN)
    except OSError:
        return False

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
from .._time import iso_z
from ..crypto import KeyInput, Keyring
from ..errors import (
    BindingError,
    DecryptionError,
    FormatError,
    KeyRequiredError,
    PasswordRequiredError,
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
from ..sealing import LogSecrets
from .legacy import MAX_LEGACY_BYTES, LegacyFormat

__all__ = ["Plan", "check_key", "check_log_header", "destination", "read_source"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The messages and record timestamps (µs, or None for "now") to write."""

    messages: list[dict[str, Any]]
    times: list[int] | None
    notes: list[str]

    @classmethod
    def make(
        cls, fmt: LegacyFormat, messages: list[dict[str, Any]], stamps: Sequence[int | None]
    ) -> Plan:
        """Fill missing timestamps and keep every one representable in a log.

        An untimed message takes the time of the message before it (the first known time
        for leading ones): ``legacy`` already sorted them so, and a log's timestamps never
        decrease. With no time at all every record gets the migration time. A time before
        1970 cannot be stored (the format counts from the epoch): it becomes 1970-01-01
        and the original instant is kept in the message's ``"timestamp"`` key, rather
        than failing the whole file or silently dropping it.
        """
        notes: list[str] = []
        first = next((t for t in stamps if t is not None), None)
        if first is None:
            if messages:
                notes.append("no timestamps in the source: records carry the migration time")
            return cls(list(messages), None, notes)
        out, times, last, early = list(messages), [], first, 0
        for i, ts in enumerate(stamps):
            last = last if ts is None else ts
            if ts is not None and ts < 0:
                out[i] = {**out[i], "timestamp": iso_z(ts)}
                early += 1
            times.append(max(last, 0))
        if early:
            notes.append(
                f"{early} timestamp(s) before 1970 stored as 1970-01-01T00:00:00Z; "
                'the original kept in the message\'s "timestamp" key'
            )
        missing = sum(ts is None for ts in stamps)
        if missing:
            notes.append(f"{missing} message(s) without a timestamp took the previous one's")
        return cls(out, times, notes)


def check_key(name: str, key: KeyInput | None) -> None:
    """Fail on a malformed key before touching any file (and before a batch starts).

    :raises TypeError, ValueError: ``key`` is malformed (the message names ``name``).
    """
    if key is not None:
        try:
            Keyring.from_input(key)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None


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


def destination(real: Path, dst: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """Return the destination path and whether the migration is in place.

    :raises StorageError: ``dst`` exists (and is not the source), or is a link.
    """
    if dst is None:
        return real, True
    target = Path(dst)
    if os.path.islink(target):
        check_file(target)  # raises: a link is never written through, nor replaced
    if not os.path.lexists(target):
        return target, False
    with contextlib.suppress(OSError):
        if os.path.samefile(target, real):
            return real, True
    what = "a conversation-codec log" if _is_log(target) else "a file"
    raise StorageError(
        errno.EEXIST,
        f"{target} already exists ({what}); choose another destination or remove it first",
    )


def _is_log(path: Path) -> bool:
    try:
        with open(open_source(path)[0], "rb") as f:  # a FIFO there must not block
            return sniff_log(f.read(64)) in (LogKind.SEALED, LogKind.PLAIN)
    except OSError:
        return False

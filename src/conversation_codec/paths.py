"""Every name the library gives a file beside a log, built and parsed in one place.

For a log at ``P`` (FORMAT.md §1, §8):

- ``P.idx`` the offset index, ``P.lock`` the lock file, ``P.blobs/`` external attachments;
- ``P.kwi`` the optional keyword index (FORMAT.md §17), rewritten through ``P.kwi.tmp-<16 hex>``;
- ``P.tmp-<16 hex>``: a rewrite's temp copy, until its rename (a leftover after a crash);
- ``P.migrating-<16 hex>`` (with its own ``.idx``, ``.lock``, ``.tmp-``): migrate's new log;
- ``P.bak``: the original a migration in place keeps (the user's: never swept), written
  through ``P.bak.tmp-<16 hex>``;
- ``.tmp-<16 hex>`` inside ``P.blobs/``: a blob being put;
- ``.<name>.tmp-<16 hex>``: the temp file :func:`~conversation_codec._atomic.atomic_write`
  publishes another whole file through (key files, exports, packs); where there are
  unnamed (``O_TMPFILE``) files it exists only from its link to its rename, or not at all
  (an exclusive write); an export deletes those that killed exports to its destination left.

Pure string work: nothing here touches the file system.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

from .errors import StorageError

__all__ = [
    "BACKUP_SUFFIX",
    "BLOBS_SUFFIX",
    "INDEX_SUFFIX",
    "KWI_SUFFIX",
    "LOCK_SUFFIX",
    "LONGEST_SUFFIX",
    "backup_path",
    "blob_temp_name",
    "blobs_path",
    "check_log_path",
    "hidden_temp_path",
    "index_path",
    "is_blob_temp",
    "is_hidden_temp",
    "is_leftover",
    "is_log_file",
    "is_sidecar",
    "kwi_path",
    "lock_path",
    "migrate_leftovers",
    "migrating_path",
    "temp_path",
]

INDEX_SUFFIX = ".idx"
KWI_SUFFIX = ".kwi"
LOCK_SUFFIX = ".lock"
BLOBS_SUFFIX = ".blobs"
BACKUP_SUFFIX = ".bak"
_TEMP = ".tmp-"
_MIGRATING = ".migrating-"
_TOKEN_BYTES = 8  # random bytes of a temp name: 16 hex digits
_TOKEN = r"[0-9a-f]{16}"  # noqa: S105 (a pattern of temp names, not a secret)
# The longest suffix a log's own writer adds to its name, P.tmp-<16 hex> (a rewrite): what
# a log name must leave room for under NAME_MAX.
LONGEST_SUFFIX = len(_TEMP) + 2 * _TOKEN_BYTES

_TEMP_RE = re.compile(re.escape(_TEMP) + _TOKEN)
# What crashes leave under a log's name (FORMAT.md §8.4): a rewrite's P.tmp-<16 hex>, a
# whole copy of the history; migrate's temp log P.migrating-<16 hex> with its sidecars.
_LEFTOVER_RE = re.compile(
    rf"(?:{re.escape(KWI_SUFFIX)})?{re.escape(_TEMP)}{_TOKEN}|{re.escape(_MIGRATING)}{_TOKEN}"
    rf"({re.escape(INDEX_SUFFIX)}|{re.escape(LOCK_SUFFIX)}|{re.escape(_TEMP)}{_TOKEN})?"
)
# Files a directory walk never treats as histories: our sidecars and temp files, legacy
# salt files, backups made by an earlier run (migrating those would make .bak.bak files).
_SIDECAR_RE = re.compile(
    rf".*(\.idx|\.kwi|\.lock|\.bak|\.salt|{re.escape(_TEMP)}{_TOKEN}|{re.escape(_MIGRATING)}{_TOKEN}(\..*)?)"
)

_Path = str | os.PathLike[str]


def _token() -> str:
    return secrets.token_hex(_TOKEN_BYTES)


def index_path(log: _Path) -> str:
    """``P.idx``."""
    return os.fspath(log) + INDEX_SUFFIX


def kwi_path(log: _Path) -> str:
    """``P.kwi``: the keyword index (FORMAT.md §17)."""
    return os.fspath(log) + KWI_SUFFIX


def lock_path(log: _Path) -> str:
    """``P.lock``."""
    return os.fspath(log) + LOCK_SUFFIX


def blobs_path(log: _Path) -> str:
    """``P.blobs`` (a directory)."""
    return os.fspath(log) + BLOBS_SUFFIX


def backup_path(log: _Path) -> str:
    """``P.bak``."""
    return os.fspath(log) + BACKUP_SUFFIX


def temp_path(path: _Path) -> str:
    """A fresh ``<path>.tmp-<16 hex>`` (a rewrite's copy of a log; a backup being written)."""
    return f"{os.fspath(path)}{_TEMP}{_token()}"


def migrating_path(log: _Path) -> str:
    """A fresh ``P.migrating-<16 hex>``: migrate's new log until its commit."""
    return f"{os.fspath(log)}{_MIGRATING}{_token()}"


def hidden_temp_path(path: _Path) -> str:
    """A fresh ``.<name>.tmp-<16 hex>`` beside ``path`` (atomic_write's default temp)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}{_TEMP}{_token()}")


def is_hidden_temp(name: str, of: str) -> bool:
    """Whether ``name`` is a ``.<of>.tmp-<16 hex>``: a temp file of ``of`` (both bare names)."""
    return re.fullmatch(re.escape(f".{of}{_TEMP}") + _TOKEN, name) is not None


def blob_temp_name() -> str:
    """A fresh ``.tmp-<16 hex>``: a blob being put, inside ``P.blobs/``."""
    return f"{_TEMP}{_token()}"


def is_blob_temp(name: str) -> bool:
    """Whether ``name`` (inside ``P.blobs/``) is a blob put's temp file."""
    return _TEMP_RE.fullmatch(name) is not None


def may_be_leftover(name: str) -> bool:
    """Whether ``name`` could be some log's leftover (``is_leftover``): a cheap first
    filter over a directory's names, which a store holds thousands of."""
    return _TEMP in name or _MIGRATING in name


def is_leftover(name: str, log_name: str) -> bool:
    """Whether ``name`` is what a crashed rewrite or migration of the log ``log_name`` (both
    base names) left beside it. Never ``P.bak``: the user's original."""
    return name.startswith(log_name) and _LEFTOVER_RE.fullmatch(name, len(log_name)) is not None


def is_log_file(name: str, log_name: str) -> bool:
    """Whether ``name`` is one of the log ``log_name``'s files: the log, its index, lock
    or keyword index, or a rewrite's temp copy (what a store counts and deletes as the
    conversation)."""
    if name in (log_name, log_name + INDEX_SUFFIX, log_name + LOCK_SUFFIX, log_name + KWI_SUFFIX):
        return True
    if name.startswith(log_name + KWI_SUFFIX):
        log_name += KWI_SUFFIX  # the keyword index's temp copy
    return name.startswith(log_name) and _TEMP_RE.fullmatch(name, len(log_name)) is not None


def migrate_leftovers(log_name: str, backup_name: str | None) -> re.Pattern[str]:
    """The names a crashed migration into ``log_name`` leaves: its temp log and sidecars,
    and the temp file of the backup ``backup_name`` (never the backup itself)."""
    pattern = (
        re.escape(log_name)
        + rf"{re.escape(_MIGRATING)}{_TOKEN}(\.idx|\.lock|{re.escape(_TEMP)}{_TOKEN})?"
    )
    if backup_name is not None:
        pattern += "|" + re.escape(backup_name) + re.escape(_TEMP) + _TOKEN
    return re.compile(pattern)


def is_sidecar(name: str) -> bool:
    """Whether a file ``name`` found in a directory walk is ours or a legacy salt file, not
    a history to migrate: an index, lock, backup, salt, temp or migration file."""
    return _SIDECAR_RE.fullmatch(name) is not None


_NAME_MAX = 255  # bytes in one path component: ext4, XFS, Btrfs, APFS, NTFS (UTF-16 units)
_PATH = type(Path())  # the concrete Path class of this system


def check_log_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path, refusing a directory or a path too long for its sidecars.

    Checked up front because the longest sidecar name, ``<log>.tmp-<16 hex>`` (FORMAT.md §8),
    is only made by a rewrite: without this, a 240-byte name would work until the first
    ``compact()``. Paths longer than the system's PATH_MAX fail at the first open instead.

    :raises StorageError: a directory, a NUL byte, a name (with its sidecar suffix) over
        NAME_MAX, or a path the system refuses to look at.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    # A Path is taken as it is: Path(a_path) parses it again, ~2 us of every open (issue 15).
    result = path if type(path) is _PATH else Path(path)
    raw = os.fsencode(result)
    if b"\0" in raw:
        raise StorageError(errno.EINVAL, f"log path {_shown(raw)!r} holds a NUL byte")
    if len(raw) + LONGEST_SUFFIX <= _NAME_MAX:  # no part of it can be too long (most paths)
        folders, name = [], raw
    else:
        *folders, name = [os.fsencode(part) for part in result.parts] or [b""]
    for folder in folders:
        if len(folder) > _NAME_MAX:
            raise StorageError(
                errno.ENAMETOOLONG,
                f"log path has a {len(folder)}-byte directory name ({_shown(folder)!r}); "
                f"file systems allow at most {_NAME_MAX} bytes",
            )
    if len(name) + LONGEST_SUFFIX > _NAME_MAX:
        raise StorageError(
            errno.ENAMETOOLONG,
            f"log file name {_shown(name)!r} is {len(name)} bytes; its sidecar names add up to "
            f"{LONGEST_SUFFIX} more: use at most {_NAME_MAX - LONGEST_SUFFIX} bytes",
        )
    try:
        is_dir = result.is_dir()
    except OSError as exc:  # ENAMETOOLONG past PATH_MAX, EACCES, ...: ours, not a raw OSError
        raise StorageError(exc.errno or 0, f"log path {_shown(raw)!r}: {exc.strerror}") from None
    if is_dir:
        raise StorageError(errno.EISDIR, f"{result} is a directory; pass the path of a log file")
    return result


def _shown(raw: bytes) -> str:
    """The start of a path (or name) that may be thousands of bytes long, for a message."""
    return os.fsdecode(raw[:60]) + ("..." if len(raw) > 60 else "")

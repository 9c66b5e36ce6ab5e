"""Key files: load a Fernet key from a private file, creating it once if it is missing.

A key file holds one Fernet key (urlsafe base64, 44 characters) and an optional
trailing newline. It is never overwritten: creation publishes a fully written,
fsynced file with ``os.link``, which fails when the name exists, so two processes
racing to create the same key file end up with the winner's key, and a reader never
sees a half-written key. A key file that others can read, or that is empty or
malformed, is refused — never silently replaced, since a new key would make every
log sealed under the old one unreadable.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from pathlib import Path

from ._atomic import atomic_write
from ._fsio import DEFAULT_IO, FileIO, make_private_dirs
from .crypto import Keyring, generate_key
from .errors import FormatError, KeyFileError, StorageError

__all__ = [
    "KEY_FILE_MODE",
    "KeyFileError",
    "create_key_file",
    "load_key",
    "load_or_create_key",
    "parse_key",
]

KEY_FILE_MODE = 0o600  # owner read/write; any group/other bit makes the file refused
_MAX_KEY_FILE_BYTES = 4096  # bytes; a Fernet key file is 44 or 45; more is not a key file
_FERNET_KEY = re.compile(rb"[A-Za-z0-9_-]{43}=")  # urlsafe base64 of 32 bytes
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # so a FIFO at the path cannot hang us
# Where os.link is unsupported (FAT, some FUSE/network file systems) the key file is
# created in place with O_EXCL; a reader may then catch it empty for an instant, so it
# waits this long for the creator's single write before calling the file empty.
_EMPTY_GRACE = 0.25  # seconds


def load_or_create_key(path: str | os.PathLike[str], *, io: FileIO = DEFAULT_IO) -> str:
    """Return the Fernet key stored at ``path``, creating the file (mode 0600) if missing.

    An existing file is only ever read. Concurrent callers, in threads or processes,
    all return the same key. Missing parent directories are created with mode 0700.
    ``io``: the filesystem seam the new file is written, synced and linked through.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "chat.key")
    >>> key = load_or_create_key(path)
    >>> load_or_create_key(path) == key, oct(os.stat(path).st_mode & 0o777)
    (True, '0o600')

    :raises KeyFileError: group or others have any permission on the file, or the path
        is not a regular file.
    :raises FormatError: the file is empty or does not hold exactly one Fernet key.
    :raises StorageError: the file or its directory cannot be read or written.
    """
    path = Path(path)
    for _ in range(8):  # a creator that loses a race retries the read; 8 is plenty
        key = _load(path)
        if key is not None:
            return key
        key = generate_key()
        if _create(path, key, io):
            return key
    raise StorageError(
        errno.EAGAIN, f"{path} keeps appearing and disappearing; is another program deleting it?"
    )


def create_key_file(path: str | os.PathLike[str], *, io: FileIO = DEFAULT_IO) -> str:
    """Write a new Fernet key to ``path`` (mode 0600) and return it; never replace a file.

    The file is published as :func:`load_or_create_key` publishes one: written and synced
    under a temporary name, linked into place, the directory synced — a key lost to a power
    cut would make every log sealed with it unreadable. (``conversation-codec keygen --out``.)
    ``io``: the filesystem seam every write, sync, link and unlink goes through.

    :raises KeyFileError: something already exists at ``path``.
    :raises StorageError: the file or its directory cannot be written.
    """
    path = Path(path)
    key = generate_key()
    try:
        atomic_write(path, (key + "\n").encode("ascii"), io=io, exclusive=True, mode=KEY_FILE_MODE)
    except FileExistsError:
        if path.is_symlink():  # never written through, and said so: a planted link
            raise StorageError(
                errno.EEXIST, f"{path} is a symbolic link; refusing to write a key through it"
            ) from None
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(
            exc.errno, f"cannot create key file {path}: {exc.strerror or exc}"
        ) from exc
    return key


def load_key(path: str | os.PathLike[str]) -> str:
    """Return the Fernet key stored at ``path``, by the same rules; never create the file.

    For a key file that must already exist (the command line's ``--key-file``).

    :raises KeyFileError: group or others have any permission on the file, or the path
        is not a regular file.
    :raises FormatError: the file is empty or does not hold exactly one Fernet key.
    :raises StorageError: the file does not exist or cannot be read.
    """
    path = Path(path)
    key = _load(path)
    if key is None:
        raise StorageError(errno.ENOENT, f"cannot read key file {path}: no such file")
    return key


def parse_key(data: bytes, source: str) -> str:
    """Return the one Fernet key ``data`` holds, by the rule of a key file's content
    (whitespace around it allowed, nothing else); ``source`` names where it came from.

    :raises FormatError: ``data`` is empty or does not hold exactly one Fernet key.
    """
    return _parse(source, data)


def _load(path: Path) -> str | None:
    """Return the key in ``path``, or None when there is no file."""
    deadline = time.monotonic() + _EMPTY_GRACE
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK)
        except FileNotFoundError:
            if os.path.islink(path):  # creating through it would write somewhere else
                raise KeyFileError(
                    f"key file {path} is a symlink to a missing file ({os.readlink(path)}); "
                    "restore that file, or remove the link to create a new key"
                ) from None
            return None
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot open key file {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            _check_private(path, st)
            data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read key file {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if data or time.monotonic() >= deadline:
            return _parse(path, data)
        time.sleep(0.01)


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file; point to the key file itself")
    # Windows has no group/other bits to check; its ACLs are the owner's business.
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others can "
            f"reach the key; run `chmod 600 {path}` (and rotate the key if others read it)"
        )


def _parse(path: Path | str, data: bytes) -> str:
    # Whitespace around the key is allowed (editors add newlines); nothing else is.
    # The messages never quote the content: it may be a near-miss of a real key.
    text = data.strip(b" \t\r\n")
    if not text:
        raise FormatError(
            f"key file {path} is empty; restore the key from a backup (a new key would not "
            "open logs sealed under the lost one), or delete the file to create a new key"
        )
    try:
        # The pattern first: base64 decoding skips characters outside the alphabet, so
        # "key + junk" would decode to the same 32 bytes and pass for the key.
        if not _FERNET_KEY.fullmatch(text):
            raise ValueError
        Keyring.from_input(text.decode("ascii"))
    except (TypeError, ValueError):
        raise FormatError(
            f"key file {path} does not hold a Fernet key (44 characters of urlsafe base64, "
            "as conversation_codec.generate_key() makes); restore it from a backup"
        ) from None
    return text.decode("ascii")


def _create(path: Path, key: str, io: FileIO) -> bool:
    """Publish a new key file; return False when another creator got there first."""
    try:
        make_private_dirs(path.parent, io=io)
        # Written and synced under a temporary name, then linked into place: the final
        # name never exists half-written, and link (unlike rename) never replaces it.
        # Without hard links it is created in place with O_EXCL (see _EMPTY_GRACE).
        atomic_write(path, (key + "\n").encode("ascii"), io=io, exclusive=True, mode=KEY_FILE_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StorageError(
            exc.errno, f"cannot create key file {path}: {exc.strerror or exc}"
        ) from exc
    return True

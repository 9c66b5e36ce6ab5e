"""The whole exception hierarchy of conversation-codec.

Every error the library raises on purpose derives from :class:`ConversationCodecError`.
Subclasses also inherit the builtin that matches their meaning (``ValueError``,
``TypeError``, ``OSError``, ``TimeoutError``), so callers can catch either.

A wrong *type* of argument raises a subclass of the matching wrong-*value* error that also
inherits ``TypeError`` (``KeyTypeError`` is an ``InvalidKeyError``; ``QueryTypeError`` is a
``SearchError``), so one ``except`` catches every bad key or every bad query.

Crypto failures are deliberately opaque: :class:`DecryptionError` never says *why*
authentication failed, in the spirit of Fernet's ``InvalidToken``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "BackendUnavailableError",
    "BindingError",
    "BlobNameError",
    "ClosedError",
    "ConflictError",
    "ConversationCodecError",
    "ConversionError",
    "CorruptRecordError",
    "DatabaseError",
    "DecryptionError",
    "FormatError",
    "HashedIdError",
    "InvalidKeyError",
    "KdfParameterError",
    "KeyFileError",
    "KeyMismatchError",
    "KeyRequiredError",
    "KeyTypeError",
    "LockTimeoutError",
    "LogReplacedError",
    "MissingBlobError",
    "NaiveDatetimeError",
    "NotAHistoryError",
    "NotEncryptedError",
    "NotSerializableError",
    "PasswordRequiredError",
    "QueryTypeError",
    "RecordTooLargeError",
    "SearchError",
    "StorageError",
    "UnsupportedVersionError",
]


class ConversationCodecError(Exception):
    """Base class for all conversation-codec errors."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its class, its args and its attributes, rebuilt without calling
        # __init__ (which may take keyword-only arguments, as CorruptRecordError's do):
        # the default rebuilds with cls(*args), which failed, and a pool worker's error
        # that cannot come back breaks ProcessPoolExecutor and hangs Pool.map.
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(
    cls: type[ConversationCodecError], args: tuple[Any, ...], state: dict[str, Any]
) -> ConversationCodecError:
    """Unpickle a library error (``ConversationCodecError.__reduce__``)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class FormatError(ConversationCodecError, ValueError):
    """Bytes on disk do not follow spec/FORMAT.md (or are not a conversation-codec log)."""


class CorruptRecordError(FormatError):
    """A record failed authentication, is truncated, or is out of place.

    ``path`` and ``offset`` locate the damage; ``offset`` is the byte offset of the
    record's frame in the log file (or of the index entry, for index damage).
    """

    def __init__(self, msg: str, *, path: str | os.PathLike[str], offset: int) -> None:
        super().__init__(f"{msg} (at byte {offset} of {os.fspath(path)})")
        self.path = Path(path)
        self.offset = offset


class UnsupportedVersionError(FormatError):
    """The file was written by a newer format version than this library reads."""


class NotAHistoryError(FormatError):
    """A legacy file parses, but none of its JSON objects looks like a chat message.

    ``migrate`` refuses it (``migrate_many`` skips it), so that an application's own JSON
    files beside its histories (settings, session lists) are never converted into logs.
    """


class KdfParameterError(FormatError):
    """A password log's header asks for scrypt parameters this library refuses to derive with.

    Raised before any derivation when the parameters break RFC 7914 or exceed the memory
    and work bounds of FORMAT.md §4.1 (the header MAC cannot be checked before the key
    exists, so a modified header must not be able to cost more than that), and when the
    derivation itself fails (this machine cannot allocate the memory the parameters need).
    """


class DecryptionError(ConversationCodecError):
    """Wrong key or password, or the authenticated header was modified.

    Deliberately says nothing more.
    """


class InvalidKeyError(ConversationCodecError, ValueError):
    """A key or password argument is unusable: not a Fernet key, an empty key list, an empty
    password. The message says what to pass and never shows the value given."""


class KeyTypeError(InvalidKeyError, TypeError):
    """A key or password argument has the wrong type (an int where a key belongs)."""


class BindingError(DecryptionError):
    """The log is not the one asked for: it is bound to another context (FORMAT.md §4.2).

    The key opens the log, but the log was written for another conversation id (or other
    ``context=``): it was copied, swapped or renamed from elsewhere. Also raised when a bound
    log is opened without its context, and (as an accident check only: nothing is
    authenticated there) when a plain log's recorded context differs. A subclass of
    ``DecryptionError``, so code that refuses a log it cannot open keeps doing so.
    """


class HashedIdError(ConversationCodecError, LookupError):
    """A store log's file name does not give its conversation id: the id is too long for a
    file name, so the log is stored under a hashed one (``storage.file.store``).

    ``ids()``, ``infos()`` and ``search()`` of a directory store cannot name such a
    conversation: they hand its log's path and this error to ``on_error`` (without it, they
    raise it rather than return a partial list); ``store.open(id)`` with the id opens it.
    """


class KeyMismatchError(ConversationCodecError, ValueError):
    """The encryption setting given does not match the log on disk."""


class KeyRequiredError(KeyMismatchError):
    """The log is encrypted and no key (or password) was given."""


class PasswordRequiredError(KeyRequiredError):
    """The log is protected by a password and none was given (a key cannot open it)."""


class NotEncryptedError(KeyMismatchError):
    """A key was given but the log on disk is plaintext."""


class NotSerializableError(ConversationCodecError, TypeError):
    """A message is not a JSON object that round-trips exactly."""


class ConversionError(ConversationCodecError, ValueError):
    """A stored message cannot be turned into the type asked for (a LangChain message): it
    has another shape, e.g. an item another integration wrote under the same id.

    The message says what is missing and never shows the stored message, which may be
    decrypted content; nor is the converter's own error (which shows it) chained.
    """


class SearchError(ConversationCodecError, ValueError):
    """A search query cannot run: an invalid regular expression, or ``regex=True`` without
    the linear-time engine installed (``pip install "conversation-codec[regex]"``)."""


class QueryTypeError(SearchError, TypeError):
    """A search query is not a str (or None)."""


class RecordTooLargeError(ConversationCodecError, ValueError):
    """A message is larger than the format allows for one record."""


class StorageError(ConversationCodecError, OSError):
    """The file system refused an operation (I/O error, no space, bad path).

    After a failed fsync the codec refuses further writes until it is reopened:
    the kernel may have dropped the unsynced pages, so nothing written since the
    last good sync can be trusted (PostgreSQL's fsync lesson).
    """


class DatabaseError(StorageError):
    """The database refused an operation or could not be reached (PostgreSQL storage).

    ``sqlstate`` is the server's five-character error code when it sent one (None for a
    lost connection). Messages name the database without its password.
    """

    def __init__(self, msg: str, *, sqlstate: str | None = None) -> None:
        super().__init__(msg)
        self.sqlstate = sqlstate


class LockTimeoutError(ConversationCodecError, TimeoutError):
    """The writer lock could not be acquired within ``lock_timeout`` seconds."""


class ClosedError(ConversationCodecError, ValueError):
    """The codec was closed; open a new one."""


class ConflictError(ConversationCodecError, RuntimeError):
    """``save()`` would delete or bring back messages this instance never saw.

    The stored history changed since this instance last read all of it (another writer
    appended, popped or rewrote), so a list that diverges from it cannot be trusted to hold
    everything worth keeping. Nothing was changed: reload with ``load()`` and decide again,
    or call ``replace()`` to overwrite the history on purpose.
    """


class LogReplacedError(ConversationCodecError, RuntimeError):
    """Another writer replaced or truncated the log while it was being iterated."""


class KeyFileError(ConversationCodecError, ValueError):
    """A key file is unsafe to use: others can read it, or it is not a regular file."""


class MissingBlobError(ConversationCodecError, LookupError):
    """A message refers to an attachment blob that is not in the store."""


class BlobNameError(MissingBlobError, ValueError):
    """What should name a blob is not 64 lowercase hex digits (FORMAT.md §15.4)."""


class NaiveDatetimeError(ConversationCodecError, ValueError):
    """A datetime without a time zone was given where a point in time is meant.

    A naive datetime is local time by Python's convention, UTC by others': rather than guess,
    every time argument (``append(timestamp=)``, ``prune()``, ``search(since=, until=)``,
    ``ConversationStore.prune()``) refuses it. Pass an aware one, e.g.
    ``datetime.now(timezone.utc)``.
    """


class BackendUnavailableError(ConversationCodecError, ImportError):
    """A store root names a backend whose optional packages are not installed
    (``pip install "conversation-codec[postgres]"`` for a ``postgresql://`` URL)."""

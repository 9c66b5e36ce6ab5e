"""conversation-codec: encrypted, compressed, append-only storage for agent conversations.

Quick start (the seed usage: load once, save after every turn, or append per message):

>>> import os, tempfile
>>> from conversation_codec import ConversationCodec, generate_key
>>> key = generate_key()
>>> path = os.path.join(tempfile.mkdtemp(), "support-chat.log")
>>> codec = ConversationCodec(path, encryption_key=key)
>>> messages = codec.load() or []
>>> messages.append({"role": "user", "content": "My order #1234 never arrived."})
>>> codec.save(messages)            # appends only the new message
>>> codec.append({"role": "assistant", "content": "Sorry! Let me check."})
1
>>> codec.close()
>>> with ConversationCodec(path, encryption_key=key) as again:
...     [m["role"] for m in again.tail(2)], again.message_count()
(['user', 'assistant'], 2)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._fsio import FileIO
from .errors import (
    BackendUnavailableError,
    BindingError,
    BlobNameError,
    ClosedError,
    ConflictError,
    ConversationCodecError,
    ConversionError,
    CorruptRecordError,
    DatabaseError,
    DecryptionError,
    FormatError,
    HashedIdError,
    InvalidKeyError,
    KdfParameterError,
    KeyFileError,
    KeyMismatchError,
    KeyRequiredError,
    KeyTypeError,
    LockTimeoutError,
    LogReplacedError,
    MissingBlobError,
    NaiveDatetimeError,
    NotAHistoryError,
    NotEncryptedError,
    NotSerializableError,
    PasswordRequiredError,
    QueryTypeError,
    RecordTooLargeError,
    SearchError,
    StorageError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:  # the real imports, for type checkers; at run time see __getattr__
    from .aio import AsyncConversationCodec, AsyncConversationStore
    from .codec import ConversationCodec, LogInfo
    from .crypto import generate_key
    from .keyfile import load_or_create_key
    from .maintenance.compact import CompactionReport
    from .maintenance.migrate import MigrationReport, migrate, migrate_many
    from .maintenance.verify import SalvageReport, salvage
    from .options import CodecOptions
    from .search import Hit
    from .storage.file.check import VerifyReport
    from .store import ConversationInfo, ConversationStore

# Public names loaded on first use (PEP 562), so that `conversation-codec --version` and
# `--help` import neither cryptography nor the engine: ~70 ms instead of ~300 ms. The errors
# are cheap and imported at once (every module and the CLI need them).
_LAZY = {
    "AsyncConversationCodec": "aio",
    "AsyncConversationStore": "aio",
    "CodecOptions": "options",
    "CompactionReport": "maintenance.compact",
    "ConversationCodec": "codec",
    "LogInfo": "codec",
    "generate_key": "crypto",
    "load_or_create_key": "keyfile",
    "MigrationReport": "maintenance.migrate",
    "migrate": "maintenance.migrate",
    "migrate_many": "maintenance.migrate",
    "Hit": "search",
    "ConversationInfo": "store",
    "ConversationStore": "store",
    "SalvageReport": "maintenance.verify",
    "VerifyReport": "storage.file.check",
    "salvage": "maintenance.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "AsyncConversationCodec",
    "AsyncConversationStore",
    "BackendUnavailableError",
    "BindingError",
    "BlobNameError",
    "ClosedError",
    "CodecOptions",
    "CompactionReport",
    "ConflictError",
    "ConversationCodec",
    "ConversationCodecError",
    "ConversationInfo",
    "ConversationStore",
    "ConversionError",
    "CorruptRecordError",
    "DatabaseError",
    "DecryptionError",
    "FileIO",
    "FormatError",
    "HashedIdError",
    "Hit",
    "InvalidKeyError",
    "KdfParameterError",
    "KeyFileError",
    "KeyMismatchError",
    "KeyRequiredError",
    "KeyTypeError",
    "LockTimeoutError",
    "LogInfo",
    "LogReplacedError",
    "MigrationReport",
    "MissingBlobError",
    "NaiveDatetimeError",
    "NotAHistoryError",
    "NotEncryptedError",
    "NotSerializableError",
    "PasswordRequiredError",
    "QueryTypeError",
    "RecordTooLargeError",
    "SalvageReport",
    "SearchError",
    "StorageError",
    "UnsupportedVersionError",
    "VerifyReport",
    "__version__",
    "generate_key",
    "load_or_create_key",
    "migrate",
    "migrate_many",
    "salvage",
]

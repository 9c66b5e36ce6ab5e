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

from ._fsio import FileIO
from .aio import AsyncConversationCodec, AsyncConversationStore
from .codec import CompactionReport, ConversationCodec, LogInfo
from .crypto import generate_key
from .errors import (
    BindingError,
    ClosedError,
    ConflictError,
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    FormatError,
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
    NotEncryptedError,
    NotSerializableError,
    QueryTypeError,
    RecordTooLargeError,
    SearchError,
    StorageError,
    UnsupportedVersionError,
)
from .keyfile import load_or_create_key
from .migrate import MigrationReport, migrate, migrate_many
from .options import CodecOptions
from .search import Hit
from .store import ConversationInfo, ConversationStore
from .verify import SalvageReport, VerifyReport, salvage

__version__ = "0.1.0"

__all__ = [
    "AsyncConversationCodec",
    "AsyncConversationStore",
    "BindingError",
    "ClosedError",
    "CodecOptions",
    "CompactionReport",
    "ConflictError",
    "ConversationCodec",
    "ConversationCodecError",
    "ConversationInfo",
    "ConversationStore",
    "CorruptRecordError",
    "DecryptionError",
    "FileIO",
    "FormatError",
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
    "NotEncryptedError",
    "NotSerializableError",
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

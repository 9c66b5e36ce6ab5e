"""The adapter interface every measured store implements, plus record sealing for baselines."""

from __future__ import annotations

import abc
import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import zstandard
from cryptography.fernet import Fernet

from benchmarks._measure import NotSupportedError
from benchmarks._workload import Message

DURABILITIES = ("fsync", "flush")


class Store(abc.ABC):
    """One store behind the same small API, owning every file in ``directory``.

    ``open(durability)`` starts a session; "fsync" means each acknowledged append has reached
    stable storage, "flush" means it has reached the OS (survives a process crash only).
    Reads return the store's native message objects: converting them is part of its cost.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    notes: ClassVar[str] = ""
    # Largest history this store is built to; bigger sizes show "capped".
    cap: ClassVar[int | None] = None
    durabilities: ClassVar[tuple[str, ...]] = DURABILITIES
    returns_dicts: ClassVar[bool] = True

    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = directory
        self.key = key
        directory.mkdir(parents=True, exist_ok=True)

    @abc.abstractmethod
    def open(self, durability: str) -> None:
        """Start a session with the given durability ("fsync" or "flush")."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session, releasing files and connections."""

    @abc.abstractmethod
    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        """Add many messages as one batch (used to build histories fast)."""

    @abc.abstractmethod
    def append(self, message: Message) -> None:
        """Add one message and make it durable per the session's durability."""

    @abc.abstractmethod
    def load(self) -> list[Any]:
        """Return the whole history in order."""

    @abc.abstractmethod
    def tail(self, n: int) -> list[Any]:
        """Return the last n messages, oldest first."""

    @abc.abstractmethod
    def get(self, index: int, count: int) -> Any:
        """Return message ``index`` of a history of ``count`` messages."""

    def between(self, since: float, until: float) -> list[Any]:
        """Return the messages stamped in [since, until) (epoch seconds)."""
        raise NotSupportedError("no date-range query")

    def search(self, keyword: str) -> list[Any]:
        """Return the messages whose JSON contains ``keyword`` (case-insensitive)."""
        needle = keyword.lower()
        return [m for m in self.load() if needle in self.text(m).lower()]

    def text(self, message: Any) -> str:
        """Return the searchable text of a native message."""
        return msgspec.json.encode(message).decode()

    def bytes_on_disk(self) -> int:
        """Return the total size of every file under the store's directory."""
        total = 0
        for root, _dirs, files in os.walk(self.directory):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total


class Sealer:
    """zstd (when smaller) + Fernet per record, binary: the hand-tuned baselines' codec.

    The Fernet token is stored base64-decoded (a third smaller than the token text); a flag
    byte inside the ciphertext says whether the JSON was compressed.
    """

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._cctx = zstandard.ZstdCompressor(level=3)
        self._dctx = zstandard.ZstdDecompressor()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()

    def seal(self, message: Message) -> bytes:
        """Return the stored bytes of one message."""
        raw = self._encoder.encode(message)
        packed = self._cctx.compress(raw)
        body = b"z" + packed if len(packed) < len(raw) else b"r" + raw
        return base64.urlsafe_b64decode(self._fernet.encrypt(body))

    def unseal_bytes(self, blob: bytes) -> bytes:
        """Return the JSON bytes of one stored record."""
        body = self._fernet.decrypt(base64.urlsafe_b64encode(blob))
        return self._dctx.decompress(body[1:]) if body[:1] == b"z" else body[1:]

    def unseal(self, blob: bytes) -> Message:
        """Return the message of one stored record."""
        result: Message = self._decoder.decode(self.unseal_bytes(blob))
        return result

    def decode(self, raw: bytes) -> Message:
        """Parse JSON bytes returned by ``unseal_bytes``."""
        result: Message = self._decoder.decode(raw)
        return result

"""Record bodies: the bytes one message becomes, shared by every storage backend.

A backend stores *bodies* with their seq and timestamp; how it frames them (a length
prefix in a file, a row in a database) is its own business. This module turns encoded
message JSON into a body and back, enforcing the record rules of FORMAT.md §5 and §6:
authenticate before decompressing or parsing, and the seq inside must be the position.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
import zstandard

from .compression import Compressor
from .crypto import InvalidToken, LogCipher
from .errors import UnsupportedVersionError
from .format.record import (
    decode_envelope,
    decode_plain_line,
    encode_envelope,
    encode_plain_line,
)

__all__ = ["PlainRecords", "RecordCodec", "RecordRejected", "SealedRecords"]

_US_PER_S = 1_000_000
_decode_message = msgspec.json.Decoder(dict[str, Any]).decode


class RecordRejected(ValueError):
    """A body failed authentication or a record rule; the caller adds path and offset."""


class RecordCodec(Protocol):
    """Turns (seq, ts_us, message JSON) into a stored body and back."""

    def encode(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        """Return the body that stores one message."""
        ...

    def decode(self, body: bytes, expected_seq: int) -> tuple[dict[str, Any], int]:
        """Return ``(message, ts_us)``; raise ``RecordRejected`` for a bad body."""
        ...

    def payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        """Return ``(text, ts_us)``: authenticated JSON text holding the message, unparsed."""
        ...

    def parse(self, text: bytes) -> dict[str, Any]:
        """Parse what ``payload`` returned into the message."""
        ...

    def inspect(self, body: bytes) -> tuple[int, int, bytes]:
        """Return ``(seq, ts_us, text)`` of an authenticated body, whatever its seq."""
        ...

    def check(self, body: bytes, expected_seq: int | None) -> int:
        """Authenticate a body and return its ts_us, without parsing the message.

        ``expected_seq=None`` accepts any seq (used when searching past damage).
        """
        ...


class SealedRecords:
    """Bodies of a sealed log: zstd (when smaller), then one Fernet token each."""

    __slots__ = ("_cipher", "_zstd")

    def __init__(self, cipher: LogCipher, compressor: Compressor | None = None) -> None:
        self._cipher = cipher
        self._zstd = compressor or Compressor()

    @property
    def cipher(self) -> LogCipher:
        """The log's cipher (its ``unseal_count`` counts decryptions)."""
        return self._cipher

    def encode(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        payload, compressed = self._zstd.compress(message_json)
        envelope = encode_envelope(seq, ts_us, payload, compressed=compressed)
        return self._cipher.seal(envelope, ts_us // _US_PER_S)

    def _open(self, body: bytes, expected_seq: int | None) -> tuple[int, int, bool, memoryview]:
        try:
            plain, seconds = self._cipher.unseal(body)
        except InvalidToken:
            raise RecordRejected("record failed authentication") from None
        try:
            seq, ts_us, compressed, payload = decode_envelope(plain, seconds)
        except NotImplementedError as exc:
            raise UnsupportedVersionError(
                f"record uses a newer format feature ({exc}); upgrade conversation-codec"
            ) from None
        except ValueError as exc:
            raise RecordRejected(f"record envelope is malformed: {exc}") from None
        if expected_seq is not None and seq != expected_seq:
            raise RecordRejected(
                f"record carries seq {seq} where seq {expected_seq} belongs "
                "(moved, duplicated or reordered)"
            )
        return seq, ts_us, compressed, payload

    def check(self, body: bytes, expected_seq: int | None) -> int:
        return self._open(body, expected_seq)[1]

    def payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        _, ts_us, text = self._inflate(self._open(body, expected_seq))
        return text, ts_us

    def inspect(self, body: bytes) -> tuple[int, int, bytes]:
        return self._inflate(self._open(body, None))

    def _inflate(self, opened: tuple[int, int, bool, memoryview]) -> tuple[int, int, bytes]:
        seq, ts_us, compressed, payload = opened
        if not compressed:
            return seq, ts_us, bytes(payload)
        try:
            return seq, ts_us, self._zstd.decompress(payload)
        except zstandard.ZstdError as exc:
            # Authenticated yet unreadable: written by a buggy or hostile key holder.
            raise RecordRejected(f"record payload is malformed: {exc}") from None

    def parse(self, text: bytes) -> dict[str, Any]:
        try:
            return _decode_message(text)
        except msgspec.DecodeError as exc:
            raise RecordRejected(f"record payload is malformed: {exc}") from None

    def decode(self, body: bytes, expected_seq: int) -> tuple[dict[str, Any], int]:
        text, ts_us = self.payload(body, expected_seq)
        return self.parse(text), ts_us


class PlainRecords:
    """Bodies of a plain log: one JSON line each (FORMAT.md §6). No integrity."""

    __slots__ = ()

    def encode(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        return encode_plain_line(seq, ts_us, message_json)

    def decode(self, body: bytes, expected_seq: int | None) -> tuple[dict[str, Any], int]:
        if not body.endswith(b"\n"):
            raise RecordRejected("record line is not terminated")
        try:
            seq, ts_us, message = decode_plain_line(body)
        except ValueError as exc:
            raise RecordRejected(str(exc)) from None
        if expected_seq is not None and seq != expected_seq:
            raise RecordRejected(f"record line carries seq {seq} where seq {expected_seq} belongs")
        return message, ts_us

    def check(self, body: bytes, expected_seq: int | None) -> int:
        return self.decode(body, expected_seq)[1]

    def payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        # The whole line is the text: parsing it is what checks the record.
        return body, self.decode(body, expected_seq)[1]

    def parse(self, text: bytes) -> dict[str, Any]:
        return decode_plain_line(text)[2]

    def inspect(self, body: bytes) -> tuple[int, int, bytes]:
        if not body.endswith(b"\n"):
            raise RecordRejected("record line is not terminated")
        try:
            seq, ts_us, _ = decode_plain_line(body)
        except ValueError as exc:
            raise RecordRejected(str(exc)) from None
        return seq, ts_us, body

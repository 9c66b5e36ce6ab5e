"""zstd compression of record payloads (FORMAT.md §5).

A payload is compressed only when that makes it smaller; the envelope flag says which.
Frames are written without checksum, content size or dictionary id: the Fernet HMAC
already authenticates every byte, so those fields would be bytes spent twice.
"""

from __future__ import annotations

import zstandard

from .format.record import MAX_MESSAGE_BYTES

__all__ = ["COMPRESSION_LEVEL", "Compressor"]

COMPRESSION_LEVEL = 3  # zstd level: level 19 saves ~3% more on chat records at ~10x the CPU
_MIN_COMPRESSIBLE = 24  # bytes: below this a zstd frame header costs more than it saves


class Compressor:
    """Reusable zstd contexts for one log (not thread-safe; the codec serialises use)."""

    __slots__ = ("_cctx", "_dctx")

    def __init__(self, level: int = COMPRESSION_LEVEL) -> None:
        self._cctx = zstandard.ZstdCompressor(
            level=level, write_checksum=False, write_content_size=False, write_dict_id=False
        )
        self._dctx = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> tuple[bytes, bool]:
        """Return ``(payload, compressed)``: the zstd frame when it is smaller, else ``data``."""
        if len(data) < _MIN_COMPRESSIBLE:
            return data, False
        packed = self._cctx.compress(data)
        if len(packed) < len(data):
            return packed, True
        return data, False

    def decompress(self, payload: bytes | memoryview) -> bytes:
        """Inflate one payload, refusing to produce more than ``MAX_MESSAGE_BYTES``.

        :raises zstandard.ZstdError: the frame is malformed or too large.
        """
        return self._dctx.decompress(payload, max_output_size=MAX_MESSAGE_BYTES)

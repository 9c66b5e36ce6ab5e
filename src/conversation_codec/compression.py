"""zstd compression of record payloads (FORMAT.md §5).

A payload is compressed only when that makes it smaller; the envelope flag says which.
Frames are written without checksum or dictionary id (the Fernet HMAC already
authenticates every byte, and the envelope names the dictionary), but with their content
size: a small frame then needs no window descriptor, so the size costs ~0.2 bytes a record,
and it lets a reader allocate exactly the output, bounded before decompressing. (Without it
zstandard must reserve the whole ``MAX_MESSAGE_BYTES`` bound on every call: 64 MiB and
~15 us per record, measured.)
"""

from __future__ import annotations

from collections.abc import Sequence

import zstandard

from .format.record import MAX_MESSAGE_BYTES

__all__ = [
    "COMPRESSION_LEVEL",
    "DICTIONARY_BYTES",
    "DICTIONARY_LEVEL",
    "TRAIN_AFTER",
    "Compressor",
    "train_dictionary",
]

COMPRESSION_LEVEL = 3  # zstd level without a dictionary: higher levels gain ~1% on chat records
# With a dictionary, small records compress 3-5x better and a higher level pays a little:
# measured on the corpus (8 KiB dictionary), level 7 gave the smallest output (level 9: +5%,
# level 12: +10% and twice the time) at ~3.8 us per record.
DICTIONARY_LEVEL = 7
DICTIONARY_BYTES = 8 * 1024  # bytes: beat 4 KiB and 16 KiB when trained on ~512 chat messages
TRAIN_AFTER = 512  # messages in a log before its dictionary is trained from them
_MIN_COMPRESSIBLE = 24  # bytes: below this a zstd frame header costs more than it saves


def train_dictionary(samples: Sequence[bytes], size: int = DICTIONARY_BYTES) -> bytes | None:
    """Train a zstd dictionary from message JSON samples; None when zstd cannot.

    zstd needs enough distinct samples to train (a few hundred messages); too few, or too
    uniform, and it refuses, which is no error here: the log simply stays dictionary-less.
    """
    try:
        return zstandard.train_dictionary(size, list(samples)).as_bytes()
    except zstandard.ZstdError:
        return None


class Compressor:
    """Reusable zstd contexts, with or without a dictionary (not thread-safe; the codec
    serialises use)."""

    __slots__ = ("_cctx", "_dctx")

    def __init__(self, level: int = COMPRESSION_LEVEL, dictionary: bytes | None = None) -> None:
        zdict = None if dictionary is None else zstandard.ZstdCompressionDict(dictionary)
        if zdict is not None:
            zdict.precompute_compress(level=level)
        self._cctx = zstandard.ZstdCompressor(
            level=level,
            dict_data=zdict,
            write_checksum=False,
            write_content_size=True,
            write_dict_id=False,
        )
        self._dctx = zstandard.ZstdDecompressor(dict_data=zdict)

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
        size = zstandard.frame_content_size(payload)
        if size > MAX_MESSAGE_BYTES:
            raise zstandard.ZstdError(f"frame claims {size} bytes, over the record limit")
        if size < 0:  # a frame without its size (unknown): bound the output instead
            return self._dctx.decompress(payload, max_output_size=MAX_MESSAGE_BYTES)
        return self._dctx.decompress(payload)

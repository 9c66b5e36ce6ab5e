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

import threading
from collections.abc import Sequence
from typing import Any

import zstandard

from .format.record import MAX_MESSAGE_BYTES

__all__ = [
    "COMPRESSION_LEVEL",
    "DICTIONARY_BYTES",
    "REWRITE_DICTIONARY_BYTES",
    "REWRITE_SAMPLES",
    "TRAIN_AFTER",
    "Compressor",
    "compressed_sizes",
    "train_dictionary",
]

COMPRESSION_LEVEL = 3  # zstd level without a dictionary: higher levels gain ~1% on chat records
# With a dictionary, small records compress 3-5x better, and searching the dictionary harder
# pays a little. Level 7 (lazy) was the smallest of the levels (level 9: +5%, 12: +10%) but
# cost ~3.7 us a corpus record, a tenth of an append. A greedy parse with a deep search finds
# the same matches for half that (issue 15, measured on the corpus replayed as one
# conversation, 8 KiB append dictionary: payloads 0.2100x the JSON at 1.6 us against level
# 7's 0.2105x at 3.6 us; level 3: 0.239x at 1.0 us, level 4: 0.215x at 1.4 us; a rewrite's
# 16 KiB dictionary: 0.195x against level 7's 0.215x; synthetic 1-20 KB answers: 0.441x
# against 0.444x, at half the time). Records up to 1 KiB (most chat messages; the corpus
# median is 110 bytes) get a 16 KiB window, which reaches the whole dictionary, and 8 K-entry
# tables: larger ones found nothing more in them, and between other work (the caches cold)
# a record cost 4.5 us with 32 K and 64 K entries against 3.8 us. Longer records get a 1 MiB
# window and those larger tables, without which a 1-20 KB answer took twice as long.
# Any parameters write standard zstd frames: readers are unaffected (FORMAT.md §5.2).
_DICT_PARAMS = {"strategy": zstandard.STRATEGY_GREEDY, "search_log": 8, "min_match": 5}
_SHORT_MAX = 1024  # bytes of JSON compressed with the _SHORT parameters
_SHORT = {"window_log": 14, "hash_log": 13, "chain_log": 13}
_LONG = {"window_log": 20, "hash_log": 15, "chain_log": 16}
DICTIONARY_BYTES = 8 * 1024  # bytes: beat 4 KiB and 16 KiB when trained on ~512 chat messages
TRAIN_AFTER = 512  # messages in a log before its dictionary is trained from them
# FORMAT.md §5.3: a rewrite of >= TRAIN_AFTER messages trains on a sample of them all (every
# k-th message, up to REWRITE_SAMPLES) a dictionary twice the appender's size.
REWRITE_DICTIONARY_BYTES = 2 * DICTIONARY_BYTES
REWRITE_SAMPLES = 4 * TRAIN_AFTER
_MIN_COMPRESSIBLE = 24  # bytes: below this a zstd frame header costs more than it saves
_PROBE = b'{"role":"user","content":"probe"}'  # compressed once to load a dictionary


def train_dictionary(samples: Sequence[bytes], size: int = DICTIONARY_BYTES) -> bytes | None:
    """Train a zstd dictionary from message JSON samples; None when zstd cannot.

    zstd needs enough distinct samples to train (a few hundred messages); too few, or too
    uniform, and it refuses, which is no error here: the log simply stays dictionary-less.
    """
    try:
        return zstandard.train_dictionary(size, list(samples)).as_bytes()
    except zstandard.ZstdError:
        return None


def compressed_sizes(samples: Sequence[bytes], dictionary: bytes | None = None) -> list[int]:
    """Return the payload size each sample is stored with, without a dictionary (level
    ``COMPRESSION_LEVEL``) or with ``dictionary``: its zstd frame, or the sample itself when
    that is not smaller."""
    zstd = Compressor(dictionary=dictionary)
    return [len(zstd.compress(sample)[0]) for sample in samples]


_PLAIN = threading.local()


def _plain_dctx() -> Any:
    """This thread's zstd decompression context without a dictionary, shared by every
    ``Compressor`` without one in the thread. Building one per log cost ~7.5 us, and more in
    cache misses: a fifth of reopening a short conversation and reading its tail (issue 15).
    Sharing is safe within a thread: zstandard resets a context at the start of every
    ``decompress`` (nothing of one frame's output serves the next), and calls in one thread
    never overlap; threads never share one."""
    try:
        return _PLAIN.dctx
    except AttributeError:
        _PLAIN.dctx = zstandard.ZstdDecompressor()
        return _PLAIN.dctx


def _dict_compressor(dictionary: bytes, sizes: dict[str, int]) -> Any:
    params = zstandard.ZstdCompressionParameters(
        **sizes,
        write_content_size=1,
        write_checksum=0,
        write_dict_id=0,
        **_DICT_PARAMS,
    )
    # Precomputed once: a dictionary loaded per call costs more than the compression.
    zdict = zstandard.ZstdCompressionDict(dictionary)
    zdict.precompute_compress(compression_params=params)
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)


class Compressor:
    """Reusable zstd contexts, with or without a dictionary (not thread-safe; the codec
    serialises use). ``level`` applies without a dictionary; with one, the parameters above.

    A dictionary is loaded as zstd's "auto" type does (FORMAT.md §5.3): at least 8 bytes
    starting with the magic ``37 a4 30 ec``, a zstd dictionary; anything else, raw content.

    :raises zstandard.ZstdError: zstd refuses ``dictionary`` (a malformed zstd dictionary).
    """

    __slots__ = ("_cctx", "_dctx", "_level", "_long", "_short_max")

    def __init__(self, level: int = COMPRESSION_LEVEL, dictionary: bytes | None = None) -> None:
        self._level = level
        self._cctx: Any
        self._long: Any
        if dictionary is None:
            # Built by the first compress(): a reader never compresses, and a context costs
            # ~8 us, a tenth of reopening a short conversation (issue 15).
            self._cctx = self._long = None
            self._short_max = MAX_MESSAGE_BYTES  # bytes a record may have for ``_cctx``
            self._dctx = None  # the thread's own (_plain_dctx)
            return
        self._cctx = _dict_compressor(dictionary, _SHORT)
        self._long = _dict_compressor(dictionary, _LONG)
        self._short_max = _SHORT_MAX
        self._dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
        # zstd loads the dictionary for decompression on the first call: load it now (~3 us),
        # so that one zstd refuses is refused here, once, and not by each record's read.
        self._dctx.decompress(self._cctx.compress(_PROBE))

    def compress(self, data: bytes) -> tuple[bytes, bool]:
        """Return ``(payload, compressed)``: the zstd frame when it is smaller, else ``data``."""
        size = len(data)
        if size < _MIN_COMPRESSIBLE:
            return data, False
        cctx = self._cctx if size <= self._short_max else self._long
        if cctx is None:
            cctx = self._cctx = self._long = zstandard.ZstdCompressor(
                level=self._level,
                write_checksum=False,
                write_content_size=True,
                write_dict_id=False,
            )
        packed = cctx.compress(data)
        if len(packed) < size:
            return packed, True
        return data, False

    @property
    def raw_decompress(self) -> Any:
        """zstandard's own ``decompress`` of this context, for a caller that has checked the
        frame's content size (1..``MAX_MESSAGE_BYTES``) as ``decompress`` does, and calls it
        as ``decompress`` then does: ``(frame, 0, False, False)``."""
        return (_plain_dctx() if self._dctx is None else self._dctx).decompress

    def decompress(self, payload: bytes | memoryview) -> bytes:
        """Inflate one payload: exactly one zstd frame, producing at most ``MAX_MESSAGE_BYTES``.

        A payload is one frame and nothing after it (FORMAT.md §5.2): zstandard would
        otherwise ignore trailing bytes, and two readers could then disagree on a record.

        :raises zstandard.ZstdError: the frame is malformed, too large, or followed by bytes.
        """
        size = zstandard.frame_content_size(payload)
        if size > MAX_MESSAGE_BYTES:
            raise zstandard.ZstdError(f"frame claims {size} bytes, over the record limit")
        if size <= 0:
            # zstandard (0.25) ignores allow_extra_data for a frame without its size and for
            # an empty one, so find the frame's end here.
            if _frame_end(payload) != len(payload):
                raise zstandard.ZstdError("bytes follow the zstd frame")
            if size < 0:  # a frame without its size (unknown): bound the output instead
                return (_plain_dctx() if self._dctx is None else self._dctx).decompress(
                    payload, max_output_size=MAX_MESSAGE_BYTES
                )
        # allow_extra_data=False, passed by position: keywords cost ~0.3 us a call.
        return (_plain_dctx() if self._dctx is None else self._dctx).decompress(
            payload, 0, False, False
        )


def _frame_end(frame: bytes | memoryview) -> int:
    """Return where the zstd frame at the start of ``frame`` ends (RFC 8878 §3.1.1).

    Walks the block headers (3 bytes each: last-block bit, type, size) as zstd's own
    ZSTD_findFrameCompressedSize does; only empty frames and frames written without their
    content size (by early versions of this library) take this path.

    :raises zstandard.ZstdError: the frame header or a block header is malformed.
    """
    pos = zstandard.frame_header_size(frame)
    checksum = frame[4] & 0x04  # Frame_Header_Descriptor: Content_Checksum_flag
    while True:
        if pos + 3 > len(frame):
            raise zstandard.ZstdError("zstd frame is truncated")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 3:
            raise zstandard.ZstdError("zstd block of the reserved type")
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
        if header & 1:
            return pos + (4 if checksum else 0)

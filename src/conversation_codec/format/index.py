"""The offset index sidecar (FORMAT.md §7): a header, then one fixed entry per record.

Entry ``k`` describes the record with seq ``k``: ``end`` is the byte offset just past
the record in the log, ``ts_us`` its timestamp. Record ``k`` spans
``[end[k-1], end[k])`` with ``end[-1]`` being the log's data start.
"""

from __future__ import annotations

import struct

__all__ = [
    "DICT_SPAN",
    "DICT_SPAN_OFFSET",
    "END_MASK",
    "ENTRY_SYNCED",
    "INDEX_ENTRY",
    "INDEX_HEADER_BYTES",
    "INDEX_MAGIC",
    "INDEX_VERSION",
    "MAX_TS_US",
    "decode_index_header",
    "encode_index_header",
]

INDEX_MAGIC = b"\x89CCX\r\n\x1a\n"
INDEX_VERSION = 2  # FORMAT.md §7: version 2 added ENTRY_SYNCED; version 1 files still load
INDEX_ENTRY = struct.Struct("<Qq")  # FORMAT.md §7: end (u64, top bits ENTRY_SYNCED), ts_us (i64)
# FORMAT.md §7: the log was synced before this entry was written. Both top bits, so that no
# single flipped bit turns an ordinary entry into evidence (one set alone: a garbled entry).
ENTRY_SYNCED = 0b11 << 62
END_MASK = (1 << 62) - 1  # the byte offset part of an entry's end
# FORMAT.md §7: an entry's ts_us lies in [0, MAX_TS_US), the range writers stamp records
# with (1970 up to 10000-01-01T00:00:00Z, where Python's datetime ends).
MAX_TS_US = 253_402_300_800 * 1_000_000  # microseconds
# FORMAT.md §7: magic, index_version, entry_bytes, reserved, log_id, dict_start, dict_end
_INDEX_HEADER = struct.Struct("<8sHHI16sQQ")
INDEX_HEADER_BYTES = _INDEX_HEADER.size  # 48
DICT_SPAN_OFFSET = 32  # where dict_start, dict_end sit in the header
DICT_SPAN = struct.Struct("<QQ")


def encode_index_header(log_id: bytes, dict_span: tuple[int, int] = (0, 0)) -> bytes:
    """Return the 48-byte index header for a log (``dict_span`` (0, 0): no dictionary)."""
    return _INDEX_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, INDEX_ENTRY.size, 0, log_id, *dict_span)


def decode_index_header(buf: bytes) -> tuple[bytes, tuple[int, int], int] | None:
    """Return ``(log_id, dict_span, index_version)`` of an index header, or None when it is
    not usable.

    An index is a cache: an unusable header means "rebuild", never an error.
    """
    if len(buf) < INDEX_HEADER_BYTES:
        return None
    magic, version, entry_bytes, reserved, log_id, d0, d1 = _INDEX_HEADER.unpack_from(buf)
    if (magic, entry_bytes, reserved) != (INDEX_MAGIC, INDEX_ENTRY.size, 0):
        return None
    if version not in (1, INDEX_VERSION) or d1 < d0:
        return None
    return bytes(log_id), (d0, d1), version

"""Unsigned LEB128 varints, as specified in spec/FORMAT.md §2.

Only canonical (shortest) encodings of values below ``2**35`` are accepted, so a
reader never loops or allocates on a hostile length field.
"""

from __future__ import annotations

__all__ = ["MAX_VARINT_BYTES", "decode_varint", "encode_varint"]

MAX_VARINT_BYTES = 5  # FORMAT.md §2: enough for every length and seq this format allows
_VARINT_LIMIT = 1 << (7 * MAX_VARINT_BYTES)


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer below ``2**35`` as an unsigned LEB128 varint.

    >>> encode_varint(300).hex()
    'ac02'
    """
    # Checked from the common values up (an append encodes three): the range check last.
    if 0 <= value < 0x80:
        return bytes((value,))
    if 0x80 <= value < 0x4000:  # the common record lengths and seqs: skip the loop
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if 0x4000 <= value < 0x200000:  # and every envelope's microseconds (ts_rem_us < 10**6)
        return bytes(((value & 0x7F) | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    if value < 0 or value >= _VARINT_LIMIT:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at ``pos``; return ``(value, position after it)``.

    :raises ValueError: the varint is truncated, longer than 5 bytes, or not canonical.

    >>> decode_varint(bytes.fromhex("ac02"))
    (300, 2)
    """
    # Unrolled for one to three bytes (seqs, lengths and microseconds of real records);
    # every shortest encoding of those has a non-zero last byte, so they are canonical.
    n = len(buf)
    if pos < n:
        b0 = buf[pos]
        if b0 < 0x80:
            return b0, pos + 1
        if pos + 1 < n:
            b1 = buf[pos + 1]
            if 0 < b1 < 0x80:
                return (b0 & 0x7F) | b1 << 7, pos + 2
            if b1 >= 0x80 and pos + 2 < n and 0 < buf[pos + 2] < 0x80:
                return (b0 & 0x7F) | (b1 & 0x7F) << 7 | buf[pos + 2] << 14, pos + 3
    value = 0
    shift = 0
    end = min(len(buf), pos + MAX_VARINT_BYTES)
    i = pos
    while i < end:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            if byte == 0 and i - pos > 1:
                raise ValueError("non-canonical varint")
            return value, i
        shift += 7
    raise ValueError("truncated or overlong varint")

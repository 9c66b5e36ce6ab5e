"""Pack files (FORMAT.md §18): many logs, byte for byte, behind one table of contents.

Pure bytes <-> values: ``encode_pack`` lays out a pack from its entries, ``decode_toc``
reads the table of contents back from a pack's first bytes and ``check_entry`` checks one
entry's bytes. No I/O, no crypto.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..errors import FormatError, UnsupportedVersionError

__all__ = [
    "MAX_ENTRIES",
    "PACK_HEADER_BYTES",
    "PACK_MAGIC",
    "PACK_VERSION",
    "PackEntry",
    "check_entry",
    "decode_toc",
    "encode_pack",
    "toc_bytes",
]

PACK_MAGIC = b"CCPACK"
PACK_VERSION = 1
_HEADER = struct.Struct("<6sHII")  # FORMAT.md §18.1: pack_magic, pack_version, entry_count, toc_len
PACK_HEADER_BYTES = _HEADER.size  # 16
_ID_LEN = struct.Struct("<H")  # id_len
_ENTRY = struct.Struct("<QQII")  # offset, length, entry_crc32, message_count
_CRC = struct.Struct("<I")  # toc_crc32
MAX_ENTRIES = 1_000_000
_MAX_ID_BYTES = 1024
_MAX_MESSAGES = 1 << 24


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One TOC entry: a conversation's log bytes at ``[offset, offset + length)``."""

    conversation_id: str
    offset: int
    length: int
    crc32: int
    tss: tuple[int, ...]  # every message's timestamp (µs), as P.idx would hold them


def encode_pack(
    entries: Sequence[tuple[str, bytes, Sequence[int]]], crcs: Mapping[str, int] | None = None
) -> Iterator[bytes]:
    """Yield a pack's bytes, in order: ``entries`` are ``(conversation_id, log bytes,
    timestamps)``; they are laid out sorted by id (FORMAT.md §18.1). ``crcs`` keeps the
    CRC-32 an entry had in the pack it comes from (so damage stays detectable).

    :raises ValueError: an id twice, too many entries, or an id or count out of bounds.
    """
    ordered = sorted(entries, key=lambda e: e[0].encode("utf-8"))
    if len(ordered) > MAX_ENTRIES:
        raise ValueError(f"a pack holds at most {MAX_ENTRIES} entries")
    ids = [cid.encode("utf-8") for cid, _, _ in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("a conversation id appears twice in one pack")
    toc_len = sum(
        _ID_LEN.size + len(raw) + _ENTRY.size + 8 * len(tss)
        for raw, (_, _, tss) in zip(ids, ordered, strict=True)
    )
    offset = PACK_HEADER_BYTES + toc_len + _CRC.size
    toc = bytearray(_HEADER.pack(PACK_MAGIC, PACK_VERSION, len(ordered), toc_len))
    for raw, (cid, data, tss) in zip(ids, ordered, strict=True):
        crc = zlib.crc32(data) if crcs is None or cid not in crcs else crcs[cid]
        if not 0 < len(raw) <= _MAX_ID_BYTES or len(tss) > _MAX_MESSAGES:
            raise ValueError("conversation id or message count out of a pack's bounds")
        toc += _ID_LEN.pack(len(raw)) + raw
        toc += _ENTRY.pack(offset, len(data), crc, len(tss))
        toc += struct.pack(f"<{len(tss)}q", *tss)
        offset += len(data)
    toc += _CRC.pack(zlib.crc32(toc))
    yield bytes(toc)
    for _, data, _ in ordered:
        yield data


def toc_bytes(head: bytes, size: int, name: str) -> int:
    """How many bytes of the pack hold its header, TOC and CRC (from its first 16 bytes).

    :raises UnsupportedVersionError: a newer pack version.
    :raises FormatError: not a pack, or a TOC longer than the file.
    """
    if len(head) < PACK_HEADER_BYTES or head[:6] != PACK_MAGIC:
        raise FormatError(f"{name} is not a conversation-codec pack (bad magic)")
    _, version, count, toc_len = _HEADER.unpack_from(head)
    if version > PACK_VERSION:
        raise UnsupportedVersionError(
            f"{name} is pack version {version}; this library reads up to {PACK_VERSION} — upgrade"
        )
    if version < 1 or count > MAX_ENTRIES or PACK_HEADER_BYTES + toc_len + _CRC.size > size:
        raise FormatError(f"{name}: pack header is damaged (counts beyond the file)")
    return int(PACK_HEADER_BYTES + toc_len + _CRC.size)


def decode_toc(buf: bytes, size: int, name: str) -> dict[str, PackEntry]:
    """Read the TOC of a pack of ``size`` bytes whose first ``toc_bytes()`` bytes are ``buf``.

    :raises UnsupportedVersionError: a newer pack version.
    :raises FormatError: anything else that does not follow FORMAT.md §18.1 (named ``name``).
    """
    end = toc_bytes(buf[:PACK_HEADER_BYTES], size, name)
    if len(buf) < end:
        raise FormatError(f"{name}: pack is truncated inside its table of contents")
    if zlib.crc32(buf[: end - _CRC.size]) != _CRC.unpack_from(buf, end - _CRC.size)[0]:
        raise FormatError(f"{name}: pack table of contents is damaged (CRC mismatch)")
    count = _HEADER.unpack_from(buf)[2]
    out: dict[str, PackEntry] = {}
    pos, expect, last = PACK_HEADER_BYTES, end, b""
    try:
        for _ in range(count):
            (n,) = _ID_LEN.unpack_from(buf, pos)
            raw = bytes(buf[pos + 2 : pos + 2 + n])
            pos += 2 + n
            offset, length, crc, messages = _ENTRY.unpack_from(buf, pos)
            pos += _ENTRY.size
            if not 0 < n == len(raw) <= _MAX_ID_BYTES or raw <= last or offset != expect:
                raise ValueError("entry out of order")
            if messages > _MAX_MESSAGES or pos + 8 * messages > end - _CRC.size:
                raise ValueError("timestamps beyond the table")
            tss = struct.unpack_from(f"<{messages}q", buf, pos)
            pos += 8 * messages
            out[raw.decode("utf-8")] = PackEntry(raw.decode("utf-8"), offset, length, crc, tss)
            expect, last = offset + length, raw
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{name}: pack table of contents is malformed ({exc})") from None
    if pos != end - _CRC.size or expect != size:
        raise FormatError(f"{name}: pack entries do not fill the file (truncated or padded)")
    return out


def check_entry(entry: PackEntry, data: bytes) -> bool:
    """Whether ``data`` are the entry's bytes as packed (length and CRC-32)."""
    return len(data) == entry.length and zlib.crc32(data) == entry.crc32

"""Log headers: the binary header of a sealed log and the first line of a plain log.

FORMAT.md §3 (sealed) and §6 (plain). Pure bytes <-> values: the header MAC is
computed and checked by ``crypto``; this module only says which bytes it covers.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import msgspec

from ..errors import FormatError, UnsupportedVersionError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_MAC_BYTES",
    "LOG_ID_BYTES",
    "LOG_MAGIC",
    "PLAIN_HEADER_PREFIX",
    "SEALED_HEADER_BYTES",
    "Kdf",
    "LogKind",
    "PlainHeader",
    "SealedHeader",
    "decode_plain_header",
    "decode_sealed_header",
    "encode_plain_header",
    "encode_sealed_header",
    "sniff_log",
]

FORMAT_VERSION = 1  # FORMAT.md §1: the only major version this library reads and writes
LOG_MAGIC = b"\x89CCL\r\n\x1a\n"  # FORMAT.md §3: PNG-style, catches text-mode mangling
LOG_ID_BYTES = 16
KDF_SALT_BYTES = 16
HEADER_MAC_BYTES = 32
# FORMAT.md §3: magic, format_version, kdf, kdf_log2_n, kdf_r, kdf_p, header_flags, log_id, kdf_salt
_SEALED_FIXED = struct.Struct("<8sHBBBBH16s16s")
SEALED_HEADER_BYTES = _SEALED_FIXED.size + HEADER_MAC_BYTES  # 80
PLAIN_HEADER_PREFIX = b'{"conversation_codec":'  # FORMAT.md §6: first bytes of every plain log
MAX_PLAIN_HEADER_BYTES = 4096  # a plain header line longer than this is not ours


class LogKind(enum.Enum):
    """What the first bytes of a file say it is."""

    EMPTY = "empty"
    SEALED = "sealed"
    PLAIN = "plain"
    FOREIGN = "foreign"


class Kdf(enum.IntEnum):
    """How the master key is obtained (FORMAT.md §4)."""

    KEY = 0  # a Fernet key given by the caller
    SCRYPT = 1  # scrypt over a password, parameters in the header


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The fields of a sealed log's header (FORMAT.md §3)."""

    log_id: bytes
    kdf: Kdf = Kdf.KEY
    kdf_log2_n: int = 0
    kdf_r: int = 0
    kdf_p: int = 0
    kdf_salt: bytes = bytes(KDF_SALT_BYTES)
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class PlainHeader:
    """The fields of a plain log's header line (FORMAT.md §6)."""

    log_id: bytes
    format_version: int = FORMAT_VERSION


def sniff_log(prefix: bytes) -> LogKind:
    """Classify a file by its first bytes (at least 22 of them, when it has them).

    >>> sniff_log(LOG_MAGIC + bytes(72))
    <LogKind.SEALED: 'sealed'>
    """
    if not prefix:
        return LogKind.EMPTY
    if prefix.startswith(LOG_MAGIC):
        return LogKind.SEALED
    if prefix.startswith(PLAIN_HEADER_PREFIX):
        return LogKind.PLAIN
    return LogKind.FOREIGN


def encode_sealed_header(header: SealedHeader) -> bytes:
    """Return the 48 header bytes that the header MAC covers (the MAC is appended by crypto)."""
    if len(header.log_id) != LOG_ID_BYTES or len(header.kdf_salt) != KDF_SALT_BYTES:
        raise ValueError("log_id and kdf_salt must be 16 bytes")
    return _SEALED_FIXED.pack(
        LOG_MAGIC,
        header.format_version,
        int(header.kdf),
        header.kdf_log2_n,
        header.kdf_r,
        header.kdf_p,
        0,
        header.log_id,
        header.kdf_salt,
    )


def decode_sealed_header(buf: bytes) -> tuple[SealedHeader, bytes, bytes]:
    """Parse a sealed header; return ``(header, covered_bytes, header_mac)``.

    The caller MUST verify ``header_mac`` over ``covered_bytes`` before trusting any field.

    :raises UnsupportedVersionError: the log was written by a newer major version.
    :raises FormatError: the bytes are not a sealed header.
    """
    if len(buf) < SEALED_HEADER_BYTES:
        raise FormatError("sealed header is truncated")
    magic, version, kdf, log2_n, r, p, flags, log_id, salt = _SEALED_FIXED.unpack_from(buf)
    if magic != LOG_MAGIC:
        raise FormatError("bad magic: not a sealed conversation-codec log")
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"log is format v{version}; this library reads up to v{FORMAT_VERSION} — upgrade "
            "conversation-codec"
        )
    if version < 1 or flags != 0 or kdf not in (Kdf.KEY, Kdf.SCRYPT):
        raise FormatError("sealed header has invalid fields")
    header = SealedHeader(log_id, Kdf(kdf), log2_n, r, p, salt, version)
    covered = bytes(buf[: _SEALED_FIXED.size])
    return header, covered, bytes(buf[_SEALED_FIXED.size : SEALED_HEADER_BYTES])


class _PlainHeaderLine(msgspec.Struct, forbid_unknown_fields=False):
    conversation_codec: int
    log_id: str


_plain_header_decoder = msgspec.json.Decoder(_PlainHeaderLine)


def encode_plain_header(header: PlainHeader) -> bytes:
    r"""Return the header line of a plain log, newline included.

    >>> encode_plain_header(PlainHeader(bytes(16)))
    b'{"conversation_codec":1,"log_id":"00000000000000000000000000000000"}\n'
    """
    return b'%s%d,"log_id":"%s"}\n' % (
        PLAIN_HEADER_PREFIX,
        header.format_version,
        header.log_id.hex().encode(),
    )


def decode_plain_header(line: bytes) -> PlainHeader:
    """Parse the first line of a plain log (without or with its newline).

    :raises UnsupportedVersionError: written by a newer major version.
    :raises FormatError: not a valid header line.
    """
    try:
        fields = _plain_header_decoder.decode(line)
        log_id = bytes.fromhex(fields.log_id)
    except (msgspec.DecodeError, ValueError):
        raise FormatError("plain log header line is not valid") from None
    if fields.conversation_codec > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"log is format v{fields.conversation_codec}; this library reads up to "
            f"v{FORMAT_VERSION} — upgrade conversation-codec"
        )
    if fields.conversation_codec < 1 or len(log_id) != LOG_ID_BYTES:
        raise FormatError("plain log header line has invalid fields")
    return PlainHeader(log_id, fields.conversation_codec)

"""Log headers: the binary header of a sealed log and the first line of a plain log.

FORMAT.md §3 (sealed) and §6 (plain). Pure bytes <-> values: the header MAC and the
binding MAC (§4.2) are computed and checked by ``crypto``; this module only says which bytes
they cover.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from dataclasses import dataclass

import msgspec

from ..errors import FormatError, UnsupportedVersionError

__all__ = [
    "BINDING_MAC_BYTES",
    "FLAG_BOUND",
    "FORMAT_VERSION",
    "HEADER_MAC_BYTES",
    "LOG_ID_BYTES",
    "LOG_MAGIC",
    "PLAIN_HEADER_PREFIX",
    "SEALED_HEADER_BYTES",
    "UNBOUND_VERSION",
    "ContextDigest",
    "Kdf",
    "LogKind",
    "PlainHeader",
    "SealedHeader",
    "context_digest",
    "decode_plain_header",
    "decode_sealed_header",
    "encode_plain_header",
    "encode_sealed_header",
    "sniff_log",
]

# FORMAT.md §12: the newest major version this library reads and writes. Version 1 is still
# written for a log bound to no context (older readers read it); version 2 adds the binding.
FORMAT_VERSION = 2
UNBOUND_VERSION = 1
LOG_MAGIC = b"\x89CCL\r\n\x1a\n"  # FORMAT.md §3: PNG-style, catches text-mode mangling
LOG_ID_BYTES = 16
KDF_SALT_BYTES = 16
HEADER_MAC_BYTES = 32
# FORMAT.md §3: magic, format_version, kdf, kdf_log2_n, kdf_r, kdf_p, header_flags, log_id, kdf_salt
_SEALED_FIXED = struct.Struct("<8sHBBBBH16s16s")
SEALED_HEADER_BYTES = _SEALED_FIXED.size + HEADER_MAC_BYTES  # 80
BINDING_MAC_BYTES = 32  # FORMAT.md §3.1: follows the header of a bound log (bytes 80..111)
FLAG_BOUND = 0x0001  # FORMAT.md §3.1 header_flags bit 0 (version 2): the log has a context
_KNOWN_FLAGS = {1: 0, 2: FLAG_BOUND}  # header_flags bits each format_version defines
_HEX = re.compile(r"[0-9a-f]*")  # FORMAT.md §6: lowercase hex digits only
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
    format_version: int = UNBOUND_VERSION
    header_flags: int = 0

    @property
    def bound(self) -> bool:
        """True when a ``binding_mac`` follows the header (FORMAT.md §4.2)."""
        return bool(self.header_flags & FLAG_BOUND)

    @property
    def size(self) -> int:
        """Bytes from the start of the file to the first record (``data_start``)."""
        return SEALED_HEADER_BYTES + (BINDING_MAC_BYTES if self.bound else 0)

    def check_flags(self) -> None:
        """Refuse ``header_flags`` bits this header's version does not define.

        Called once the header MAC has authenticated the header (FORMAT.md §9.1): a flipped
        bit is then already a ``DecryptionError``, so what is left was written on purpose.

        :raises UnsupportedVersionError: a bit this library does not know.
        """
        unknown = self.header_flags & ~_KNOWN_FLAGS.get(self.format_version, 0)
        if unknown:
            raise UnsupportedVersionError(
                f"log header sets header_flags 0x{unknown:04x}, unknown to format "
                f"v{self.format_version} as this library reads it — upgrade conversation-codec"
            )


@dataclass(frozen=True, slots=True)
class PlainHeader:
    """The fields of a plain log's header line (FORMAT.md §6)."""

    log_id: bytes
    format_version: int = UNBOUND_VERSION
    context_sha256: bytes | None = None  # FORMAT.md §6 (version 2): SHA-256 of the context


@dataclass(frozen=True, slots=True)
class ContextDigest:
    """A context known by its digest alone, ``SHA-256(UTF-8(context))`` (FORMAT.md §4.2).

    A store log under a hashed name carries that digest of its id in the name, but not the
    id (``storage.file.store``): opened with this as ``context=``, it is authenticated as
    bound to the id the name digests, and a rewrite binds it to the same id again.
    """

    sha256: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, bytes) or len(self.sha256) != 32:
            raise ValueError("ContextDigest.sha256 must be 32 bytes (a SHA-256 digest)")


def context_digest(context: str | ContextDigest) -> bytes:
    """Return SHA-256 of a context's UTF-8 bytes: what a log is bound to (FORMAT.md §4.2).

    >>> context_digest("alice").hex()[:16]
    '2bd806c97f0e00af'

    :raises TypeError: ``context`` is not a str.
    :raises ValueError: it is empty, or not valid Unicode (a lone surrogate).
    """
    if isinstance(context, ContextDigest):
        return context.sha256
    if not isinstance(context, str):
        raise TypeError(
            f"context must be a str (e.g. a conversation id), not {type(context).__name__}"
        )
    if not context:
        raise ValueError("context must be a non-empty str (e.g. a conversation id), or None")
    try:
        raw = context.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("context is not valid Unicode (lone surrogate)") from None
    return hashlib.sha256(raw).digest()


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
        header.header_flags,
        header.log_id,
        header.kdf_salt,
    )


def decode_sealed_header(buf: bytes) -> tuple[SealedHeader, bytes, bytes]:
    """Parse a sealed header; return ``(header, covered_bytes, header_mac)``.

    Only what is needed to derive the keys is checked here (FORMAT.md §9.1 steps 1-3):
    the caller MUST then verify ``header_mac`` over ``covered_bytes``, and only after that
    call ``header.check_flags()`` and check the ``binding_mac`` of a bound header.

    :raises UnsupportedVersionError: a newer major version, or an unknown ``kdf``.
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
    if version < 1:
        raise FormatError("sealed header has invalid fields: format_version 0")
    if kdf not in (Kdf.KEY, Kdf.SCRYPT):
        # FORMAT.md §12: new kdf values are how new key sources arrive.
        raise UnsupportedVersionError(
            f"log header names kdf {kdf}, which this library does not know (a newer writer, "
            "or a damaged header) — upgrade conversation-codec"
        )
    header = SealedHeader(log_id, Kdf(kdf), log2_n, r, p, salt, version, flags)
    covered = bytes(buf[: _SEALED_FIXED.size])
    return header, covered, bytes(buf[_SEALED_FIXED.size : SEALED_HEADER_BYTES])


class _PlainHeaderLine(msgspec.Struct, forbid_unknown_fields=True):
    conversation_codec: int
    log_id: str
    context_sha256: str | None = None


class _PlainHeaderVersion(msgspec.Struct):  # read first: a newer version may add keys
    conversation_codec: int


_plain_header_decoder = msgspec.json.Decoder(_PlainHeaderLine)
_plain_version_decoder = msgspec.json.Decoder(_PlainHeaderVersion)


def encode_plain_header(header: PlainHeader) -> bytes:
    r"""Return the header line of a plain log, newline included.

    >>> encode_plain_header(PlainHeader(bytes(16)))
    b'{"conversation_codec":1,"log_id":"00000000000000000000000000000000"}\n'
    """
    if header.context_sha256 is None:
        return b'%s%d,"log_id":"%s"}\n' % (
            PLAIN_HEADER_PREFIX,
            header.format_version,
            header.log_id.hex().encode(),
        )
    return b'%s%d,"log_id":"%s","context_sha256":"%s"}\n' % (
        PLAIN_HEADER_PREFIX,
        header.format_version,
        header.log_id.hex().encode(),
        header.context_sha256.hex().encode(),
    )


def decode_plain_header(line: bytes) -> PlainHeader:
    """Parse the first line of a plain log (without or with its newline).

    Strict (FORMAT.md §6): exactly the keys its version defines, ``log_id`` as 32 lowercase
    hex digits, ``context_sha256`` (version 2 only) as 64.

    :raises UnsupportedVersionError: written by a newer major version.
    :raises FormatError: not a valid header line.
    """
    try:
        version = _plain_version_decoder.decode(line).conversation_codec
    except msgspec.DecodeError:
        raise FormatError("plain log header line is not valid") from None
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"log is format v{version}; this library reads up to "
            f"v{FORMAT_VERSION} — upgrade conversation-codec"
        )
    try:
        fields = _plain_header_decoder.decode(line)
    except msgspec.DecodeError:
        raise FormatError("plain log header line is not valid") from None
    digest = fields.context_sha256
    if (
        version < 1
        or len(fields.log_id) != 2 * LOG_ID_BYTES
        or not _HEX.fullmatch(fields.log_id)
        or (digest is not None and (version < 2 or len(digest) != 64 or not _HEX.fullmatch(digest)))
    ):
        raise FormatError("plain log header line has invalid fields")
    return PlainHeader(
        bytes.fromhex(fields.log_id), version, None if digest is None else bytes.fromhex(digest)
    )

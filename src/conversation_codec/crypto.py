"""Keys, key lists (rotation), per-log key derivation, and record sealing (FORMAT.md §4).

Every record is one Fernet token. The Fernet key of a log is not the caller's key but
one derived from it and the log's random ``log_id`` with HKDF-SHA256, so a record
copied in from another log never authenticates (the seq inside binds its position).
This module never opens a file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import BindingError, DecryptionError, FormatError
from .format.header import (
    BINDING_MAC_BYTES,
    LOG_ID_BYTES,
    SealedHeader,
    encode_sealed_header,
)

__all__ = [
    "SCRYPT_LOG2_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "KeyInput",
    "Keyring",
    "LogCipher",
    "generate_key",
    "new_log_id",
    "new_salt",
    "password_master",
]

KeyInput = str | bytes | Sequence[str | bytes]
_HKDF_INFO = b"conversation-codec/1 log keys"  # FORMAT.md §4
_MASTER_KEY_BYTES = 32
_KEY_SHAPE = re.compile(rb"[A-Za-z0-9_-]{43}=")
_FERNET_VERSION = b"\x80"


def generate_key() -> str:
    """Return a new random Fernet key (urlsafe base64 text) for ``encryption_key=``.

    >>> len(generate_key())
    44
    """
    return Fernet.generate_key().decode("ascii")


def new_log_id() -> bytes:
    """Return a fresh random 16-byte log id."""
    return os.urandom(LOG_ID_BYTES)


def _parse_key(key: str | bytes) -> bytes:
    if not isinstance(key, (str, bytes)):
        raise TypeError(
            f"encryption key must be str or bytes (a Fernet key), not {type(key).__name__}"
        )
    text = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    # urlsafe_b64decode skips stray characters, so check the exact shape first: 43
    # alphabet characters and one "=" (a Fernet key is 32 bytes).
    raw = base64.urlsafe_b64decode(text) if _KEY_SHAPE.fullmatch(text) else b""
    if len(raw) != _MASTER_KEY_BYTES:
        # Say nothing about the key itself: it may be a near-miss of a real secret.
        raise ValueError(
            "encryption key is not a Fernet key (32 bytes, urlsafe base64); "
            "create one with conversation_codec.generate_key()"
        )
    return raw


class Keyring:
    """The caller's master keys: the first seals new records, all open old ones."""

    __slots__ = ("_masters",)

    def __init__(self, masters: Sequence[bytes]) -> None:
        if not masters:
            raise ValueError("a key list must hold at least one key")
        self._masters = tuple(masters)

    @classmethod
    def from_input(cls, key: KeyInput) -> Keyring:
        """Parse ``encryption_key=`` as given by a caller (one key or a list of keys)."""
        if isinstance(key, (str, bytes)):
            return cls([_parse_key(key)])
        return cls([_parse_key(k) for k in key])

    @property
    def masters(self) -> tuple[bytes, ...]:
        """The 32-byte master keys, sealing key first."""
        return self._masters

    def __repr__(self) -> str:  # never show key material
        return f"<Keyring of {len(self._masters)} key(s)>"


# FORMAT.md §4.1: scrypt cost for new logs (~32 MiB and ~0.1 s per derivation), and the
# bounds a reader enforces *before* deriving: the header MAC cannot be checked until the key
# exists, so a hostile header must not be able to demand gigabytes of memory.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
_SCRYPT_MAX_MEMORY = 256 * 1024 * 1024  # bytes: 128 * r * N


def new_salt() -> bytes:
    """Return a fresh random 16-byte scrypt salt."""
    return os.urandom(16)


def password_master(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    """Derive a 32-byte master key from a password with scrypt (FORMAT.md §4.1).

    :raises FormatError: the parameters are outside what this library accepts.
    """
    if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16) or (
        128 * r * (1 << log2_n) > _SCRYPT_MAX_MEMORY
    ):
        raise FormatError("scrypt parameters in the log header are out of bounds")
    kdf = Scrypt(salt=salt, length=_MASTER_KEY_BYTES, n=1 << log2_n, r=r, p=p)
    return kdf.derive(password.encode("utf-8"))


class RecordKey:
    """One log's Fernet key, sealing and opening tokens as FORMAT.md §5.1 stores them.

    This is the Fernet construction (spec version 0x80: AES-128-CBC with PKCS7, then
    HMAC-SHA256 over version, timestamp, IV and ciphertext) built from the same primitives
    ``cryptography.fernet.Fernet`` uses, working on raw token bytes: the Fernet class
    speaks base64 only, which would cost an encode and a decode per record for bytes that
    are stored raw. tests/test_crypto.py proves tokens interoperate with the Fernet class
    in both directions.
    """

    __slots__ = ("_aes", "_signing")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a Fernet key is 32 bytes")
        self._signing = key[:16]
        self._aes = algorithms.AES(key[16:])

    def seal(self, plain: bytes, ts_seconds: int) -> bytes:
        """Return the Fernet token for ``plain`` without its version byte."""
        pad = 16 - len(plain) % 16
        iv = os.urandom(16)
        encryptor = Cipher(self._aes, modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plain + bytes((pad,)) * pad) + encryptor.finalize()
        signed = _FERNET_VERSION + ts_seconds.to_bytes(8, "big") + iv + ciphertext
        return signed[1:] + hmac.digest(self._signing, signed, "sha256")

    def open(self, body: bytes) -> bytes | None:
        """Authenticate and decrypt a stored body; None when it does not authenticate."""
        if len(body) < 72 or (len(body) - 56) % 16:
            return None
        # hmac.digest is OpenSSL's one-shot HMAC: no Python-level object per record.
        mac = hmac.digest(self._signing, _FERNET_VERSION + body[:-32], "sha256")
        if not hmac.compare_digest(mac, body[-32:]):
            return None
        view = memoryview(body)
        decryptor = Cipher(self._aes, modes.CBC(body[8:24])).decryptor()
        padded = decryptor.update(view[24:-32]) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= 16 or padded[-pad:] != bytes((pad,)) * pad:
            return None  # authenticated yet badly padded: a buggy or hostile key holder
        return padded[:-pad]

    def __repr__(self) -> str:
        return "<RecordKey>"


def _derive(master: bytes, log_id: bytes) -> tuple[RecordKey, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=log_id, info=_HKDF_INFO).derive(master)
    return RecordKey(okm[:32]), okm[32:]


def _mac(mac_key: bytes, covered: bytes) -> bytes:
    return hmac.new(mac_key, covered, hashlib.sha256).digest()


def _check_binding(
    mac_key: bytes, header: bytes, binding: bytes | None, binding_mac: bytes
) -> None:
    """Check a bound log's ``binding_mac`` (FORMAT.md §4.2), after its header MAC held."""
    if len(binding_mac) != BINDING_MAC_BYTES:
        raise FormatError("sealed header is truncated: a bound header lacks its binding_mac")
    if binding is None:
        raise BindingError(
            "this log is bound to a context (a conversation id) and none was given: open it "
            "with context= set to the id it was written under (ConversationStore does this)"
        )
    if not hmac.compare_digest(_mac(mac_key, header + binding), binding_mac):
        raise BindingError(
            "this log belongs to another context: the key opens it, but it was written for "
            "another conversation id (copied, swapped or renamed from elsewhere); nothing "
            "was read or changed"
        )


class LogCipher:
    """Seal and unseal the records of one sealed log.

    ``unseal_count`` counts every record authentication attempt that succeeded; tests and
    benchmarks read it to prove how many records an operation decrypted.
    """

    __slots__ = ("_openers", "_sealer", "unseal_count")

    def __init__(self, sealer: RecordKey, openers: Sequence[RecordKey]) -> None:
        self._sealer = sealer
        self._openers = list(openers)
        self.unseal_count = 0

    @classmethod
    def create(
        cls, keyring: Keyring, header: SealedHeader, *, binding: bytes | None = None
    ) -> tuple[LogCipher, bytes]:
        """Derive the keys of a new log; return the cipher and the full header bytes.

        ``binding``: the context digest of a bound header (``header.bound``), whose
        ``binding_mac`` then follows the 80 header bytes (FORMAT.md §4.2).
        """
        if header.bound != (binding is not None):
            raise ValueError("a bound header needs a binding, and only a bound header takes one")
        covered = encode_sealed_header(header)
        fernets = [_derive(m, header.log_id) for m in keyring.masters]
        first, mac_key = fernets[0]
        raw = covered + _mac(mac_key, covered)
        if binding is not None:
            raw += _mac(mac_key, raw + binding)
        return cls(first, [f for f, _ in fernets]), raw

    @classmethod
    def open(
        cls,
        keyring: Keyring,
        header: SealedHeader,
        covered: bytes,
        header_mac: bytes,
        *,
        binding: bytes | None = None,
        binding_mac: bytes = b"",
    ) -> LogCipher:
        """Derive the keys of an existing log: check the header MAC, then the header's flags,
        then (for a bound header) its binding to ``binding`` (FORMAT.md §9.1).

        ``binding`` is the context digest the caller expects; an unbound header accepts any
        (it binds when the log is next rewritten).

        :raises DecryptionError: no key in the ring authenticates the header.
        :raises UnsupportedVersionError: the authentic header sets flags unknown here.
        :raises BindingError: the header is bound, to another context or none was given.
        """
        fernets = [_derive(m, header.log_id) for m in keyring.masters]
        macs = [_mac(mk, covered) for _, mk in fernets]
        matching = [
            (f, mk)
            for (f, mk), mac in zip(fernets, macs, strict=True)
            if hmac.compare_digest(mac, header_mac)
        ]
        if not matching:
            raise DecryptionError(
                "wrong key or password: nothing given opens this log (or its header was modified)"
            )
        header.check_flags()
        if header.bound:
            _check_binding(matching[0][1], covered + header_mac, binding, binding_mac)
        matching_fernets = [f for f, _ in matching]
        # Records written under a rotated-in first key and under the header's key both open.
        openers = [fernets[0][0], *[f for f in matching_fernets if f is not fernets[0][0]]]
        openers += [f for f, _ in fernets if f not in openers]
        return cls(fernets[0][0], openers)

    def seal(self, envelope: bytes, ts_seconds: int) -> bytes:
        """Encrypt one envelope; return the stored body (the token minus its version byte)."""
        return self._sealer.seal(envelope, ts_seconds)

    def unseal(self, body: bytes) -> tuple[bytes, int]:
        """Authenticate and decrypt one body; return ``(envelope, token_seconds)``.

        :raises InvalidToken: no key opens it (the caller turns this into a library error).
        """
        for i, opener in enumerate(self._openers):
            plain = opener.open(body)
            if plain is None:
                continue
            if i:  # keep the key that worked first: runs of records share a key
                self._openers.insert(0, self._openers.pop(i))
            self.unseal_count += 1
            return plain, int.from_bytes(body[:8], "big")
        raise InvalidToken

    def __repr__(self) -> str:
        return f"<LogCipher with {len(self._openers)} key(s)>"


__all__ += ["InvalidToken"]

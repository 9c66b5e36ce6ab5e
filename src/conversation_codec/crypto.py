"""Keys, key lists (rotation), per-log key derivation, and record sealing (FORMAT.md §4).

Every record is one Fernet token. The Fernet key of a log is not the caller's key but
one derived from it and the log's random ``log_id`` with HKDF-SHA256, so a record
copied in from another log never authenticates (the seq inside binds its position).
This module never opens a file.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, Union

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import (
    BindingError,
    DecryptionError,
    FormatError,
    InvalidKeyError,
    KdfParameterError,
    KeyTypeError,
)
from .format.header import (
    BINDING_MAC_BYTES,
    LOG_ID_BYTES,
    SealedHeader,
    encode_sealed_header,
)
from .opening import TokenOpener

__all__ = [
    "SCRYPT_LOG2_N",
    "SCRYPT_MAX_MEMORY",
    "SCRYPT_MAX_WORK",
    "SCRYPT_MIN_LOG2_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "InvalidToken",
    "KeyInput",
    "Keyring",
    "LogCipher",
    "check_scrypt_params",
    "generate_key",
    "hkdf_sha256_64",
    "new_log_id",
    "new_salt",
    "password_master",
]

KeyInput = Union[str, bytes, Sequence[str | bytes], "Keyring"]  # a Keyring: parsed once
_HKDF_INFO = b"conversation-codec/1 log keys"  # FORMAT.md §4
_KWI_INFO = b"conversation-codec/1 keyword index"  # FORMAT.md §17.2
_MASTER_KEY_BYTES = 32
_KEY_SHAPE = re.compile(rb"[A-Za-z0-9_-]{43}=")
_FERNET_VERSION = b"\x80"
_PADDING = [bytes((16 - n,)) * (16 - n) for n in range(16)]  # PKCS7, by length mod 16


def generate_key() -> str:
    """Return a new random Fernet key (urlsafe base64 text) for ``encryption_key=``.

    >>> len(generate_key())
    44
    """
    return Fernet.generate_key().decode("ascii")


def new_log_id() -> bytes:
    """Return a fresh random 16-byte log id."""
    return os.urandom(LOG_ID_BYTES)


_KEY_HELP = (
    "a Fernet key: str or bytes of 44 urlsafe-base64 characters, as "
    "conversation_codec.generate_key() makes"
)


def _parse_key(key: object, where: str = "encryption key") -> bytes:
    # The messages name the type at most, never the value: it may be a near-miss of a real key.
    if not isinstance(key, (str, bytes)):
        raise KeyTypeError(f"{where} must be {_KEY_HELP}; not {type(key).__name__}")
    text = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    # urlsafe_b64decode skips stray characters, so check the exact shape first: 43
    # alphabet characters and one "=" (a Fernet key is 32 bytes).
    raw = base64.urlsafe_b64decode(text) if _KEY_SHAPE.fullmatch(text) else b""
    if len(raw) != _MASTER_KEY_BYTES:
        raise InvalidKeyError(
            f"{where} is not a Fernet key (32 bytes, urlsafe base64); "
            "create one with conversation_codec.generate_key()"
        )
    return raw


class Keyring:
    """The caller's master keys: all open logs; the first seals new logs and rewrites."""

    __slots__ = ("_masters",)

    def __init__(self, masters: Sequence[bytes]) -> None:
        if not masters:
            raise ValueError("a key list must hold at least one key")
        self._masters = tuple(masters)

    @classmethod
    def from_input(cls, key: KeyInput) -> Keyring:
        """Parse ``encryption_key=`` as given by a caller (one key or a list of keys).

        :raises KeyTypeError: not a str, bytes, or a sequence of them.
        :raises InvalidKeyError: a key is not a Fernet key, or the list is empty.
        """
        if isinstance(key, Keyring):  # parsed already (a store parses its key once: issue 15)
            return key
        if isinstance(key, (str, bytes)):
            return cls([_parse_key(key)])
        if not isinstance(key, Sequence) or isinstance(key, (bytearray, memoryview)):
            raise KeyTypeError(
                f"encryption key must be {_KEY_HELP}, or a list of such keys; "
                f"not {type(key).__name__}"
            )
        if not key:
            raise InvalidKeyError(
                "the encryption key list is empty; give at least one key (the first seals)"
            )
        where = "key {} of the encryption key list"
        return cls([_parse_key(k, where.format(i)) for i, k in enumerate(key)])

    @property
    def masters(self) -> tuple[bytes, ...]:
        """The 32-byte master keys, sealing key first."""
        return self._masters

    def __repr__(self) -> str:  # never show key material
        return f"<Keyring of {len(self._masters)} key(s)>"


# FORMAT.md §4.1: scrypt cost for new logs (~32 MiB and ~0.1 s per derivation), and the
# bounds a reader enforces *before* deriving: the header MAC cannot be checked until the key
# exists, so whoever can write the file chooses these parameters. Memory (128·N·r bytes) and
# work (N·r·p block mixes; p runs sequentially here) are both bounded, at 8x what writers
# use: an edited header costs at most ~1 s and 256 MiB per open, not 18 s or gigabytes.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
SCRYPT_MIN_LOG2_N = 10  # below this a password log would be cheap to brute-force
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024  # bytes: 128 * N * r
SCRYPT_MAX_WORK = 1 << 21  # N * r * p; writers use 2^18
_RFC7914_MAX_P_TIMES_MFLEN = (2**32 - 1) * 32  # RFC 7914 §2: p <= ((2^32-1) * hLen) / MFLen


def new_salt() -> bytes:
    """Return a fresh random 16-byte scrypt salt."""
    return os.urandom(16)


def check_scrypt_params(log2_n: int, r: int, p: int) -> None:
    """Refuse scrypt parameters outside RFC 7914 or the bounds of FORMAT.md §4.1.

    Pure arithmetic, so a hostile header is refused in microseconds, before any derivation.
    Accepted: ``log2_n >= 10``, ``r >= 1``, ``p >= 1``; RFC 7914's ``N < 2^(16·r)``,
    ``p <= (2^32-1)·32 / (128·r)`` and ``r·p < 2^30``; ``128·N·r <= SCRYPT_MAX_MEMORY``
    (256 MiB) and ``N·r·p <= SCRYPT_MAX_WORK`` (2^21), with ``N = 2^log2_n``.

    >>> check_scrypt_params(SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)  # what writers use
    >>> check_scrypt_params(20, 2, 16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    conversation_codec.errors.KdfParameterError: ... N*r*p = 33,554,432 block mixes, over ...

    :raises KdfParameterError: the parameters are refused.
    """
    shown = f"scrypt parameters in the log header are out of bounds: N=2^{log2_n}, r={r}, p={p}"
    if log2_n < SCRYPT_MIN_LOG2_N or r < 1 or p < 1:
        problem = f"are below the minimum (N >= 2^{SCRYPT_MIN_LOG2_N}, r >= 1, p >= 1)"
    elif log2_n >= 16 * r or p > _RFC7914_MAX_P_TIMES_MFLEN // (128 * r) or r * p >= 1 << 30:
        problem = "break RFC 7914 (N < 2^(16*r), p <= (2^32-1)*32/(128*r), r*p < 2^30)"
    elif 128 * r << log2_n > SCRYPT_MAX_MEMORY:
        mib = (128 * r << log2_n) >> 20
        problem = f"need 128*N*r = {mib:,} MiB, over the {SCRYPT_MAX_MEMORY >> 20} MiB allowed"
    elif r * p << log2_n > SCRYPT_MAX_WORK:
        work = r * p << log2_n
        problem = f"need N*r*p = {work:,} block mixes, over the {SCRYPT_MAX_WORK:,} allowed"
    else:
        return
    raise KdfParameterError(f"{shown} {problem}; refused without deriving (header modified?)")


def password_master(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    """Derive a 32-byte master key from a password with scrypt (FORMAT.md §4.1).

    The parameters are checked first (``check_scrypt_params``).

    :raises KdfParameterError: the parameters are refused, or scrypt could not run with them.
    """
    check_scrypt_params(log2_n, r, p)
    secret = password.encode("utf-8")
    try:
        kdf = Scrypt(salt=salt, length=_MASTER_KEY_BYTES, n=1 << log2_n, r=r, p=p)
        return kdf.derive(secret)
    except (MemoryError, ValueError) as exc:
        # cryptography reports every OpenSSL refusal as a MemoryError; after the checks
        # above that means this machine could not allocate 128·N·r bytes.
        mib = (128 * r << log2_n) >> 20
        raise KdfParameterError(
            f"scrypt with N=2^{log2_n}, r={r}, p={p} ({mib} MiB) failed on this machine: {exc}"
        ) from exc


class RecordKey(TokenOpener):
    """One log's Fernet key, sealing and opening tokens as FORMAT.md §5.1 stores them.

    This is the Fernet construction (spec version 0x80: AES-128-CBC with PKCS7, then
    HMAC-SHA256 over version, timestamp, IV and ciphertext) built from the same primitives
    ``cryptography.fernet.Fernet`` uses, working on raw token bytes: the Fernet class
    speaks base64 only, which would cost an encode and a decode per record for bytes that
    are stored raw. tests/test_crypto.py proves tokens interoperate with the Fernet class
    in both directions.

    Opening (``TokenOpener``, in ``opening``) authenticates and decrypts many tokens at
    once, keeping Fernet's order and checks.
    """

    __slots__ = ("_aes", "_encryptor", "_mac", "_signing")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a Fernet key is 32 bytes")
        self._signing = key[:16]
        self._aes = algorithms.AES(key[16:])
        super().__init__(self._signing, self._aes)
        # The sealing contexts are made by the first seal(): a reader never seals, and they
        # cost ~4 us of every open (issue 15).
        self._mac: HMAC | None = None
        self._encryptor: Any = None

    def _sealing(self) -> tuple[Any, HMAC]:
        """The sealing contexts, made on first use.

        cryptography's HMAC, keyed once and fed the version byte, copied per record: 0.7 us
        a corpus record against 1.2 us for the stdlib's (its copy() and digest() are
        Python), the same bytes (opening.py verifies the same way). One CBC encryptor is
        kept, and makes each record's IV: a fresh random block R goes in first and comes
        out as E(R ⊕ the last ciphertext block), a uniformly random block (R is, and AES is
        a permutation) that nobody without the key can predict; the record's blocks after
        it are then exactly CBC under that IV. The IV is thus random as Fernet requires,
        with no per-record cipher context (~6 us) and no XOR of the IV into the first block
        in Python (~0.5 us).
        """
        if self._encryptor is None or self._mac is None:
            mac = HMAC(self._signing, hashes.SHA256())
            mac.update(_FERNET_VERSION)
            self._mac = mac
            self._encryptor = Cipher(self._aes, modes.CBC(bytes(16))).encryptor()
        return self._encryptor, self._mac

    def seal(self, plain: bytes, ts_seconds: int) -> bytes:
        """Return the Fernet token for ``plain`` without its version byte."""
        encryptor, keyed = self._encryptor, self._mac
        if encryptor is None or keyed is None:
            encryptor, keyed = self._sealing()
        # ``iv_ciphertext`` is the record's IV (16 bytes), then its ciphertext.
        iv_ciphertext: bytes = encryptor.update(os.urandom(16) + plain + _PADDING[len(plain) % 16])
        signed = ts_seconds.to_bytes(8, "big") + iv_ciphertext
        mac = keyed.copy()  # keyed once, and fed the version byte
        mac.update(signed)
        return signed + mac.finalize()

    def seal_many(self, plains: Sequence[bytes], ts_seconds: Sequence[int]) -> list[bytes]:
        """``seal`` each plaintext (at its time), with one ``getrandom`` and one AES-CBC
        call for them all: exactly what successive ``seal`` calls make, had ``os.urandom``
        returned the same blocks (each record's IV is still its random block encrypted
        after the last ciphertext block). Saves ~0.7 us a record (issue 15: compaction)."""
        randoms = os.urandom(16 * len(plains))
        parts: list[bytes] = []
        for i, plain in enumerate(plains):
            parts += (randoms[16 * i : 16 * i + 16], plain, _PADDING[len(plain) % 16])
        encryptor, keyed = self._sealing()
        out = encryptor.update(b"".join(parts)) if parts else b""
        bodies, pos = [], 0
        for plain, seconds in zip(plains, ts_seconds, strict=True):
            end = pos + 32 + len(plain) // 16 * 16  # the IV, then the padded ciphertext
            signed = seconds.to_bytes(8, "big") + out[pos:end]
            mac = keyed.copy()
            mac.update(signed)
            bodies.append(signed + mac.finalize())
            pos = end
        return bodies

    def __repr__(self) -> str:
        return "<RecordKey>"


def hkdf_sha256_64(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of 64 bytes, in three one-shot stdlib HMACs: on cold caches
    (every open derives its log's keys) about half of cryptography's ``HKDF`` object
    (issue 15); the tests check it against that ``HKDF`` byte for byte."""
    prk = hmac.digest(salt, ikm, "sha256")
    first = hmac.digest(prk, info + b"\x01", "sha256")
    return first + hmac.digest(prk, first + info + b"\x02", "sha256")


def _derive(master: bytes, log_id: bytes) -> tuple[RecordKey, bytes]:
    okm = hkdf_sha256_64(master, log_id, _HKDF_INFO)
    return RecordKey(okm[:32]), okm[32:]


def _index_secret(master: bytes, log_id: bytes) -> bytes:
    """The keyword index's 64 bytes: token_key || segment_key (FORMAT.md §17.2)."""
    return hkdf_sha256_64(master, log_id, _KWI_INFO)


def _mac(mac_key: bytes, covered: bytes) -> bytes:
    return hmac.digest(mac_key, covered, "sha256")


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

    __slots__ = ("_index_secret", "_openers", "_sealer", "seal", "unseal_count")

    def __init__(
        self,
        sealer: RecordKey,
        openers: Sequence[RecordKey],
        index_secret: bytes | tuple[bytes, bytes] = b"",
    ) -> None:
        """``index_secret``: the keyword index's 64 bytes, or the ``(master, log_id)`` they
        are derived from when first needed (most opens never search an index)."""
        self._sealer = sealer
        # seal(envelope, ts_seconds): encrypt one envelope, return the stored body (the
        # token minus its version byte). The sealing key's own method: no frame of ours
        # per record (issue 15).
        self.seal: Callable[[bytes, int], bytes] = sealer.seal
        self._openers = list(openers)
        self._index_secret = index_secret
        self.unseal_count = 0

    def again(self) -> LogCipher:
        """A cipher of the same keys for another open of the same header (its own
        ``unseal_count``): the header's derivations and MAC check are not repeated. It
        shares this one's contexts, so use both from one thread at a time (one codec)."""
        return LogCipher(self._sealer, self._openers, self._index_secret)

    def index_keys(self) -> tuple[bytes, RecordKey]:
        """The keyword index's ``(token_key, segment key)``, derived from the master key
        that opens the header (FORMAT.md §17.2)."""
        if isinstance(self._index_secret, tuple):
            self._index_secret = _index_secret(*self._index_secret)
        return self._index_secret[:32], RecordKey(self._index_secret[32:])

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
        secret = (keyring.masters[0], header.log_id)
        return cls(first, [f for f, _ in fernets], secret), raw

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
        # Appends seal under the key that opens the header, never a rotated-in first key
        # (FORMAT.md §4: old-key processes read them all). Every key opens (old mixed logs).
        sealer = matching[0][0]
        openers = [sealer, *[f for f, _ in fernets if f is not sealer]]
        master = keyring.masters[[f for f, _ in fernets].index(sealer)]
        return cls(sealer, openers, (master, header.log_id))

    def seal_many(self, envelopes: Sequence[bytes], ts_seconds: Sequence[int]) -> list[bytes]:
        """``seal`` each envelope at its time, in one AES-CBC call (``RecordKey.seal_many``)."""
        return self._sealer.seal_many(envelopes, ts_seconds)

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

    def open_batch(self, bodies: Sequence[bytes]) -> list[bytes | None] | None:
        """The envelopes of ``bodies`` when the key tried first authenticates every one
        (None for a body whose padding is bad), decrypted in one AES-CBC call; None, with
        nothing decrypted, otherwise (``unseal_many`` then sorts them out). Not counted in
        ``unseal_count``: the caller counts what it keeps (it may read the batch again)."""
        return self._openers[0].open_all(bodies)

    def unseal_many(self, bodies: Sequence[bytes]) -> list[tuple[bytes, int] | None]:
        """Authenticate and decrypt many bodies; ``(envelope, token_seconds)`` for each, or
        None where ``unseal`` would raise (the caller reads that one alone for its error).

        Every body's HMAC is checked, under each key in turn as ``unseal`` does, before
        anything is decrypted; then each key decrypts its records in one AES-CBC call.
        """
        plains = self._openers[0].open_all(bodies)  # the usual case: one key opens all
        if plains is None:
            plains = [None] * len(bodies)
            found: list[RecordKey | None] = []
            for body in bodies:
                for i, opener in enumerate(self._openers):
                    if opener.authentic(body):
                        if i:  # as in unseal: the key that worked is tried first from now on
                            self._openers.insert(0, self._openers.pop(i))
                        found.append(opener)
                        break
                else:
                    found.append(None)
            for opener in {id(o): o for o in found if o is not None}.values():
                mine = [i for i, o in enumerate(found) if o is opener]
                decrypted = opener.decrypt_authentic([bodies[i] for i in mine])
                for i, plain in zip(mine, decrypted, strict=True):
                    plains[i] = plain
        self.unseal_count += len(plains) - plains.count(None)
        return [
            None if plain is None else (plain, int.from_bytes(body[:8], "big"))
            for body, plain in zip(bodies, plains, strict=True)
        ]

    def __repr__(self) -> str:
        return f"<LogCipher with {len(self._openers)} key(s)>"

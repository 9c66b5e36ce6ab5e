"""LogSecrets: the key or password a log is sealed with, and the context it is bound to.

Opens a log's header into its ``LogFormat`` (``attach``, the storage's callback) and makes
the header of a new or rewritten log (``new_log``). A password's scrypt result is kept per
(salt, cost), so a rewrite reuses it instead of deriving again (~100 ms).
"""

from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path

from .compression import Compressor
from .crypto import (
    SCRYPT_LOG2_N,
    SCRYPT_P,
    SCRYPT_R,
    Keyring,
    LogCipher,
    new_log_id,
    new_salt,
    password_master,
)
from .errors import (
    BindingError,
    FormatError,
    InvalidKeyError,
    KeyRequiredError,
    KeyTypeError,
    NotEncryptedError,
    PasswordRequiredError,
)
from .format.header import (
    FLAG_BOUND,
    SEALED_HEADER_BYTES,
    Kdf,
    LogKind,
    PlainHeader,
    SealedHeader,
    decode_plain_header,
    decode_sealed_header,
    encode_plain_header,
    sniff_log,
)
from .records import PlainRecords, SealedRecords
from .storage.base import LogFormat

__all__ = ["LogSecrets", "check_password"]

_OPENED_HEADERS = 8  # authenticated headers remembered per codec (a log has one at a time)


class LogSecrets:
    """What opens and seals the log at ``path``: ``keyring`` or ``password`` (or neither,
    for a plaintext log) and ``binding``, the context digest (FORMAT.md §4.2).

    ``keyring``, ``password`` and ``kdf`` are swapped by a key rotation or a password change.
    """

    def __init__(
        self,
        path: str | Path,
        keyring: Keyring | None,
        password: str | None,
        binding: bytes | None,
        context: str | None = None,  # the id ``binding`` digests, named in advice only
    ) -> None:
        self.path = path
        self.context = context
        self.keyring = keyring
        self.password = password
        self.binding = binding
        self.kdf: SealedHeader | None = None  # the password log's KDF fields, to reuse its salt
        self._masters: dict[tuple[bytes, int, int, int], bytes] = {}  # scrypt results by params
        # Headers this codec authenticated, by their exact bytes: the probe and the first
        # transaction (and every reload of an unchanged header) open the same header, and
        # its HKDF derivations and MAC check cost ~20 us each time (issue 15). A hit needs
        # the same bytes, master keys and binding, so it is the check's own answer again.
        self._opened: dict[bytes, tuple[tuple[bytes, ...], bytes | None, LogCipher]] = {}
        self._zstd = Compressor()

    @property
    def encrypted(self) -> bool:
        """True when new records are sealed (a key or a password was given)."""
        return self.keyring is not None or self.password is not None

    def attach(self, prefix: bytes) -> LogFormat:
        kind = sniff_log(prefix)
        if kind is LogKind.SEALED:
            header, covered, mac = decode_sealed_header(prefix)
            keyring = self._keyring_for(header)
            exact = prefix[: header.size]  # every byte that LogCipher.open authenticates
            seen = self._opened.get(exact)
            if seen is not None and seen[0] == keyring.masters and seen[1] == self.binding:
                cipher = seen[2].again()
            else:
                try:
                    cipher = LogCipher.open(
                        keyring,
                        header,
                        covered,
                        mac,
                        binding=self.binding,
                        binding_mac=prefix[SEALED_HEADER_BYTES : header.size],
                    )
                except BindingError as exc:
                    raise BindingError(f"{self.path}: {exc}") from None
                if len(self._opened) >= _OPENED_HEADERS:
                    self._opened.clear()
                self._opened[exact] = (keyring.masters, self.binding, cipher)
            if header.kdf is Kdf.SCRYPT:  # only a header the password opened: new logs
                self.kdf = header  # reuse its salt and cost, never a foreign log's
            records = SealedRecords(cipher, self._zstd)
            return LogFormat(header.log_id, header.size, records, True, header.format_version)
        if kind is LogKind.PLAIN:
            if self.encrypted:
                bound = "" if self.context is None else f", context={self.context!r}"
                raise NotEncryptedError(
                    f"{self.path} is a plaintext log; open it without a key, or encrypt it "
                    f"in place with conversation_codec.migrate(path, encryption_key=...{bound}) "
                    f"(or ConversationCodec(path{bound}).compact(encryption_key=...))"
                )
            end = prefix.find(b"\n")
            if end < 0:
                raise FormatError(f"{self.path}: plaintext log header line is truncated")
            plain = decode_plain_header(prefix[:end])
            self._check_plain_binding(plain)
            return LogFormat(plain.log_id, end + 1, PlainRecords(), False, plain.format_version)
        raise FormatError(
            f"{self.path} is not a conversation-codec log; convert it with "
            "conversation_codec.migrate()"
        )

    def _check_plain_binding(self, plain: PlainHeader) -> None:
        """Refuse a plain log recorded for another context (FORMAT.md §6): an accident check
        only, since anyone can edit a plain file."""
        if plain.context_sha256 is None or hmac.compare_digest(
            plain.context_sha256, self.binding or b""
        ):
            return
        raise BindingError(
            f"{self.path} was written for another context (conversation id)"
            if self.binding is not None
            else f"{self.path} is bound to a context (a conversation id); open it with "
            "context= set to the id it was written under (ConversationStore does this)"
        )

    def _keyring_for(self, header: SealedHeader) -> Keyring:
        """Return the master keys that should open a sealed log with this header."""
        if header.kdf is Kdf.SCRYPT:
            if self.password is None:
                raise PasswordRequiredError(
                    f"{self.path} is protected by a password; pass password="
                )
            params = (header.kdf_salt, header.kdf_log2_n, header.kdf_r, header.kdf_p)
            if params not in self._masters:
                self._masters[params] = password_master(self.password, *params)
            return Keyring([self._masters[params]])
        if self.keyring is None:
            raise KeyRequiredError(
                f"{self.path} is encrypted with a key; pass encryption_key= (or set the key "
                "variable)" + ("" if self.password is None else ", not password=")
            )
        return self.keyring

    def new_log(self) -> tuple[bytes, LogFormat]:
        log_id = new_log_id()
        # FORMAT.md §12: a log without a context is written as version 1, which every reader
        # since the first reads; a bound one needs version 2.
        version = 1 if self.binding is None else 2
        if not self.encrypted:
            header = encode_plain_header(PlainHeader(log_id, version, self.binding))
            return header, LogFormat(log_id, len(header), PlainRecords(), False, version)
        if self.password is not None:
            # A rewrite keeps the salt of the password it already derived: no second scrypt.
            kdf = self.kdf or SealedHeader(
                log_id, Kdf.SCRYPT, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, new_salt()
            )
            fields = SealedHeader(
                log_id, Kdf.SCRYPT, kdf.kdf_log2_n, kdf.kdf_r, kdf.kdf_p, kdf.kdf_salt, version
            )
            keyring = self._keyring_for(fields)
        else:
            assert self.keyring is not None
            fields, keyring = SealedHeader(log_id, format_version=version), self.keyring
        if self.binding is not None:
            fields = dataclasses.replace(fields, header_flags=FLAG_BOUND)
        cipher, header = LogCipher.create(keyring, fields, binding=self.binding)
        records = SealedRecords(cipher, self._zstd)
        return header, LogFormat(log_id, len(header), records, True, version)


def check_password(password: object, name: str = "password") -> None:
    """Refuse a password scrypt cannot take (``name`` in errors); the messages never show it."""
    if not isinstance(password, str):
        raise KeyTypeError(f"{name} must be a non-empty str, not {type(password).__name__}")
    if not password:
        raise InvalidKeyError(f"{name} must be a non-empty str")
    try:
        password.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    if not encodable:  # raised outside the except: its __context__ would hold the password
        raise InvalidKeyError(f"{name} is not valid Unicode (a lone surrogate)")

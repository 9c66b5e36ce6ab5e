"""Open the whole-file Fernet tokens of legacy histories (``FERNET_JSONL``,
``FERNET_JSON_ARRAY``): with the app's Fernet key(s), or with a password and the 16-byte salt
of the ``.salt`` file beside the history (PBKDF2-HMAC-SHA256). ``legacy`` sniffs the layout
and parses what this returns.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from ..crypto import KeyInput, Keyring
from ..errors import DecryptionError, FormatError, InvalidKeyError, KeyRequiredError, KeyTypeError

__all__ = [
    "PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "check_key",
    "check_legacy_password",
    "decrypt_token",
]

PBKDF2_ITERATIONS = 480_000  # the legacy app's PBKDF2-HMAC-SHA256 cost for password files
SALT_BYTES = 16  # length of the legacy ``.salt`` file
_FERNET_MIN_BYTES = 73  # version 1 + timestamp 8 + IV 16 + one AES block 16 + HMAC 32
_FERNET_OVERHEAD = 57  # every Fernet token is 57 bytes plus whole 16-byte AES blocks


def decrypt_token(
    token: bytes,
    legacy_key: KeyInput | None,
    password: str | bytes | None,
    salt: bytes | None,
    *,
    where: str,
    salt_where: str,
) -> bytes:
    """Return the plaintext of the Fernet ``token`` read from ``where``.

    ``salt`` is the content of the salt file ``salt_where`` (None when it is missing),
    needed only when the password is tried: the keys are tried first.

    :raises FormatError: the token is truncated or damaged, or the salt is missing or wrong.
    :raises KeyRequiredError: neither ``legacy_key`` nor ``password`` was given.
    :raises DecryptionError: nothing given opens it (or it was modified).
    """
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < _FERNET_MIN_BYTES or (len(raw) - _FERNET_OVERHEAD) % 16:
        raise FormatError(
            f"{where} looks like a Fernet token but is truncated or damaged "
            f"({len(token)} base64 characters); restore the complete file"
        )
    if legacy_key is None and password is None:
        raise KeyRequiredError(
            f"{where} is Fernet-encrypted; pass legacy_key= (its Fernet key) or password= "
            "(with its .salt file beside it)"
        )
    # Try the keys before deriving from the password: PBKDF2 costs ~0.3 s, and a
    # missing salt should not fail a file that the key already opens.
    if legacy_key is not None:
        try:
            masters = Keyring.from_input(legacy_key).masters
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"legacy_key: {exc}") from None
        try:
            return MultiFernet([Fernet(base64.urlsafe_b64encode(m)) for m in masters]).decrypt(
                token
            )
        except InvalidToken:
            pass
    if password is not None:
        try:
            return _password_fernet(password, salt, salt_where).decrypt(token)
        except InvalidToken:
            pass
    raise DecryptionError(f"cannot decrypt {where}: wrong key or password, or it was modified")


def check_legacy_password(password: object, name: str = "password") -> None:
    """Refuse a legacy password PBKDF2 cannot take, as ``check_password`` refuses a log's
    (but bytes are accepted: the legacy app derived from bytes). Never shows it.

    :raises KeyTypeError: not str or bytes.
    :raises InvalidKeyError: empty, or a str with a lone surrogate (no UTF-8 form).
    """
    if not isinstance(password, (str, bytes)):
        raise KeyTypeError(
            f"{name} (the legacy password) must be a non-empty str or bytes, "
            f"not {type(password).__name__}"
        )
    if not password:
        raise InvalidKeyError(f"{name} (the legacy password) must not be empty")
    if isinstance(password, str) and not _encodable(password):
        # Raised outside the except: its __context__ would hold the whole password.
        raise InvalidKeyError(
            f"{name} (the legacy password) is not valid Unicode (a lone surrogate)"
        )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _password_fernet(password: str | bytes, salt: bytes | None, salt_where: str) -> Fernet:
    check_legacy_password(password)
    if salt is None:
        raise FormatError(
            f"a password needs the salt file {salt_where}, which is missing; put the "
            f"{SALT_BYTES}-byte salt beside the encrypted file, or pass legacy_key="
        )
    if len(salt) != SALT_BYTES:
        raise FormatError(f"{salt_where} is not a {SALT_BYTES}-byte salt; restore the right file")
    secret = password.encode("utf-8") if isinstance(password, str) else password
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=PBKDF2_ITERATIONS)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(secret)))


def check_key(name: str, key: KeyInput | None) -> None:
    """Fail on a malformed key before touching any file (and before a batch starts).

    :raises TypeError, ValueError: ``key`` is malformed (the message names ``name``).
    """
    if key is not None:
        try:
            Keyring.from_input(key)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None

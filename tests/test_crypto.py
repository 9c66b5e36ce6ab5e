"""crypto: raw Fernet tokens interoperate with cryptography's Fernet; keys never leak."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from hypothesis import given, settings
from hypothesis import strategies as st

from conversation_codec import (
    ConversationCodec,
    ConversationCodecError,
    ConversationStore,
    InvalidKeyError,
    KeyTypeError,
)
from conversation_codec.crypto import Keyring, LogCipher, RecordKey, generate_key, new_log_id
from conversation_codec.errors import DecryptionError
from conversation_codec.format.header import SealedHeader, decode_sealed_header

from conftest import KEY

RAW = base64.urlsafe_b64decode(KEY)


@settings(max_examples=200)
@given(plain=st.binary(max_size=300), ts=st.integers(0, 2**40))
def test_our_tokens_open_with_fernet_and_back(plain: bytes, ts: int) -> None:
    ours = RecordKey(RAW)
    fernet = Fernet(KEY)
    body = ours.seal(plain, ts)
    token = base64.urlsafe_b64encode(b"\x80" + body)
    assert fernet.decrypt(token) == plain
    assert fernet.extract_timestamp(token) == ts
    theirs = base64.urlsafe_b64decode(fernet.encrypt_at_time(plain, ts))
    assert theirs[0] == 0x80
    assert ours.open(theirs[1:]) == plain


def test_every_single_byte_change_is_refused() -> None:
    key = RecordKey(RAW)
    body = key.seal(b"attack at dawn", 1_700_000_000)
    for i in range(len(body)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(body)
            bad[i] ^= flip
            assert key.open(bytes(bad)) is None
    for cut in range(len(body)):
        assert key.open(body[:cut]) is None
    assert key.open(body + b"\x00" * 16) is None
    assert RecordKey(os.urandom(32)).open(body) is None


def test_authenticated_bad_padding_is_refused() -> None:
    # A key holder could MAC a ciphertext whose padding is invalid: refuse, do not crash.
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = bytes(16)
    enc = Cipher(algorithms.AES(RAW[16:]), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(b"A" * 15 + b"\x00") + enc.finalize()
    signed = b"\x80" + (5).to_bytes(8, "big") + iv + ciphertext
    body = signed[1:] + hmac.new(RAW[:16], signed, hashlib.sha256).digest()
    assert RecordKey(RAW).open(body) is None


def test_header_mac_binds_keys_and_fields() -> None:
    header = SealedHeader(new_log_id())
    _, raw = LogCipher.create(Keyring.from_input(KEY), header)
    parsed, covered, mac = decode_sealed_header(raw)
    LogCipher.open(Keyring.from_input([generate_key(), KEY]), parsed, covered, mac)
    with pytest.raises(DecryptionError):
        LogCipher.open(Keyring.from_input(generate_key()), parsed, covered, mac)
    with pytest.raises(DecryptionError):
        LogCipher.open(Keyring.from_input(KEY), parsed, covered[:-1] + b"\x01", mac)


def test_records_are_bound_to_their_log() -> None:
    keyring = Keyring.from_input(KEY)
    a, _ = LogCipher.create(keyring, SealedHeader(new_log_id()))
    b, _ = LogCipher.create(keyring, SealedHeader(new_log_id()))
    body = a.seal(b"envelope", 1)
    assert a.unseal(body) == (b"envelope", 1)
    with pytest.raises(InvalidToken):
        b.unseal(body)


def test_reprs_and_errors_hold_no_key_material() -> None:
    keyring = Keyring.from_input(KEY)
    cipher, _ = LogCipher.create(keyring, SealedHeader(new_log_id()))
    for text in (repr(keyring), repr(cipher), repr(RecordKey(RAW))):
        assert KEY not in text and RAW.hex() not in text
    near_miss = KEY[:-2] + "!="
    with pytest.raises(ValueError) as info:
        Keyring.from_input(near_miss)
    assert near_miss not in str(info.value) and KEY[:20] not in str(info.value)


@pytest.mark.parametrize(
    "bad", [KEY + "A", KEY + "\n" + KEY, KEY + "\x00", KEY[:-1], " " + KEY, KEY.replace("-", "+")]
)
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Fernet key"):
        Keyring.from_input(bad)
    with pytest.raises(ValueError, match="not a Fernet key"):
        Keyring.from_input(bad.encode("latin-1"))


BAD_KEYS = [
    (123, KeyTypeError, "not int"),
    (1.5, KeyTypeError, "not float"),
    (True, KeyTypeError, "not bool"),
    ({"k": KEY}, KeyTypeError, "not dict"),
    (bytearray(KEY.encode()), KeyTypeError, "not bytearray"),
    ("", InvalidKeyError, "not a Fernet key"),
    ("short", InvalidKeyError, "not a Fernet key"),
    ("!" * 43 + "=", InvalidKeyError, "not a Fernet key"),  # the right length, not base64
    (KEY[:-2] + "==", InvalidKeyError, "not a Fernet key"),
    ([], InvalidKeyError, "list is empty"),
    ([KEY, 5], KeyTypeError, "key 1 of the encryption key list must be"),
    ((KEY, KEY[:-1]), InvalidKeyError, "key 1 of the encryption key list is not"),
]


@pytest.mark.parametrize(("bad", "error", "fragment"), BAD_KEYS)
def test_bad_keys_raise_library_errors_that_say_what_to_pass(
    tmp_path: Path, bad: object, error: type[Exception], fragment: str
) -> None:
    makers = {
        "codec": lambda: ConversationCodec(tmp_path / "c.log", encryption_key=bad),
        "blobs": lambda: ConversationCodec(
            tmp_path / "c.log", encryption_key=bad, attachments="external"
        ),
        "store": lambda: ConversationStore(tmp_path / "store", encryption_key=bad),
    }
    for name, make in makers.items():
        with pytest.raises(error, match=re.escape(fragment)) as info:
            make()
        message = str(info.value)
        assert isinstance(info.value, ConversationCodecError), name
        assert isinstance(info.value, ValueError), name
        assert isinstance(info.value, TypeError) is (error is KeyTypeError), name
        assert "generate_key()" in message or "at least one key" in message, name
        assert KEY not in message and KEY[:12] not in message and "short" not in message
    assert list(tmp_path.iterdir()) == []  # refused before anything was created

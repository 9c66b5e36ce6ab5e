"""crypto: raw Fernet tokens interoperate with cryptography's Fernet; keys never leak."""

from __future__ import annotations

import base64
import itertools
import os
import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from conversation_codec import (
    ConversationCodec,
    ConversationCodecError,
    ConversationStore,
    InvalidKeyError,
    KeyTypeError,
)
from conversation_codec.crypto import (
    Keyring,
    LogCipher,
    RecordKey,
    generate_key,
    hkdf_sha256_64,
    new_log_id,
)
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


# -- batched opening (issue 15): every answer must be Fernet's ------------------------------


def _fernet_open(raw: bytes, body: bytes) -> bytes | None:
    """What cryptography's Fernet says of a stored body (the oracle)."""
    token = base64.urlsafe_b64encode(b"\x80" + body)
    try:
        return Fernet(base64.urlsafe_b64encode(raw)).decrypt(token)
    except InvalidToken:
        return None


def _badly_padded(raw: bytes, plain: bytes, ts: int) -> bytes:
    """An authentic body (right HMAC) whose last block is not PKCS7: only a key holder
    writes one, and Fernet refuses it."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    block = (plain + bytes(16))[:16]
    block = block[:15] + bytes((block[15] % 16 + 17 if block[15] % 2 else 0,))  # 0 or > 16
    iv = hashlib.sha256(plain).digest()[:16]
    enc = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    signed = b"\x80" + ts.to_bytes(8, "big") + iv + enc.update(block) + enc.finalize()
    return signed[1:] + hmac.new(raw[:16], signed, hashlib.sha256).digest()


_SEALED_BY = st.sampled_from(["ours", "fernet", "foreign", "bad-padding"])
_BATCH = st.lists(
    st.tuples(st.binary(max_size=70), st.integers(0, 2**40), st.integers(0, 1), _SEALED_BY),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.binary(min_size=32, max_size=32), min_size=3, max_size=3, unique=True),
    records=_BATCH,
    damage=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans())),
)
def test_batched_unseal_agrees_with_fernet(
    keys: list[bytes],
    records: list[tuple[bytes, int, int, str]],
    damage: list[tuple[int, int, bool]],
) -> None:
    """unseal_many over a key list (two openers, a foreign key, rotated order) answers
    for each body what Fernet.decrypt under the first key that opens it answers."""
    bodies = []
    for plain, ts, which, how in records:
        raw = keys[2] if how == "foreign" else keys[which]
        if how == "fernet":
            token = Fernet(base64.urlsafe_b64encode(raw)).encrypt_at_time(plain, ts)
            bodies.append(base64.urlsafe_b64decode(token)[1:])
        elif how == "bad-padding":
            bodies.append(_badly_padded(raw, plain, ts))
        else:
            bodies.append(RecordKey(raw).seal(plain, ts))
    for i, pos, cut in damage:  # flip a byte, or cut the body short
        if bodies:
            i %= len(bodies)
            body = bytearray(bodies[i])
            if not body:
                continue
            if cut:
                del body[pos % len(body) :]
            else:
                body[pos % len(body)] ^= 1 + pos % 255
            bodies[i] = bytes(body)
    expected = []
    for body in bodies:
        opened = [p for p in (_fernet_open(k, body) for k in keys[:2]) if p is not None]
        expected.append((opened[0], int.from_bytes(body[:8], "big")) if opened else None)
    cipher = LogCipher(RecordKey(keys[0]), [RecordKey(keys[0]), RecordKey(keys[1])])
    assert cipher.unseal_many(bodies) == expected
    assert cipher.unseal_count == sum(e is not None for e in expected)
    assert cipher.unseal_many(bodies) == expected  # again, with the openers reordered
    for raw in keys:
        assert RecordKey(raw).open_many(bodies) == [_fernet_open(raw, b) for b in bodies]
        assert [RecordKey(raw).open(b) for b in bodies] == [_fernet_open(raw, b) for b in bodies]


def test_bad_padding_in_a_batch_refuses_that_record_alone() -> None:
    key = RecordKey(RAW)
    good = [key.seal(bytes([i]) * i, i) for i in range(40)]
    bad = _badly_padded(RAW, b"x" * 15, 7)
    assert _fernet_open(RAW, bad) is None  # authentic, and still refused by Fernet
    assert key.authentic(bad)
    bodies = [*good[:20], bad, *good[20:]]
    opened = key.open_many(bodies)
    assert opened[20] is None
    assert opened[:20] + opened[21:] == [bytes([i]) * i for i in range(40)]
    cipher = LogCipher(key, [key])
    assert cipher.unseal_many(bodies)[20] is None
    with pytest.raises(InvalidToken):
        cipher.unseal(bad)


@settings(max_examples=50)
@given(plains=st.lists(st.binary(max_size=100), min_size=1, max_size=12), ts=st.integers(0, 2**40))
def test_one_key_seals_many_records_each_as_fernet_would(plains: list[bytes], ts: int) -> None:
    """RecordKey keeps one CBC encryptor across records (each record's IV is the block a
    random block encrypts to): every token must still be what Fernet writes for its IV."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ours, fernet = RecordKey(RAW), Fernet(KEY)
    for plain in plains:
        body = ours.seal(plain, ts)
        token = base64.urlsafe_b64encode(b"\x80" + body)
        assert fernet.decrypt(token) == plain
        iv, pad = body[8:24], 16 - len(plain) % 16
        alone = Cipher(algorithms.AES(RAW[16:]), modes.CBC(iv)).encryptor()
        assert body[24:-32] == alone.update(plain + bytes((pad,)) * pad) + alone.finalize()


def test_the_same_record_sealed_again_gets_a_fresh_iv_and_ciphertext() -> None:
    """The IV comes out of the kept encryptor (a fresh random block encrypted): it must
    never repeat, nor be the previous record's last block (what plain chaining would give)."""
    key = RecordKey(RAW)
    bodies = [key.seal(b"same plaintext, same second", 7) for _ in range(200)]
    ivs = {body[8:24] for body in bodies}
    assert len(ivs) == len(bodies)
    assert len({body[24:-32] for body in bodies}) == len(bodies)
    for before, after in itertools.pairwise(bodies):
        assert after[8:24] != before[-48:-32]


@settings(max_examples=100)
@given(
    plains=st.lists(st.binary(max_size=100), max_size=12),
    stamps=st.lists(st.integers(0, 2**40), min_size=12, max_size=12),
)
def test_seal_many_makes_what_fernet_writes_for_each_record(
    plains: list[bytes], stamps: list[int]
) -> None:
    """Issue 15: a batch sealed in one AES-CBC call must be, token by token, what Fernet
    writes for that IV and time, interleaved with single seals on the same encryptor, with
    a fresh IV per record."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ours, fernet = RecordKey(RAW), Fernet(KEY)
    before = ours.seal(b"before the batch", 1)
    bodies = ours.seal_many(plains, stamps[: len(plains)])
    after = ours.seal(b"after the batch", 2)
    assert len(bodies) == len(plains)
    for plain, ts, body in zip(plains, stamps, bodies, strict=False):
        token = base64.urlsafe_b64encode(b"\x80" + body)
        assert fernet.decrypt(token) == plain
        assert fernet.extract_timestamp(token) == ts
        iv, pad = body[8:24], 16 - len(plain) % 16
        alone = Cipher(algorithms.AES(RAW[16:]), modes.CBC(iv)).encryptor()
        assert body[24:-32] == alone.update(plain + bytes((pad,)) * pad) + alone.finalize()
    for single, plain in ((before, b"before the batch"), (after, b"after the batch")):
        assert ours.open(single) == plain
    ivs = [body[8:24] for body in [before, *bodies, after]]
    assert len(set(ivs)) == len(ivs)
    with pytest.raises(ValueError):
        ours.seal_many([b"two plaintexts"], [1, 2])


@settings(max_examples=200, derandomize=True)
@given(
    ikm=st.binary(min_size=1, max_size=80),
    salt=st.binary(min_size=1, max_size=80),
    info=st.binary(max_size=80),
)
def test_the_key_derivation_is_rfc5869_hkdf(ikm: bytes, salt: bytes, info: bytes) -> None:
    # crypto derives every log's keys with three stdlib HMACs (issue 15): it must be the
    # HKDF FORMAT.md §4 names, byte for byte, as cryptography computes it.
    want = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=info).derive(ikm)
    assert hkdf_sha256_64(ikm, salt, info) == want


def test_the_key_derivation_matches_rfc5869_test_case_1() -> None:
    ikm, salt = bytes([0x0B] * 22), bytes(range(13))
    info = bytes(range(0xF0, 0xFA))
    okm = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    assert hkdf_sha256_64(ikm, salt, info)[:42].hex() == okm

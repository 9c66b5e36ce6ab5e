"""Password-protected logs (scrypt in the header), change_password, and key/password interplay."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conversation_codec import (
    ConversationCodec,
    DecryptionError,
    FormatError,
    InvalidKeyError,
    KdfParameterError,
    KeyRequiredError,
    KeyTypeError,
)
from conversation_codec.crypto import (
    SCRYPT_LOG2_N,
    SCRYPT_P,
    SCRYPT_R,
    check_scrypt_params,
    password_master,
)
from conversation_codec.format.header import decode_sealed_header

from conftest import KEY, messages, snapshot


def test_password_create_reopen_and_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="correct horse battery") as codec:
        codec.extend(messages(4))
        codec.load()  # a divergent save() rewrites only a history read in full (issue 11)
        codec.save(messages(2))  # a divergent save rewrites under the same password
    header, _, _ = decode_sealed_header(path.read_bytes())
    assert (header.kdf, header.kdf_log2_n, header.kdf_r, header.kdf_p) == (1, 15, 8, 1)
    assert b"correct horse" not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    with ConversationCodec(path, password="correct horse battery") as codec:
        assert codec.load() == messages(2)
    before = snapshot(tmp_path)
    with pytest.raises(DecryptionError, match="wrong key or password") as info:
        ConversationCodec(path, password="correct horse batterY")
    assert "batter" not in str(info.value)
    with pytest.raises(KeyRequiredError, match="password"):
        ConversationCodec(path)
    with pytest.raises(KeyRequiredError, match="password"):
        ConversationCodec(path, encryption_key=KEY)
    assert snapshot(tmp_path) == before


def test_password_given_for_a_key_log(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.append({"a": 1})
    with pytest.raises(KeyRequiredError, match="not password"):
        ConversationCodec(path, password="pw")


def test_bad_password_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        ConversationCodec(tmp_path / "x", encryption_key=KEY, password="pw")
    with pytest.raises(ValueError, match="non-empty"):
        ConversationCodec(tmp_path / "x", password="")


@pytest.mark.parametrize(
    ("password", "error", "expected"),
    [
        (5, KeyTypeError, "non-empty str, not int"),
        (b"pw", KeyTypeError, "non-empty str, not bytes"),
        ("", InvalidKeyError, "non-empty str"),
        ("pw\ud800", InvalidKeyError, "lone surrogate"),  # scrypt takes UTF-8
    ],
)
def test_unusable_passwords_raise_library_errors(
    tmp_path: Path, password: object, error: type[Exception], expected: str
) -> None:
    with pytest.raises(error, match=expected) as info:
        ConversationCodec(tmp_path / "x", password=password)  # type: ignore[arg-type]
    assert "pw" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_hostile_scrypt_parameters_are_refused_before_deriving(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="pw") as codec:
        codec.append({"a": 1})
    data = bytearray(path.read_bytes())
    data[11] = 40  # kdf_log2_n: 2**40 * 1 KiB of memory
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="out of bounds"):
        ConversationCodec(path, password="pw")


@pytest.fixture(scope="module")
def password_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small password log (one scrypt derivation for the whole module)."""
    path = tmp_path_factory.mktemp("pw") / "chat.log"
    with ConversationCodec(path, password="pw", durability="flush") as codec:
        codec.extend(messages(2))
    return path.read_bytes()


def with_scrypt_params(data: bytes, log2_n: int, r: int, p: int) -> bytes:
    """The log with its header's kdf_log2_n, kdf_r, kdf_p (bytes 11..13, FORMAT.md §3.1) set."""
    return data[:11] + bytes((log2_n, r, p)) + data[14:]


# Each is refused by arithmetic alone; the comment says which rule.
HOSTILE_SCRYPT = [
    ((21, 1, 1), "RFC 7914"),  # N >= 2^(16 r); OpenSSL's MemoryError before the check
    ((16, 1, 1), "RFC 7914"),  # the smallest N that breaks N < 2^(16 r) for r = 1
    ((32, 2, 1), "RFC 7914"),
    ((20, 2, 16), "33,554,432 block mixes"),  # 256 MiB is allowed, but 18 s of CPU is not
    ((17, 8, 3), "3,145,728 block mixes"),  # 2^21 work is the edge (see the test below)
    ((18, 8, 2), "4,194,304 block mixes"),
    ((19, 8, 1), "512 MiB"),  # 256 MiB is the edge
    ((18, 16, 1), "512 MiB"),
    ((255, 255, 255), "MiB"),
    ((9, 8, 1), "minimum"),
    ((15, 0, 1), "minimum"),
    ((15, 8, 0), "minimum"),
    ((0, 0, 0), "minimum"),
]


@pytest.mark.parametrize(("params", "expected"), HOSTILE_SCRYPT)
def test_hostile_scrypt_headers_are_refused_before_deriving(
    tmp_path: Path, password_log: bytes, params: tuple[int, int, int], expected: str
) -> None:
    path = tmp_path / "chat.log"
    path.write_bytes(with_scrypt_params(password_log, *params))
    before = snapshot(tmp_path)
    with pytest.raises(KdfParameterError, match="out of bounds") as info:
        ConversationCodec(path, password="pw")
    message = str(info.value)
    assert expected in message and "refused without deriving" in message
    # Nothing was attempted and mapped: a derivation failure would be the __context__.
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert isinstance(info.value, FormatError) and "pw" not in message.replace("p=", "")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "params",
    [
        (SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P),  # what writers use
        (10, 1, 1),  # every minimum
        (15, 1, 1),  # the largest N that RFC 7914 allows for r = 1
        (18, 8, 1),  # 256 MiB and 2^21 block mixes: both edges at once
        (17, 16, 1),  # 256 MiB with a larger r
        (17, 8, 2),  # 2^21 block mixes with p > 1
        (10, 1, 255),  # the largest p a header can hold
    ],
)
def test_scrypt_bounds_admit_what_writers_use_and_their_edges(
    params: tuple[int, int, int],
) -> None:
    check_scrypt_params(*params)


def test_rfc7914_p_bound_is_enforced_beyond_what_a_header_can_hold() -> None:
    largest = (2**32 - 1) * 32 // 128  # p <= (2^32 - 1) * hLen / MFLen for r = 1
    with pytest.raises(KdfParameterError, match="RFC 7914"):
        check_scrypt_params(10, 1, largest + 1)
    with pytest.raises(KdfParameterError, match="RFC 7914"):
        password_master("pw", bytes(16), 10, 1 << 20, 1 << 10)  # r * p = 2^30


def test_an_admissible_edited_header_fails_the_header_mac(
    tmp_path: Path, password_log: bytes
) -> None:
    path = tmp_path / "chat.log"
    path.write_bytes(with_scrypt_params(password_log, 14, 8, 1))  # in bounds: derived, then
    with pytest.raises(DecryptionError, match="header was modified"):  # the MAC says no
        ConversationCodec(path, password="pw")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_scrypt_out_of_memory_is_a_library_error() -> None:
    # In-bounds parameters on a machine that cannot allocate them: cryptography raises a
    # MemoryError, which must reach the caller as the library's error. The address-space
    # limit leaves the interpreter 64 MiB of room, short of scrypt's 256 MiB.
    script = textwrap.dedent(
        """
        import re, resource
        from conversation_codec.crypto import password_master
        from conversation_codec.errors import KdfParameterError
        status = open("/proc/self/status").read()
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", status)[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20), resource.RLIM_INFINITY))
        try:
            password_master("pw", bytes(16), 18, 8, 1)
        except KdfParameterError as exc:
            print("refused:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: scrypt with N=2^18, r=8, p=1 (256 MiB) failed")


def test_change_password(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="old pw") as codec:
        codec.extend(messages(3))
        stamps = [codec.timestamp(i) for i in range(3)]
        salt = decode_sealed_header(path.read_bytes())[0].kdf_salt
        with pytest.raises(DecryptionError, match="wrong password"):
            codec.change_password("not it", "new pw")
        codec.change_password("old pw", "new pw")
        assert decode_sealed_header(path.read_bytes())[0].kdf_salt != salt
        codec.append({"after": "change"})
    with pytest.raises(DecryptionError):
        ConversationCodec(path, password="old pw")
    with ConversationCodec(path, password="new pw") as codec:
        assert codec.load() == [*messages(3), {"after": "change"}]
        assert [codec.timestamp(i) for i in range(3)] == stamps


def test_rotate_from_password_to_key_and_back_is_not_mixed(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="pw") as codec:
        codec.extend(messages(2))
        codec.rotate_key(KEY)
        codec.append({"a": 1})
    with pytest.raises(KeyRequiredError):
        ConversationCodec(path, password="pw")
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == [*messages(2), {"a": 1}]


@pytest.mark.parametrize(
    "step",
    ["rewrite:temp-written", "rewrite:temp-synced", "rewrite:renamed", "rewrite:index-written"],
)
def test_crash_during_change_password_leaves_one_of_the_two(tmp_path: Path, step: str) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, password="old") as codec:
        codec.extend(messages(3))
    script = textwrap.dedent(
        f"""
        import os
        from conversation_codec import ConversationCodec, FileIO
        class Steps(FileIO):
            def step(self, name):
                if name == {step!r}:
                    os._exit(9)
        codec = ConversationCodec({str(path)!r}, password="old", io=Steps())
        codec.change_password("old", "new")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 9, proc.stderr
    opened = []
    for pw in ("old", "new"):
        try:
            with ConversationCodec(path, password=pw) as codec:
                assert codec.load() == messages(3)
                opened.append(pw)
        except DecryptionError:
            pass
    assert opened == (["old"] if step.startswith("rewrite:temp") else ["new"])

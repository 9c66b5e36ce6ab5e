"""sealing.py: the key or password a log is sealed with, and the identity it is bound to.

* Password-protected logs (scrypt in the header), change_password, and key/password interplay.
* Logs bound to the identity they are stored under (FORMAT.md §4.2): a swapped log is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import struct
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import _children
from conversation_codec import (
    AsyncConversationCodec,
    BindingError,
    ConversationCodec,
    ConversationStore,
    DecryptionError,
    FormatError,
    InvalidKeyError,
    KdfParameterError,
    KeyRequiredError,
    KeyTypeError,
    salvage,
)
from conversation_codec.cli import main
from conversation_codec.crypto import (
    SCRYPT_LOG2_N,
    SCRYPT_P,
    SCRYPT_R,
    check_scrypt_params,
    password_master,
)
from conversation_codec.format.header import decode_sealed_header

from conftest import KEY, OTHER_KEY, messages, snapshot

VECTORS = Path(__file__).parent.parent / "spec" / "vectors"


def header_fields(path: Path) -> tuple[int, int]:
    """Return ``(format_version, header_flags)`` of a sealed log (FORMAT.md §3.1)."""
    version, flags = struct.unpack_from("<H4xH", path.read_bytes(), 8)
    return version, flags


def plain_header(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes().split(b"\n", 1)[0]))


def copy_log(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    shutil.copyfile(str(src) + ".idx", str(dst) + ".idx")


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_a_log_swapped_inside_a_store_is_refused(tmp_path: Path, key: str | None) -> None:
    store = ConversationStore(tmp_path, encryption_key=key, durability="flush")
    for cid in ("alice", "bob"):
        with store.open(cid) as codec:
            codec.extend([{"role": "user", "content": f"I am {cid}"}])
    saved = tmp_path / "saved"
    saved.mkdir()
    copy_log(store.path("alice"), saved / "alice.log")
    copy_log(store.path("bob"), store.path("alice"))
    before = snapshot(tmp_path)
    with pytest.raises(BindingError, match="another context") as caught:
        store.open("alice")
    assert isinstance(caught.value, DecryptionError)  # callers refusing a log keep doing so
    assert str(store.path("alice")) in str(caught.value)
    assert snapshot(tmp_path) == before  # nothing read, created or changed
    with store.open("bob") as codec:
        assert codec.load() == [{"role": "user", "content": "I am bob"}]
        assert codec.verify().ok
    copy_log(saved / "alice.log", store.path("alice"))  # put Alice's own log back
    with store.open("alice") as codec:
        assert codec.load() == [{"role": "user", "content": "I am alice"}]
        codec.append({"role": "user", "content": "still me"})


def test_a_header_swapped_after_open_is_authenticated_again(tmp_path: Path) -> None:
    # A codec remembers the headers it authenticated by their exact bytes (the probe at
    # open and the first read share one check): any other header bytes are checked anew.
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    for cid in ("alice", "bob"):
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": f"I am {cid}"})
    other = ConversationStore(tmp_path / "other", encryption_key=OTHER_KEY, durability="flush")
    with other.open("alice") as codec:
        codec.append({"role": "user", "content": "another key"})
    saved = tmp_path / "saved"
    saved.mkdir()
    copy_log(store.path("alice"), saved / "alice.log")
    with store.open("alice") as codec:  # the probe authenticated Alice's header
        copy_log(store.path("bob"), store.path("alice"))
        with pytest.raises(BindingError, match="another context"):
            codec.load()
        copy_log(other.path("alice"), store.path("alice"))
        with pytest.raises(DecryptionError):
            codec.load()
        copy_log(saved / "alice.log", store.path("alice"))
        assert codec.load() == [{"role": "user", "content": "I am alice"}]


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_each_conversation_still_opens_its_own_log(tmp_path: Path, key: str | None) -> None:
    store = ConversationStore(tmp_path, encryption_key=key, durability="flush")
    for cid in ("alice", "Alice", "bob/../x"):
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": cid})
    for cid in ("alice", "Alice", "bob/../x"):
        with store.open(cid) as codec:
            assert codec.load() == [{"role": "user", "content": cid}]
            assert codec.info().format_version == 2
    assert [c.conversation_id for c in store.infos()] == ["Alice", "alice", "bob/../x"]


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_bare_codec_with_a_context(tmp_path: Path, key: str | None) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, key, durability="flush", context="alice") as codec:
        codec.extend(messages(3))
    if key is None:
        header = plain_header(path)
        assert header["conversation_codec"] == 2 and len(header["context_sha256"]) == 64
        assert "alice" not in path.read_text().split("\n", 1)[0]
    else:
        assert header_fields(path) == (2, 1)
    with ConversationCodec(path, key, context="alice") as codec:
        assert codec.load() == messages(3)
    with pytest.raises(BindingError, match="another context"):
        ConversationCodec(path, key, context="bob")
    with pytest.raises(BindingError, match="open it with context="):
        ConversationCodec(path, key)
    if key is not None:  # a wrong key stays a plain DecryptionError: the key is judged first
        with pytest.raises(DecryptionError) as caught:
            ConversationCodec(path, OTHER_KEY, context="alice")
        assert not isinstance(caught.value, BindingError)


def test_password_logs_bind_too(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    with ConversationCodec(path, password="hunter2", context="alice") as codec:
        codec.append({"role": "user", "content": "hi"})
    assert header_fields(path) == (2, 1)
    with pytest.raises(BindingError):
        ConversationCodec(path, password="hunter2", context="bob")
    with ConversationCodec(path, password="hunter2", context="alice") as codec:
        codec.change_password("hunter2", "correct horse")
    with ConversationCodec(path, password="correct horse", context="alice") as codec:
        assert len(codec) == 1


def test_the_bound_flag_and_the_binding_mac_are_authenticated(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, KEY, context="alice") as codec:
        codec.append({"role": "user", "content": "hi"})
    data = path.read_bytes()
    unflagged = bytearray(data)
    unflagged[14] = 0  # claim "unbound": the header MAC covers header_flags
    path.write_bytes(bytes(unflagged))
    with pytest.raises(DecryptionError) as caught:
        ConversationCodec(path, KEY)
    assert not isinstance(caught.value, BindingError)
    for at in (80, 111):  # any bit of the binding MAC
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(BindingError):
            ConversationCodec(path, KEY, context="alice")
    path.write_bytes(data[:100])  # the file ends inside the binding MAC
    with pytest.raises(FormatError, match="truncated"):
        ConversationCodec(path, KEY, context="alice")


@pytest.mark.parametrize("name", ["sealed_log.json", "plain_log.json"])
def test_a_version_1_log_opens_with_and_without_a_context(tmp_path: Path, name: str) -> None:
    vector = json.loads((VECTORS / name).read_text())
    path = tmp_path / "old.log"
    path.write_bytes(bytes.fromhex(vector["log_hex"]))
    key = vector["key"]
    with ConversationCodec(path, key) as codec:
        assert codec.load() == vector["messages"]
    with ConversationCodec(path, key, context="alice") as codec:
        assert codec.load() == vector["messages"]
        codec.append({"role": "user", "content": "more"})  # an append does not bind
        assert codec.info().format_version == 1
    with ConversationCodec(path, key, context="bob") as codec:  # unbound: any context opens
        assert len(codec) == 4


@pytest.mark.parametrize("name", ["sealed_log.json", "plain_log.json"])
@pytest.mark.parametrize("rewrite", ["compact", "replace", "save"])
def test_a_rewrite_binds_a_version_1_log(tmp_path: Path, name: str, rewrite: str) -> None:
    vector = json.loads((VECTORS / name).read_text())
    path = tmp_path / "old.log"
    path.write_bytes(bytes.fromhex(vector["log_hex"]))
    key = vector["key"]
    wanted = vector["messages"]
    with ConversationCodec(path, key, context="alice") as codec:
        if rewrite == "compact":
            codec.compact()
        elif rewrite == "replace":
            codec.replace(wanted)
        else:
            wanted = [*vector["messages"][:1], {"role": "user", "content": "edited"}]
            codec.load()  # a diverging save() needs the whole history seen (ConflictError)
            codec.save(wanted)
        assert codec.info().format_version == 2
    with ConversationCodec(path, key, context="alice") as codec:
        assert codec.load() == wanted
    with pytest.raises(BindingError):
        ConversationCodec(path, key)
    with pytest.raises(BindingError):
        ConversationCodec(path, key, context="bob")


def test_a_log_without_context_stays_version_1(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, KEY) as codec:
        codec.extend(messages(2))
        codec.compact()
        assert codec.info().format_version == 1
    assert header_fields(path) == (1, 0)
    with ConversationCodec(tmp_path / "p.log") as codec:
        codec.append({"a": 1})
    assert plain_header(tmp_path / "p.log") == {
        "conversation_codec": 1,
        "log_id": plain_header(tmp_path / "p.log")["log_id"],
    }


def test_a_plain_log_records_its_context_and_refuses_another(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    for path, cid in ((a, "alice"), (b, "bob")):
        with ConversationCodec(path, context=cid) as codec:
            codec.append({"role": "user", "content": cid})
    copy_log(b, a)
    before = snapshot(tmp_path)
    with pytest.raises(BindingError, match="another context"):
        ConversationCodec(a, context="alice")
    assert snapshot(tmp_path) == before
    # The recorded context is a plain hash that anyone can rewrite: it catches accidents only.
    bob, alice = (hashlib.sha256(c).hexdigest().encode() for c in (b"bob", b"alice"))
    a.write_bytes(a.read_bytes().replace(bob, alice, 1))
    with ConversationCodec(a, context="alice") as codec:
        assert codec.load() == [{"role": "user", "content": "bob"}]


@pytest.mark.parametrize(
    ("context", "error"), [(5, TypeError), ("", ValueError), ("\ud800", ValueError)]
)
def test_context_must_be_a_non_empty_str(tmp_path: Path, context: Any, error: type) -> None:
    with pytest.raises(error, match="context"):
        ConversationCodec(tmp_path / "c.log", KEY, context=context)
    assert not list(tmp_path.iterdir())


def test_async_open_takes_a_context(tmp_path: Path) -> None:
    path = tmp_path / "c.log"

    async def main_() -> None:
        async with await AsyncConversationCodec.open(path, KEY, context="alice") as codec:
            await codec.append({"role": "user", "content": "hi"})
        with pytest.raises(BindingError):
            await AsyncConversationCodec.open(path, KEY, context="bob")

    asyncio.run(main_())
    assert header_fields(path) == (2, 1)


def test_salvage_keeps_the_binding(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.log", tmp_path / "dst.log"
    with ConversationCodec(src, KEY, context="alice") as codec:
        codec.extend(messages(3))
    report = salvage(src, dst, encryption_key=KEY, context="alice")
    assert report.recovered == 3
    with ConversationCodec(dst, KEY, context="alice") as codec:
        assert codec.load() == messages(3)
    with pytest.raises(BindingError):
        ConversationCodec(dst, KEY)


def test_cli_opens_a_bound_log_with_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ConversationStore(tmp_path, encryption_key=KEY)
    with store.open("user-42") as codec:
        codec.append({"role": "user", "content": "hi"})
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    path = str(store.path("user-42"))
    assert main(["cat", path]) == 1
    assert "context" in capsys.readouterr().err
    assert main(["cat", "--context", "user-42", path]) == 0
    assert "hi" in capsys.readouterr().out
    assert main(["verify", "--context", "user-42", path]) == 0


@pytest.mark.real_scrypt_cost  # the header holds what writers use
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


@pytest.mark.parametrize(
    ("new", "error", "expected"),
    [
        ("", InvalidKeyError, "new password must be a non-empty str"),
        (None, KeyTypeError, "new password must be a non-empty str, not NoneType"),
        (b"pw2", KeyTypeError, "new password must be a non-empty str, not bytes"),
    ],
)
def test_change_password_refuses_what_the_constructor_refuses(
    tmp_path: Path, password_log: bytes, new: object, error: type[Exception], expected: str
) -> None:
    # The same error classes as ConversationCodec(password=...): a plain ValueError before.
    path = tmp_path / "chat.log"
    path.write_bytes(password_log)
    with ConversationCodec(path, password="pw") as codec:
        with pytest.raises(error, match=expected):
            codec.change_password("pw", new)  # type: ignore[arg-type]
        with pytest.raises(KeyTypeError, match="old password must be a str, not NoneType"):
            codec.change_password(None, "pw2")  # type: ignore[arg-type]
    assert path.read_bytes() == password_log


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
    done = _children.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
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
    proc = _children.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
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

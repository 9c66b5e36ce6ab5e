"""Logs bound to the identity they are stored under (FORMAT.md §4.2): a swapped log is refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import (
    AsyncConversationCodec,
    BindingError,
    ConversationCodec,
    ConversationStore,
    DecryptionError,
    FormatError,
    salvage,
)
from conversation_codec.cli import main

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

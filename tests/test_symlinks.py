"""Symbolic links planted beside a log are never followed (issue 12 §1, FORMAT.md §1).

Someone who can write to the history directory but holds no key plants a link where the
library creates, writes, locks or deletes a file. Each path gets a test: the operation is
refused with a ``StorageError`` naming the link (or, for the CLI, a non-zero exit naming
it); the link's target keeps its bytes and mtime, a dangling link's target is never
created; and whatever was stored before is still there.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

import _children
from conversation_codec import (
    ConversationCodec,
    ConversationStore,
    KeyFileError,
    StorageError,
    load_or_create_key,
)
from conversation_codec.attachments import BlobStore
from conversation_codec.cli import main

# Not ``from conversation_codec import migrate``: once any module has imported the submodule
# conversation_codec.migrate, that name is the submodule (the lazy __getattr__ never runs).
from conversation_codec.maintenance.migrate import migrate

from conftest import KEY

_OLD = 1_000_000_000  # seconds: a victim's mtime, so that any write to it shows
_PRECIOUS = b"precious bytes that must not change\n" * 4
_IMAGE = base64.b64encode(random.Random(12).randbytes(4096)).decode("ascii")


def _image_message(text: str = "look") -> dict[str, Any]:
    url = f"data:image/png;base64,{_IMAGE}"
    return {"role": "user", "content": [{"type": "text", "text": text}, {"image_url": url}]}


def _victim(tmp_path: Path) -> Path:
    """A file outside the history directory that the attacker wants overwritten."""
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(_PRECIOUS)
    os.utime(victim, (_OLD, _OLD))
    return victim


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _plant(link: Path, tmp_path: Path, kind: str) -> tuple[Path, tuple[bytes, int] | None]:
    """Make ``link`` point at a victim file ("victim") or at a missing one ("dangling")."""
    if kind == "victim":
        target = _victim(tmp_path)
        link.symlink_to(target)
        return target, _state(target)
    target = tmp_path / "elsewhere" / "created-through-the-link"
    target.parent.mkdir(exist_ok=True)
    link.symlink_to(target)
    return target, None


def _untouched(target: Path, before: tuple[bytes, int] | None) -> bool:
    if before is None:
        return not os.path.lexists(target)
    return _state(target) == before


def _codec(path: Path, **kwargs: Any) -> ConversationCodec:
    kwargs.setdefault("encryption_key", KEY)
    kwargs.setdefault("durability", "flush")
    return ConversationCodec(path, **kwargs)


def _stored(path: Path, messages: list[dict[str, Any]], **kwargs: Any) -> None:
    with _codec(path, **kwargs) as codec:
        codec.extend(messages)


def _act(path: Path, act: str, **kwargs: Any) -> None:
    """Open a codec on ``path`` and append, load or compact."""
    with _codec(path, **kwargs) as codec:
        if act == "append":
            codec.append({"role": "user", "content": "more"})
        elif act == "load":
            codec.load()
        else:
            codec.compact()


MESSAGES = [{"role": "user", "content": f"message {i}"} for i in range(3)]
BOTH = pytest.mark.parametrize("kind", ["victim", "dangling"])


# -- the log itself ----------------------------------------------------------------------


def test_log_symlink_to_another_conversation_is_refused(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "history", encryption_key=KEY, durability="flush")
    with store.open("bob") as bob:
        bob.extend(MESSAGES)
    before = {p.name: _state(p) for p in (tmp_path / "history").iterdir()}
    (tmp_path / "history" / "alice.log").symlink_to("bob.log")
    for act in ("append", "load"):
        with pytest.raises(StorageError, match=r"alice\.log is a symbolic link"):
            _act(store.path("alice"), act)
    assert {p.name: _state(p) for p in (tmp_path / "history").iterdir() if p.name in before} == (
        before
    )
    with store.open("bob") as bob:
        assert bob.load() == MESSAGES


@BOTH
def test_log_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    link = tmp_path / "c.log"
    target, before = _plant(link, tmp_path, kind)
    with pytest.raises(StorageError, match=r"c\.log is a symbolic link"):
        _act(link, "append")
    assert _untouched(target, before) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.log", "elsewhere"]


def test_a_symlinked_directory_above_the_log_keeps_working(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "history").symlink_to(tmp_path / "disk")
    _stored(tmp_path / "history" / "c.log", MESSAGES)
    with _codec(tmp_path / "history" / "c.log") as codec:
        codec.append({"role": "user", "content": "more"})
        assert codec.load() == [*MESSAGES, {"role": "user", "content": "more"}]
    assert (tmp_path / "disk" / "c.log").is_file()


@pytest.mark.parametrize("name", ["c.log", "c.log.idx", "c.log.lock"])
def test_a_directory_where_a_file_belongs_is_a_clear_error(tmp_path: Path, name: str) -> None:
    if name != "c.log":
        _stored(tmp_path / "c.log", MESSAGES)
        os.unlink(tmp_path / name)
    (tmp_path / name).mkdir()
    with pytest.raises(StorageError, match=rf"{name} is a directory"):
        _act(tmp_path / "c.log", "append")
    if name != "c.log":
        os.rmdir(tmp_path / name)
        with _codec(tmp_path / "c.log") as codec:
            assert codec.load() == MESSAGES


# -- sidecars ----------------------------------------------------------------------------


@BOTH
def test_index_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "c.log"
    link = tmp_path / "c.log.idx"
    target, before = _plant(link, tmp_path, kind)
    # Before the first append: the log is not created, the target not written.
    with pytest.raises(StorageError, match=r"c\.log\.idx is a symbolic link"):
        _act(log, "append")
    assert _untouched(target, before) and not log.exists()
    # Beside an existing log: readers and writers refuse; nothing stored is lost.
    link.unlink()
    _stored(log, MESSAGES)
    link.unlink()
    link.symlink_to(target)
    stored = _state(log)
    for act in ("load", "append"):
        with pytest.raises(StorageError, match=r"c\.log\.idx is a symbolic link"):
            _act(log, act)
    assert _untouched(target, before) and _state(log) == stored
    link.unlink()
    with _codec(log) as codec:
        assert codec.load() == MESSAGES


# A lock link could make the writer spin at 100% CPU (issue 12): run in a child process
# with a hard timeout, so that a regression fails instead of hanging the suite.
_LOCK_CHILD = """
import json, sys, time
from conversation_codec import ConversationCodec
path, key, act = sys.argv[1:]
start = time.monotonic()
try:
    with ConversationCodec(path, encryption_key=key, lock_timeout=0.5) as codec:
        codec.load() if act == "load" else codec.append({"role": "user", "content": "hi"})
    outcome = "ok"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}))
"""


def _in_child(log: Path, act: str) -> dict[str, Any]:
    done = _children.run(
        [sys.executable, "-c", _LOCK_CHILD, str(log), KEY, act],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("kind", "existing"),
    [  # each kind and each log state once by default (a process per act: ~0.3 s each)
        pytest.param("victim", False, id="new-log-victim"),
        pytest.param("dangling", True, id="existing-log-dangling"),
        pytest.param("dangling", False, id="new-log-dangling", marks=pytest.mark.slow),
        pytest.param("victim", True, id="existing-log-victim", marks=pytest.mark.slow),
    ],
)
def test_lock_symlink_is_refused_at_once(tmp_path: Path, kind: str, existing: bool) -> None:
    log = tmp_path / "c.log"
    if existing:
        _stored(log, MESSAGES)
        os.unlink(tmp_path / "c.log.lock")
    stored = _state(log) if existing else None
    target, before = _plant(tmp_path / "c.log.lock", tmp_path, kind)
    for act in ("append", "load") if existing else ("append",):
        result = _in_child(log, act)
        assert result["outcome"].startswith("StorageError: ")
        assert "c.log.lock is a symbolic link" in result["outcome"]
        assert result["seconds"] < 5
    assert _untouched(target, before)
    if existing:
        assert _state(log) == stored
        (tmp_path / "c.log.lock").unlink()
        with _codec(log) as codec:
            assert codec.load() == MESSAGES
    else:
        assert not log.exists()


# -- attachments -------------------------------------------------------------------------


def _somedir(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    somedir = tmp_path / "elsewhere" / "documents"
    somedir.mkdir(parents=True)
    for name in ("thesis.tex", "a" * 64, ".tmp-0123456789abcdef"):
        (somedir / name).write_bytes(_PRECIOUS)
        os.utime(somedir / name, (_OLD, _OLD))
    return somedir, {p.name: _state(p) for p in somedir.iterdir()}


def test_blobs_directory_symlink_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    _stored(log, MESSAGES, attachments="external")
    somedir, before = _somedir(tmp_path)
    (tmp_path / "c.log.blobs").symlink_to(somedir)
    stored = _state(log)
    with _codec(log, attachments="external") as codec:
        with pytest.raises(StorageError, match=r"c\.log\.blobs is a symbolic link"):
            codec.append(_image_message())
        with pytest.raises(StorageError, match=r"c\.log\.blobs is a symbolic link"):
            codec.compact()
        with pytest.raises(StorageError, match=r"c\.log\.blobs is a symbolic link"):
            codec.clear()
        assert codec.load() == MESSAGES
    with _codec(log) as codec:  # without attachments="external", clear() sweeps it too
        with pytest.raises(StorageError, match=r"c\.log\.blobs is a symbolic link"):
            codec.clear()
        assert codec.load() == MESSAGES
    assert {p.name: _state(p) for p in somedir.iterdir()} == before
    assert _state(log)[0] == stored[0]


@BOTH
def test_blob_file_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    blobs = BlobStore.for_key(tmp_path / "c.log.blobs", KEY)
    kept = blobs.put(b"an attachment already stored")
    name = blobs.name(b"the attacker knows nothing, but say the name leaked")
    target, before = _plant(tmp_path / "c.log.blobs" / name, tmp_path, kind)
    with pytest.raises(StorageError, match=rf"{name} is a symbolic link"):
        blobs.put(b"the attacker knows nothing, but say the name leaked")
    with pytest.raises(StorageError, match=rf"{name} is a symbolic link"):
        blobs.get(name)
    with pytest.raises(StorageError, match=rf"{name} is a symbolic link"):
        blobs.delete_unreferenced([kept])
    with pytest.raises(StorageError, match=rf"{name} is a symbolic link"):
        blobs.clear()
    assert _untouched(target, before)
    assert blobs.get(kept) == b"an attachment already stored"


@pytest.mark.parametrize("where", ["log", "blobs"])
def test_temp_file_symlink_is_refused(tmp_path: Path, where: str) -> None:
    log = tmp_path / "c.log"
    _stored(log, MESSAGES, attachments="external")
    if where == "log":
        link = tmp_path / "c.log.tmp-0123456789abcdef"
    else:
        _stored(log, [_image_message()], attachments="external")
        link = tmp_path / "c.log.blobs" / ".tmp-0123456789abcdef"
    target, before = _plant(link, tmp_path, "victim")
    os.utime(link, (_OLD, _OLD), follow_symlinks=False)  # a leftover: old enough to sweep
    with pytest.raises(StorageError, match=r"\.tmp-0123456789abcdef is a symbolic link"):
        _act(log, "append" if where == "log" else "compact", attachments="external")
    assert _untouched(target, before) and link.is_symlink()
    link.unlink()
    with _codec(log, attachments="external") as codec:
        assert codec.load() == [*MESSAGES, *([_image_message()] if where == "blobs" else [])]


# -- key files, exports, migrations ------------------------------------------------------


def test_key_file_symlink_is_never_written_through(tmp_path: Path) -> None:
    # A missing key file is created; through a dangling link that would write elsewhere.
    # (A link to an existing private key file is read: it is not written, and secret stores
    # such as Kubernetes' mount keys as links; test_keyfile.py covers that.)
    link = tmp_path / "chat.key"
    target, before = _plant(link, tmp_path, "dangling")
    with pytest.raises(KeyFileError, match=r"chat\.key is a symlink to a missing file"):
        load_or_create_key(link)
    assert _untouched(target, before) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.key", "elsewhere"]


@BOTH
def test_keygen_out_symlink_is_refused(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "new.key"
    target, before = _plant(link, tmp_path, kind)
    code = main(["keygen", "--out", str(link)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert f"{link} is a symbolic link" in err
    assert _untouched(target, before) and link.is_symlink()


@BOTH
def test_export_output_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "c.log"
    _stored(log, MESSAGES)
    link = tmp_path / "export.jsonl"
    target, before = _plant(link, tmp_path, kind)
    with _codec(log) as codec, pytest.raises(StorageError, match=r"export\.jsonl is a symbolic"):
        codec.export(link)
    assert _untouched(target, before) and link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _legacy(tmp_path: Path) -> tuple[Path, tuple[bytes, int]]:
    src = tmp_path / "chat.jsonl"
    src.write_bytes(b"".join(json.dumps(m).encode() + b"\n" for m in MESSAGES))
    return src, _state(src)


@BOTH
def test_migrate_output_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    src, stored = _legacy(tmp_path)
    link = tmp_path / "chat.log"
    target, before = _plant(link, tmp_path, kind)
    with pytest.raises(StorageError, match=r"chat\.log is a symbolic link"):
        migrate(src, link)
    assert _untouched(target, before) and link.is_symlink() and _state(src) == stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "chat.log", "elsewhere"]


@BOTH
def test_migrate_backup_symlink_is_refused(tmp_path: Path, kind: str) -> None:
    src, stored = _legacy(tmp_path)
    link = tmp_path / "chat.jsonl.bak"
    target, before = _plant(link, tmp_path, kind)
    with pytest.raises(StorageError, match=r"chat\.jsonl\.bak is a symbolic link"):
        migrate(src)
    assert _untouched(target, before) and link.is_symlink() and _state(src) == stored
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chat.jsonl",
        "chat.jsonl.bak",
        "elsewhere",
    ]


# -- a reader of no log ----------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["link", "dangling-link", "directory", "fifo"])
def test_a_reader_of_no_log_leaves_what_is_at_its_lock_path_alone(
    tmp_path: Path, plant: str
) -> None:
    # A reader opens an existing P.lock without first looking for the log (issue 15); with
    # no log there, whatever sits at P.lock is no business of a read: an empty history, as
    # before, the thing untouched and nothing created.
    lock = tmp_path / "c.log.lock"
    if plant == "link":
        target = tmp_path / "elsewhere"
        target.write_bytes(_PRECIOUS)
        os.utime(target, (_OLD, _OLD))
        lock.symlink_to(target)
    elif plant == "dangling-link":
        lock.symlink_to(tmp_path / "nowhere")
    elif plant == "directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    before = sorted(p.name for p in tmp_path.iterdir())
    with _codec(tmp_path / "c.log") as codec:
        assert codec.load() is None
        assert codec.tail(3) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if plant == "link":
        assert _state(tmp_path / "elsewhere") == (_PRECIOUS, _OLD * 10**9)
    with (  # a writer still refuses it
        pytest.raises(StorageError, match=r"c\.log\.lock"),
        _codec(tmp_path / "c.log") as codec,
    ):
        codec.append({"role": "user", "content": "hi"})
    assert not (tmp_path / "c.log").exists()


def test_a_log_under_a_regular_file_reads_as_no_log(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with _codec(tmp_path / "f" / "c.log") as codec:
        assert codec.load() is None
    assert (tmp_path / "f").read_bytes() == b"x"


def test_a_socket_at_the_log_path_is_named_as_not_a_regular_file(tmp_path: Path) -> None:
    # open() says ENXIO for a socket: looked at, it is named for what it is, as an lstat
    # first used to name it.
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "c.log"))
        with pytest.raises(StorageError, match="not a regular file") as info:
            _codec(tmp_path / "c.log")
        assert info.value.errno == errno.EINVAL
    finally:
        server.close()


# -- deleting a conversation -------------------------------------------------------------------


def _plant_thing(at: Path, plant: str) -> None:
    if plant == "directory":
        at.mkdir()
    elif plant == "fifo":
        os.mkfifo(at)
    else:
        at.symlink_to(at.parent / "nowhere")


@pytest.mark.parametrize("plant", ["directory", "fifo", "link"])
@pytest.mark.parametrize("sidecar", [".kwi", ".tmp-0123456789abcdef", ".kwi.tmp-0123456789abcdef"])
@pytest.mark.parametrize("how", ["clear", "store-delete"])
def test_a_thing_at_a_sidecar_refuses_a_delete_before_anything_goes(
    tmp_path: Path, plant: str, sidecar: str, how: str
) -> None:
    # As for P.blobs: every name the delete would remove is looked at first, so a refusal
    # leaves the conversation whole (log, index, blobs, lock) and still listed.
    store = ConversationStore(tmp_path, encryption_key=KEY, attachments="external")
    with store.open("u1") as codec:
        codec.extend([_image_message(), *MESSAGES])
    log = store.path("u1")
    _plant_thing(Path(f"{log}{sidecar}"), plant)
    before = sorted(p.name for p in tmp_path.iterdir())
    blobs = sorted(p.name for p in Path(f"{log}.blobs").iterdir())
    what = "is a directory" if plant == "directory" else "is a symbolic link|not a regular file"
    with pytest.raises(StorageError, match=what):
        if how == "clear":
            with store.open("u1") as codec:
                codec.clear()
        else:
            store.delete("u1")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in Path(f"{log}.blobs").iterdir()) == blobs
    assert store.ids() == ["u1"]
    with store.open("u1") as codec:
        assert codec.load() == [_image_message(), *MESSAGES]

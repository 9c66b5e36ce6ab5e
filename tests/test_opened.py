"""storage/file/opened.py: the file a codec's probe opened is kept for its first read, and a
small log is read whole under the lock (issue 15) — never at the price of a stale answer.

Every test here would fail if the kept file or the bytes read whole were trusted after the
log changed: by another process (pop, then an append of the same size: the same bytes
count, other content), by the same codec, by a rename over the log, or by a copy over it in
place (the same inode, another header).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from tests._writer import SCRIPT, subprocess_env
from tests.conftest import KEY, collecting

import _children
from conversation_codec import BindingError, ConversationCodec, ConversationStore


def _msg(i: int, text: str = "message") -> dict[str, Any]:
    return {"role": "user", "content": f"{text} {i:04d}"}


def _other_process(call: str, path: Path, message: dict[str, Any] | None = None) -> None:
    argv = [sys.executable, SCRIPT, "op", call, str(path)]
    if message is not None:
        argv += ["--message", json.dumps(message)]
    _children.run(argv, env=subprocess_env(KEY), capture_output=True, timeout=60, check=True)


def _written(tmp_path: Path, count: int) -> Path:
    """A sealed log of ``count`` messages at ``tmp_path / "c.log"``."""
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend([_msg(i) for i in range(count)])
    return path


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_small_log_is_read_once_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reopen + tail of a small log reads the log twice: its header at the probe, then
    # all of it under the lock, where the check of the last index entry and the tail
    # both read from those bytes. A later read reads only the lock's counters, which say
    # the log is unchanged. Counted on the real reads, by the file each one reads.
    path = _written(tmp_path, 12)
    reads: list[str] = []
    real_pread = os.pread

    def spy(fd: int, n: int, offset: int) -> bytes:
        reads.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", spy)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        got = codec.tail(20)
        again = codec.get(3)  # a later read, the log unchanged: from memory too
    monkeypatch.undo()
    assert got == [_msg(i) for i in range(12)] and again == _msg(3)
    assert sorted(reads) == ["c.log", "c.log", "c.log.idx", "c.log.lock", "c.log.lock"]


@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_a_reader_sees_what_another_process_wrote_over_the_same_bytes(
    tmp_path: Path, durability: str
) -> None:
    # The other process pops the last message and appends one of the same size: the file
    # is as long as before, at the same inode, with other bytes at its end. The reader's
    # bytes read whole are of the counters before: it must read the file again.
    path = _written(tmp_path, 5)
    size = path.stat().st_size
    with ConversationCodec(path, encryption_key=KEY, durability=durability) as reader:
        assert reader.tail(2) == [_msg(3), _msg(4)]
        _other_process("pop", path)
        _other_process("append", path, _msg(4, "changed"))
        assert path.stat().st_size == size  # the same length: only the content tells
        assert reader.tail(2) == [_msg(3), _msg(4, "changed")]
        assert reader.get(4) == _msg(4, "changed")


def test_the_same_codec_reads_its_own_writes_after_reading_a_small_log(tmp_path: Path) -> None:
    path = _written(tmp_path, 5)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.get(4) == _msg(4)
        assert codec.pop() == _msg(4)
        codec.append(_msg(4, "changed"))
        assert codec.get(4) == _msg(4, "changed")
        with codec.transaction():  # inside one hold, too
            codec.pop()
            codec.append(_msg(4, "again!!"))
            assert codec.tail(1) == [_msg(4, "again!!")]
        assert codec.load() == [*(_msg(i) for i in range(4)), _msg(4, "again!!")]


def test_a_log_renamed_over_after_the_probe_is_read_from_its_new_file(tmp_path: Path) -> None:
    # The probe kept the old file open; under the lock the path names another file (a
    # rewrite by another process renames its new file over the log): that one is read.
    path, other = tmp_path / "c.log", tmp_path / "o.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend([_msg(i) for i in range(3)])
    with ConversationCodec(other, encryption_key=KEY) as codec:
        codec.extend([_msg(i, "other") for i in range(4)])
    with ConversationCodec(path, encryption_key=KEY) as codec:  # probed here
        os.rename(other, path)
        assert codec.load() == [_msg(i, "other") for i in range(4)]


def test_a_log_removed_after_the_probe_reads_as_empty(tmp_path: Path) -> None:
    path = _written(tmp_path, 3)
    with collecting():
        before = _open_fds()
        with ConversationCodec(path, encryption_key=KEY) as codec:
            with ConversationCodec(path, encryption_key=KEY) as other:
                other.clear()
            assert codec.tail(5) == [] and len(codec) == 0
        assert _open_fds() == before  # the probed file was closed


def test_a_log_copied_over_in_place_after_the_probe_is_identified_again(
    tmp_path: Path,
) -> None:
    # cp keeps the inode: the kept file is the one at the path, but its header is not
    # the one the probe authenticated. Bob's log copied over Alice's is refused.
    store = ConversationStore(tmp_path, encryption_key=KEY)
    for cid in ("alice", "bob"):
        with store.open(cid) as codec:
            codec.append(_msg(0, cid))
    alice, bob = store.path("alice"), store.path("bob")
    saved = alice.read_bytes()
    with store.open("alice") as codec:
        ino = alice.stat().st_ino
        with open(bob, "rb") as src, open(alice, "r+b") as dst:
            dst.truncate(0)
            shutil.copyfileobj(src, dst)
        assert alice.stat().st_ino == ino
        with pytest.raises(BindingError):
            codec.load()
    alice.write_bytes(saved)
    with store.open("alice") as codec:
        assert codec.load() == [_msg(0, "alice")]


def test_counters_that_come_back_to_an_earlier_value_never_serve_old_bytes(
    tmp_path: Path,
) -> None:
    # P.lock emptied in place (FORMAT.md §16 tolerates it: it is made again) brings the
    # counters back to where they were when the reader read the log whole; what another
    # process wrote since (a pop, and an append of the same size at the same time) must
    # still be what the reader reads.
    path = tmp_path / "c.log"
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend([_msg(i) for i in range(3)], timestamps=[t0] * 3)
    os.unlink(f"{path}.lock")  # the reader's lock file is new: counters (inode, 0, 0)
    with ConversationCodec(path, encryption_key=KEY) as reader:
        assert reader.get(2) == _msg(2)
        child = (
            "import os, sys, datetime as d; from conversation_codec import ConversationCodec\n"
            "with ConversationCodec(sys.argv[1], encryption_key=os.environ['CC_TEST_KEY']) as c:\n"
            "    c.pop(); c.append({'role': 'user', 'content': 'MESSAGE 0002'},\n"
            "                      timestamp=d.datetime(2026, 1, 1, tzinfo=d.timezone.utc))\n"
        )
        _children.run(
            [sys.executable, "-c", child, str(path)],
            env=subprocess_env(KEY),
            check=True,
            timeout=60,
        )
        assert reader.get(2) == _msg(2, "MESSAGE")
        os.truncate(f"{path}.lock", 0)
        assert reader.get(2) == _msg(2, "MESSAGE")
        assert reader.load() == [_msg(0), _msg(1), _msg(2, "MESSAGE")]


def test_a_log_writable_only_after_the_probe_takes_the_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe could open the log only for reading (a read-only mount, a mode fixed
    # since): it keeps no file then, and the first write opens the log read-write.
    path = _written(tmp_path, 3)
    real = os.open

    def refusing(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(name) == str(path) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(name))
        return real(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    codec = ConversationCodec(path, encryption_key=KEY)
    monkeypatch.undo()
    with codec:
        assert codec.append(_msg(3)) == 3
        assert codec.load() == [_msg(i) for i in range(4)]


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "dropped"])
def test_a_codec_never_used_leaves_no_file_open(tmp_path: Path, closed: bool) -> None:
    # Closed, or dropped (never used nor closed, as an async open a caller cancelled
    # leaves it): the file its probe kept open is closed.
    path = _written(tmp_path, 1)
    with collecting():
        before = _open_fds()
        for _ in range(20):
            codec = ConversationCodec(path, encryption_key=KEY)
            if closed:
                codec.close()
            del codec
        gc.collect()
        assert _open_fds() == before

"""Leftover temp copies never outlive a deletion (issue 11 §6, FORMAT.md §8.4-§8.5).

A rewrite killed after writing its temp file leaves ``P.tmp-<16 hex>``: a whole copy of the
history. Such copies used to be swept by the next append only, so ``replace()`` + ``clear()``
left 1,024 "deleted" messages that ``salvage()`` brought back. Now every rewrite (compact,
prune, replace, rotate_key, change_password, save) and ``clear()`` sweeps them, holding the
writer lock. Each test then reads every file under the directory with every credential the
log ever had, as someone who finds the disk would, and finds nothing that was deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import subprocess_env
from conversation_codec import ConversationCodec
from conversation_codec.attachments import BlobStore
from conversation_codec.errors import ConversationCodecError
from conversation_codec.format.header import LOG_MAGIC
from conversation_codec.maintenance.migrate import migrate
from conversation_codec.maintenance.verify import salvage

from conftest import KEY, OTHER_KEY, Steps

TEMP = ".tmp-0123456789abcdef"  # FORMAT.md §1: P.tmp-<16 lowercase hex>
MIGRATING = ".migrating-fedcba9876543210"  # migrate's temp log for P (and its sidecars)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = datetime(2025, 11, 21, tzinfo=timezone.utc)
TIMEOUT = 60.0  # seconds for a child process


def gone(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"DELETED-{i} the old secret"}


def kept(i: int) -> dict[str, str]:
    return {"role": "assistant", "content": f"KEPT-{i} still here"}


def build(path: Path, **opts: object) -> None:
    """3 messages to delete (days 0-2), then 3 to keep (days 10-12)."""
    with ConversationCodec(path, durability="flush", **opts) as codec:  # type: ignore[arg-type]
        codec.extend(
            [gone(i) for i in range(3)] + [kept(i) for i in range(3)],
            timestamps=[T0 + timedelta(days=d) for d in (0, 1, 2, 10, 11, 12)],
        )


def plant(path: Path) -> dict[Path, bytes]:
    """Leave what crashes leave beside ``path`` (copies of the log), and files that are
    not leftovers of this log; return the latter, which must survive untouched."""
    data = path.read_bytes()
    for name in (TEMP, MIGRATING, MIGRATING + ".idx", MIGRATING + TEMP):
        Path(f"{path}{name}").write_bytes(data)
    Path(f"{path}{MIGRATING}.lock").write_bytes(bytes(16))
    others = {
        Path(f"{path}.bak"): b"the original a migration converted: the user's",
        Path(f"{path}.tmp-notours"): b"not a temp name of ours",
        Path(f"{path}.bak{TEMP}"): b"a migration's backup in progress: the user's source",
        path.parent / f"other.log{TEMP}": b"another log's temp",
    }
    for p, content in others.items():
        p.write_bytes(content)
    return others


def readable(folder: Path, creds: list[dict[str, str]]) -> list[str]:
    """Every message text any file under ``folder`` yields: sealed files are salvaged with
    each credential (as the issue's reporter recovered "deleted" messages), and every
    file is searched for the messages' plaintext."""
    scratch = folder.parent / f"{folder.name}-scratch"
    scratch.mkdir()
    found: list[str] = []
    for n, p in enumerate(sorted(q for q in folder.rglob("*") if q.is_file())):
        data = p.read_bytes()
        found += [
            m.decode() for m in (b"DELETED-0", b"DELETED-1", b"DELETED-2", b"KEPT-0") if m in data
        ]
        if not data.startswith(LOG_MAGIC):
            continue
        for k, cred in enumerate(creds):
            copy = scratch / f"{n}-{k}.log"
            shutil.copyfile(p, copy)
            try:
                salvage(copy, scratch / f"{n}-{k}.out", **cred)  # type: ignore[arg-type]
            except ConversationCodecError:
                continue  # not a log under this credential
            with ConversationCodec(scratch / f"{n}-{k}.out", **cred) as out:  # type: ignore[arg-type]
                found += [str(m["content"]) for m in out.load() or []]
    shutil.rmtree(scratch)
    return found


def deleted(found: list[str]) -> list[str]:
    return [t for t in found if "DELETED" in t]


_LEFTOVER = re.compile(r"chat\.log(\.tmp-[0-9a-f]{16}|\.migrating-[0-9a-f]{16}.*)")


def leftovers(folder: Path) -> list[str]:
    """The names of what crashed rewrites and migrations of ``chat.log`` left."""
    return sorted(n for n in os.listdir(folder) if _LEFTOVER.fullmatch(n))


def not_ours(name: str) -> bool:
    return name.endswith((".bak", ".tmp-notours", f".bak{TEMP}")) or name.startswith("other")


OPS: dict[str, Callable[[ConversationCodec], object]] = {
    "compact": lambda c: c.compact(),
    "prune": lambda c: c.prune(before=T0 + timedelta(days=5)),
    "replace": lambda c: c.replace([kept(i) for i in range(3)]),
    "save": lambda c: c.save([kept(i) for i in range(3)]),
    "clear": lambda c: c.clear(),
    "pop": lambda c: c.pop(),  # the copies may hold the popped message
}


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
@pytest.mark.parametrize("op", OPS)
def test_every_rewrite_and_clear_sweeps_leftovers(tmp_path: Path, key: str | None, op: str) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "chat.log"
    build(path, encryption_key=key)
    others = plant(path)
    cred = [{"encryption_key": key}] if key else [{}]
    assert len(deleted(readable(folder, cred))) >= 3 * 3  # the log and the copies hold them
    with ConversationCodec(path, encryption_key=key) as codec:
        if op == "save":
            codec.load()
        OPS[op](codec)
    assert leftovers(folder) == [], f"{op} left {leftovers(folder)}"
    assert {p: p.read_bytes() for p in others} == others  # not ours: untouched
    for p in others:
        p.unlink()  # what remains is the log's own files
    names = sorted(p.name for p in folder.iterdir())
    assert names == ([] if op == "clear" else ["chat.log", "chat.log.idx", "chat.log.lock"])
    if op not in ("compact", "pop"):  # compact deletes nothing, pop the last message only
        found = deleted(readable(folder, cred))
        assert found == [], f"{op} left deleted messages readable: {found}"


def test_rotate_key_leaves_nothing_under_the_old_key(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "chat.log"
    build(path, encryption_key=KEY)
    plant(path)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.rotate_key(OTHER_KEY)
    for name in os.listdir(folder):
        if not_ours(name):
            os.unlink(folder / name)
    assert leftovers(folder) == []
    assert readable(folder, [{"encryption_key": KEY}]) == []
    assert len(readable(folder, [{"encryption_key": OTHER_KEY}])) == 6


def test_change_password_leaves_nothing_under_the_old_password(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "chat.log"
    build(path, password="old password")
    Path(f"{path}{TEMP}").write_bytes(path.read_bytes())
    with ConversationCodec(path, password="old password") as codec:
        codec.change_password("old password", "new password")
    assert leftovers(folder) == []
    assert readable(folder, [{"password": "old password"}]) == []
    assert len(readable(folder, [{"password": "new password"}])) == 6


def test_rotate_key_sweeps_blob_temps(tmp_path: Path) -> None:
    """A put killed before its rename leaves ``P.blobs/.tmp-<hex>``: a blob sealed under
    the key of the day. A rotation must not leave it behind, however fresh it is."""
    path = tmp_path / "chat.log"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "QUJD" * 64}}
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.append({"role": "user", "content": [image]})
    blobs = Path(f"{path}.blobs")
    (name,) = os.listdir(blobs)
    (blobs / TEMP).write_bytes((blobs / name).read_bytes())
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.rotate_key(OTHER_KEY)
    old = BlobStore.for_key(blobs, KEY)
    assert TEMP not in os.listdir(blobs)
    for stored in os.listdir(blobs):
        with pytest.raises(ConversationCodecError):
            old.get(stored)


_KILLED_REWRITE = r"""
import os, signal, sys
from conversation_codec import ConversationCodec, FileIO
class Steps(FileIO):
    def step(self, step):
        if step == "rewrite:temp-synced":
            os.kill(os.getpid(), signal.SIGKILL)  # the temp copy is whole and synced
codec = ConversationCodec(sys.argv[1], encryption_key=os.environ["CC_TEST_KEY"], io=Steps())
codec.compact()
"""


def test_replace_then_clear_after_a_killed_rewrite_leaves_nothing(tmp_path: Path) -> None:
    """The issue's report: a real rewrite SIGKILLed, then replace() and clear()."""
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend([gone(i % 3) for i in range(1024)])
    child = _children.run(
        [sys.executable, "-c", _KILLED_REWRITE, str(path)],
        env=subprocess_env(KEY),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert len(leftovers(folder)) == 1  # the killed compaction's full copy
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.replace([kept(0)])
        assert leftovers(folder) == []
        assert deleted(readable(folder, [{"encryption_key": KEY}])) == []
        codec.clear()
    assert os.listdir(folder) == []


_PAUSED_REWRITE = r"""
import os, sys
from conversation_codec import ConversationCodec, FileIO
class Steps(FileIO):
    def step(self, step):
        if step == "rewrite:temp-synced":
            print("paused", flush=True)
            sys.stdin.readline()
codec = ConversationCodec(sys.argv[1], encryption_key=os.environ["CC_TEST_KEY"], io=Steps())
codec.compact()
print("done", flush=True)
"""


@pytest.mark.parametrize("op", ["clear", "compact"])
def test_a_rewrite_in_progress_keeps_its_temp_file(tmp_path: Path, op: str) -> None:
    """Another process's live temp file is not a leftover: sweeping waits for the lock."""
    path = tmp_path / "chat.log"
    build(path, encryption_key=KEY)
    child = _children.Popen(
        [sys.executable, "-c", _PAUSED_REWRITE, str(path)],
        env=subprocess_env(KEY),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"paused\n"
        (temp,) = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
        codec = ConversationCodec(path, encryption_key=KEY)
        worker = threading.Thread(target=OPS[op], args=(codec,))
        worker.start()
        time.sleep(0.3)  # the sweep would have happened by now, were it not for the lock
        assert temp.exists() and worker.is_alive()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"done\n"  # its rename found its temp file
        worker.join(TIMEOUT)
        codec.close()
    finally:
        child.kill()
        _, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode in (0, -signal.SIGKILL), err.decode()
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert len(codec) == (0 if op == "clear" else 6)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_migration_in_progress_keeps_its_temp_files(tmp_path: Path) -> None:
    """A migration into a log's path holds that log's writer lock, so a rewrite of the log
    (which sweeps ``<log>.migrating-*``) waits for it instead of deleting its files."""
    path = tmp_path / "chat.log"
    source = tmp_path / "old.jsonl"
    source.write_text('{"role": "user", "content": "migrated"}\n' * 3)
    during: dict[str, Any] = {}

    def fault(step: str) -> None:
        if step != "migrate:verified":
            return
        codec = ConversationCodec(path, encryption_key=KEY)
        worker = threading.Thread(target=lambda: during.update(kept=codec.compact().messages))
        worker.start()
        time.sleep(0.3)  # the sweep would have happened by now, were it not for the lock
        during.update(codec=codec, worker=worker, names=os.listdir(tmp_path))

    report = migrate(source, path, encryption_key=KEY, io=Steps(fault))
    during["worker"].join(TIMEOUT)
    during["codec"].close()
    assert report.converted
    assert any(re.fullmatch(r"chat\.log\.migrating-[0-9a-f]{16}", n) for n in during["names"])
    assert during["kept"] == 3  # the compaction ran after the commit, on the migrated log
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == [{"role": "user", "content": "migrated"}] * 3
    assert sorted(os.listdir(tmp_path)) == [
        "chat.log",
        "chat.log.idx",
        "chat.log.lock",
        "old.jsonl",
    ]


def test_a_codec_that_saw_no_log_reloads_after_a_migration(tmp_path: Path) -> None:
    """A migration announces its commit through the log's change counters (FORMAT.md
    §8.1), or a codec that last saw no log there would write a new one over it."""
    path = tmp_path / "chat.log"
    source = tmp_path / "old.jsonl"
    source.write_text('{"role": "user", "content": "migrated"}\n' * 3)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.pop() is None  # a write transaction that found no log
        migrate(source, path, encryption_key=KEY)
        codec.append({"role": "user", "content": "after"})
        assert codec.load() == [{"role": "user", "content": "migrated"}] * 3 + [
            {"role": "user", "content": "after"}
        ]


def test_a_leftover_made_after_a_remembered_listing_is_still_swept(tmp_path: Path) -> None:
    """A store's root is listed once and remembered while its mtime stands (a codec per turn
    would list thousands of names each time); a name made since changes the mtime, so a
    crashed rewrite's temp file planted after the listing is still swept at a first write."""
    from conversation_codec import ConversationStore

    store = ConversationStore(tmp_path / "root", encryption_key=KEY)
    for cid in ("a", "b"):
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": cid})
    root = tmp_path / "root"
    old = time.time_ns() - 10**9
    os.utime(root, ns=(old, old))  # settled: the next listing is remembered
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "listed"})
    leftover = root / "b.log.tmp-0123456789abcdef"
    leftover.write_bytes(b"a crashed rewrite's copy")
    with store.open("b") as codec:
        codec.append({"role": "user", "content": "first write"})
    assert not leftover.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        f"{c}.log{s}" for c in ("a", "b") for s in ("", ".idx", ".lock")
    )


def test_a_whole_second_directory_mtime_is_never_trusted(tmp_path: Path) -> None:
    """On a file system that keeps whole-second mtimes, a name made later in that second
    leaves the mtime as it was: such a listing is never remembered (review)."""
    from conversation_codec import ConversationStore

    store = ConversationStore(tmp_path / "root", encryption_key=KEY)
    for cid in ("a", "b"):
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": cid})
    root = tmp_path / "root"
    whole = (time.time_ns() // 10**9 - 5) * 10**9
    os.utime(root, ns=(whole, whole))
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "listed"})
    leftover = root / "b.log.tmp-0123456789abcdef"
    leftover.write_bytes(b"a crashed rewrite's copy")
    os.utime(root, ns=(whole, whole))  # as a coarse file system would have left it
    with store.open("b") as codec:
        codec.append({"role": "user", "content": "first write"})
    assert not leftover.exists()


_KILLED_CLEAR = r"""
import os, signal, sys
from conversation_codec import ConversationCodec, FileIO
class Die(FileIO):
    def unlink(self, path, *, dir_fd=None):
        super().unlink(path, dir_fd=dir_fd)
        if os.path.basename(path) == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)
codec = ConversationCodec(sys.argv[1], encryption_key=os.environ["CC_TEST_KEY"], io=Die())
codec.clear()
"""


@pytest.mark.parametrize("after", ["chat.log.idx", "chat.log"])
def test_a_clear_killed_after_any_unlink_leaves_a_state_that_verifies(
    tmp_path: Path, after: str
) -> None:
    """FORMAT.md §8.5: the index goes before the log (the commit point). Killed after the
    index went, the history is whole (its index rebuilt); killed after the log went, it is
    cleared — no index of the deleted records is left (verify() called that index-ahead
    damage, and it kept their timestamps)."""
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend([kept(i) for i in range(3)])
    child = _children.run(
        [sys.executable, "-c", _KILLED_CLEAR, str(path), after],
        env=subprocess_env(KEY),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert not (folder / "chat.log.idx").exists()
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == (None if after == "chat.log" else [kept(i) for i in range(3)])
        assert codec.verify().ok

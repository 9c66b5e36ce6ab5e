"""An export killed mid-write leaves no plaintext behind (``_atomic``: unnamed temp files).

Real child processes export a large encrypted conversation and stop, through the ``FileIO``
seam, at a known point of the write (a pipe handshake, no sleeps); the parent looks at the
directory, then SIGKILLs them. Every file left is scanned for a marker that only the
plaintext holds. Where the file system has no ``O_TMPFILE`` (simulated: ``os.open`` refuses
it with EOPNOTSUPP) the named temp file is used, and the next export to the same
destination sweeps what a killed one left; a live export's temp file is never swept.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import NO_UNNAMED_FILES, subprocess_env
from conversation_codec import ConversationCodec, FileIO
from conversation_codec._atomic import atomic_write

from conftest import KEY

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="the children name files through /proc/self/fd"
)

MARKER = "zebra-marmalade-4471"  # in every message: only plaintext holds it
TIMEOUT = 60  # seconds
N_MESSAGES = 1500  # ~1.3 MB of JSONL: more than one 1 MiB write batch

# The child: export the log at argv[1] to argv[2] and stop at argv[3] (a seam call on a
# file in the export's folder, or "never"), announcing it on stdout; the parent kills it
# there, or lets it go on by writing a line. argv[4] "cli": through the CLI's export.
# argv[5] "named": os.open refuses O_TMPFILE, as a file system without unnamed files does.
_CHILD = (
    NO_UNNAMED_FILES
    + r"""
import errno, os, sys
from conversation_codec import ConversationCodec, FileIO
from conversation_codec.cli import main

log, dst, stop, how, files = sys.argv[1:6]
out = os.path.dirname(dst)

if files == "named":
    refuse_unnamed_files()

class Pause(FileIO):
    paused = False

    def at(self, point, folder):
        if point == stop and not self.paused and folder == out:
            self.paused = True
            print("paused", flush=True)
            sys.stdin.readline()

    def pwrite(self, fd, data, offset):
        n = super().pwrite(fd, data, offset)
        self.at("pwrite", os.path.dirname(os.readlink(f"/proc/self/fd/{fd}")))  # more follow
        return n

    def sync(self, fd, *, data_only):
        super().sync(fd, data_only=data_only)
        self.at("sync", os.path.dirname(os.readlink(f"/proc/self/fd/{fd}")))  # not yet named

    def rename(self, src, dst, *, dir_fd=None):
        self.at("rename", os.readlink(f"/proc/self/fd/{dir_fd}"))  # named as the hidden temp
        super().rename(src, dst, dir_fd=dir_fd)

if how == "cli":
    code = main(["export", log, "--out", dst, "--force"], io=Pause())
    assert code == 0, code
else:
    with ConversationCodec(log, encryption_key=os.environ["CC_TEST_KEY"], io=Pause()) as c:
        c.export(dst)
print("done", flush=True)
"""
)


def _messages(start: int = 0) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"{MARKER} #{i} " + "lorem ipsum dolor " * 40}
        for i in range(start, start + N_MESSAGES)
    ]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "chat.log"
    path.parent.mkdir()
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend(_messages())
    assert MARKER.encode() not in path.read_bytes()
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _unnamed_files(folder: Path) -> bool:
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return False
        raise
    os.close(fd)
    return True


def _holding_plaintext(*folders: Path) -> list[str]:
    """Every file under ``folders`` that holds the marker (read whole, links not followed)."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and MARKER.encode() in path.read_bytes():
                found.append(path.name)
    return sorted(found)


class Child:
    """An exporting child process, stopped at ``stop`` (see ``_CHILD``)."""

    def __init__(self, log: Path, dst: Path, stop: str, how: str = "api", files: str = "unnamed"):
        env = {**subprocess_env(KEY), "CONVERSATION_KEY": KEY}
        args = [sys.executable, "-c", _CHILD, str(log), str(dst), stop, how, files]
        self.proc = _children.Popen(
            args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def wait_paused(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"paused\n":
            _, err = self.proc.communicate(timeout=TIMEOUT)
            raise AssertionError(f"the child did not pause: {line!r} {err.decode()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == -signal.SIGKILL

    def resume(self) -> None:
        out, err = self.proc.communicate(b"go\n", timeout=TIMEOUT)
        assert self.proc.returncode == 0 and out == b"done\n", err.decode()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.returncode is None:
            child.proc.kill()
            child.proc.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("stop", "how", "earlier"),
    [("pwrite", "api", True), ("sync", "cli", False)],
    ids=["mid-write-over-an-earlier-export", "written-and-synced-cli"],
)
def test_an_export_killed_before_its_commit_leaves_no_plaintext(
    log: Path, out: Path, children: list[Child], stop: str, how: str, earlier: bool
) -> None:
    """Killed with the file written (in part, or whole and synced) but not yet named: no
    file holds any of it, and the destination is absent or its old self, untouched."""
    if not _unnamed_files(out):
        pytest.skip("this file system has no O_TMPFILE (the fallback is tested below)")
    dst = out / "chat.jsonl"
    old = b""
    if earlier:
        dst.write_bytes(b'{"role":"user","content":"an earlier export"}\n')
        os.chmod(dst, 0o600)
        old = dst.read_bytes()
    child = Child(log, dst, stop, how)
    children.append(child)
    child.wait_paused()
    # While it writes, the export has no name at all: nothing to see, nothing to leave.
    assert sorted(os.listdir(out)) == (["chat.jsonl"] if earlier else [])
    child.kill()
    assert _holding_plaintext(out, log.parent) == []
    assert sorted(os.listdir(out)) == (["chat.jsonl"] if earlier else [])
    if earlier:
        assert dst.read_bytes() == old and dst.stat().st_mode & 0o777 == 0o600


def test_a_retried_export_sweeps_what_a_killed_one_left(
    log: Path, out: Path, children: list[Child]
) -> None:
    """The instant between link and rename does leave a named temp file (and so does the
    whole write where there are no unnamed files, below): the next export to the same
    destination deletes it."""
    dst = out / "chat.jsonl"
    child = Child(log, dst, "rename")
    children.append(child)
    child.wait_paused()
    child.kill()
    (left,) = os.listdir(out)
    assert left.startswith(".chat.jsonl.tmp-") and _holding_plaintext(out) == [left]
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.export(dst) == N_MESSAGES
    assert os.listdir(out) == ["chat.jsonl"]
    assert _holding_plaintext(out) == ["chat.jsonl"]


def test_without_unnamed_files_an_export_publishes_atomically(
    log: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.open refuses O_TMPFILE (EOPNOTSUPP, as on NFS or FAT): the named temp file is
    written, synced and renamed over the old export, and nothing else is left."""
    real_open = os.open
    refused: list[str] = []

    def refusing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            refused.append(os.fspath(path))  # type: ignore[arg-type]
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    dst = out / "chat.jsonl"
    dst.write_bytes(b"an earlier export\n")
    monkeypatch.setattr(os, "open", refusing)
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.export(dst) == N_MESSAGES
        atomic_write(out / "key", b"k", exclusive=True)  # and the exclusive procedure too
    assert refused, "the fallback was not exercised"
    assert sorted(os.listdir(out)) == ["chat.jsonl", "key"]
    assert dst.read_bytes().count(MARKER.encode()) == N_MESSAGES
    assert dst.stat().st_mode & 0o777 == 0o600 and (out / "key").read_bytes() == b"k"


def test_without_unnamed_files_a_killed_export_is_swept_but_a_live_one_is_not(
    log: Path, out: Path, children: list[Child]
) -> None:
    """Where there are no unnamed files, a killed export leaves its named temp file (with
    plaintext): the next export deletes it. A live export's temp file (locked) is left
    alone, and that export still publishes."""
    dst = out / "chat.jsonl"
    killed = Child(log, dst, "pwrite", files="named")
    children.append(killed)
    killed.wait_paused()
    killed.kill()
    (dead,) = os.listdir(out)
    live = Child(log, dst, "pwrite", files="named")
    children.append(live)
    live.wait_paused()
    (temp,) = set(os.listdir(out)) - {dead}
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.export(dst) == N_MESSAGES  # sweeps the dead temp file, not the live one
    assert sorted(os.listdir(out)) == sorted([temp, "chat.jsonl"])
    live.resume()
    assert os.listdir(out) == ["chat.jsonl"]
    assert dst.read_bytes().count(MARKER.encode()) == N_MESSAGES


def test_only_killed_exports_temp_files_of_this_destination_are_swept(log: Path, out: Path) -> None:
    """A planted link, another destination's temp, a name off the pattern, a file of
    another mode or an empty one: none of them is deleted (nor followed)."""
    token = "0123456789abcdef"
    target = out / "thesis.tex"
    target.write_bytes(b"the user's own file")
    (out / f".chat.jsonl.tmp-{token}").symlink_to(target)
    kept = {
        f".other.jsonl.tmp-{token}": b"x",
        ".chat.jsonl.tmp-0123": b"x",
        f".chat.jsonl.tmp-{token.upper()}": b"x",
        f".chat.jsonl.tmp-{token[:-1]}0": b"",  # empty: a writer about to lock it
        f".chat.jsonl.tmp-{token[:-1]}1": b"x",  # 0644: not ours
    }
    for name, data in kept.items():
        (out / name).write_bytes(data)
        os.chmod(out / name, 0o600)
    os.chmod(out / f".chat.jsonl.tmp-{token[:-1]}1", 0o644)
    swept = out / f".chat.jsonl.tmp-{token[:-1]}2"
    swept.write_bytes(MARKER.encode())
    os.chmod(swept, 0o600)
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.export(out / "chat.jsonl")
    expected = {*kept, f".chat.jsonl.tmp-{token}", "thesis.tex", "chat.jsonl"}
    assert set(os.listdir(out)) == expected
    assert target.read_bytes() == b"the user's own file"


# -- from review: refusals and file systems that differ ----------------------------------

# The child: a security module refuses to link an unnamed file in through /proc (AppArmor
# without mediate_deleted says ENOENT, SELinux EACCES): os.link fails for a /proc source.
# Its files must all be published, through named temps, and the refusal remembered.
_REFUSED_LINK_CHILD = r"""
import errno, os, sys
code = getattr(errno, sys.argv[2])
tried = []
real_link = os.link
def link(src, dst, *args, **kwargs):
    if str(src).startswith("/proc/self/fd/"):
        tried.append(src)
        raise OSError(code, os.strerror(code), src)
    return real_link(src, dst, *args, **kwargs)
os.link = link
from conversation_codec import ConversationCodec
from conversation_codec.keyfile import create_key_file
folder = sys.argv[1]
create_key_file(os.path.join(folder, "new.key"))
with ConversationCodec(os.path.join(folder, "chat.log"), encryption_key=sys.argv[3]) as c:
    c.append({"role": "user", "content": "hi"})
    c.export(os.path.join(folder, "one.jsonl"))
    c.export(os.path.join(folder, "two.jsonl"))
print(len(tried))
"""


@pytest.mark.parametrize("code", ["ENOENT", "EACCES"])
def test_a_refused_link_of_an_unnamed_file_publishes_through_a_named_temp(
    tmp_path: Path, code: str
) -> None:
    done = _children.run(
        [sys.executable, "-c", _REFUSED_LINK_CHILD, str(tmp_path), code, KEY],
        env=subprocess_env(KEY),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Refused once (the key file's write), remembered for the device: not tried again.
    assert done.stdout.strip() == "1"
    names = sorted(os.listdir(tmp_path))
    assert names == [
        "chat.log",
        "chat.log.idx",
        "chat.log.lock",
        "new.key",
        "one.jsonl",
        "two.jsonl",
    ]
    for name in ("new.key", "one.jsonl", "two.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK], ids=["enosys", "enolck"])
def test_an_export_where_flock_is_refused_still_publishes(
    log: Path, out: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Lustre mounted noflock (ENOSYS), NFSv3 without lockd (ENOLCK): the temp file goes
    # unlocked (a sweep then takes it for a live writer's), the export still publishes.
    def refused(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refused)  # the log's own lock was bound at import
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.export(out / "chat.jsonl") == N_MESSAGES
    assert os.listdir(out) == ["chat.jsonl"]


def test_on_nfs_a_killed_export_is_still_swept(
    log: Path, out: Path, children: list[Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS has no unnamed files, and emulates flock with byte-range locks: an exclusive one
    # needs a descriptor open for writing (flock(2)). The sweep asks for a shared one.
    dst = out / "chat.jsonl"
    killed = Child(log, dst, "pwrite", files="named")
    children.append(killed)
    killed.wait_paused()
    killed.kill()
    assert _holding_plaintext(out)
    real = fcntl.flock

    def nfs(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == 0:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs)
    with ConversationCodec(log, encryption_key=KEY) as codec:
        codec.export(dst)
    assert os.listdir(out) == ["chat.jsonl"]
    assert _holding_plaintext(out) == ["chat.jsonl"]


def test_without_unnamed_files_a_live_export_about_to_rename_is_not_swept(
    log: Path, out: Path, children: list[Child]
) -> None:
    # Its temp file is named and written: it keeps its lock until the rename.
    dst = out / "chat.jsonl"
    live = Child(log, dst, "rename", files="named")
    children.append(live)
    live.wait_paused()
    (temp,) = os.listdir(out)
    with ConversationCodec(log, encryption_key=KEY) as codec:
        assert codec.export(dst) == N_MESSAGES
    assert sorted(os.listdir(out)) == sorted([temp, "chat.jsonl"])
    live.resume()
    assert os.listdir(out) == ["chat.jsonl"]


def test_a_sweep_that_cannot_delete_does_not_stop_the_export(log: Path, out: Path) -> None:
    class NoUnlink(FileIO):
        def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    dead = out / ".chat.jsonl.tmp-0123456789abcdef"
    dead.write_bytes(MARKER.encode())
    dead.chmod(0o600)
    with ConversationCodec(log, encryption_key=KEY, io=NoUnlink()) as codec:
        assert codec.export(out / "chat.jsonl") == N_MESSAGES
    assert sorted(os.listdir(out)) == sorted([dead.name, "chat.jsonl"])


def test_a_failed_rename_is_the_write_s_failure_not_a_refused_link(tmp_path: Path) -> None:
    # Only the link of the unnamed file can say "no links here": an EACCES of the rename
    # that follows it fails the write and leaves unnamed files in use for the next one.
    class Once(FileIO):
        def __init__(self) -> None:
            self.failed = False
            self.links: list[str] = []

        def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
            if not self.failed:
                self.failed = True
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            super().rename(src, dst, dir_fd=dir_fd)

        def link(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
            self.links.append(str(src))
            super().link(src, dst, dir_fd=dir_fd)

    io = Once()
    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "one", b"secret", io=io)
    assert os.listdir(tmp_path) == []
    io.links.clear()
    atomic_write(tmp_path / "two", b"secret", io=io)
    assert [src.startswith("/proc/self/fd/") for src in io.links] == [True]
    assert os.listdir(tmp_path) == ["two"]

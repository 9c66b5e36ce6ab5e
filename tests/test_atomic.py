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
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _writer import subprocess_env
from conversation_codec import ConversationCodec
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
_CHILD = r"""
import errno, os, sys
from conversation_codec import ConversationCodec, FileIO
from conversation_codec.cli import main

log, dst, stop, how, files = sys.argv[1:6]
out = os.path.dirname(dst)

if files == "named":
    real_open = os.open
    def refusing(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *args, **kwargs)
    os.open = refusing

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
        self.proc = subprocess.Popen(
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

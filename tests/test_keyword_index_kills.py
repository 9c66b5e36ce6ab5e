"""A pop, rewrite or key rotation SIGKILLed once it has committed leaves no ``P.kwi``
that holds postings of the messages it removed, or that opens with the retired key
(FORMAT.md §17.5, steps 2 and 3): the sidecar is written before the commit, as an index
of a prefix of the log (a pop) or of the new log (a rewrite, under its new keys).

The default run kills each operation right after its commit (the log's truncation synced;
the rename of a rewrite); ``-m slow`` kills it at every seam call in turn.
"""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import InvalidToken
from tests._writer import subprocess_env
from tests.conftest import KEY, OTHER_KEY
from tests.test_keyword_index import index_keys, segment_postings, token, varint

import _children
from conversation_codec import ConversationCodec, DecryptionError

WORD = "xylophonequagmire"  # only in the message the operation removes
TIMEOUT = 60
Message = dict[str, Any]

# The child: run OP on the log at PATH with a FileIO that SIGKILLs the process at WHERE:
# "commit" (the pop's truncation synced, or the rewrite's rename done), or the Nth call of
# the seam (pwrite, sync, truncate, rename, link, unlink, fsync_dir).
_CHILD = r"""
import os, signal, sys
from conversation_codec import ConversationCodec, FileIO
path, op, where = sys.argv[1], sys.argv[2], sys.argv[3]
key, new_key = os.environ["CC_TEST_KEY"], sys.argv[4]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
class Killing(FileIO):
    calls, truncated = 0, False
    def hit(self):
        Killing.calls += 1
        if where == str(Killing.calls):
            die()
    def pwrite(self, fd, data, offset):
        self.hit()
        return super().pwrite(fd, data, offset)
    def sync(self, fd, *, data_only):
        self.hit()
        super().sync(fd, data_only=data_only)
        if where == "commit" and Killing.truncated:
            die()  # the log's truncation is on disk: the pop has committed
    def truncate(self, fd, size):
        self.hit()
        super().truncate(fd, size)
        Killing.truncated = os.readlink(f"/proc/self/fd/{fd}") == os.path.abspath(path)
    def rename(self, src, dst, *, dir_fd=None):
        self.hit()
        super().rename(src, dst, dir_fd=dir_fd)
    def link(self, src, dst, *, dir_fd=None):
        self.hit()
        super().link(src, dst, dir_fd=dir_fd)
    def unlink(self, p, *, dir_fd=None):
        self.hit()
        super().unlink(p, dir_fd=dir_fd)
    def fsync_dir(self, folder):
        self.hit()
        super().fsync_dir(folder)
    def step(self, name):
        if where == "commit" and name == "rewrite:renamed":
            die()
keys = [new_key, key] if op == "rotate_key" else key
with ConversationCodec(path, encryption_key=keys, io=Killing()) as codec:
    if op == "pop":
        codec.pop()
    elif op == "replace":
        codec.replace([m for m in codec.load() if "xylophone" not in m["content"]])
    elif op == "prune":
        codec.prune(codec.timestamp(1))
    else:
        codec.rotate_key(new_key)
print("completed", Killing.calls)
"""


def _history(op: str) -> list[Message]:
    texts = [f"ordinary words {i}" for i in range(40)]
    if op == "prune":
        return [{"role": "user", "content": t} for t in [f"first {WORD}", *texts]]
    return [{"role": "user", "content": t} for t in [*texts, f"last {WORD}"]]


def _kwi_postings(kwi: Path, key: str) -> tuple[bytes, dict[bytes, set[int]]]:
    """(log_id, token -> blocks) of ``P.kwi`` under ``key`` (FORMAT.md §17.3); raises
    InvalidToken when ``key`` does not open its segments."""
    data = kwi.read_bytes()
    log_id = data[16:32]
    _, fernet = index_keys(key, log_id)
    postings: dict[bytes, set[int]] = {}
    pos = 32
    while pos < len(data):
        n, pos = varint(data, pos)
        body = base64.urlsafe_b64encode(b"\x80" + data[pos : pos + n])
        segment_postings(fernet.decrypt(body), postings)
        pos += n
    return log_id, postings


def _holds_word(kwi: Path, key: str) -> bool:
    if not kwi.exists():
        return False
    log_id, postings = _kwi_postings(kwi, key)
    grams = {WORD[i : i + 3] for i in range(len(WORD) - 2)}
    return all(token(key, log_id, g) in postings for g in grams)


def _run(path: Path, op: str, where: str) -> subprocess.CompletedProcess[str]:
    return _children.run(
        [sys.executable, "-c", _CHILD, str(path), op, where, OTHER_KEY],
        env=subprocess_env(KEY),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _check_after(path: Path, op: str) -> bool:
    """Check the invariant after a kill: once the change is committed, ``P.kwi`` holds no
    posting of the removed message and does not open with a retired key; then a writer
    appends and the index still answers exactly. Return whether it had committed."""
    kwi = path.parent / (path.name + ".kwi")
    if op == "rotate_key":
        try:
            ConversationCodec(path, encryption_key=KEY).close()
            committed, key = False, KEY
        except DecryptionError:
            committed, key = True, OTHER_KEY
        if committed and kwi.exists():
            with pytest.raises(InvalidToken):
                _kwi_postings(kwi, KEY)  # not the old log's index, under the retired key
    else:
        key = KEY
        with ConversationCodec(path, encryption_key=key) as codec:
            committed = not any(WORD in m["content"] for m in codec.load() or [])
        if committed:
            assert not _holds_word(kwi, key), "P.kwi holds postings of the removed message"
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.append({"role": "user", "content": "appended next"})
        if committed and op != "rotate_key":
            assert not _holds_word(kwi, key)
        found = [h.message["content"] for h in codec.search(WORD)]
        stored = [m["content"] for m in codec.load() or [] if WORD in m["content"]]
        assert found == stored
        assert codec.verify().ok
    return committed


def _template(tmp_path: Path, op: str) -> Path:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as codec:
        codec.extend(_history(op), timestamps=list(range(1, 42)))
        codec.reindex()
    assert _holds_word(path.parent / "chat.log.kwi", KEY)
    return path


@pytest.mark.parametrize("op", ["pop", "replace", "rotate_key"])
def test_killed_right_after_its_commit_no_stale_index_is_left(tmp_path: Path, op: str) -> None:
    path = _template(tmp_path, op)
    child = _run(path, op, "commit")
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert _check_after(path, op)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["pop", "replace", "prune", "rotate_key"])
def test_killed_at_any_seam_call_no_stale_index_is_left(tmp_path: Path, op: str) -> None:
    (tmp_path / "template").mkdir()
    template = _template(tmp_path / "template", op)
    seen = set()
    for n in range(1, 200):
        folder = tmp_path / f"kill{n}"
        shutil.copytree(template.parent, folder)
        child = _run(folder / "chat.log", op, str(n))
        seen.add(_check_after(folder / "chat.log", op))
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    else:
        pytest.fail("the operation never completed")
    assert seen == {False, True}  # killed before and after the commit

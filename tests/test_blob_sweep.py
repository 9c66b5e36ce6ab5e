"""Every write that removes messages deletes, after its commit, the blobs no remaining
message refers to (FORMAT.md §15): ``replace()``, a rewriting ``save()``,
``import_(replace=True)``, and a ``pop()`` that leaves at most ``POP_SWEEP_RECORDS``
records (a longer log keeps them until its next rewrite). A blob still referred to —
equal attachments share one — stays, also when another process appends meanwhile, and a
crash between the commit and the sweep leaves only a blob that the next rewrite deletes.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests._writer import subprocess_env
from tests.conftest import KEY

import _children
from conversation_codec import ConversationCodec, StorageError
from conversation_codec.core import POP_SWEEP_RECORDS

Message = dict[str, Any]
TIMEOUT = 60


def picture(tag: str) -> Message:
    data = base64.b64encode(b"PNG" * 200 + tag.encode()).decode()
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": f"picture {tag}"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        ],
    }


def text(i: int) -> Message:
    return {"role": "assistant", "content": f"reply {i}"}


def blobs(path: Path) -> set[str]:
    folder = path.parent / (path.name + ".blobs")
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _import_replace(codec: ConversationCodec, kept: list[Message], folder: Path) -> None:
    src = folder / "src.jsonl"
    src.write_text("".join(json.dumps(m) + "\n" for m in kept))
    codec.import_(src, replace=True)


def _save(codec: ConversationCodec, kept: list[Message], folder: Path) -> None:
    codec.load()
    codec.save(kept)


_REMOVALS: dict[str, Callable[[ConversationCodec, list[Message], Path], object]] = {
    "replace": lambda c, kept, _: c.replace(kept),
    "save": _save,
    "import_replace": _import_replace,
    "pop": lambda c, kept, _: c.pop(),
}


@pytest.mark.parametrize("op", sorted(_REMOVALS))
@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_a_removed_attachment_leaves_the_blob_store(
    tmp_path: Path, op: str, key: str | None
) -> None:
    """The review's case: keep a picture, remove a sensitive one. Its blob goes; the kept
    one's, which an earlier message shares too, stays and restores."""
    path = tmp_path / "chat.log"
    kept = [picture("keep"), text(1), picture("keep")]  # two messages share one blob
    with ConversationCodec(path, encryption_key=key, attachments="external") as codec:
        codec.extend([*kept, picture("sensitive")])
        assert len(blobs(path)) == 2
        _REMOVALS[op](codec, kept, tmp_path)
        assert len(blobs(path)) == 1
        assert codec.load() == kept
        assert codec.verify().ok


def test_a_pop_deletes_only_blobs_no_record_left_refers_to(tmp_path: Path) -> None:
    """Equal attachments share one blob: popping one copy keeps it for the other, popping
    the last copy deletes it; records hidden by ``max_messages`` still count."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.extend([picture("a"), text(1), picture("a")])
    with ConversationCodec(
        path, encryption_key=KEY, attachments="external", max_messages=1
    ) as codec:
        assert codec.pop() == picture("a")
        assert len(blobs(path)) == 1  # record 0, hidden, still refers to it
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        assert codec.load() == [picture("a"), text(1)]
        codec.pop()
        assert codec.pop() == picture("a")
        assert blobs(path) == set()


def test_a_pop_from_a_long_log_keeps_the_blob_until_the_next_rewrite(tmp_path: Path) -> None:
    """Past ``POP_SWEEP_RECORDS`` records a pop does not read them all (a pop stays
    O(1)): the blob stays, and the next compaction deletes it."""
    path = tmp_path / "chat.log"
    with ConversationCodec(
        path, encryption_key=KEY, attachments="external", durability="flush"
    ) as codec:
        codec.extend([text(i) for i in range(POP_SWEEP_RECORDS)])
        codec.append(picture("first"))
        codec.append(picture("second"))
        codec.pop()  # leaves POP_SWEEP_RECORDS + 1 records: not swept
        assert len(blobs(path)) == 2
        codec.pop()  # leaves POP_SWEEP_RECORDS: read, and swept
        assert blobs(path) == set()
        codec.append(picture("third"))
        codec.append(text(0))
        codec.append(picture("fourth"))
        codec.pop()
        assert len(blobs(path)) == 2
        codec.compact()
        assert len(blobs(path)) == 1
        assert codec.load()[-2:] == [picture("third"), text(0)]


def test_a_pop_whose_sweep_is_refused_still_returns_the_message(tmp_path: Path) -> None:
    """A link planted in ``P.blobs`` stops the sweep: the pop has committed, so it still
    returns the message (a caller told it failed would pop another); a rewrite refuses
    before its commit, changing nothing."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.extend([text(0), picture("gone"), picture("also gone")])
        planted = path.parent / "chat.log.blobs" / ("0" * 64)
        planted.symlink_to(tmp_path / "elsewhere")
        assert codec.pop() == picture("also gone")
        assert len(codec) == 2
        with pytest.raises(StorageError):
            codec.replace([text(0)])
        assert codec.load() == [text(0), picture("gone")]
        planted.unlink()
        codec.replace([text(0)])
        assert blobs(path) == set()


_KILLED_AFTER_COMMIT = r"""
import os, signal, sys
from conversation_codec import ConversationCodec, FileIO
class Die(FileIO):
    def step(self, name):
        if name == "rewrite:dir-synced":  # committed and durable; the sweep comes next
            os.kill(os.getpid(), signal.SIGKILL)
key = os.environ["CC_TEST_KEY"]
with ConversationCodec(sys.argv[1], encryption_key=key, io=Die()) as codec:
    codec.replace(codec.load()[:1])
"""


def test_a_rewrite_killed_before_its_sweep_leaves_a_blob_the_next_one_deletes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.extend([picture("keep"), picture("gone")])
    child = _children.run(
        [sys.executable, "-c", _KILLED_AFTER_COMMIT, str(path)],
        env=subprocess_env(KEY),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert len(blobs(path)) == 2  # committed, not swept
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == [picture("keep")]
        codec.append(text(0))  # an append does not sweep
        assert len(blobs(path)) == 2
        codec.replace([picture("keep")])
        assert len(blobs(path)) == 1
        assert codec.verify().ok


_APPENDER = r"""
import base64, os, sys
from conversation_codec import ConversationCodec, StorageError
def picture(tag):
    data = base64.b64encode(b"PNG" * 200 + tag.encode()).decode()
    return {"role": "user", "content": [{"type": "text", "text": f"picture {tag}"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]}
key = os.environ["CC_TEST_KEY"]
print("ready", flush=True)
sys.stdin.readline()
with ConversationCodec(
    sys.argv[1], encryption_key=key, attachments="external", durability="flush"
) as codec:
    for i in range(int(sys.argv[2])):
        codec.append(picture(f"appended {i % 5}"))  # shared with the other process's
print("done", flush=True)
"""


def test_removals_never_delete_a_blob_another_process_appends_a_reference_to(
    tmp_path: Path,
) -> None:
    """Another process appends pictures (under the writer lock, blobs put first) while this
    one replaces and pops messages holding the same pictures: every message the log holds
    afterwards restores, and verify() finds every blob."""
    path = tmp_path / "chat.log"
    appends = 40
    with ConversationCodec(
        path, encryption_key=KEY, attachments="external", durability="flush"
    ) as codec:
        codec.append(picture("appended 0"))
        child = _children.Popen(
            [sys.executable, "-c", _APPENDER, str(path), str(appends)],
            env=subprocess_env(KEY),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline() == "ready\n"
            child.stdin.write("go\n")
            child.stdin.flush()
            for i in range(31):  # ends with a replace: the history is never empty
                if i % 2:
                    codec.pop()
                else:
                    codec.replace([picture(f"appended {i % 5}")])
            out, err = child.communicate(timeout=TIMEOUT)
        finally:
            child.kill()
        assert child.returncode == 0, err
        assert out == "done\n"
        history = codec.load() or []
        assert history and all(m["content"][0]["text"].startswith("picture ") for m in history)
        assert codec.verify().ok
        codec.replace([])
        assert blobs(path) == set()


def test_a_save_under_max_messages_keeps_the_blobs_of_the_hidden_records(
    tmp_path: Path,
) -> None:
    """A rewriting save() keeps the records max_messages hid from it, and so the blobs they
    refer to: the sweep after it counts them as referenced."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.extend([picture(f"p{i}") for i in range(4)])
    with ConversationCodec(
        path, encryption_key=KEY, attachments="external", max_messages=2
    ) as window:
        seen = window.load() or []
        window.save([seen[0], picture("edited")])  # an edit: rewrites after the hidden two
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        history = codec.load() or []
        assert history == [picture("p0"), picture("p1"), picture("p2"), picture("edited")]
        assert codec.verify().ok

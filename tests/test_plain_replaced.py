"""Plain logs edited by hand with a tool that saves by rename (``sed -i``, ``perl -i``, most
editors) while a codec in another process has the log open (FORMAT.md §8.2, README).

Review r1, defect 1: the codec kept its descriptor of the file the editor unlinked. Its next
append was acknowledged and written there, and lost; its reads went on serving the contents
from before the edit. Each test here holds the codec in a child process (its own
descriptors, as an agent process holds its log) and edits the log in this one, as a person
would; the child answers one call per line on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import subprocess_env
from conversation_codec import ConversationCodec

# The child: one codec on argv[1], held for its lifetime; each stdin line is a JSON
# [method, *args], answered with one JSON line: {"ok": result} or {"error": class name}.
CHILD = """
import json, sys
from conversation_codec import ConversationCodec
codec = ConversationCodec(sys.argv[1])
print(json.dumps({"ok": "ready"}), flush=True)
for line in sys.stdin:
    name, *args = json.loads(line)
    try:
        result = getattr(codec, name)(*args)
        if name == "search":
            result = [hit.seq for hit in result]
        print(json.dumps({"ok": result}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__}), flush=True)
codec.close()
"""

TYPO = {"role": "user", "content": "my adress is 12 Main St"}
FIXED = {"role": "user", "content": "my address is 12 Main St"}
REPLY = {"role": "assistant", "content": "noted: 12 Main St"}
LATER = {"role": "user", "content": "and my phone is 555-0100"}


class Agent:
    """A child process that holds a codec open on ``path`` (see ``CHILD``)."""

    def __init__(self, path: Path) -> None:
        self.proc = _children.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(None),
        )
        assert self._answer() == {"ok": "ready"}

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the child exited ({self.proc.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def __call__(self, name: str, *args: Any) -> Any:
        """Call ``codec.name(*args)`` in the child; return its result (a library error is
        returned as {"error": its class name})."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([name, *args]) + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        return answer.get("ok", answer)

    def close(self) -> None:
        """End the child (its codec closed); it must exit cleanly."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0
        self.proc.stdout.close()


@pytest.fixture
def agent_on(tmp_path: Path) -> Iterator[Any]:
    agents: list[Agent] = []

    def start(path: Path) -> Agent:
        agents.append(Agent(path))
        return agents[-1]

    yield start
    for agent in agents:  # a failed test's child, still running
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        for pipe in (agent.proc.stdin, agent.proc.stdout):
            if pipe is not None:
                pipe.close()


def fresh_load(path: Path) -> list[dict[str, Any]] | None:
    with ConversationCodec(path) as codec:
        return codec.load()


def sed_i(path: Path, script: str) -> None:
    """``sed -i``: writes an edited copy beside the log and renames it over the log."""
    before = path.stat().st_ino
    _children.run(["sed", "-i", script, str(path)], check=True)
    assert path.stat().st_ino != before  # (it did replace the file, as the defect needs)


def replace_edited_copy(path: Path, old: bytes, new: bytes) -> None:
    """What an editor that saves by rename does: a new file with the edit, renamed over."""
    copy = path.with_name(path.name + ".swp")
    copy.write_bytes(path.read_bytes().replace(old, new))
    os.replace(copy, path)


EDITS = {
    "sed-i": lambda path: sed_i(path, "s/adress/address/"),
    "os.replace": lambda path: replace_edited_copy(path, b"adress", b"address"),
}


@pytest.mark.parametrize("how", ["append", "extend"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_append_after_a_typo_fixed_by_rename_is_kept(
    tmp_path: Path, agent_on: Any, edit: str, how: str
) -> None:
    """The reviewer's scenario: the append lands in the file at the path, after the edit."""
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("append", TYPO) == 0
    EDITS[edit](path)
    if how == "append":  # one record: the quick append (issue 15)
        assert agent("append", REPLY) == 1
    else:  # the general path
        assert agent("extend", [REPLY, LATER]) == [1, 2]
    expected = [FIXED, REPLY] if how == "append" else [FIXED, REPLY, LATER]
    assert agent("load") == expected
    agent.close()
    assert fresh_load(path) == expected
    with ConversationCodec(path) as codec:
        assert codec.verify().ok


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_reads_after_a_rename_edit_serve_the_edited_log(
    tmp_path: Path, agent_on: Any, edit: str
) -> None:
    """load/tail/len/get of a codec that read the log before the edit answer as a fresh
    reader does, with no append in between."""
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("extend", [TYPO, REPLY]) == [0, 1]
    assert agent("load") == [TYPO, REPLY]  # the view the edit makes stale
    EDITS[edit](path)
    assert agent("load") == [FIXED, REPLY] == fresh_load(path)
    assert agent("tail", 2) == [FIXED, REPLY]
    assert agent("get", 0) == FIXED
    assert agent("message_count") == 2
    assert agent("search", "address") == [0]
    assert agent("search", "adress") == []
    agent.close()


def test_the_last_line_deleted_by_sed_is_gone_for_an_open_codec(
    tmp_path: Path, agent_on: Any
) -> None:
    """``sed -i '$d'``: the codec reads one record fewer, and its next append takes the freed
    seq in the file at the path (not after the deleted line in the unlinked one)."""
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("extend", [FIXED, TYPO]) == [0, 1]
    assert agent("append", REPLY) == 2
    sed_i(path, "$d")  # deletes the last line: REPLY
    assert agent("message_count") == 2
    assert agent("load") == [FIXED, TYPO]
    assert agent("tail", 1) == [TYPO]
    assert agent("append", LATER) == 2
    sed_i(path, "$d")  # and once more, with no read in between: the append comes first
    assert agent("append", REPLY) == 2
    agent.close()
    assert fresh_load(path) == [FIXED, TYPO, REPLY]


def test_a_log_removed_by_hand_is_started_again_not_appended_to_the_unlinked_file(
    tmp_path: Path, agent_on: Any
) -> None:
    """``rm`` of a plain log (its sidecars left): the open codec reads an empty history, as
    a fresh reader does, and its append starts a log at the path."""
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("extend", [TYPO, REPLY]) == [0, 1]
    path.unlink()
    assert agent("load") is None  # (no history: None, as for a log never written)
    assert agent("message_count") == 0
    assert agent("append", LATER) == 0
    agent.close()
    assert fresh_load(path) == [LATER]


def test_a_stale_list_saved_after_a_rename_edit_is_refused_not_written_over_it(
    tmp_path: Path, agent_on: Any
) -> None:
    """The edit changes neither the counters nor the record count, but the list loaded
    before it no longer is the whole history: ``save()`` of it plus a reply would put the
    typo back. It is refused (ConflictError) whether a read came first or not; a list
    loaded after the edit saves as usual."""
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("append", TYPO) == 0
    assert agent("load") == [TYPO]
    sed_i(path, "s/adress/address/")
    assert agent("save", [TYPO, REPLY]) == {"error": "ConflictError"}
    assert agent("load") == [FIXED]
    replace_edited_copy(path, b"address", b"adress")  # an edit, then a read, then the save
    assert agent("message_count") == 1
    assert agent("save", [FIXED, REPLY]) == {"error": "ConflictError"}
    assert agent("load") == [TYPO]
    assert agent("save", [FIXED, REPLY]) is None  # loaded since: the caller's own choice
    assert agent("save", [FIXED, REPLY, LATER]) is None  # (one append: the quick path)
    assert agent("save", [FIXED, LATER]) is None  # and its view of that is whole: a rewrite
    agent.close()
    assert fresh_load(path) == [FIXED, LATER]


def test_a_line_appended_by_hand_is_read_by_an_open_codec_before_any_append(
    tmp_path: Path, agent_on: Any
) -> None:
    """An edit in place (``>>``) keeps the file: the codec's reads see the added record
    line too, as a fresh reader does (FORMAT.md §8.2), and its append goes after it."""
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("append", FIXED) == 0
    assert agent("load") == [FIXED]
    last = json.loads(path.read_bytes().splitlines()[-1])
    line = {"seq": 1, "ts": last["ts"], "message": REPLY}
    with path.open("a") as f:
        f.write(json.dumps(line, separators=(",", ":")) + "\n")
    assert agent("message_count") == 2
    assert agent("load") == [FIXED, REPLY] == fresh_load(path)
    assert agent("append", LATER) == 2
    agent.close()
    assert fresh_load(path) == [FIXED, REPLY, LATER]


def test_a_held_codec_follows_more_than_one_rename_edit(tmp_path: Path, agent_on: Any) -> None:
    path = tmp_path / "chat.log"
    agent = agent_on(path)
    assert agent("append", TYPO) == 0
    for i in range(3):
        sed_i(path, "s/12 Main St/12 Main St./")
        assert agent("append", {"role": "user", "content": f"again {i}"}) == i + 1
    agent.close()
    stored = fresh_load(path)
    assert stored[0] == {"role": "user", "content": "my adress is 12 Main St..."}
    assert [m["content"] for m in stored[1:]] == ["again 0", "again 1", "again 2"]

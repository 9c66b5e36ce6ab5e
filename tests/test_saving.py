"""save() never deletes history it never saw (issue 11 §4).

A save() whose list extends the stored history appends; one whose list diverges rewrites
only when this instance was handed the whole current history (load(), a complete
iteration, or its own save()/replace()) and nothing changed since. Otherwise it raises
ConflictError and every file stays byte-identical. The races run the other writer as a
separate OS process (tests/_writer.py), as in production.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import _children
from conversation_codec import (
    ConflictError,
    ConversationCodec,
    ConversationCodecError,
    NotSerializableError,
)

from conftest import KEY, messages, snapshot

MakeCodec = Callable[..., ConversationCodec]
REPLY = {"role": "assistant", "content": "Your refund is on its way."}

_WRITER = Path(__file__).resolve().parent / "_writer.py"
_spec = importlib.util.spec_from_file_location("_cc_writer_helper_save", _WRITER)
assert _spec is not None and _spec.loader is not None
_helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helper)


def other_process(call: str, path: Path, mode: str, message: Any = None) -> Any:
    """Run one ``append``/``pop`` in a separate process; return what it returned."""
    argv = [sys.executable, str(_WRITER), "op", call, str(path)]
    if message is not None:
        argv += ["--message", json.dumps(message)]
    done = _children.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=_helper.subprocess_env(KEY if mode == "encrypted" else None),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_conflict_error_is_in_the_tree_and_says_what_to_do() -> None:
    assert issubclass(ConflictError, ConversationCodecError)
    assert issubclass(ConflictError, RuntimeError)


def test_window_save_refuses_to_delete_the_older_messages(
    codec: ConversationCodec, log_path: Path
) -> None:
    history = messages(100)
    codec.extend(history)
    window = [*codec.tail(20), REPLY]
    before = snapshot(log_path.parent)
    with pytest.raises(ConflictError, match=r"load\(\).*replace\(\)"):
        codec.save(window)
    assert snapshot(log_path.parent) == before  # nothing changed, byte for byte
    assert codec.load() == history


def test_own_appends_after_load_also_need_a_reload(codec: ConversationCodec) -> None:
    """This instance's own append()/extend() after load() is a change the caller's list
    may not hold: trusting it would let load(); extend(100); save(tail(20)) delete 80."""
    assert codec.load() is None  # an empty history, read in full
    codec.extend(messages(100))
    with pytest.raises(ConflictError):
        codec.save([*codec.tail(20), REPLY])
    history = codec.load() or []
    codec.append(REPLY)
    with pytest.raises(ConflictError):
        codec.save(history[:-1])  # would delete both history[-1] and REPLY
    assert len(codec) == 101
    codec.save([*(codec.load() or [])[:-1]])  # after a reload the rewrite is allowed
    assert codec.load() == messages(100)


def test_extending_list_still_appends_without_a_load(make_codec: MakeCodec, log_path: Path) -> None:
    make_codec().extend(messages(6))
    inode, before = log_path.stat().st_ino, log_path.read_bytes()
    fresh = make_codec()
    fresh.save([*messages(6), REPLY])
    assert log_path.stat().st_ino == inode and log_path.read_bytes().startswith(before)
    assert fresh.load() == [*messages(6), REPLY]


def test_load_then_edit_in_the_middle_still_rewrites(make_codec: MakeCodec, log_path: Path) -> None:
    make_codec().extend(messages(8))
    codec = make_codec()
    history = codec.load() or []
    history[3] = {"role": "user", "content": "edited"}
    inode = log_path.stat().st_ino
    codec.save(history)
    assert log_path.stat().st_ino != inode  # rewritten
    assert codec.load() == history
    shorter = history[:5]
    codec.save(shorter)  # its own save() left it holding the whole history
    assert make_codec().load() == shorter


def test_complete_iteration_counts_as_a_full_read(make_codec: MakeCodec) -> None:
    make_codec().extend(messages(600))
    codec = make_codec()
    it = iter(codec)
    partial = [next(it) for _ in range(300)]
    with pytest.raises(ConflictError):
        codec.save(partial)  # half a history read is not the whole one
    everything = [*partial, *it]
    codec.save(everything[:10])
    assert codec.load() == messages(10)


def test_own_pop_keeps_the_whole_view(codec: ConversationCodec) -> None:
    codec.extend(messages(5))
    history = codec.load() or []
    assert codec.pop() == history[-1]
    codec.save([*history[:2], REPLY])  # regenerate: the caller saw everything
    assert codec.load() == [*history[:2], REPLY]


def test_append_race_with_another_process(make_codec: MakeCodec, log_path: Path, mode: str) -> None:
    make_codec().extend(messages(4))
    a = make_codec()
    history = a.load() or []
    x = {"role": "user", "content": "sent from another process"}
    assert other_process("append", log_path, mode, x) == 4
    before = snapshot(log_path.parent)
    with pytest.raises(ConflictError):
        a.save([*history, REPLY])
    assert snapshot(log_path.parent) == before
    assert make_codec().load() == [*history, x]  # B's acknowledged message is still there
    # The remedy the error names: reload and save again.
    fresh = a.load() or []
    a.save([*fresh, REPLY])
    assert make_codec().load() == [*history, x, REPLY]
    # A list that extends what B added still appends, even without a reload.
    y = {"role": "user", "content": "and another"}
    other_process("append", log_path, mode, y)
    a.save([*history, x, REPLY, y, REPLY])
    assert make_codec().load() == [*history, x, REPLY, y, REPLY]


def test_pop_race_with_another_process(make_codec: MakeCodec, log_path: Path, mode: str) -> None:
    make_codec().extend(messages(4))
    a = make_codec()
    history = a.load() or []
    assert other_process("pop", log_path, mode) == history[-1]
    before = snapshot(log_path.parent)
    with pytest.raises(ConflictError, match="removed"):
        a.save([*history, REPLY])  # would bring the popped message back
    assert snapshot(log_path.parent) == before
    assert make_codec().load() == history[:-1]  # the pop stands
    a.save([*(a.load() or []), REPLY])
    assert make_codec().load() == [*history[:-1], REPLY]


def test_replace_overwrites_without_a_load(make_codec: MakeCodec) -> None:
    make_codec().extend(messages(6))
    other = make_codec()
    other.replace([REPLY])  # the explicit overwrite the error message offers
    assert make_codec().load() == [REPLY]


def test_the_one_comparison_fast_path_still_sees_every_change(tmp_path: Path) -> None:
    """save() compares a kept prefix by one encode of the list when nothing transforms
    messages (issue 15): an edit in place, a reordering of keys, a pop, a non-dict and an
    unencodable value must each still be told apart from "all kept"."""
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY)
    codec.extend([{"role": "user", "content": f"m{i}", "n": i} for i in range(50)])
    history = codec.load() or []
    history[10]["content"] = "edited in place"  # the same object the caller was handed
    codec.save([*history, {"role": "assistant", "content": "reply"}])
    assert (codec.load() or [])[10]["content"] == "edited in place"
    history = codec.load() or []
    reordered = [dict(reversed(list(m.items()))) for m in history]  # same messages
    codec.save([*reordered, {"role": "user", "content": "next"}])
    assert len(codec) == 52 and (codec.load() or [])[:51] == history
    codec.pop()
    history = codec.load() or []
    codec.save([*history, {"role": "user", "content": "after a pop"}])
    assert [m["content"] for m in codec.tail(2)] == ["reply", "after a pop"]
    history = codec.load() or []
    with pytest.raises(NotSerializableError):
        codec.save([*history[:5], {"role": "user", "content": {1, 2}}])  # type: ignore[dict-item]
    assert codec.load() == history


def test_the_fast_path_refuses_what_the_per_message_rule_refuses(tmp_path: Path) -> None:
    """msgspec encodes a dataclass as an object: its JSON can equal a stored message's, but
    a message must be a dict (review of the one-comparison path)."""
    import dataclasses

    @dataclasses.dataclass
    class M:
        role: str
        content: str

    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY)
    codec.save([{"role": "user", "content": "hi"}])
    codec.load()
    with pytest.raises(NotSerializableError, match="dict"):
        codec.save([M("user", "hi"), {"role": "assistant", "content": "yo"}])  # type: ignore[list-item]
    assert codec.load() == [{"role": "user", "content": "hi"}]


def test_digests_left_for_later_by_load_are_taken_right(tmp_path: Path) -> None:
    """load() leaves the kept messages' digests until a save() needs them (issue 15);
    appends in between add theirs at once. Every mix must still tell kept from changed."""
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY)
    codec.extend([{"role": "user", "content": f"m{i}", "n": i} for i in range(20)])
    history = codec.load() or []  # 20 digests left for later
    codec.save([*history, {"role": "assistant", "content": "a"}])  # kept whole: 1 appended
    cipher = codec.storage.fmt.records.cipher  # type: ignore[union-attr]
    before = cipher.unseal_count
    changed = [*history, {"role": "assistant", "content": "edited"}, {"role": "user"}]
    codec.save(changed)  # not all kept: the 20 first are compared by digest
    # Each of the 20 matched its digest (taken from the JSON load() read); only the edited
    # one was decrypted to compare (a wrong digest costs a decryption, never an answer).
    assert cipher.unseal_count - before == 1
    assert codec.load() == changed
    history = codec.load() or []
    codec.save([*history, {"role": "user", "content": "c"}])
    codec.pop()  # takes the digests before the joined JSON goes
    cipher = codec.storage.fmt.records.cipher  # type: ignore[union-attr]  # rewritten: anew
    before = cipher.unseal_count
    changed = [*history[:5], {"role": "user", "content": "edited"}, *history[6:]]
    codec.save(changed)
    assert cipher.unseal_count - before == 1
    assert codec.load() == changed


def test_digests_of_own_appends_left_for_later_are_taken_right(tmp_path: Path) -> None:
    """A codec's own appends leave their digests for later as well, while every digest is
    still left (issue 15: an append no longer hashes its message); later appends add theirs
    at once. A save() that compares message by message must still find each kept one."""
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY)
    sent = [{"role": "user", "content": f"m{i}", "n": i} for i in range(20)]
    for message in sent:
        codec.append(message)  # digests left for later
    cipher = codec.storage.fmt.records.cipher  # type: ignore[union-attr]
    before = cipher.unseal_count
    # Keys reordered in one message: the one-comparison path fails, the digests decide.
    reordered = [*sent[:7], dict(reversed(list(sent[7].items()))), *sent[8:]]
    codec.save([*reordered, {"role": "assistant", "content": "a"}])
    assert cipher.unseal_count - before == 1  # only the reordered one was decrypted
    codec.append({"role": "user", "content": "b"})  # digests taken: this one's at once
    kept = [*sent, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    before = cipher.unseal_count
    codec.save([*kept[:3], dict(reversed(list(kept[3].items()))), *kept[4:], {"role": "c"}])
    assert cipher.unseal_count - before == 1
    assert codec.load() == [*kept, {"role": "c"}]
    edited = [*kept[:4], {"role": "user", "content": "edited"}, *kept[5:]]
    codec.append({"role": "user", "content": "d"})  # the view is no longer whole
    image = snapshot(tmp_path)
    with pytest.raises(ConflictError):
        codec.save(edited)
    assert snapshot(tmp_path) == image

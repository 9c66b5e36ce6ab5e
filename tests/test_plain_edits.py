"""Plain logs edited by hand (FORMAT.md §6, §10.1): what a person does to a JSONL file that
README presents as readable, and what the library must never do in return — cut or
overwrite a line it did not write, or a record it acknowledged.

Each test reproduces a silent loss found by an outside review (reports/mig.md, defects 2
and 5): a committed last record that lost only its final newline was cut by the next
append; a whole line that is not a record line (a bare message ``echo``-ed in, a record whose
``ts`` reads ``+00:00``) was ignored by readers and deleted by the next append; and a codec
left open appended over a line added by hand since its last look.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _spec_reader import SpecError
from _spec_reader import read as spec_read
from conversation_codec import ConversationCodec, CorruptRecordError

from conftest import Clock, messages, snapshot

NEW = {"role": "user", "content": "appended by the library"}
HAND = {"role": "user", "content": "added by hand"}
BARE = json.dumps(HAND).encode() + b"\n"  # echo '{"role":...}' >> P
OFFSET_TS = b'{"seq":3,"ts":"2099-01-01T00:00:00+00:00","message":{"role":"user","content":"x"}}\n'
RECORD_3 = (
    b'{"seq":3,"ts":"2099-01-01T00:00:00.000000Z","message":%s}\n'
    % json.dumps(HAND, separators=(",", ":")).encode()
)


def _write(path: Path, n: int, durability: str = "fsync") -> None:
    with ConversationCodec(path, durability=durability, clock=Clock()) as c:
        c.extend(messages(n))  # a new log's first batch: a rewrite, synced (§8.2)
        for m in messages(2, n):  # and two single appends (the quick path)
            c.append(m)


def _final_newline_removed(path: Path) -> bytes:
    data = path.read_bytes()
    assert data.endswith(b"}\n")
    path.write_bytes(data[:-1])  # an editor saving "without a final newline"
    return data


@pytest.mark.parametrize("index", ["kept", "stale"])
def test_a_committed_last_record_that_lost_its_newline_is_kept(tmp_path: Path, index: str) -> None:
    """FORMAT.md §10.1: the synced entry of the last record ends one byte past the file and
    its bytes are a whole record line but for the newline: committed, so readers read it
    and the next writer puts the newline back before appending — never a cut."""
    path = tmp_path / "p.log"
    _write(path, 3)
    whole = _final_newline_removed(path)
    with ConversationCodec(path) as codec:
        assert codec.load() == messages(5)
        assert len(codec) == 5
        if index == "stale":  # a reader's view first, then the same codec writes
            assert codec.tail(1) == messages(5)[-1:]
            assert codec.get(4) == messages(5)[4]
        assert codec.append(NEW) == 5
        assert codec.load() == [*messages(5), NEW]
        assert codec.verify().ok
    assert path.read_bytes().startswith(whole)
    with ConversationCodec(path) as again:
        assert again.load() == [*messages(5), NEW]


def test_a_reader_alone_reads_the_committed_record_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    _write(path, 3)
    _final_newline_removed(path)
    before = snapshot(tmp_path)
    with ConversationCodec(path) as first_look:
        first = first_look.verify()  # a tolerant walk first: it stops short of the last line
    with ConversationCodec(path) as codec:
        assert codec.load() == messages(5)
        assert codec.get(4) == messages(5)[4]
        assert list(codec) == messages(5)
        report = codec.verify()
    assert snapshot(tmp_path) == before
    for found in (first, report):
        assert [p.kind for p in found.problems] == ["torn-tail"]
        assert "puts the newline back" in found.problems[0].detail


def test_an_unterminated_last_line_without_evidence_is_still_a_torn_tail(tmp_path: Path) -> None:
    """Under "flush" no entry is evidence: the same bytes are what a crash mid-append
    leaves, and FORMAT.md §6 keeps calling them a torn tail (cut by the next writer)."""
    path = tmp_path / "p.log"
    _write(path, 3, durability="flush")
    _final_newline_removed(path)
    with ConversationCodec(path) as codec:
        assert codec.load() == messages(4)
        assert codec.append(NEW) == 4


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (BARE, "bare-message"),
        (OFFSET_TS, "offset-ts"),
        (b' {"seq": 3, "ts": "2099-01-01T00:00:00.000000Z", "message": "hi"}\r\n', "str"),
    ],
    ids=["bare-message", "offset-ts", "message-not-an-object"],
)
def test_a_whole_line_that_is_no_record_line_is_refused_not_cut(
    tmp_path: Path, line: bytes, why: str
) -> None:
    """No crash leaves a whole, newline-terminated line without a zero byte that holds a
    JSON object but no record (FORMAT.md §10.1): a person wrote it. Readers and writers
    refuse, naming the line; nothing changes."""
    path = tmp_path / "p.log"
    _write(path, 1)
    with path.open("ab") as f:
        f.write(line)
    before = snapshot(tmp_path)
    with ConversationCodec(path) as codec:
        with pytest.raises(CorruptRecordError, match=r"line 5 .*not a record line") as raised:
            codec.load()
        assert raised.value.offset == len(path.read_bytes()) - len(line)
        with pytest.raises(CorruptRecordError, match="import"):
            codec.append(NEW)
        with pytest.raises(CorruptRecordError):
            codec.extend([NEW, NEW])
        report = codec.verify()
    assert snapshot(tmp_path) == before
    assert [p.kind for p in report.problems if p.is_damage] == ["damaged"]
    with pytest.raises(SpecError, match="not a record line"):
        spec_read(path.read_bytes())


def test_a_hand_line_after_a_blank_line_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    _write(path, 1)
    with path.open("ab") as f:
        f.write(b"\n" + BARE)
    before = path.read_bytes()
    with ConversationCodec(path) as codec, pytest.raises(CorruptRecordError, match="line 6"):
        codec.append(NEW)
    assert path.read_bytes() == before


def test_blank_lines_and_torn_lines_are_still_cut(tmp_path: Path) -> None:
    """What a crash leaves stays a torn tail: a line with no newline, zero-filled bytes
    (a lost page, even up to a later newline), random bytes (stale blocks), and lines that
    hold no JSON object (only whitespace, say)."""
    tails = [b'{"seq":3,"ts":"20', b"\x00" * 9 + b'"}}\n', b"\n \r\n", b"\x8f{]\n\x01"]
    for i, tail in enumerate(tails):
        path = tmp_path / f"p{i}.log"
        _write(path, 1)
        with path.open("ab") as f:
            f.write(tail)
        with ConversationCodec(path) as codec:
            assert codec.load() == messages(3)
            assert codec.append(NEW) == 3
            assert codec.verify().ok


@pytest.mark.parametrize("how", ["append", "extend"])
def test_an_open_codec_never_writes_over_a_line_added_by_hand(tmp_path: Path, how: str) -> None:
    """Defect 5: a codec stays open and settled; a person appends a record line. The codec's
    next append must read it first (and go after it), not write at its cached end."""
    path = tmp_path / "p.log"
    codec = ConversationCodec(path, clock=Clock())
    try:
        codec.extend(messages(3))
        assert codec.load() == messages(3)
        with path.open("ab") as f:
            f.write(RECORD_3)
        if how == "append":
            assert codec.append(NEW) == 4
        else:
            assert codec.extend([NEW, NEW]) == [4, 5]
        assert codec.load()[3] == HAND
    finally:
        codec.close()
    assert RECORD_3 in path.read_bytes()
    with ConversationCodec(path) as again:
        assert again.load()[:4] == [*messages(3), HAND]
        assert again.verify().ok


@pytest.mark.parametrize("how", ["append", "extend"])
def test_an_open_codec_refuses_to_append_after_a_bare_hand_line(tmp_path: Path, how: str) -> None:
    path = tmp_path / "p.log"
    codec = ConversationCodec(path, clock=Clock())
    try:
        codec.extend(messages(3))
        codec.load()
        with path.open("ab") as f:
            f.write(BARE)
        before = path.read_bytes()
        with pytest.raises(CorruptRecordError, match="not a record line"):
            codec.append(NEW) if how == "append" else codec.extend([NEW])
        assert path.read_bytes() == before
    finally:
        codec.close()

"""Recovery rules (FORMAT.md §10.1): what may be cut as a torn tail, and what is damage.

Each test here reproduces a way an earlier version silently lost acknowledged history
(issue 11): a committed record damaged at the very end was cut and overwritten; a torn frame
carrying the control bit killed the log; verify() raised on a time reversal; a pop was not
synced under "flush".
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from _spec_reader import SpecError
from _spec_reader import read as spec_read
from conversation_codec import ConversationCodec, CorruptRecordError, FileIO
from conversation_codec.compression import TRAIN_AFTER
from conversation_codec.format.record import encode_envelope, encode_frame
from conversation_codec.format.varint import encode_varint
from conversation_codec.maintenance.verify import salvage

from conftest import KEY, Clock, is_sidecar, messages, snapshot

NEW = {"role": "user", "content": "appended after the damage"}


def _write(path: Path, n: int, key: str | None, durability: str = "fsync") -> None:
    with ConversationCodec(path, encryption_key=key, durability=durability, clock=Clock()) as c:
        for m in messages(n):
            c.append(m)


def _flip(path: Path, from_end: int, key: str | None = KEY) -> None:
    """Damage one byte: a flipped bit (sealed), a control character (plain: a flipped bit
    inside a JSON string would still parse, and plain logs have no integrity to check)."""
    data = bytearray(path.read_bytes())
    if key is None:
        data[-from_end] = 0x01
    else:
        data[-from_end] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_damaged_last_committed_record_is_refused_not_cut(tmp_path: Path, key: str | None) -> None:
    """Issue 11 §2: 6 messages under "fsync", one bit flipped 40 bytes from the end. The
    index entry (written after the fsync) proves record 5 committed: readers raise, the
    writer refuses to append over it, nothing changes; salvage copies out the other five."""
    path = tmp_path / "chat.log"
    _write(path, 6, key)
    _flip(path, 40, key)
    before = snapshot(tmp_path)
    with ConversationCodec(path, encryption_key=key) as codec:
        with pytest.raises(CorruptRecordError, match="committed record"):
            codec.load()
        with pytest.raises(CorruptRecordError):
            codec.append(NEW)
        report = codec.verify()
    assert snapshot(tmp_path) == before, "a refusing reader or writer changed the files"
    assert not report.ok
    assert "torn-tail" not in [p.kind for p in report.problems], report.problems
    rescued = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert rescued.recovered == 5 and rescued.lost_seqs == (5,)  # the index counts it


def test_damaged_last_record_without_evidence_is_a_torn_tail(tmp_path: Path) -> None:
    """Under "flush" an index entry is no evidence (the log may not have reached the disk):
    a last record that fails authentication is a torn write, cut by the next writer."""
    path = tmp_path / "chat.log"
    _write(path, 6, KEY, durability="flush")
    _flip(path, 40)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == messages(5)
        assert codec.append(NEW) == 5
        assert codec.verify().ok


def _with_dictionary(path: Path) -> None:
    with ConversationCodec(path, encryption_key=KEY, clock=Clock()) as codec:
        codec.extend(messages(TRAIN_AFTER + 4))
        assert codec.storage.index.dict_span != (0, 0)


def test_torn_frame_with_the_control_bit_is_a_torn_tail(tmp_path: Path) -> None:
    """Issue 11 §3: a torn write after the dictionary record whose random prefix carries the
    control bit used to raise UnsupportedVersionError("second dictionary record") on every
    open. It is authenticated first: it does not authenticate, so it is a torn tail."""
    path = tmp_path / "chat.log"
    _with_dictionary(path)
    rnd = random.Random(11)
    body = bytes(3) + rnd.randbytes(200 - 3)  # passes the cheap timestamp filter's shape
    with path.open("ab") as f:
        f.write(encode_frame(body, control=True))
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert len(codec.load() or []) == TRAIN_AFTER + 4
        assert not codec.verify().ok  # the torn tail is reported...
        assert codec.append(NEW) == TRAIN_AFTER + 4  # ...and cut by the writer
        assert codec.verify().ok
        assert (codec.load() or [])[-1] == NEW


def _last_frame(path: Path, key: str | None) -> tuple[int, int]:
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.message_count()
        return codec.storage.index.span(len(codec) - 1)


@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_control_bit_must_agree_with_the_authenticated_kind(
    tmp_path: Path, durability: str
) -> None:
    """The control bit sits in the unauthenticated prefix; the kind in the sealed envelope.
    A whole authentic message record whose prefix claims "control" is damage wherever it
    stands (no crash writes one), even with no index evidence."""
    path = tmp_path / "chat.log"
    _write(path, 4, KEY, durability=durability)
    start, _ = _last_frame(path, KEY)
    data = bytearray(path.read_bytes())
    data[start] |= 0x01  # the low bit of the first varint byte is the control bit
    path.write_bytes(bytes(data))
    os.unlink(f"{path}.idx")  # no evidence at all: the rule must hold on its own
    before = snapshot(tmp_path)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        with pytest.raises(CorruptRecordError, match="control"):
            codec.load()
        with pytest.raises(CorruptRecordError):
            codec.append(NEW)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("what", ["ts_rem_us", "dict_id_zero"])
def test_authentic_record_with_a_malformed_envelope_is_damage(tmp_path: Path, what: str) -> None:
    """Issue 11 §2: a record whose MAC is valid but whose envelope is malformed was written
    by a key holder, not torn by a crash: damage, at the end of the log too."""
    path = tmp_path / "chat.log"
    _write(path, 3, KEY, durability="flush")
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.message_count()
        ts_s = 1_900_000_000
        if what == "ts_rem_us":
            envelope = bytes([0]) + encode_varint(3) + encode_varint(1_000_000) + b"{}"
        else:  # the dictionary flag with dict_id 0
            envelope = bytes([0b11]) + encode_varint(3) + encode_varint(5) + encode_varint(0)
            envelope += b"\x28\xb5\x2f\xfd"
        body = codec.storage.fmt.records.cipher.seal(envelope, ts_s)
    good = encode_envelope(3, ts_s * 10**6, b"{}", compressed=False)
    assert good != envelope
    with path.open("ab") as f:
        f.write(encode_frame(body))
    os.unlink(f"{path}.idx")
    before = snapshot(tmp_path)
    with ConversationCodec(path, encryption_key=KEY) as codec:
        with pytest.raises(CorruptRecordError, match="malformed"):
            codec.load()
        with pytest.raises(CorruptRecordError):
            codec.append(NEW)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_verify_reports_a_time_reversal_instead_of_raising(tmp_path: Path, key: str | None) -> None:
    """Issue 11 §1, root cause 1: verify()/salvage() must report a record whose time runs
    backwards (the catch-up used to raise even in their tolerant mode)."""
    path = tmp_path / "chat.log"
    _write(path, 4, None if key is None else key)
    if key is None:
        lines = path.read_bytes().splitlines(keepends=True)
        last = lines[-1].replace(b'"ts":"2025', b'"ts":"2024', 1)
        assert last != lines[-1]
        path.write_bytes(b"".join([*lines[:-1], last]))
    else:  # seal a record 4 with an earlier time under the log's own key
        with ConversationCodec(path, encryption_key=key) as codec:
            codec.message_count()
            records = codec.storage.fmt.records
            body = records.encode(4, 1_000_000_000 * 10**6, b'{"role":"user","content":"x"}')
        with path.open("ab") as f:
            f.write(encode_frame(body))
    os.unlink(f"{path}.idx")
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert "time-reversed" in [p.kind for p in report.problems], report.problems
    assert not report.ok
    rescued = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert rescued.recovered == (5 if key is not None else 4)  # salvage keeps it, ts raised


class _Ops(FileIO):
    def __init__(self) -> None:
        self.ops: list[str] = []

    def truncate(self, fd: int, size: int) -> None:
        if not is_sidecar(fd):  # the log's own calls
            self.ops.append("truncate")
        super().truncate(fd, size)

    def sync(self, fd: int, *, data_only: bool) -> None:
        if not is_sidecar(fd):
            self.ops.append("sync")
        super().sync(fd, data_only=data_only)


def test_pop_is_synced_under_flush(tmp_path: Path) -> None:
    """Issue 11 §1, root cause 2 (FORMAT.md §8.3): under "flush" a pop's truncate is synced
    before pop() returns, so a power loss cannot bring the popped record back."""
    path = tmp_path / "chat.log"
    spy = _Ops()
    with ConversationCodec(path, encryption_key=KEY, durability="flush", io=spy) as codec:
        codec.extend(messages(3))
        spy.ops.clear()
        codec.append(NEW)
        assert spy.ops == [], "an append under flush syncs nothing"
        assert codec.pop() == NEW
        assert spy.ops == ["truncate", "sync"]


def test_old_index_files_still_load(tmp_path: Path) -> None:
    """An index of version 1 (no synced flags) is read as it was and rewritten as v2."""
    path = tmp_path / "chat.log"
    _write(path, 5, KEY)
    idx = Path(f"{path}.idx")
    raw = bytearray(idx.read_bytes())
    raw[8:10] = (1).to_bytes(2, "little")
    for k in range(5):  # clear the synced flags, as version 1 wrote them
        raw[48 + 16 * k + 7] &= 0x7F
    idx.write_bytes(bytes(raw))
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == messages(5)
        codec.append(NEW)
    assert idx.read_bytes()[8:10] == (2).to_bytes(2, "little")


def _entry(idx: Path, k: int) -> tuple[int, int]:
    data = idx.read_bytes()
    return int.from_bytes(data[48 + 16 * k : 56 + 16 * k], "little"), 48 + 16 * k


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plain"])
def test_a_garbled_synced_entry_is_no_evidence(tmp_path: Path, key: str | None) -> None:
    """Found by the power-loss exploration (a fresh seed): a garbled last synced entry (one
    flipped bit of its end) ended inside a torn tail; the reader then refused the log.
    Evidence counts only for a record that starts exactly where recovery stopped (FORMAT.md
    §10.1): here the intact records run past the garbled entry's start, so the tail is
    torn and is cut."""
    path = tmp_path / "chat.log"
    _write(path, 6, key)
    idx = Path(f"{path}.idx")
    end4, _ = _entry(idx, 4)
    end5, at5 = _entry(idx, 5)
    size = path.stat().st_size
    with path.open("ab") as f:  # a torn append: garbage past the last record
        f.write(random.Random(5).randbytes(300))
    raw = bytearray(idx.read_bytes())
    flag = end5 & ~((1 << 62) - 1)
    assert flag == 0b11 << 62, "entry 5 was written synced"
    garbled = flag | (size + 100)  # still synced, now ending inside the torn tail
    raw[at5 : at5 + 8] = garbled.to_bytes(8, "little")
    idx.write_bytes(bytes(raw))
    assert end4 < end5
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.load() == messages(6)
        assert codec.append(NEW) == 6


def test_one_flipped_bit_does_not_forge_evidence(tmp_path: Path) -> None:
    """ENTRY_SYNCED takes both top bits of an entry's end: one flipped bit in a "flush"
    entry (no evidence) yields a garbled entry, never a synced one."""
    path = tmp_path / "chat.log"
    _write(path, 6, KEY, durability="flush")
    _flip(path, 40)
    idx = Path(f"{path}.idx")
    raw = bytearray(idx.read_bytes())
    raw[48 + 16 * 5 + 7] ^= 0x80  # bit 63 of entry 5's end
    idx.write_bytes(bytes(raw))
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.load() == messages(5)  # the damaged last record is a torn tail
        assert codec.append(NEW) == 5


def test_a_large_torn_tail_is_resolved_without_trying_every_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(5))
    with open(path, "ab") as f:
        f.write(
            random.Random(2).randbytes(2 * 1024 * 1024)
        )  # a torn 2 MiB record, as from an attachment
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.message_count()
        cipher = codec.storage.fmt.records.cipher  # type: ignore[union-attr]
        codec.append({"role": "user", "content": "after"})
        # Random bytes almost never look like a frame with a plausible timestamp: the
        # resynchronisation authenticates (HMACs) a handful of candidates, not millions.
        assert cipher.unseal_count < 50
        assert len(codec) == 6


PLAIN_HEAD = b'{"conversation_codec":1,"log_id":"00112233445566778899aabbccddeeff"}\n'
PLAIN_0 = b'{"seq":0,"ts":"2026-01-01T00:00:00.000000Z","message":{"role":"user","content":"a"}}\n'
TORN = b'{"seq":1,"ts":"2026-01-01T00:0'  # a damaged line: no record
LONG = b"b" * (2 << 20)  # longer than the reader's window


@pytest.mark.parametrize(
    ("before", "line"),
    [
        (b"\n", b'{ "seq": 1, "ts": "2026-01-01T00:00:01.000000Z", "message": {"content": "b"} }'),
        (b"\n", b'{"ts":"2026-01-01T00:00:01.000000Z","message":{"content":"b"},"seq":1}'),
        (b"\n", b' \t{"seq":1,"ts":"2026-01-01T00:00:01.000000Z","message":{"content":"b"}}'),
        (b"\x00" * 7, b'{"message":{"content":"b"},"seq":1,"ts":"2026-01-01T00:00:01.000000Z"}'),
        (b"\x00" * 7, b'{"seq":1,"ts":"2026-01-01T00:00:01.000000Z","message":{"content":"b"}}'),
        (b"\n", b'{"seq":1,"ts":"2026-01-01T00:00:01.000000Z","message":{"c":"%s"}}' % LONG),
    ],
    ids=["spaced", "reordered", "indented", "reordered-after-zeros", "after-zeros", "2-MiB"],
)
def test_plain_recovery_never_cuts_an_intact_line_in_any_form_s6_reads(
    tmp_path: Path, before: bytes, line: bytes
) -> None:
    """FORMAT.md §10.1: every line start (and the end of zero-filled bytes) is a candidate,
    checked by parsing the line as §6 reads it, not only where writers' bytes ``{"seq":``
    begin: an intact line after a damaged one is damage before a record, never a torn tail."""
    path = tmp_path / "p.log"
    path.write_bytes(PLAIN_HEAD + PLAIN_0 + TORN + before + line + b"\n")
    before_bytes = path.read_bytes()
    with ConversationCodec(path) as codec:
        with pytest.raises(CorruptRecordError, match="intact one") as raised:
            codec.load()
        assert raised.value.offset == len(PLAIN_HEAD + PLAIN_0)
        with pytest.raises(CorruptRecordError):
            codec.append(NEW)
        report = codec.verify()
    assert path.read_bytes() == before_bytes
    assert [p.kind for p in report.problems if p.is_damage] == ["damaged"]
    saved = salvage(path, tmp_path / "copy.log")
    assert saved.recovered == 2 and saved.lost_seqs == ()
    with pytest.raises(SpecError, match="before an intact record"):  # the spec's reader
        spec_read(before_bytes)

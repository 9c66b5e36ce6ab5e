"""ConversationCodec's public API, on encrypted and plaintext logs (the ``mode`` fixture)."""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conversation_codec import (
    ClosedError,
    CodecOptions,
    ConversationCodec,
    ConversationCodecError,
    DecryptionError,
    FileIO,
    FormatError,
    KeyRequiredError,
    NotEncryptedError,
    NotSerializableError,
    RecordTooLargeError,
    StorageError,
    UnsupportedVersionError,
    generate_key,
)
from conversation_codec.format.header import LOG_MAGIC

from conftest import KEY, OTHER_KEY, T0, messages, snapshot

MakeCodec = Callable[..., ConversationCodec]


def test_empty_log_loads_none(codec: ConversationCodec, log_path: Path) -> None:
    assert codec.load() is None
    assert codec.tail(5) == []
    assert codec.pop() is None
    assert len(codec) == 0
    assert list(codec) == []
    assert not log_path.exists()  # reading creates nothing


def test_round_trip_every_shape(make_codec: MakeCodec) -> None:
    msgs = messages(40)
    with make_codec() as codec:
        assert [codec.append(m) for m in msgs[:10]] == list(range(10))
        assert codec.extend(msgs[10:]) == list(range(10, 40))
    with make_codec() as codec:
        assert codec.load() == msgs
        assert list(codec) == msgs
        assert codec.message_count() == len(codec) == 40
        assert codec.get(0) == msgs[0]
        assert codec.get(-1) == msgs[-1]
        assert codec.get(17) == msgs[17]
        assert codec.tail(3) == msgs[-3:]
        assert codec.tail(0) == []
        assert codec.tail(100) == msgs


def test_key_order_and_values_round_trip_exactly(codec: ConversationCodec) -> None:
    msg = {"z": 2**70, "a": [1.5, -0.0, 1e300, "\u0000\ud7ff", {"nested": {"deep": None}}], "m": ""}
    codec.append(msg)
    [got] = codec.load() or []
    assert got == msg
    assert list(got) == ["z", "a", "m"]
    assert repr(got["a"][1]) == "-0.0"


@pytest.mark.parametrize(
    "bad",
    [
        {"n": float("nan")},
        {"t": (1, 2)},
        {1: "int key"},
        {"d": datetime(2025, 1, 1, tzinfo=timezone.utc)},
        {"b": b"bytes"},
        {"s": {1, 2}},
        {"o": object()},
    ],
)
def test_non_json_messages_are_rejected(
    codec: ConversationCodec, bad: dict[object, object]
) -> None:
    with pytest.raises(NotSerializableError):
        codec.append(bad)  # type: ignore[arg-type]
    assert codec.load() is None


def test_non_dict_message_is_rejected(codec: ConversationCodec) -> None:
    with pytest.raises(NotSerializableError, match="must be a dict"):
        codec.append(["role", "user"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # the builtin parent works too
        codec.extend([{"ok": 1}, "nope"])  # type: ignore[list-item]
    assert codec.load() is None  # nothing of a bad batch is written


def test_oversized_message_is_rejected(
    codec: ConversationCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conversation_codec.encoding as codec_module

    monkeypatch.setattr(codec_module, "MAX_MESSAGE_BYTES", 100)
    with pytest.raises(RecordTooLargeError, match="at most 100"):
        codec.append({"content": "x" * 200})
    codec.append({"content": "x" * 50})
    assert len(codec) == 1


def test_timestamps_are_kept_and_never_go_backwards(make_codec: MakeCodec) -> None:
    times = iter([T0 + 5_000_000, T0])  # the clock steps back by 5 s
    codec = make_codec(clock=lambda: next(times))
    codec.append({"a": 1})
    codec.append({"a": 2})
    assert codec.timestamp(1) == codec.timestamp(0)  # clamped, not backwards
    explicit = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert codec.append({"a": 3}, timestamp=explicit) == 2
    assert codec.timestamp(2) == explicit
    codec.append({"a": 4}, timestamp=explicit.timestamp() + 1.5)
    assert codec.timestamp(-1) == explicit + timedelta(seconds=1.5)
    with pytest.raises(ValueError, match="never go backwards"):
        codec.append({"a": 5}, timestamp=explicit)
    with pytest.raises(ValueError, match="naive"):
        codec.append({"a": 5}, timestamp=datetime(2031, 1, 1))
    with pytest.raises(TypeError):
        codec.append({"a": 5}, timestamp="2031-01-01")  # type: ignore[arg-type]
    assert len(codec) == 4


def test_timestamps_survive_reopen_to_the_microsecond(make_codec: MakeCodec) -> None:
    when = [datetime(2026, 1, 1, 0, 0, s, 999_999 - s, tzinfo=timezone.utc) for s in range(5)]
    with make_codec() as codec:
        codec.extend(messages(5), timestamps=when)
    with make_codec() as codec:
        assert [codec.timestamp(i) for i in range(5)] == when


def test_extend_timestamp_count_must_match(codec: ConversationCodec) -> None:
    with pytest.raises(ValueError, match="2 timestamps for 1"):
        codec.extend([{"a": 1}], timestamps=[1.0, 2.0])


def test_get_out_of_range(codec: ConversationCodec) -> None:
    codec.extend(messages(3))
    for bad in (3, -4, 100):
        with pytest.raises(IndexError):
            codec.get(bad)
    with pytest.raises(TypeError):
        codec.get("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        codec.tail(-1)


def test_pop_is_a_truncation(codec: ConversationCodec, log_path: Path) -> None:
    msgs = messages(5)
    codec.extend(msgs)
    size_after_four = None
    codec2_sizes = []
    for m in reversed(msgs):
        codec2_sizes.append(log_path.stat().st_size)
        assert codec.pop() == m
    assert codec.pop() is None
    codec.extend(msgs[:4])
    size_after_four = log_path.stat().st_size
    codec.append(msgs[4])
    assert codec.pop() == msgs[4]
    assert log_path.stat().st_size == size_after_four
    assert codec.load() == msgs[:4]


def test_seed_usage_save_after_every_turn_appends_only(
    make_codec: MakeCodec, log_path: Path
) -> None:
    codec = make_codec()
    history = codec.load() or []
    sizes = []
    for m in messages(12):
        history.append(m)
        before = log_path.read_bytes() if log_path.exists() else b""
        codec.save(history)
        after = log_path.read_bytes()
        assert after.startswith(before)  # the kept prefix is never rewritten
        sizes.append(len(after))
    inode = log_path.stat().st_ino
    stamps = [codec.timestamp(i) for i in range(12)]
    # A new process: load once, keep saving.
    codec2 = make_codec()
    history = codec2.load() or []
    history.append({"role": "user", "content": "one more"})
    codec2.save(history)
    assert log_path.stat().st_ino == inode
    assert [codec2.timestamp(i) for i in range(12)] == stamps
    assert codec.load() == history


def test_save_without_load_first_still_appends_only(make_codec: MakeCodec, log_path: Path) -> None:
    make_codec().extend(messages(6))
    inode = log_path.stat().st_ino
    before = log_path.read_bytes()
    fresh = make_codec()
    fresh.save([dict(m) for m in messages(8)])  # equal copies, not the loaded objects
    assert log_path.stat().st_ino == inode
    assert log_path.read_bytes().startswith(before)
    assert fresh.load() == messages(8)


def test_save_detects_in_place_mutation_and_key_order(
    codec: ConversationCodec, log_path: Path
) -> None:
    codec.save(messages(4))
    history = codec.load() or []
    history[1] = {**history[1], "content": "edited"}
    inode = log_path.stat().st_ino
    stamp0 = codec.timestamp(0)
    codec.save(history)
    assert codec.load() == history
    assert log_path.stat().st_ino != inode  # a divergent list replaces the log atomically
    assert codec.timestamp(0) == stamp0  # the common prefix keeps its timestamps
    # The same content with keys in another order is not a divergence.
    reordered = [dict(reversed(list(m.items()))) for m in history]
    inode = log_path.stat().st_ino
    codec.save(reordered)
    assert log_path.stat().st_ino == inode


def test_save_shorter_list_and_empty_list(codec: ConversationCodec) -> None:
    codec.save(messages(5))
    codec.save(messages(3))
    assert codec.load() == messages(3)
    codec.save([])
    assert codec.load() is None
    assert len(codec) == 0


def test_clear_removes_every_file(codec: ConversationCodec, log_path: Path) -> None:
    codec.extend(messages(3))
    codec.clear()
    assert sorted(p.name for p in log_path.parent.iterdir()) == []
    assert codec.load() is None
    assert len(codec) == 0
    assert sorted(p.name for p in log_path.parent.iterdir()) == []  # reading creates nothing
    codec.append({"after": "clear"})
    assert codec.load() == [{"after": "clear"}]


def test_redact_fn_applies_before_writing(make_codec: MakeCodec, log_path: Path) -> None:
    def redact(m: dict[str, object]) -> dict[str, object]:
        return {
            k: ("[redacted]" if k == "content" and "ssn" in str(v) else v) for k, v in m.items()
        }

    codec = make_codec(redact_fn=redact)
    codec.append({"role": "user", "content": "my ssn is 078-05-1120"})
    codec.save(
        [
            {"role": "user", "content": "my ssn is 078-05-1120"},
            {"role": "assistant", "content": "ok"},
        ]
    )
    assert codec.load() == [
        {"role": "user", "content": "[redacted]"},
        {"role": "assistant", "content": "ok"},
    ]
    assert b"078-05-1120" not in log_path.read_bytes()


def test_two_instances_in_one_process_see_each_other(make_codec: MakeCodec) -> None:
    a, b = make_codec(), make_codec()
    a.extend(messages(3))
    assert b.tail(1) == messages(3)[-1:]
    b.pop()
    b.append({"replaced": True})
    assert a.load() == [*messages(2), {"replaced": True}]
    a.save([{"only": 1}])
    assert b.load() == [{"only": 1}]
    b.clear()
    assert a.load() is None
    a.append({"x": 1})
    assert b.get(0) == {"x": 1}


def test_iteration_is_streaming_and_detects_replacement(make_codec: MakeCodec) -> None:
    a, b = make_codec(), make_codec()
    a.extend(messages(600))
    it = iter(a)
    first = [next(it) for _ in range(300)]
    assert first == messages(300)
    b.load()  # a divergent save() rewrites only a history read in full (issue 11)
    b.save([{"different": 1}])
    with pytest.raises(ConversationCodecError, match="replaced"):
        list(it)


def test_closed_codec_refuses(codec: ConversationCodec) -> None:
    codec.close()
    codec.close()  # idempotent
    with pytest.raises(ClosedError):
        codec.append({"a": 1})
    with pytest.raises(ValueError):
        codec.load()


def test_files_are_private(make_codec: MakeCodec, tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b" / "chat.log"
    codec = make_codec(path=nested)
    codec.extend(messages(2))
    codec.load()  # a divergent save() rewrites only a history read in full (issue 11)
    codec.save(messages(1))  # a rewrite creates the log anew
    for p in nested.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(nested.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="durability"):
        ConversationCodec("x.log", durability="sometimes")
    with pytest.raises(ValueError, match="not a Fernet key"):
        ConversationCodec("x.log", encryption_key="not-a-key")
    with pytest.raises(TypeError):
        ConversationCodec("x.log", encryption_key=[KEY, 5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        ConversationCodec("x.log", encryption_key=[])


@pytest.mark.parametrize(
    ("name", "errno_", "expected"),
    [
        ("x" * 5000, errno.ENAMETOOLONG, "is 5000 bytes"),
        ("x" * 256, errno.ENAMETOOLONG, "is 256 bytes"),
        ("x" * 235, errno.ENAMETOOLONG, "use at most 234 bytes"),  # its .tmp-<16 hex> is 256
        ("é" * 118, errno.ENAMETOOLONG, "is 236 bytes"),  # bytes, not characters
        ("d" * 256 + "/c.log", errno.ENAMETOOLONG, "256-byte directory name"),
        ("/".join(["d" * 200] * 30) + "/c.log", errno.ENAMETOOLONG, "too long"),  # > PATH_MAX
        ("a\0b.log", errno.EINVAL, "NUL byte"),
    ],
)
def test_an_unusable_path_raises_storage_error_naming_the_problem(
    tmp_path: Path, name: str, errno_: int, expected: str
) -> None:
    for key in (None, KEY):
        with pytest.raises(StorageError, match=expected) as info:
            ConversationCodec(str(tmp_path) + "/" + name, encryption_key=key)
        assert info.value.errno == errno_ and len(str(info.value)) < 300
    assert list(tmp_path.iterdir()) == []


def test_the_longest_name_allowed_survives_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 234)  # + ".tmp-<16 hex>" is 255 bytes, NAME_MAX
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(messages(3))
        codec.compact()
        assert codec.load() == messages(3)


def test_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="directory"):
        ConversationCodec(tmp_path)


def test_foreign_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "legacy.jsonl"
    path.write_bytes(b'{"role": "user", "content": "hi"}\n')
    before = snapshot(tmp_path)
    for key in (None, KEY):
        with pytest.raises(FormatError, match="migrate"):
            ConversationCodec(path, encryption_key=key)
    assert snapshot(tmp_path) == before


# -- encryption-specific behaviour -----------------------------------------------------------


def test_no_plaintext_reaches_disk(tmp_path: Path) -> None:
    path = tmp_path / "secret.log"
    secret = "the launch code is swordfish-4471"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.append({"role": "user", "content": secret})
        codec.save([{"role": "user", "content": secret}, {"role": "assistant", "content": secret}])
        codec.save([{"role": "system", "content": secret}])  # a divergent save: temp + rename
        codec.pop()
        codec.append({"role": "user", "content": secret * 3})
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        for fragment in ("swordfish", "launch code", "role", "user"):
            assert fragment.encode() not in data, (p.name, fragment)
    assert tmp_path.joinpath("secret.log").read_bytes().startswith(LOG_MAGIC)


def test_wrong_key_raises_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(messages(3))
    before = snapshot(tmp_path)
    with pytest.raises(DecryptionError, match="wrong key") as info:
        ConversationCodec(path, encryption_key=OTHER_KEY)
    assert KEY not in str(info.value) and OTHER_KEY not in str(info.value)
    with pytest.raises(KeyRequiredError):
        ConversationCodec(path)
    assert snapshot(tmp_path) == before


def test_key_for_plaintext_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.log"
    with ConversationCodec(path) as codec:
        codec.append({"a": 1})
    before = snapshot(tmp_path)
    with pytest.raises(NotEncryptedError):
        ConversationCodec(path, encryption_key=KEY)
    assert snapshot(tmp_path) == before


def test_key_list_rotation(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    new = generate_key()
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(messages(2))
    with ConversationCodec(path, encryption_key=[new, KEY]) as codec:  # a rotation
        codec.append({"after": "rotation"})
        assert codec.load() == [*messages(2), {"after": "rotation"}]
    with ConversationCodec(path, encryption_key=[KEY, new]) as codec:
        assert len(codec.load() or []) == 3
    with pytest.raises(DecryptionError):  # the header is still the old key's until compaction
        ConversationCodec(path, encryption_key=new)


def test_bytes_keys_accepted_and_repr_hides_key(tmp_path: Path) -> None:
    codec = ConversationCodec(tmp_path / "c.log", encryption_key=KEY.encode())
    codec.append({"a": 1})
    assert KEY not in repr(codec)
    assert "encrypted" in repr(codec)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.append({"a": 1})
    data = bytearray(path.read_bytes())
    data[8] = 3  # format_version (2 is the newest this library reads)
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        ConversationCodec(path, encryption_key=KEY)
    plain = tmp_path / "plain.log"
    plain.write_bytes(b'{"conversation_codec":7,"log_id":"' + b"0" * 32 + b'"}\n')
    with pytest.raises(UnsupportedVersionError, match="v7"):
        ConversationCodec(plain)


def test_plaintext_log_is_readable_jsonl(tmp_path: Path) -> None:
    import json

    path = tmp_path / "plain.log"
    with ConversationCodec(path) as codec:
        codec.extend(messages(3), timestamps=[1.0, 2.0, 3.5])
    lines = path.read_text("utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["conversation_codec"] == 1
    records = [json.loads(line) for line in lines[1:]]
    assert [r["message"] for r in records] == messages(3)
    assert [r["seq"] for r in records] == [0, 1, 2]
    assert records[2]["ts"] == "1970-01-01T00:00:03.500000Z"


def test_fsync_durability_mode_works(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, durability="fsync") as codec:
        codec.extend(messages(3))
        codec.append({"a": 1})
        assert codec.pop() == {"a": 1}
        assert len(codec) == 3


def test_stale_temp_files_are_swept(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    stale = tmp_path / "chat.log.tmp-0123456789abcdef"
    unrelated = tmp_path / "chat.log.tmp-notours"
    stale.write_bytes(b"junk")
    unrelated.write_bytes(b"keep")
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.append({"a": 1})
    assert not stale.exists()
    assert unrelated.exists()


def test_options_are_checked_once_and_frozen(tmp_path: Path) -> None:
    io = FileIO()
    with ConversationCodec(tmp_path / "c.log", durability="flush", io=io) as codec:
        assert codec.options == CodecOptions(durability="flush", io=io)
        with pytest.raises(AttributeError):
            codec.options.durability = "fsync"  # type: ignore[misc]
    with pytest.raises(ValueError, match="durability"):
        ConversationCodec(tmp_path / "d.log", durability="sometimes")
    with pytest.raises(ValueError, match="attachments"):
        ConversationCodec(tmp_path / "d.log", attachments="drop")
    with pytest.raises(TypeError, match="FileIO"):
        ConversationCodec(tmp_path / "d.log", io=object())  # type: ignore[arg-type]
    assert not (tmp_path / "d.log").exists()


# -- programmer errors: a clear message naming the argument ------------------------------


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_a_time_that_is_not_finite_names_the_argument(
    codec: ConversationCodec, value: float
) -> None:
    codec.append({"role": "user", "content": "hi"})
    with pytest.raises(ValueError, match="timestamp must be a finite number of epoch seconds"):
        codec.append({"role": "user", "content": "x"}, timestamp=value)
    with pytest.raises(ValueError, match="since must be a finite number of epoch seconds"):
        list(codec.search("hi", since=value))
    with pytest.raises(ValueError, match="until must be a finite number of epoch seconds"):
        list(codec.search("hi", until=value))
    with pytest.raises(ValueError, match="before must be a finite number of epoch seconds"):
        codec.prune(value)
    assert len(codec) == 1


@pytest.mark.parametrize(
    ("call", "error", "expected"),
    [
        (lambda c: c.tail(None), TypeError, "n must be an int >= 0, not NoneType"),
        (lambda c: c.tail("3"), TypeError, "n must be an int >= 0, not str"),
        (lambda c: c.tail(1.0), TypeError, "n must be an int >= 0, not float"),
        (lambda c: c.tail(True), TypeError, "n must be an int >= 0, not bool"),
        (lambda c: c.tail(-1), ValueError, "n must be an int >= 0, not -1"),
        (lambda c: c.wait(None), TypeError, "after must be an int >= -1, not NoneType"),
        (lambda c: c.wait("0"), TypeError, "after must be an int >= -1, not str"),
        (lambda c: c.wait(0, "1"), TypeError, "timeout must be a number of seconds"),
        (lambda c: c.wait(0, NAN), ValueError, "timeout must be a number of seconds >= 0"),
    ],
    ids=[
        "tail-None",
        "tail-str",
        "tail-float",
        "tail-bool",
        "tail-negative",
        "wait-None",
        "wait-str",
        "wait-timeout-str",
        "wait-timeout-nan",
    ],
)
def test_bad_counts_and_waits_name_the_argument(
    codec: ConversationCodec,
    call: Callable[[ConversationCodec], object],
    error: type[Exception],
    expected: str,
) -> None:
    codec.append({"role": "user", "content": "hi"})
    with pytest.raises(error, match=expected):
        call(codec)


@pytest.mark.parametrize(
    ("timeout", "error", "expected"),
    [
        ("3", TypeError, "lock_timeout must be a number of seconds or None, not str"),
        (True, TypeError, "lock_timeout must be a number of seconds or None, not bool"),
        (-1, ValueError, "lock_timeout must be a number of seconds >= 0 or None"),
        (NAN, ValueError, "lock_timeout must be a number of seconds >= 0 or None"),
    ],
    ids=["str", "bool", "negative", "nan"],
)
def test_a_bad_lock_timeout_is_refused_when_the_codec_or_store_is_made(
    tmp_path: Path, timeout: object, error: type[Exception], expected: str
) -> None:
    from conversation_codec import ConversationStore

    with pytest.raises(error, match=expected):
        ConversationCodec(tmp_path / "c.log", KEY, lock_timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match=expected):
        ConversationStore(tmp_path / "s", encryption_key=KEY, lock_timeout=timeout)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("durability", ["fsync", "flush"])
def test_a_process_with_only_the_old_key_keeps_what_a_rotating_writer_appended(
    tmp_path: Path, durability: str
) -> None:
    # A rotation rolls out process by process: one already opens with [new, old] while
    # another has only old. What the first appends must read for the second, never as a
    # torn tail (under "flush", cut by its next append) or as damage (under "fsync").
    path = tmp_path / "chat.log"
    new = generate_key()
    with ConversationCodec(path, encryption_key=KEY, durability=durability) as codec:
        codec.extend(messages(2))
    with ConversationCodec(path, encryption_key=[new, KEY], durability=durability) as codec:
        codec.append({"sealed": "while rotating"})
    with ConversationCodec(path, encryption_key=KEY, durability=durability) as old:
        assert old.load() == [*messages(2), {"sealed": "while rotating"}]
        old.append({"after": "it"})
        assert old.verify().problems == ()
    want = [*messages(2), {"sealed": "while rotating"}, {"after": "it"}]
    with ConversationCodec(path, encryption_key=[new, KEY]) as codec:
        assert codec.load() == want
        codec.rotate_key(new)  # the rotation ends: only now does the old key fail
    before = path.read_bytes()
    with pytest.raises(DecryptionError):
        ConversationCodec(path, encryption_key=KEY)
    assert path.read_bytes() == before
    with ConversationCodec(path, encryption_key=new) as codec:
        assert codec.load() == want

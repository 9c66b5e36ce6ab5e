"""Export to plaintext JSONL / JSON and import back: exact round trips of messages and
record times, atomic 0600 exports, replace and merge imports, duplicates, rejects."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

import _children
import conversation_codec
from conversation_codec import ConversationCodec, DecryptionError, FormatError, KeyRequiredError
from conversation_codec.format.record import MAX_MESSAGE_BYTES
from conversation_codec.maintenance.legacy import LegacyFormat, read_legacy
from conversation_codec.maintenance.legacy_messages import clamp_note
from conversation_codec.maintenance.transfer import ImportReport, export_history, import_history

from conftest import (
    KEY,
    OTHER_KEY,
    SPECIAL_FILES,
    T0,
    Clock,
    make_special,
    messages,
    unblocked,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Codec = ConversationCodec


@pytest.fixture(params=["encrypted", "plaintext"])
def make(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ConversationCodec]]:
    opened: list[ConversationCodec] = []

    def make(name: str = "chat.log", **kwargs: Any) -> ConversationCodec:
        kwargs.setdefault("encryption_key", KEY if request.param == "encrypted" else None)
        kwargs.setdefault("clock", Clock())
        kwargs.setdefault("durability", "flush")
        codec = Codec(tmp_path / name, **kwargs)
        opened.append(codec)
        return codec

    yield make
    for codec in opened:
        codec.close()


def _times(codec: ConversationCodec) -> list[int]:
    return [(codec.timestamp(i) - _EPOCH) // timedelta(microseconds=1) for i in range(len(codec))]


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _seed(codec: ConversationCodec, n: int = 12) -> list[dict[str, Any]]:
    """Fill a codec with ``n`` realistic messages at odd microsecond times (ties too)."""
    batch = messages(n)
    stamps = [_at(T0 + 1_234_567 * (i // 2) + 1) for i in range(n)]
    codec.extend(batch, timestamps=stamps)
    return batch


def _only_file(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(names)


# -- export ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_export_then_import_round_trips_messages_and_times(
    make: Callable[..., ConversationCodec], tmp_path: Path, fmt: str
) -> None:
    source = make()
    batch = _seed(source)
    assert export_history(source, tmp_path / "out", format=fmt) == len(batch)
    target = make("copy.log")
    report = import_history(target, tmp_path / "out")
    assert report == ImportReport(len(batch), len(batch), 0, 0, _legacy(fmt))
    assert target.load() == batch == source.load()
    assert _times(target) == _times(source)


def _legacy(fmt: str) -> LegacyFormat:
    return LegacyFormat.JSONL if fmt == "jsonl" else LegacyFormat.JSON_ARRAY


def test_export_layout_is_what_other_tools_read(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    codec.append({"role": "user", "content": "héllo"}, timestamp=_at(T0 + 7))
    codec.append({"role": "assistant", "content": None}, timestamp=_at(T0 + 1_000_000))
    export_history(codec, tmp_path / "a.jsonl")
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8") == (
        '{"role":"user","content":"héllo","timestamp":"2025-11-21T04:40:00.000007Z"}\n'
        '{"role":"assistant","content":null,"timestamp":"2025-11-21T04:40:01.000000Z"}\n'
    )
    export_history(codec, tmp_path / "a.json", format="json", with_timestamps=False)
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == [
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": None},
    ]
    history = read_legacy(tmp_path / "a.jsonl")
    assert history.timestamps == [T0 + 7, T0 + 1_000_000]


def test_export_without_timestamps_imports_at_import_time(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    source = make()
    batch = _seed(source, 4)
    export_history(source, tmp_path / "out.jsonl", with_timestamps=False)
    clock = Clock(T0 + 10**12)
    target = make("copy.log", clock=clock)
    import_history(target, tmp_path / "out.jsonl")
    assert target.load() == batch
    assert set(_times(target)) == {T0 + 10**12 + 1000}


def test_export_is_private_atomic_and_replaces_the_destination(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    _seed(codec, 3)
    dst = tmp_path / "out" / "export.jsonl"
    dst.parent.mkdir()
    dst.write_text("old\n")
    os.chmod(dst, 0o644)
    old = os.umask(0)
    try:
        export_history(codec, dst)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert len(dst.read_text().splitlines()) == 3
    _only_file(dst.parent, "export.jsonl")


def test_export_is_plaintext_even_for_an_encrypted_log(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make(encryption_key=KEY)
    codec.append({"role": "user", "content": "secret plans"})
    export_history(codec, tmp_path / "out.jsonl")
    assert b"secret plans" in (tmp_path / "out.jsonl").read_bytes()
    assert b"secret plans" not in (tmp_path / "chat.log").read_bytes()
    assert "unencrypted" in (export_history.__doc__ or "").replace("not encrypted", "unencrypted")


def test_failed_export_leaves_the_old_file_and_no_temp(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    _seed(codec, 6)
    dst = tmp_path / "out.jsonl"
    dst.write_bytes(b"previous export\n")

    def fail_at_5(done: int, total: int) -> None:
        if done == 5:
            raise ValueError("stopped after message 5")

    with pytest.raises(ValueError, match="stopped after message 5"):
        export_history(codec, dst, progress=fail_at_5)
    assert dst.read_bytes() == b"previous export\n"
    _only_file(tmp_path, "out.jsonl", "chat.log", "chat.log.idx", "chat.log.lock")


def test_a_messages_own_epoch_timestamp_exports_without_record_times(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    batch = [{"role": "user", "content": "x", "timestamp": 1_700_000_000}]
    codec.extend(batch)
    export_history(codec, tmp_path / "out.json", format="json", with_timestamps=False)
    target = make("copy.log")
    import_history(target, tmp_path / "out.json")
    assert target.load() == batch


@pytest.mark.parametrize("with_timestamps", [True, False], ids=["timed", "untimed"])
@pytest.mark.parametrize("format", ["jsonl", "json"])
def test_a_messages_own_timestamp_keys_export_and_read_back(
    make: Callable[..., ConversationCodec], tmp_path: Path, with_timestamps: bool, format: str
) -> None:
    """A message's own "timestamp" (ISO-8601, a date, a number) and keys named like the
    export's escaped form round-trip, key order included; the export's "timestamp" is the
    record time alone."""
    codec = make()
    batch = [
        {"role": "user", "content": "a", "timestamp": "2024-05-01T12:00:00Z"},
        {"timestamp": "2024-05-01", "role": "user", "content": "b"},
        {"role": "user", "content": "c", "timestamp": 5},
        {"role": "user", "conversation_codec:timestamp": "2024-05-01", "content": "d"},
        {
            "conversation_codec:conversation_codec:timestamp": 1,
            "conversation_codec:timestamp": "x",
            "timestamp": "2023-01-01T00:00:00Z",
            "content": "e",
        },
        {"role": "user", "content": "f"},
    ]
    stamps = [_at(T0 + 1_000_000 * i) for i in range(len(batch))]
    codec.extend(batch, timestamps=stamps)
    out = tmp_path / f"out.{format}"
    assert export_history(codec, out, format=format, with_timestamps=with_timestamps) == 6
    if with_timestamps and format == "jsonl":
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [line["timestamp"][:4] for line in lines] == ["2025"] * 6  # T0's year
        assert lines[0]["conversation_codec:timestamp"] == "2024-05-01T12:00:00Z"
    target = make("copy.log")
    import_history(target, out)
    loaded = target.load() or []
    assert loaded == batch
    assert [list(m) for m in loaded] == [list(m) for m in batch]  # key order kept
    if with_timestamps:
        assert _times(target) == _times(codec)


def test_a_non_iso_string_timestamp_is_kept_in_the_message(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    batch = [{"role": "user", "content": "x", "timestamp": "yesterday"}]
    codec.extend(batch)
    export_history(codec, tmp_path / "out", with_timestamps=False)
    target = make("copy.log")
    import_history(target, tmp_path / "out")
    assert target.load() == batch


@pytest.mark.parametrize(
    ("first", "fmt", "with_timestamps"),
    [
        ({"type": "human", "data": {"content": "x"}}, "json", False),
        ({"conversation_codec": 1, "role": "user"}, "jsonl", True),
    ],
)
def test_a_first_message_that_would_read_back_as_another_format_is_refused(
    make: Callable[..., ConversationCodec],
    tmp_path: Path,
    first: dict[str, Any],
    fmt: str,
    with_timestamps: bool,
) -> None:
    codec = make()
    codec.append(first)
    with pytest.raises(ValueError, match="would read back as"):
        export_history(codec, tmp_path / "out", format=fmt, with_timestamps=with_timestamps)


def test_export_arguments_are_checked(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    _seed(codec, 2)
    before = (tmp_path / "chat.log").read_bytes()
    with pytest.raises(ValueError, match="is the log itself"):
        export_history(codec, tmp_path / "chat.log")
    assert (tmp_path / "chat.log").read_bytes() == before
    with pytest.raises(ValueError, match='"jsonl" or "json"'):
        export_history(codec, tmp_path / "x", format="csv")
    with pytest.raises(conversation_codec.StorageError, match="cannot write"):
        export_history(codec, tmp_path / "missing" / "x")


@pytest.mark.parametrize(
    "name",
    [
        "chat.log.idx",
        "chat.log.lock",
        "chat.log.kwi",
        "chat.log.bak",
        "chat.log.blobs",
        "chat.log.blobs/x.jsonl",
        "chat.log.tmp-0123456789abcdef",
        "chat.log.kwi.tmp-0123456789abcdef",
        "chat.log.migrating-0123456789abcdef",
        "chat.log.migrating-0123456789abcdef.idx",
    ],
)
def test_export_refuses_the_logs_own_files(
    make: Callable[..., ConversationCodec], tmp_path: Path, name: str
) -> None:
    codec = make()
    _seed(codec, 2)
    codec.load()
    if "blobs/" in name:
        (tmp_path / "chat.log.blobs").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for dst in (tmp_path / name, Path(os.path.relpath(tmp_path / name))):
        with pytest.raises(conversation_codec.StorageError, match="is a file of the log"):
            export_history(codec, dst)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    if "/" not in name:
        export_history(codec, tmp_path / f"x{name}")  # a name that only ends like it
    export_history(codec, tmp_path / "other.log.lock")  # another log's: the user's business


def test_export_sees_through_a_link_before_dotdot(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    """The destination's folder as the system resolves it: ``other/lnk/../chat.log.idx``
    with ``lnk`` -> ``<log folder>/sub`` is the log's index; ``<log folder>/lnk/../x`` with
    ``lnk`` pointing elsewhere is not in the log's folder at all."""
    codec = make()
    _seed(codec, 2)
    (tmp_path / "sub").mkdir()
    other = tmp_path / "o"
    (other / "deep").mkdir(parents=True)
    (other / "lnk").symlink_to(tmp_path / "sub")
    before = (tmp_path / "chat.log.idx").read_bytes()
    with pytest.raises(conversation_codec.StorageError, match="is a file of the log"):
        export_history(codec, other / "lnk" / ".." / "chat.log.idx")
    assert (tmp_path / "chat.log.idx").read_bytes() == before
    (tmp_path / "away").symlink_to(other / "deep")
    export_history(codec, tmp_path / "away" / ".." / "chat.log.idx")
    assert (other / "chat.log.idx").exists()


def test_empty_history_exports_and_imports_as_empty(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    assert export_history(codec, tmp_path / "e.json", format="json") == 0
    assert json.loads((tmp_path / "e.json").read_text()) == []
    assert export_history(codec, tmp_path / "e.jsonl") == 0
    assert (tmp_path / "e.jsonl").read_bytes() == b""
    target = make("copy.log")
    _seed(target, 3)
    assert import_history(target, tmp_path / "e.json").added == 0
    assert len(target) == 3  # adding nothing keeps the history (issue 11 §7)
    assert import_history(target, tmp_path / "e.json", replace=True).added == 0
    assert target.load() is None  # replace with nothing empties the history


# -- import: replace -------------------------------------------------------------------


def test_import_replaces_the_whole_history(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    _seed(codec, 6)
    (tmp_path / "h.json").write_text(
        json.dumps(
            [
                {"role": "user", "content": "b", "timestamp": "2024-05-01T12:00:01.5Z"},
                {"role": "user", "content": "untimed"},
                {"role": "user", "content": "a", "timestamp": "2024-05-01T12:00:00Z"},
            ]
        )
    )
    report = import_history(codec, tmp_path / "h.json", replace=True)
    assert report == ImportReport(3, 3, 0, 0, LegacyFormat.JSON_ARRAY, (clamp_note(1),))
    assert [m["content"] for m in codec.load() or []] == ["b", "untimed", "a"]  # file order
    t = (datetime(2024, 5, 1, 12, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)
    # untimed: the time before it; "a", earlier than "b" before it: stored as b's
    assert _times(codec) == [t + 1_500_000] * 3


def test_import_leading_untimed_messages_take_the_first_time(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    (tmp_path / "h.jsonl").write_text(
        '{"role": "system", "content": "s"}\n'
        '{"role": "user", "content": "u", "timestamp": "2024-05-01T12:00:00Z"}\n'
    )
    codec = make()
    import_history(codec, tmp_path / "h.jsonl")
    assert _times(codec)[0] == _times(codec)[1]


def test_import_reads_a_fernet_blob_and_a_langchain_file(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    plain = b'{"role": "user", "content": "from the old app"}\n'
    (tmp_path / "old.enc").write_bytes(Fernet(OTHER_KEY.encode()).encrypt(plain))
    codec = make()
    with pytest.raises(KeyRequiredError):
        import_history(codec, tmp_path / "old.enc")
    with pytest.raises(DecryptionError):
        import_history(codec, tmp_path / "old.enc", legacy_key=KEY)
    report = import_history(codec, tmp_path / "old.enc", legacy_key=OTHER_KEY)
    assert report.format is LegacyFormat.FERNET_JSONL
    assert codec.load() == [{"role": "user", "content": "from the old app"}]
    (tmp_path / "lc.json").write_text(
        json.dumps([{"type": "human", "data": {"content": "hi", "type": "human"}}])
    )
    assert import_history(codec, tmp_path / "lc.json", merge=True).added == 1
    assert (codec.load() or [])[-1] == {"role": "user", "content": "hi"}


def test_import_failures_leave_the_log_alone(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    batch = _seed(codec, 3)
    (tmp_path / "bad.jsonl").write_text('{"role": "user"}\nnot json\n')
    with pytest.raises(FormatError, match="line 2"):
        import_history(codec, tmp_path / "bad.jsonl")
    with pytest.raises(conversation_codec.StorageError):
        import_history(codec, tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="is the log itself"):
        import_history(codec, tmp_path / "chat.log")
    assert codec.load() == batch


@pytest.mark.parametrize(  # a sealed log refuses one in test_import_replace_refuses_*
    "make", [pytest.param("encrypted", marks=pytest.mark.slow), "plaintext"], indirect=True
)
def test_import_rejects_a_message_too_large_for_a_record(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    big = {"role": "user", "content": "x" * MAX_MESSAGE_BYTES}
    with open(tmp_path / "h.jsonl", "wb") as f:
        f.write(b'{"role": "user", "content": "small"}\n')
        f.write(json.dumps(big).encode() + b"\n")
    codec = make(durability="flush")
    report = import_history(codec, tmp_path / "h.jsonl")
    assert report == ImportReport(2, 1, 0, 1, LegacyFormat.JSONL)
    assert codec.load() == [{"role": "user", "content": "small"}]


_DEEP = {"role": "user", "content": json.loads("[" * 70 + "]" * 70)}  # > MAX_DEPTH levels


@pytest.mark.parametrize("some", [False, True], ids=["all-rejected", "two-of-three"])
def test_import_replace_refuses_a_file_with_rejected_messages(tmp_path: Path, some: bool) -> None:
    # Not over make's two codecs: the file is refused before the log is written, and a
    # 64 MiB message takes a second to make and read.
    with Codec(tmp_path / "chat.log", encryption_key=KEY, clock=Clock()) as codec:
        batch = _seed(codec, 3)
        big = {"role": "user", "content": "secret " + "x" * MAX_MESSAGE_BYTES}
        rows = [{"role": "user", "content": "fine"}, _DEEP, big] if some else [_DEEP]
        (tmp_path / "h.jsonl").write_text("".join(json.dumps(m) + "\n" for m in rows))
        before = (tmp_path / "chat.log").read_bytes()
        with pytest.raises(FormatError, match="nothing was changed") as info:
            codec.import_(tmp_path / "h.jsonl", replace=True)
        why = "1 nesting deeper than 64 levels"
        if some:
            expected = f"2 of 3 messages cannot be stored (1 larger than {MAX_MESSAGE_BYTES} bytes"
            assert f"{expected}, {why})" in str(info.value)
        else:
            assert f"1 of 1 messages cannot be stored ({why})" in str(info.value)
        assert "secret" not in str(info.value) and "fine" not in str(info.value)
        assert (tmp_path / "chat.log").read_bytes() == before and codec.load() == batch
        if not some:  # without replace: left out, and counted (a big one: see above)
            assert codec.import_(tmp_path / "h.jsonl") == ImportReport(
                1, 0, 0, 1, LegacyFormat.JSONL
            )


@pytest.mark.parametrize(
    "when", ["1960-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00"], ids=["1960", "10000"]
)
@pytest.mark.parametrize("how", ["add", "merge", "replace"])
def test_import_of_a_time_a_log_cannot_store_is_a_library_error(
    make: Callable[..., ConversationCodec], tmp_path: Path, when: str, how: str
) -> None:
    codec = make()
    batch = _seed(codec, 3)
    rows = [{"role": "user", "content": "a", "timestamp": "2024-05-01T00:00:00Z"}]
    rows.append({"role": "user", "content": "b", "timestamp": when})
    (tmp_path / "h.json").write_text(json.dumps(rows))
    before = (tmp_path / "chat.log").read_bytes()
    with pytest.raises(FormatError, match=r"1 message\(s\) have a timestamp before 1970-01-01 or"):
        codec.import_(tmp_path / "h.json", merge=how == "merge", replace=how == "replace")
    assert (tmp_path / "chat.log").read_bytes() == before and codec.load() == batch


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_import_refuses_a_fifo_socket_or_device_without_blocking(
    make: Callable[..., ConversationCodec], tmp_path: Path, kind: str
) -> None:
    codec = make()
    batch = _seed(codec, 2)
    path = make_special(tmp_path / "h.jsonl", kind)
    with unblocked(path), pytest.raises(conversation_codec.StorageError, match="not a regular"):
        codec.import_(path, replace=True)
    assert codec.load() == batch


def test_import_reads_a_stream(make: Callable[..., ConversationCodec], tmp_path: Path) -> None:
    codec = make()
    _seed(codec, 2)
    line = b'{"role": "user", "content": "piped", "timestamp": "2030-01-01T00:00:00Z"}\n'
    report = codec.import_(io.BytesIO(line))
    assert (report.added, codec.get(-1)) == (1, {"role": "user", "content": "piped"})
    with pytest.raises(FormatError, match="pass the log's path"):
        codec.import_(io.BytesIO((tmp_path / "chat.log").read_bytes()))
    with pytest.raises(FormatError, match="input line 1 is not valid JSON"):
        codec.import_(io.BytesIO(b"{nope\n"))


def test_import_from_another_codec_log(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    other = make("other.log", encryption_key=OTHER_KEY)
    batch = _seed(other, 5)
    codec = make()
    with pytest.raises(KeyRequiredError):
        import_history(codec, tmp_path / "other.log")
    report = import_history(codec, tmp_path / "other.log", legacy_key=OTHER_KEY)
    assert report == ImportReport(5, 5, 0, 0, LegacyFormat.CODEC_LOG)
    assert codec.load() == batch and _times(codec) == _times(other)


# -- import: merge ---------------------------------------------------------------------


def _inode(path: Path) -> int:
    return path.stat().st_ino


def test_merge_appends_newer_messages_without_a_rewrite(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    batch = _seed(codec, 4)
    export_history(codec, tmp_path / "out.jsonl")
    newer = make("newer.log")
    newer.extend(batch[2:], timestamps=[codec.timestamp(2), codec.timestamp(3)])
    newer.append({"role": "user", "content": "new"}, timestamp=_at(T0 + 10**9))
    export_history(newer, tmp_path / "newer.jsonl")
    inode = _inode(tmp_path / "chat.log")
    report = import_history(codec, tmp_path / "newer.jsonl", merge=True)
    assert report == ImportReport(3, 1, 2, 0, LegacyFormat.JSONL)
    assert codec.load() == [*batch, {"role": "user", "content": "new"}]
    assert _times(codec)[-1] == T0 + 10**9
    assert _inode(tmp_path / "chat.log") == inode  # appended, not rewritten
    again = import_history(codec, tmp_path / "out.jsonl", merge=True)
    assert (again.added, again.skipped_duplicate) == (0, 4)
    assert _inode(tmp_path / "chat.log") == inode


def test_merge_of_older_messages_rewrites_in_time_order(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    codec.extend(
        [{"role": "user", "content": "t10"}, {"role": "user", "content": "t30"}],
        timestamps=[_at(T0 + 10), _at(T0 + 30)],
    )
    (tmp_path / "h.json").write_text(
        json.dumps(
            [
                {"role": "user", "content": "t05", "timestamp": _iso(T0 + 5)},
                {"role": "user", "content": "t10", "timestamp": _iso(T0 + 10)},  # duplicate
                {"role": "user", "content": "t10", "timestamp": _iso(T0 + 11)},  # other time
                {"role": "user", "content": "t30-import", "timestamp": _iso(T0 + 30)},
            ]
        )
    )
    report = import_history(codec, tmp_path / "h.json", merge=True)
    assert (report.read, report.added, report.skipped_duplicate) == (4, 3, 1)
    assert [m["content"] for m in codec.load() or []] == [
        "t05",
        "t10",
        "t10",
        "t30",  # ties: the log's message first
        "t30-import",
    ]
    assert _times(codec) == [T0 + 5, T0 + 10, T0 + 11, T0 + 30, T0 + 30]
    codec.append({"role": "user", "content": "after"})  # still a working log
    assert len(codec) == 6


def _iso(us: int) -> str:
    return _at(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_merge_duplicates_are_counted_as_a_multiset(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    codec.append({"role": "user", "content": "ok"}, timestamp=_at(T0))
    line = json.dumps({"content": "ok", "role": "user", "timestamp": _iso(T0)})  # keys reordered
    (tmp_path / "h.jsonl").write_text(f"{line}\n{line}\n")
    report = import_history(codec, tmp_path / "h.jsonl", merge=True)
    assert (report.added, report.skipped_duplicate) == (1, 1)
    assert len(codec) == 2


def test_merge_of_an_untimed_file_is_idempotent(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    (tmp_path / "h.jsonl").write_text(
        '{"role": "user", "content": "a"}\n{"role": "user", "content": "a"}\n'
        '{"role": "user", "content": "b"}\n'
    )
    codec = make()
    _seed(codec, 2)
    first = import_history(codec, tmp_path / "h.jsonl", merge=True)
    second = import_history(codec, tmp_path / "h.jsonl", merge=True)
    assert (first.added, second.added, second.skipped_duplicate) == (3, 0, 3)
    assert len(codec) == 5


def test_merge_into_an_empty_log(make: Callable[..., ConversationCodec], tmp_path: Path) -> None:
    source = make("source.log")
    batch = _seed(source, 5)
    export_history(source, tmp_path / "out.json", format="json")
    codec = make()
    assert import_history(codec, tmp_path / "out.json", merge=True).added == 5
    assert codec.load() == batch and _times(codec) == _times(source)


_APPENDER = """
import os, sys
from conversation_codec import ConversationCodec
path, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
codec = ConversationCodec(path, encryption_key=os.environ.get("CC_KEY"), durability="flush")
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    codec.append({"role": "user", "content": f"appended {i}"})
"""


@pytest.mark.parametrize("n", [300, pytest.param(600, marks=pytest.mark.slow)])
def test_merge_rewrites_never_lose_a_concurrent_writers_messages(
    make: Callable[..., ConversationCodec], tmp_path: Path, n: int
) -> None:
    """Merging imports (each a full rewrite) while another process appends ``n`` messages
    (300 by default, 600 under slow): none of either is lost."""
    codec = make(clock=None)
    codec.append({"role": "user", "content": "start"}, timestamp=_at(T0 + 10**6))
    root = os.path.dirname(os.path.dirname(os.path.abspath(conversation_codec.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    if codec.encrypted:
        env["CC_KEY"] = KEY
    with _children.Popen(
        [sys.executable, "-c", _APPENDER, str(tmp_path / "chat.log"), "", str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    ) as writer:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "ready"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        merged = 0
        deadline = time.monotonic() + 20
        while writer.poll() is None and time.monotonic() < deadline:
            # Each import holds a message older than the log's end: a full rewrite.
            old = {"role": "user", "content": f"old {merged}", "timestamp": _iso(T0 + merged)}
            (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
            assert import_history(codec, tmp_path / "old.jsonl", merge=True).added == 1
            merged += 1
        assert writer.wait(timeout=20) == 0
    print(f"{merged} merging rewrites ran during {n} appends")
    contents = [m["content"] for m in codec.load() or []]
    assert sorted(c for c in contents if c.startswith("appended")) == sorted(
        f"appended {i}" for i in range(n)
    )
    assert sum(c.startswith("old") for c in contents) == merged >= 1
    assert _times(codec) == sorted(_times(codec))


# -- import into a non-empty log keeps what is there (issue 11 §7) ------------------------


def test_import_into_a_non_empty_log_keeps_what_is_there(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    codec = make()
    batch = _seed(codec, 6)
    stored = _times(codec)
    newer = [
        {"role": "user", "content": f"newer {i}", "timestamp": _iso(T0 + 10**10 + i)}
        for i in range(2)
    ]
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    inode = _inode(tmp_path / "chat.log")
    report = import_history(codec, tmp_path / "newer.json")
    assert report == ImportReport(2, 2, 0, 0, LegacyFormat.JSON_ARRAY)
    assert codec.load() == [
        *batch,
        *({k: v for k, v in m.items() if k != "timestamp"} for m in newer),
    ]
    assert _inode(tmp_path / "chat.log") == inode  # appended: nothing rewritten
    # Older messages are sorted in by time; every stored one stays.
    (tmp_path / "older.jsonl").write_text(
        json.dumps({"role": "user", "content": "older", "timestamp": _iso(T0 - 5)}) + "\n"
    )
    assert import_history(codec, tmp_path / "older.jsonl").added == 1
    history = codec.load() or []
    assert history[0] == {"role": "user", "content": "older"} and history[1:7] == batch
    assert _times(codec)[1:7] == stored
    # Importing the same file again adds it again: only merge=True skips duplicates.
    assert import_history(codec, tmp_path / "older.jsonl").added == 1
    assert import_history(codec, tmp_path / "older.jsonl", merge=True).added == 0
    assert len(codec) == 10


def test_import_replace_is_explicit(make: Callable[..., ConversationCodec], tmp_path: Path) -> None:
    codec = make()
    batch = _seed(codec, 4)
    (tmp_path / "h.jsonl").write_text('{"role": "user", "content": "only"}\n')
    before = (tmp_path / "chat.log").read_bytes()
    with pytest.raises(ValueError, match="not both"):
        codec.import_(tmp_path / "h.jsonl", merge=True, replace=True)
    assert (tmp_path / "chat.log").read_bytes() == before and codec.load() == batch
    report = codec.import_(tmp_path / "h.jsonl", replace=True)
    assert (report.added, codec.load()) == (1, [{"role": "user", "content": "only"}])


def test_a_save_after_an_import_needs_a_reload(
    make: Callable[..., ConversationCodec], tmp_path: Path
) -> None:
    from conversation_codec import ConflictError

    codec = make()
    batch = _seed(codec, 4)
    history = codec.load() or []
    (tmp_path / "h.jsonl").write_text('{"role": "user", "content": "imported"}\n')
    codec.import_(tmp_path / "h.jsonl")
    with pytest.raises(ConflictError):
        codec.save(history[:2])  # would delete the imported message, never loaded
    assert codec.load() == [*batch, {"role": "user", "content": "imported"}]


def test_export_then_import_round_trips(tmp_path: Path) -> None:
    src = ConversationCodec(tmp_path / "a.log", encryption_key=KEY, durability="flush")
    src.extend(messages(10), timestamps=[1_000 + i for i in range(10)])
    assert src.export(tmp_path / "out.jsonl") == 10
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o600
    dst = ConversationCodec(tmp_path / "b.log", encryption_key=KEY, durability="flush")
    report = dst.import_(tmp_path / "out.jsonl")
    assert report.added == 10
    assert dst.load() == messages(10)
    assert [dst.timestamp(i) for i in range(10)] == [src.timestamp(i) for i in range(10)]
    again = dst.import_(tmp_path / "out.jsonl", merge=True)
    assert again.added == 0 and again.skipped_duplicate == 10
    src.close()
    dst.close()


def test_merge_import_refuses_to_drop_records_max_messages_hides(tmp_path: Path) -> None:
    src = tmp_path / "old.jsonl"
    src.write_text('{"role": "user", "content": "old", "timestamp": "2020-01-01T00:00:00Z"}\n')
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(messages(5))
    before = path.read_bytes()
    with (
        ConversationCodec(path, encryption_key=KEY, max_messages=3) as codec,
        pytest.raises(ValueError, match="max_messages"),
    ):
        codec.import_(src, merge=True)
    assert path.read_bytes() == before


IMAGE = "data:image/png;base64,iVBORw0KGgo" + "C" * 3000 + "="
PICTURE = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}


@pytest.mark.parametrize("key", [KEY, None], ids=["encrypted", "plaintext"])
def test_export_resolves_attachment_blobs_whatever_the_option(
    tmp_path: Path, key: str | None
) -> None:
    """Outside review (bad inputs) 3: the export held the internal "cc-blob:" reference."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key, attachments="external") as codec:
        codec.append(PICTURE)
    with ConversationCodec(path, encryption_key=key) as codec:  # without the option
        assert codec.export(tmp_path / "out.jsonl", with_timestamps=False) == 1
    text = (tmp_path / "out.jsonl").read_text()
    assert json.loads(text) == PICTURE and "cc-blob:" not in text
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o600

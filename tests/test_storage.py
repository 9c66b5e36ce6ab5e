"""The LogStorage conformance suite: every backend behaves alike (storage/base.py).

Parametrized over the file storage (``FileLog``, on real files), the in-memory one
(``MemoryLog``) and the PostgreSQL one (``PostgresLog``, on a real server: conftest.py).
Bodies are plain records (FORMAT.md §6), so the file storage can read them back when a new
instance loads the log.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conversation_codec.crypto import new_log_id
from conversation_codec.format.header import PlainHeader, decode_plain_header, encode_plain_header
from conversation_codec.records import PlainRecords
from conversation_codec.storage.base import LogFormat, LogStorage
from conversation_codec.storage.file.log import FileLog
from conversation_codec.storage.memory import MemoryLog
from conversation_codec.storage.postgres import PostgresBackend, PostgresLog

T0 = 1_900_000_000_000_000  # µs since the epoch


def _attach(prefix: bytes) -> LogFormat:
    end = prefix.index(b"\n")
    plain = decode_plain_header(prefix[:end])
    return LogFormat(plain.log_id, end + 1, PlainRecords(), False, plain.format_version)


def _new_log() -> tuple[bytes, LogFormat]:
    header = encode_plain_header(PlainHeader(new_log_id()))
    return header, _attach(header)


def _body(fmt: LogFormat, seq: int, ts: int = 0) -> bytes:
    return fmt.records.encode(seq, ts or T0 + seq, b'{"n":%d}' % seq)


@pytest.fixture(params=["file", "memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], LogStorage]:
    """Return a factory: each call gives a new handle on the same log."""
    if request.param == "file":
        return lambda: FileLog(tmp_path / "c.log", attach=_attach)
    if request.param == "postgres":
        backend: PostgresBackend = request.getfixturevalue("postgres_backend")
        conversation = f"conformance-{uuid.uuid4().hex}"
        return lambda: PostgresLog(backend, conversation, attach=_attach)
    memory = MemoryLog(attach=_attach)
    return lambda: memory


def _filled(storage: LogStorage, n: int) -> LogFormat:
    header, fmt = _new_log()
    with storage.transaction(write=True):
        storage.create(header, fmt)
        storage.append([_body(fmt, i) for i in range(n)], [T0 + i for i in range(n)])
    return fmt


def test_a_new_log_is_empty(make: Callable[[], LogStorage]) -> None:
    storage = make()
    with storage.transaction(write=False):
        assert storage.fmt is None and len(storage.index) == 0
    header, fmt = _new_log()
    with storage.transaction(write=True):
        storage.create(header, fmt)
        assert storage.fmt is not None and storage.fmt.log_id == fmt.log_id
        assert len(storage.index) == 0 and storage.size() >= len(header)


def test_append_and_read_back(make: Callable[[], LogStorage]) -> None:
    storage = make()
    fmt = _filled(storage, 5)
    with storage.transaction(write=True):
        storage.append([_body(fmt, 5), _body(fmt, 6)], [T0 + 5, T0 + 6])
    again = make()  # a second handle (for files: a fresh load from disk)
    with again.transaction(write=False):
        assert len(again.index) == 7
        assert list(again.index.tss) == [T0 + i for i in range(7)]
        assert again.read_body(6) == _body(fmt, 6)
        assert list(again.read_bodies(2, 5)) == [(i, _body(fmt, i)) for i in range(2, 5)]
        assert again.index.first_at_or_after(T0 + 3) == 3
        assert again.index.first_at_or_after(T0 + 99) == 7
        start, end = again.index.span(3)
        assert start < end <= again.index.span(4)[0] + (end - start)
        with pytest.raises(IndexError):
            again.read_body(7)


def test_truncate_drops_the_tail(make: Callable[[], LogStorage]) -> None:
    storage = make()
    fmt = _filled(storage, 4)
    size = storage.size()
    with storage.transaction(write=True):
        storage.truncate(2)
        assert len(storage.index) == 2 and storage.size() < size
        storage.append([_body(fmt, 2)], [T0 + 2])
    again = make()
    with again.transaction(write=False):
        assert [b for _, b in again.read_bodies(0, 3)] == [_body(fmt, i) for i in range(3)]


def test_rewrite_replaces_everything(make: Callable[[], LogStorage]) -> None:
    storage = make()
    _filled(storage, 6)
    header, fmt = _new_log()
    with storage.transaction(write=True):
        storage.rewrite(header, fmt, [(_body(fmt, i, T0 + 10 * i), T0 + 10 * i) for i in range(2)])
    again = make()
    with again.transaction(write=False):
        assert again.fmt is not None and again.fmt.log_id == fmt.log_id
        assert list(again.index.tss) == [T0, T0 + 10]
        assert again.read_body(1) == _body(fmt, 1, T0 + 10)


def test_seen_changes_with_every_write(make: Callable[[], LogStorage]) -> None:
    storage = make()
    fmt = _filled(storage, 1)
    with storage.transaction(write=False):
        before = storage.seen
    with storage.transaction(write=True):
        storage.append([_body(fmt, 1)], [T0 + 1])
    with storage.transaction(write=False):
        assert storage.seen != before


def test_transactions_are_reentrant_and_never_upgrade(make: Callable[[], LogStorage]) -> None:
    storage = make()
    fmt = _filled(storage, 1)
    with storage.transaction(write=True):
        with storage.transaction(write=False):  # a read inside a write: fine
            assert len(storage.index) == 1
        with storage.transaction(write=True):
            storage.append([_body(fmt, 1)], [T0 + 1])
    with (
        storage.transaction(write=False),
        pytest.raises(RuntimeError, match="upgrade"),
        storage.transaction(write=True),
    ):
        pass
    with storage.transaction(write=False):
        assert len(storage.index) == 2  # the failed upgrade left the lock usable


def test_concurrent_writers_never_lose_or_reorder_records(
    make: Callable[[], LogStorage],
) -> None:
    storage = make()
    fmt = _filled(storage, 0)
    handles = [make() for _ in range(4)]  # files: one handle (own lock) per thread

    def writer(handle: LogStorage) -> None:
        for _ in range(10):
            with handle.transaction(write=True):
                seq = len(handle.index)
                handle.append([_body(fmt, seq)], [T0 + seq])

    threads = [threading.Thread(target=writer, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with storage.transaction(write=False):
        assert list(storage.read_bodies(0, 40)) == [(i, _body(fmt, i)) for i in range(40)]


def test_remove_forgets_the_log(make: Callable[[], LogStorage]) -> None:
    storage = make()
    _filled(storage, 3)
    with storage.transaction(write=True):
        storage.remove()
    storage.close()
    again = make()
    with again.transaction(write=False):
        assert again.fmt is None and len(again.index) == 0


# -- error paths: every storage refuses alike, and a refusal changes nothing -------------------


def test_writes_outside_a_write_transaction_are_refused(make: Callable[[], LogStorage]) -> None:
    storage = make()
    fmt = _filled(storage, 2)
    header, new = _new_log()
    writes: list[Callable[[], object]] = [
        lambda: storage.append([_body(fmt, 2)], [T0 + 2]),
        lambda: storage.truncate(1),
        lambda: storage.rewrite(header, new, []),
    ]
    for write in writes:
        with pytest.raises(RuntimeError, match="transaction"):
            write()  # no transaction at all
        with storage.transaction(write=False), pytest.raises(RuntimeError, match="transaction"):
            write()  # a read transaction
    again = make()
    with again.transaction(write=False):
        assert list(again.read_bodies(0, 2)) == [(0, _body(fmt, 0)), (1, _body(fmt, 1))]


def test_an_append_before_the_log_exists_is_refused(make: Callable[[], LogStorage]) -> None:
    storage = make()
    _, fmt = _new_log()
    with storage.transaction(write=True), pytest.raises(RuntimeError, match="create"):
        storage.append([_body(fmt, 0)], [T0])
    with storage.transaction(write=False):
        assert storage.fmt is None and len(storage.index) == 0


def test_an_append_with_mismatched_times_is_refused_whole(make: Callable[[], LogStorage]) -> None:
    storage = make()
    fmt = _filled(storage, 1)
    with storage.transaction(write=True), pytest.raises(ValueError, match="timestamp"):
        storage.append([_body(fmt, 1), _body(fmt, 2)], [T0 + 1])
    again = make()
    with again.transaction(write=False):
        assert len(again.index) == 1


def test_reads_past_the_end_raise_index_error(make: Callable[[], LogStorage]) -> None:
    storage = make()
    _filled(storage, 3)
    with storage.transaction(write=False):
        with pytest.raises(IndexError):
            storage.read_body(3)
        with pytest.raises(IndexError):
            list(storage.read_bodies(2, 4))
        with pytest.raises(IndexError):
            storage.index.span(3)


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def handles(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[Callable[[bytes], LogFormat]], LogStorage]:
    """The storages where several handles share one log (memory keeps one object per log):
    a factory of handles on one log, each with its own header reader."""
    if request.param == "file":
        return lambda attach: FileLog(tmp_path / "c.log", attach=attach)
    backend: PostgresBackend = request.getfixturevalue("postgres_backend")
    conversation = f"handles-{uuid.uuid4().hex}"
    return lambda attach: PostgresLog(backend, conversation, attach=attach)


def test_a_header_the_reader_refuses_fails_the_probe_and_changes_nothing(
    handles: Callable[[Callable[[bytes], LogFormat]], LogStorage],
) -> None:
    fmt = _filled(handles(_attach), 2)

    def refuse(prefix: bytes) -> LogFormat:
        raise KeyError("not this log")

    with pytest.raises(KeyError):
        handles(refuse).probe()
    again = handles(_attach)
    with again.transaction(write=False):
        assert list(again.read_bodies(0, 2)) == [(0, _body(fmt, 0)), (1, _body(fmt, 1))]


def test_another_handles_write_calls_on_change(
    handles: Callable[[Callable[[bytes], LogFormat]], LogStorage],
) -> None:
    storage = handles(_attach)
    fmt = _filled(storage, 1)
    other = handles(_attach)
    changes: list[int] = []
    storage.on_change = lambda: changes.append(1)
    with storage.transaction(write=False):
        pass
    with other.transaction(write=True):
        other.truncate(0)
        other.append([_body(fmt, 0, T0 + 5)], [T0 + 5])
    with storage.transaction(write=False):
        assert list(storage.index.tss) == [T0 + 5]
    assert changes, "the first handle was not told its view changed"


def test_stored_gives_the_header_and_dictionary_a_copy_needs(
    make: Callable[[], LogStorage],
) -> None:
    storage = make()
    with storage.transaction(write=False):
        assert storage.stored() is None
    header, fmt = _new_log()
    with storage.transaction(write=True):
        storage.create(header, fmt)
        storage.append([_body(fmt, i) for i in range(3)], [T0 + i for i in range(3)])
    with storage.transaction(write=False):
        assert storage.stored() == (header, None)  # a plain log has no dictionary
        records = [(b, storage.index.tss[s]) for s, b in storage.read_bodies(0, 3)]
    copy = MemoryLog(attach=_attach)
    with copy.transaction(write=True):
        copy.rewrite(header, _attach(header), records)
    with copy.transaction(write=False):
        assert copy.stored() == (header, None)
        assert list(copy.read_bodies(0, 3)) == [(i, _body(fmt, i)) for i in range(3)]


@pytest.mark.parametrize("tail", [0, 1, 3, 5, 9])
def test_a_read_of_the_last_records_sees_what_any_read_sees(
    make: Callable[[], LogStorage], tail: int
) -> None:
    """``transaction(write=False, tail=n)``: a promise to read at most the last n records
    (a database fetches them with the view); the view and the reads are those of any read,
    and a read past the promise still works while the log is unchanged."""
    writer, reader = make(), make()
    fmt = _filled(writer, 5)
    for _ in range(2):  # cold, then warm after another handle's append
        with reader.transaction(write=False, tail=tail):
            count = len(reader.index)
            last = list(reader.read_bodies(max(0, count - tail), count))
            everything = list(reader.read_bodies(0, count))
            tss = list(reader.index.tss)
        assert last == everything[max(0, count - tail) :]
        assert [seq for seq, _ in everything] == list(range(count)) and tss[0] == T0
        with writer.transaction(write=True):
            writer.append([_body(fmt, count)], [T0 + count])
    assert count == 6


def test_watch_pauses_between_polls(make: Callable[[], LogStorage]) -> None:
    with make().watch() as pauses:
        pauses.sleep(0.001)
        pauses.sleep(0)

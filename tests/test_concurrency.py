"""Concurrent writers and readers: real processes and real threads on one log.

Every test runs on an encrypted and on a plaintext log. The invariants checked after
the dust settles: exactly ``writers * count`` messages; each one is byte-for-byte the dict
its writer appended (no tearing, no interleaving); each writer's own order is kept; the
seqs returned to the writers are exactly ``0..N-1`` and ``get(seq)`` returns what that
writer appended; and the stored timestamps never go backwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import KEY

import _children
from conversation_codec import (
    ClosedError,
    ConversationCodec,
    ConversationStore,
    FileIO,
    LockTimeoutError,
)
from conversation_codec.storage.file.lock import LogLock

_TESTS = Path(__file__).resolve().parent
_WRITER = _TESTS / "_writer.py"
_spec = importlib.util.spec_from_file_location("_cc_writer_helper", _WRITER)
assert _spec is not None and _spec.loader is not None
_helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helper)
writer_message = _helper.writer_message

PROC_WRITERS = 4
PROC_COUNT = 200  # appends per writer process
THREADS = 8
THREAD_COUNT = 100  # appends per thread
TIMEOUT = 120  # seconds; a hung lock fails the test instead of the run


@pytest.fixture(params=["encrypted", "plaintext"])
def variant_key(request: pytest.FixtureRequest, key: str) -> str | None:
    """Run a test on an encrypted log (the fixed ``key``) and on a plaintext log."""
    return key if request.param == "encrypted" else None


def _run_together(
    argvs: list[list[str]], key: str | None, *, lead: tuple[int, ...] = ()
) -> list[list[str]]:
    """Start one process per argv, release them all at once, return each one's stdout lines.

    Each process prints ``ready`` and blocks on stdin until every process is up, so the
    interpreter start-up (~0.2 s) does not serialise what should run concurrently. The
    processes in ``lead`` (readers) are released before the others and must report
    ``polling`` first: so a reader polls while the writers run, whatever the scheduler does.
    """
    procs = [
        _children.Popen(
            [sys.executable, str(_WRITER), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_helper.subprocess_env(key),
        )
        for argv in argvs
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            first = p.stdout.readline()
            if first.strip() != "ready":
                _, err = p.communicate(timeout=TIMEOUT)
                raise AssertionError(f"process did not start: {first!r}\n{err}")
        order = [*lead, *(k for k in range(len(procs)) if k not in lead)]
        for k in order:
            if lead and k == order[len(lead)]:  # the readers are polling: release the rest
                for j in lead:
                    assert procs[j].stdout is not None
                    assert procs[j].stdout.readline().strip() == "polling"
            assert procs[k].stdin is not None
            procs[k].stdin.write("go\n")
            procs[k].stdin.flush()
        outputs = []
        for p, argv in zip(procs, argvs, strict=True):
            out, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, f"{argv} exited {p.returncode}:\n{err}"
            outputs.append(out.splitlines())
        return outputs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def _check_log(
    path: Path,
    key: str | None,
    acked: dict[int, list[int]],
    count: int,
    started: datetime,
) -> list[dict[str, Any]]:
    """Check the shared log against the seqs each writer was given; return the messages.

    ``acked[w]`` lists, in call order, the seqs returned to writer ``w`` for its messages
    ``0..count-1``.
    """
    writers = len(acked)
    total = writers * count
    all_seqs = sorted(s for seqs in acked.values() for s in seqs)
    assert all_seqs == list(range(total)), "returned seqs are not exactly 0..N-1"
    with ConversationCodec(path, encryption_key=key) as codec:
        messages = codec.load()
        assert messages is not None
        assert len(messages) == total
        assert codec.message_count() == len(codec) == total
        for w, seqs in acked.items():
            assert len(seqs) == count
            assert seqs == sorted(seqs), f"writer {w} got decreasing seqs"
            for i, seq in enumerate(seqs):
                assert messages[seq] == writer_message(w, i), f"seq {seq} is not w{w}-{i}"
        assert [codec.get(s) for s in range(0, total, 37)] == messages[::37]
        assert codec.tail(3) == messages[-3:]
        assert list(codec) == messages
        stamps = [codec.timestamp(s) for s in range(total)]
    assert all(a <= b for a, b in itertools.pairwise(stamps)), "timestamps went backwards"
    assert stamps[0].tzinfo is not None and stamps[0].utcoffset() == timedelta(0)
    slack = timedelta(seconds=5)
    assert started - slack <= stamps[0] and stamps[-1] <= datetime.now(timezone.utc) + slack
    if key is None:
        _check_plaintext_seqs(path, total)
    return messages


def _check_plaintext_seqs(path: Path, total: int) -> None:
    """Plaintext logs are JSONL (API.md): a header line, then records with seq 0..N-1."""
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "plaintext log does not end with a newline"
    records = [json.loads(line) for line in lines[1:-1]]
    assert [r["seq"] for r in records] == list(range(total))


@pytest.mark.parametrize(
    "count", [PROC_COUNT // 2, pytest.param(PROC_COUNT, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize(
    ("variant_key", "batch"),
    [  # each scheme and each call once by default; the other two pairs under slow
        pytest.param("encrypted", 0, id="encrypted-append"),
        pytest.param("plaintext", 7, id="plaintext-extend7"),
        pytest.param("encrypted", 7, id="encrypted-extend7", marks=pytest.mark.slow),
        pytest.param("plaintext", 0, id="plaintext-append", marks=pytest.mark.slow),
    ],
    indirect=["variant_key"],
)
def test_processes_append_concurrently(
    tmp_path: Path, variant_key: str | None, batch: int, count: int
) -> None:
    """4 processes x ``count`` messages (100 by default, 200 under slow), by append() or by
    extend() batches of 7."""
    path = tmp_path / "shared.log"
    started = datetime.now(timezone.utc)
    argvs = [
        ["append", str(path), "--writer", str(w), "--count", str(count)]
        + (["--batch", str(batch)] if batch else [])
        for w in range(PROC_WRITERS)
    ]
    outputs = _run_together(argvs, variant_key)
    acked: dict[int, list[int]] = {}
    for w, lines in enumerate(outputs):
        if batch:
            batches = [json.loads(line) for line in lines]
            for b in batches:  # each batch was given a contiguous run of seqs
                assert b == list(range(b[0], b[0] + len(b))), f"batch not contiguous: {b}"
            assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)
            acked[w] = [s for b in batches for s in b]
        else:
            acked[w] = [int(line) for line in lines]
    messages = _check_log(path, variant_key, acked, count, started)
    if batch:  # contiguous on disk too: a batch's messages sit side by side, in order
        for w, seqs in acked.items():
            for start in range(0, count, batch):
                run = seqs[start : start + batch]
                assert messages[run[0] : run[-1] + 1] == [
                    writer_message(w, i) for i in range(start, start + len(run))
                ]
    interleaved = sum(
        1 for a, b in itertools.pairwise(messages) if a["meta"]["w"] != b["meta"]["w"]
    )
    # Not a correctness property, but without it this test proves nothing about races.
    assert interleaved > 0, "writers never overlapped; the test did not exercise concurrency"


@pytest.mark.parametrize(
    "count", [PROC_COUNT // 2, pytest.param(PROC_COUNT, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize(  # a reader of a sealed log polls beside writers in test_stress.py
    "variant_key", [pytest.param("encrypted", marks=pytest.mark.slow), "plaintext"], indirect=True
)
def test_reader_process_during_concurrent_writes(
    tmp_path: Path, variant_key: str | None, count: int
) -> None:
    """A reader polling tail()/message_count()/get()/load() never errs or sees a torn record.

    ``count`` appends per writer: half of ``PROC_COUNT`` by default, all of it under slow."""
    path = tmp_path / "shared.log"
    started = datetime.now(timezone.utc)
    total = PROC_WRITERS * count
    argvs = [
        ["append", str(path), "--writer", str(w), "--count", str(count)]
        for w in range(PROC_WRITERS)
    ]
    readers = [["reader", str(path), "--total", str(total)] for _ in range(2)]
    lead = tuple(range(PROC_WRITERS, PROC_WRITERS + len(readers)))
    outputs = _run_together(argvs + readers, variant_key, lead=lead)
    acked = {w: [int(line) for line in outputs[w]] for w in range(PROC_WRITERS)}
    _check_log(path, variant_key, acked, count, started)
    for lines in outputs[PROC_WRITERS:]:
        summary = json.loads(lines[-1])
        assert summary["count"] == total
        # The reader polled before the writers were released (``lead``) and until it saw
        # every record: its polls span the writing, by construction, not by luck.
        assert summary["iterations"] >= 2, summary


def _thread_writers(path: Path, key: str | None, shared: bool, batch: int) -> dict[int, list[int]]:
    barrier = threading.Barrier(THREADS)
    acked: dict[int, list[int]] = {w: [] for w in range(THREADS)}
    errors: list[BaseException] = []
    common = ConversationCodec(path, encryption_key=key) if shared else None

    def work(w: int) -> None:
        try:
            codec = common if common is not None else ConversationCodec(path, encryption_key=key)
            try:
                barrier.wait(timeout=TIMEOUT)
                i = 0
                while i < THREAD_COUNT:
                    if batch:
                        msgs = [writer_message(w, i + k) for k in range(batch)]
                        seqs = codec.extend(msgs)
                        assert seqs == list(range(seqs[0], seqs[0] + batch)), seqs
                        acked[w].extend(seqs)
                        i += batch
                    else:
                        acked[w].append(codec.append(writer_message(w, i)))
                        i += 1
            finally:
                if not shared:
                    codec.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
            assert not t.is_alive(), "writer thread hung"
    finally:
        if common is not None:
            common.close()
    if errors:
        raise errors[0]
    return acked


@pytest.mark.parametrize(
    ("variant_key", "batch", "shared"),
    [  # every pair of scheme, call and instance once by default; the other four under slow
        pytest.param("encrypted", 0, True, id="encrypted-append-shared-instance"),
        pytest.param("encrypted", 5, False, id="encrypted-extend5-own-instance"),
        pytest.param("plaintext", 0, False, id="plaintext-append-own-instance"),
        pytest.param("plaintext", 5, True, id="plaintext-extend5-shared-instance"),
        *(
            pytest.param(v, b, sh, id=f"{v}-{c}-{i}-instance", marks=pytest.mark.slow)
            for v, b, c, sh, i in [
                ("encrypted", 0, "append", False, "own"),
                ("encrypted", 5, "extend5", True, "shared"),
                ("plaintext", 0, "append", True, "shared"),
                ("plaintext", 5, "extend5", False, "own"),
            ]
        ),
    ],
    indirect=["variant_key"],
)
def test_threads_append_concurrently(
    tmp_path: Path, variant_key: str | None, shared: bool, batch: int
) -> None:
    """8 threads x 100 messages, sharing one codec instance or each with its own."""
    path = tmp_path / "threads.log"
    started = datetime.now(timezone.utc)
    acked = _thread_writers(path, variant_key, shared, batch)
    _check_log(path, variant_key, acked, THREAD_COUNT, started)


@pytest.mark.parametrize(  # a plaintext log's seqs go on across processes in the extend7 test
    "variant_key", ["encrypted", pytest.param("plaintext", marks=pytest.mark.slow)], indirect=True
)
def test_sequential_writers_continue_seqs(tmp_path: Path, variant_key: str | None) -> None:
    """Writers that open one after another each continue where the last one stopped."""
    path = tmp_path / "seq.log"
    started = datetime.now(timezone.utc)
    acked: dict[int, list[int]] = {}
    for w in range(3):
        [lines] = _run_together(
            [["append", str(path), "--writer", str(w), "--count", "20"]], variant_key
        )
        acked[w] = [int(line) for line in lines]
        assert acked[w] == list(range(20 * w, 20 * w + 20))
    _check_log(path, variant_key, acked, 20, started)


@pytest.mark.slow
def test_many_processes_mixing_append_and_extend(tmp_path: Path, variant_key: str | None) -> None:
    """8 processes x 400 messages; odd writers use extend() batches of 3."""
    path = tmp_path / "stress.log"
    started = datetime.now(timezone.utc)
    writers, count = 8, 400
    argvs = [
        ["append", str(path), "--writer", str(w), "--count", str(count)]
        + (["--batch", "3"] if w % 2 else [])
        for w in range(writers)
    ]
    outputs = _run_together(argvs, variant_key)
    acked = {
        w: [s for line in lines for s in (json.loads(line) if w % 2 else [int(line)])]
        for w, lines in enumerate(outputs)
    }
    _check_log(path, variant_key, acked, count, started)


_TRY_APPEND = """
import sys
from conversation_codec import ConversationCodec, LockTimeoutError
for line in sys.stdin:  # a path per line: one attempt, through a codec of its own
    with ConversationCodec(line.rstrip("\\n"), lock_timeout=0.2) as codec:
        try:
            codec.append({"role": "user", "content": "other process"})
        except LockTimeoutError:
            print("locked out", flush=True)
        else:
            print("appended", flush=True)
"""


@contextlib.contextmanager
def _other_process(path: Path) -> Iterator[Callable[[], str]]:
    """Another process; each call of what this yields makes it try one append to ``path``
    (a fresh codec, a 0.2 s lock timeout) and returns "appended" or "locked out".

    One process serves the whole test: an interpreter started per attempt cost ~0.3 s."""
    proc = _children.Popen(
        [sys.executable, "-c", _TRY_APPEND],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_helper.subprocess_env(None),
    )
    assert proc.stdin is not None and proc.stdout is not None

    def attempt() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        ready = select.select([proc.stdout], [], [], 60)[0]
        line = proc.stdout.readline() if ready else ""
        assert line, f"the other process gave no answer: {proc.communicate(timeout=60)[1]}"
        return line.strip()

    try:
        yield attempt
    finally:
        proc.stdin.close()  # the end of its input: it exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_transaction_holds_the_writer_lock_and_is_reentrant(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    with _other_process(path) as other_process, ConversationCodec(path) as codec:
        with codec.transaction():
            assert codec.append({"role": "user", "content": "a"}) == 0
            with codec.transaction():  # re-entrant, reads and writes inside
                assert codec.load() == [{"role": "user", "content": "a"}]
            assert other_process() == "locked out"
            codec.append({"role": "user", "content": "b"})
        assert other_process() == "appended"
        assert [m["content"] for m in codec.load() or []] == ["a", "b", "other process"]
    with pytest.raises(ClosedError):
        codec.transaction()


def test_a_codec_that_kept_a_cleared_lock_file_open_locks_the_new_one(tmp_path: Path) -> None:
    """clear() unlinks P.lock: a lock taken on the old file, which the codec keeps open
    between calls, would exclude nobody. It must notice and lock the file now at P.lock."""
    path = tmp_path / "chat.log"
    kept = ConversationCodec(path, lock_timeout=0.2)
    kept.append({"role": "user", "content": "a"})  # opens P.lock and keeps it open
    with ConversationCodec(path) as other:
        other.clear()
    with ConversationCodec(path) as holder, holder.transaction():
        holder.append({"role": "user", "content": "b"})
        with pytest.raises(LockTimeoutError):
            kept.append({"role": "user", "content": "c"})
    kept.append({"role": "user", "content": "d"})
    assert [m["content"] for m in kept.load() or []] == ["b", "d"]
    kept.close()


def test_erasing_a_packed_conversation_announces_it_before_its_lock_file_goes(
    tmp_path: Path,
) -> None:
    """A lock that kept ``P.lock`` open skips the path check while the counters are as it
    left them (FORMAT.md §8.1), so every writer that unlinks ``P.lock`` bumps them first:
    here the erasure of a packed conversation too damaged to read. The kept lock must see
    the new lock file, held by another writer, and wait for it."""
    store = ConversationStore(tmp_path, encryption_key=KEY)
    with store.open("c") as codec:
        codec.append({"role": "user", "content": "a"})
    store.pack()
    path = str(store.path("c"))
    kept = LogLock(path, 0.2)
    assert kept.acquire(exclusive=True)
    kept.state()  # remembers the counters of the file it holds open
    kept.release()
    assert store.backend.erase_packed("c")
    holder = LogLock(path, 0.2)
    assert holder.acquire(exclusive=True)  # a new P.lock
    try:
        with pytest.raises(LockTimeoutError):
            kept.acquire(exclusive=True)
    finally:
        holder.release()
        holder.close()
    assert kept.acquire(exclusive=True)
    assert kept.state()[0] == os.lstat(path + ".lock").st_ino
    kept.release()
    kept.close()


class _AfterLockUnlink(FileIO):
    """Runs ``then`` once, right after the unlink of a ``.lock`` file (a clear's last)."""

    def __init__(self) -> None:
        self.then: Any = None

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        super().unlink(path, dir_fd=dir_fd)
        if self.then is not None and str(path).endswith(".lock"):
            then, self.then = self.then, None
            then()


_STORE_APPEND = """
import sys
from conversation_codec import ConversationStore
store = ConversationStore(sys.argv[1], encryption_key=sys.argv[2])
with store.open("c") as codec:
    codec.append({"role": "user", "content": "new"})
"""


def test_a_message_appended_while_a_store_deletes_the_conversation_is_kept(
    tmp_path: Path,
) -> None:
    """``store.delete()`` clears the log under its lock, whose file goes last; a writer in
    another process may then create the conversation again at once, under a new lock file.
    Nothing delete does after the clear may touch that writer's files: its acknowledged
    message stays."""
    io = _AfterLockUnlink()
    store = ConversationStore(tmp_path, encryption_key=KEY, io=io)
    with store.open("c") as codec:
        codec.append({"role": "user", "content": "old"})
    io.then = lambda: _children.run(
        [sys.executable, "-c", _STORE_APPEND, str(tmp_path), KEY],
        env=_helper.subprocess_env(None),
        check=True,
        timeout=60,
    )
    assert store.delete("c")
    with ConversationStore(tmp_path, encryption_key=KEY).open("c") as codec:
        assert codec.load() == [{"role": "user", "content": "new"}]


def test_a_clear_inside_a_transaction_keeps_the_rest_of_it_exclusive(tmp_path: Path) -> None:
    """``clear()`` unlinks P.lock last: inside a longer transaction that would leave its
    later calls holding a file that excludes no one. The unlink waits for the end of the
    outermost hold instead (FORMAT.md §8.5): until then another process is locked out, and
    a hold that wrote nothing after the clear leaves no file behind."""
    path = tmp_path / "chat.log"
    with _other_process(path) as other, ConversationCodec(path) as codec:
        codec.append({"role": "user", "content": "a"})
        with codec.transaction():
            codec.clear()
            assert other() == "locked out"
            codec.append({"role": "user", "content": "b"})
            assert other() == "locked out"
        assert other() == "appended"
        assert [m["content"] for m in codec.load() or []] == ["b", "other process"]
        with codec.transaction():
            codec.clear()
            assert other() == "locked out"
            assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.log.lock"]
        assert sorted(tmp_path.iterdir()) == []  # the hold's end unlinked it
        assert other() == "appended"


def test_a_codec_closed_inside_its_clearing_transaction_leaves_the_lock_file_alone(
    tmp_path: Path,
) -> None:
    """Closing the codec inside the transaction gives up its lock; another writer may take
    the same P.lock before the transaction ends. The end of a clearing hold must not unlink
    that file then: a third writer would create a new one and get in beside the second."""
    path = tmp_path / "chat.log"
    first = ConversationCodec(path)
    first.append({"role": "user", "content": "a"})
    hold = first.transaction()
    hold.__enter__()
    first.clear()
    first.close()  # the lock file stays linked; the hold no longer holds it
    with ConversationCodec(path, lock_timeout=0.3) as second, second.transaction():
        hold.__exit__(None, None, None)
        assert (tmp_path / "chat.log.lock").exists()
        with ConversationCodec(path, lock_timeout=0.3) as third, pytest.raises(LockTimeoutError):
            third.append({"role": "user", "content": "c"})
        second.append({"role": "user", "content": "b"})
    with ConversationCodec(path) as reader:
        assert [m["content"] for m in reader.load() or []] == ["b"]


def test_opening_a_log_that_another_process_removes_meanwhile(tmp_path: Path) -> None:
    """Opening a codec reads the log's header without the lock (``probe``): a log that a
    clear() or a pack removes between the check that it exists and the open of it is no
    error there; the first transaction sees what is there then. (Found by the packer
    race in test_pack.py: the appender's open failed with ENOENT.) A child process links
    the log into place and unlinks it in a loop while this one opens codecs on it."""
    src, path = tmp_path / "src.log", tmp_path / "c.log"
    with ConversationCodec(src, encryption_key=KEY) as codec:
        codec.append({"role": "user", "content": "hi"})
    flipper = (
        "import os, sys, time\n"
        "end = time.monotonic() + 30\n"
        "print('ready', flush=True)\n"
        "while time.monotonic() < end:\n"
        "    os.link(sys.argv[1], sys.argv[2]); os.unlink(sys.argv[2])\n"
    )
    child = _children.Popen(
        [sys.executable, "-c", flipper, str(src), str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for _ in range(2000):  # ~0.3 s; before the fix, about one open in ten failed
            ConversationCodec(path, encryption_key=KEY).close()
    finally:
        child.kill()
        child.communicate()  # and close its pipe

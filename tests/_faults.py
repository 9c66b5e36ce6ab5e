"""One fault harness for every writer of the package (issue 13: the filesystem seam).

Each :class:`Writer` is one procedure that changes files — log append, truncate and rewrite,
the index rebuild, the lock counters, key files, ``keygen --out``, blobs (put and delete),
export and migrate with a backup — given as ``prepare`` (the stored state before, written
with the operating system's I/O), ``act`` (the write, through the ``FileIO`` seam given as
``io=``) and ``state`` (reads a folder back with plain I/O and says ``"old"`` or ``"new"``;
anything else, a mix, raises ``AssertionError``). The harness then:

* counts its **fault points**: the seam calls it makes (``pwrite``, ``sync``, ``truncate``,
  ``rename``, ``link``, ``unlink``, ``fsync_dir``; ``step`` marks are counted apart);
* **fails each call in turn** (:class:`FaultyIO`: ``EIO`` or ``ENOSPC``, once or from then
  on): the error must come from the library's exception tree (a writer that returns claims
  success: the state must then be the new one), and what was stored must be the old or the
  new state, never lost or modified — checked by ``state`` on the real folder;
* **cuts the power at each point** (:class:`PowerLossIO` records every call with the inode
  it touched; :func:`crash_image` replays them): a file keeps what it held at its last
  sync, plus a prefix (ordered) or any subset (scrambled) of the writes since, the first one
  lost possibly torn, zeroed or garbage; a directory keeps its names at its last
  ``fsync_dir`` plus an in-order prefix of the creates, renames, links and unlinks since
  (an unnamed ``O_TMPFILE`` file is in no directory until its link: lost before it);
  ``state`` must find the old or the new state in every image;
* checks that no plaintext of an encrypted input (``Writer.secret``) reaches any file:
  neither a write through the seam nor a file left in the folder; an export's plaintext
  (by design) only in its destination, or in a temp file that the next export deletes.

A change that bypasses the seam is caught too: :class:`PowerLossIO` compares its model of
every file with the real one before each call and at each sync, and a file that appears in a
synced directory with content it never saw written fails the run.

``python -m tests._faults`` (from the repository root) prints the fault points per writer.
Linux only: files are named through ``/proc/self/fd``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io as stdio
import json
import os
import random
import shutil
import struct
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from conversation_codec import ConversationCodec, ConversationCodecError, FileIO
from conversation_codec._atomic import dead_temps
from conversation_codec.attachments import BlobStore
from conversation_codec.cli import main as cli_main
from conversation_codec.format.varint import decode_varint
from conversation_codec.keyfile import load_key, load_or_create_key
from conversation_codec.maintenance.migrate import migrate
from conversation_codec.maintenance.verify import salvage
from conversation_codec.storage.file.lock import LogLock

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # as conftest.KEY (tests only)
LEGACY_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()  # a legacy app's key
SECRET = "quokka-saffron-6613"  # in every encrypted input: never on disk in plaintext
KINDS = ("pwrite", "sync", "truncate", "rename", "link", "unlink", "fsync_dir")
LOG = "chat.log"

Message = dict[str, Any]
OLD: list[Message] = [{"role": "user", "content": f"stored {i}"} for i in range(3)]
NEW: Message = {"role": "assistant", "content": f"new {SECRET}"}
AFTER: Message = {"role": "user", "content": "written after the fault"}


class Interrupted(BaseException):
    """Raised at a step mark: as a KeyboardInterrupt there would (cleanup must still run)."""


class ExitCode(Exception):
    """A CLI command exited 1 (a library error, reported on one ``error:`` line)."""


# -- the writers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Writer:
    """One procedure that writes files; see the module docstring."""

    name: str
    prepare: Callable[[Path], Any]  # -> ctx, handed to act and state
    act: Callable[[Path, FileIO, Any], object]
    state: Callable[[Path, Any], str]
    secret: bytes | None = SECRET.encode()  # None: the output is plaintext by design
    errors: tuple[type[BaseException], ...] = (ConversationCodecError,)
    crash_states: frozenset[str] = frozenset({"old", "new"})


def _which(got: object, old: object, new: object, what: str) -> str:
    if got == old:
        return "old"
    if got == new:
        return "new"
    raise AssertionError(f"{what}: neither the old nor the new state: {got!r}")


def _history(folder: Path) -> list[Message]:
    """Read the log as a fresh reader, then check a fresh writer appends after it."""
    path = folder / LOG
    with ConversationCodec(path, encryption_key=KEY) as reader:
        got = reader.load() or []
    with ConversationCodec(path, encryption_key=KEY) as writer:
        assert writer.append(AFTER) == len(got), "the writer and the reader disagree"
        assert writer.load() == [*got, AFTER]
        report = writer.verify()
        assert report.ok, report.problems
    return got


def _seed_log(folder: Path, messages: list[Message] = OLD) -> None:
    with ConversationCodec(folder / LOG, encryption_key=KEY) as codec:
        codec.extend(messages)


def _log_writer(name: str, op: Callable[[ConversationCodec], object], new: list[Message]) -> Writer:
    def act(folder: Path, io: FileIO, ctx: Any) -> None:
        with ConversationCodec(folder / LOG, encryption_key=KEY, io=io) as codec:
            op(codec)

    def state(folder: Path, ctx: Any) -> str:
        return _which(_history(folder), OLD, new, name)

    return Writer(name, _seed_log, act, state)


def _index_prepare(folder: Path) -> None:
    _seed_log(folder)
    (folder / f"{LOG}.idx").unlink()


def _index_act(folder: Path, io: FileIO, ctx: Any) -> None:
    # A write transaction on a log without its index rebuilds and writes the index.
    with ConversationCodec(folder / LOG, encryption_key=KEY, io=io) as codec, codec.transaction():
        pass


def _index_state(folder: Path, ctx: Any) -> str:
    built = (folder / f"{LOG}.idx").exists()
    _which(_history(folder), OLD, OLD, "index rebuild")
    return "new" if built else "old"


_COUNTERS = struct.Struct("<QQ")  # FORMAT.md §8.1: generation, truncations


def _lock_prepare(folder: Path) -> tuple[int, int]:
    _seed_log(folder)
    raw = (folder / f"{LOG}.lock").read_bytes()
    return _COUNTERS.unpack(raw) if len(raw) == _COUNTERS.size else (0, 0)


def _lock_act(folder: Path, io: FileIO, ctx: Any) -> None:
    # The storage's own component, used as FileLog uses it: it raises OSError, which the
    # log's transaction turns into StorageError (the log rows check that mapping).
    lock = LogLock(str(folder / LOG), None, io=io)
    lock.acquire(exclusive=True)
    try:
        _, generation, truncations = lock.state()
        lock.write_state(generation + 1, truncations + 1)
    finally:
        lock.release()
        lock.close()


def _lock_state(folder: Path, ctx: tuple[int, int]) -> str:
    raw = (folder / f"{LOG}.lock").read_bytes() if (folder / f"{LOG}.lock").exists() else b""
    counters = _COUNTERS.unpack(raw) if len(raw) == _COUNTERS.size else None
    _which(_history(folder), OLD, OLD, "lock counters")
    if counters == ctx:
        return "old"
    if counters == (ctx[0] + 1, ctx[1] + 1):
        return "new"
    return "lost"  # not synced by design: counters speak to live processes only (§8.1)


_KEY_FILE = "chat.key"


def _key_state(folder: Path, ctx: Any) -> str:
    path = folder / _KEY_FILE
    if not os.path.lexists(path):
        return "old"
    load_key(path)  # raises on an empty, torn or group-readable key file
    return "new"


def _keygen_act(folder: Path, io: FileIO, ctx: Any) -> None:
    out, err = stdio.StringIO(), stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["keygen", "--out", str(folder / _KEY_FILE)], io=io)
    if code == 1:
        assert err.getvalue().startswith("error: "), err.getvalue()
        raise ExitCode(err.getvalue())
    assert code == 0, f"keygen exited {code}: {err.getvalue()}"


_BLOBS = f"{LOG}.blobs"
_OLD_BLOB = f"an older attachment {SECRET}".encode()
_NEW_BLOB = f"a new attachment {SECRET}".encode() * 40


def _blobs(folder: Path, io: FileIO | None = None) -> BlobStore:
    return BlobStore.for_key(folder / _BLOBS, KEY, **({} if io is None else {"io": io}))


def _blob_prepare(folder: Path) -> tuple[str, str]:
    store = _blobs(folder)
    return store.put(_OLD_BLOB), store.name(_NEW_BLOB)


def _blob_state(folder: Path, ctx: tuple[str, str]) -> str:
    store = _blobs(folder)
    assert store.get(ctx[0]) == _OLD_BLOB, "a stored blob changed"
    if ctx[1] not in store.names():
        return "old"
    assert store.get(ctx[1]) == _NEW_BLOB  # raises DecryptionError on a torn blob
    return "new"


def _delete_prepare(folder: Path) -> tuple[str, str]:
    store = _blobs(folder)
    return store.put(_OLD_BLOB), store.put(_NEW_BLOB)


def _delete_state(folder: Path, ctx: tuple[str, str]) -> str:
    store = _blobs(folder)
    assert store.get(ctx[0]) == _OLD_BLOB, "a referenced blob changed or went"
    if ctx[1] in store.names():
        assert store.get(ctx[1]) == _NEW_BLOB
        return "old"
    return "new"


_EXPORT = "chat.jsonl"


def _export_prepare(folder: Path) -> tuple[bytes, bytes]:
    _seed_log(folder)
    with ConversationCodec(folder / LOG, encryption_key=KEY) as codec:
        codec.export(folder / _EXPORT)  # an earlier export, to be replaced
        codec.append(NEW)
        with tempfile.TemporaryDirectory() as scratch:
            codec.export(Path(scratch, _EXPORT))
            new = Path(scratch, _EXPORT).read_bytes()
    return (folder / _EXPORT).read_bytes(), new


def _export_act(folder: Path, io: FileIO, ctx: Any) -> None:
    with ConversationCodec(folder / LOG, encryption_key=KEY, io=io) as codec:
        codec.export(folder / _EXPORT)


def _export_state(folder: Path, ctx: tuple[bytes, bytes]) -> str:
    _which(_history(folder), [*OLD, NEW], [*OLD, NEW], "the exported log")
    got = _which((folder / _EXPORT).read_bytes(), ctx[0], ctx[1], "export")
    # The new plaintext anywhere else: only in a temp file that the next export deletes.
    stray = {str(p) for p in folder.iterdir() if p.name != _EXPORT and SECRET.encode() in _raw(p)}
    assert stray <= set(dead_temps(folder / _EXPORT)), f"plaintext left behind: {stray}"
    return got


def _raw(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() and not path.is_symlink() else b""


_LEGACY = "history.jsonl"
_LEGACY_MESSAGES = [*OLD, NEW]


def _migrate_prepare(folder: Path) -> bytes:
    lines = "".join(json.dumps(m) + "\n" for m in _LEGACY_MESSAGES).encode()
    raw = Fernet(LEGACY_KEY).encrypt(lines)  # an encrypted legacy history
    (folder / _LEGACY).write_bytes(raw)
    return raw


def _migrate_act(folder: Path, io: FileIO, ctx: Any) -> None:
    migrate(folder / _LEGACY, encryption_key=KEY, legacy_key=LEGACY_KEY, io=io)


def _migrate_state(folder: Path, raw: bytes) -> str:
    src, bak = folder / _LEGACY, folder / f"{_LEGACY}.bak"
    if bak.exists():
        assert bak.read_bytes() == raw, "the backup is not the original"
    if src.read_bytes() == raw:
        return "old"
    assert bak.exists(), "the source was replaced before its backup was durable"
    with ConversationCodec(src, encryption_key=KEY) as codec:
        assert codec.load() == _LEGACY_MESSAGES, "the migrated log is not the source"
    return "new"


def _migrate_to_state(folder: Path, raw: bytes) -> str:
    assert (folder / _LEGACY).read_bytes() == raw, "the source was modified"
    if not (folder / LOG).exists():
        return "old"
    with ConversationCodec(folder / LOG, encryption_key=KEY) as codec:
        assert codec.load() == _LEGACY_MESSAGES, "the migrated log is not the source"
    return "new"


def _kwi_prepare(folder: Path) -> None:
    _seed_log(folder, [*OLD, NEW])  # NEW holds SECRET: its trigrams must reach disk keyed only


def _kwi_act(folder: Path, io: FileIO, ctx: Any) -> None:
    with ConversationCodec(folder / LOG, encryption_key=KEY, io=io) as codec:
        codec.reindex()


def _kwi_state(folder: Path, ctx: Any) -> str:
    """The log is untouched, and a search finds what the scan finds, whatever the sidecar
    holds (a torn or missing index makes readers scan, never return fewer hits)."""
    built = (folder / f"{LOG}.kwi").exists()
    _which(_history(folder), [*OLD, NEW], [*OLD, NEW], "keyword index")
    with ConversationCodec(folder / LOG, encryption_key=KEY) as codec:
        assert [h.seq for h in codec.search(SECRET.split("-")[0])] == [3]
        assert [h.seq for h in codec.search("stored")] == [0, 1, 2]
    return "new" if built else "old"


def _words(seed: int, count: int) -> str:
    """Distinct random words: each adds its own trigrams (so its own postings) to P.kwi."""
    rng = random.Random(seed)
    return " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=9)) for _ in range(count))


# An indexed log whose second segment (32 messages of 45 random words: ~56 KiB, written by
# the search that found them unindexed) is close to outweighing 64 KiB: the act's 32
# messages and its search make the next segment, and it merges.
_MERGE_OLD: list[Message] = [*OLD, *({"role": "user", "content": _words(i, 45)} for i in range(32))]
_MERGE_NEW: list[Message] = [
    NEW,
    *({"role": "user", "content": f"after {i} {_words(100 + i, 10)}"} for i in range(31)),
]
_MERGE_WORDS = ("stored", "after", SECRET.split("-")[0], _words(5, 1), _words(110, 1))


def _merge_prepare(folder: Path) -> None:
    path = folder / LOG
    with ConversationCodec(path, encryption_key=KEY, search_index=True, durability="flush") as c:
        c.extend(OLD)
        for message in _MERGE_OLD[len(OLD) :]:
            c.append(message)
        list(c.search("stored"))  # indexes the 32 appended messages: a segment
    assert len(_segments(folder)) == 2, "the prepared index must not be merged yet"


def _segments(folder: Path) -> list[int]:
    data = (folder / f"{LOG}.kwi").read_bytes()
    lengths, pos = [], 32
    while pos < len(data):
        n, pos = decode_varint(data, pos)
        lengths.append(n)
        pos += n
    return lengths


def _merge_act(folder: Path, io: FileIO, ctx: Any) -> None:
    path = folder / LOG
    with ConversationCodec(path, encryption_key=KEY, durability="flush", io=io) as codec:
        codec.extend(_MERGE_NEW)  # one write of the log (unsynced)
        list(codec.search("after"))  # 32 records unindexed: the search writes the merge


def _merge_state(folder: Path, ctx: Any) -> str:
    """Whatever a power loss left of the unsynced merge (the old file, the new one, empty or
    torn), a search finds exactly what the scan finds, and the next writer repairs P.kwi."""
    with ConversationCodec(folder / LOG, encryption_key=KEY) as codec:
        got = codec.load() or []
        for word in _MERGE_WORDS:
            want = [i for i, m in enumerate(got) if word in str(m["content"]).casefold()]
            assert [h.seq for h in codec.search(word)] == want, word
    got = _history(folder)  # appends, then verify(): the index is exact again
    new = [*_MERGE_OLD, *_MERGE_NEW]
    if len(_MERGE_OLD) < len(got) < len(new) and got == new[: len(got)]:
        return "part"  # durability "flush": a power loss may keep a prefix of the batch
    return _which(got, _MERGE_OLD, new, "keyword index merge")


_DAMAGED = "damaged.log"


def _salvage_prepare(folder: Path) -> None:
    """A log whose last record has a flipped byte: salvage keeps the other three."""
    with ConversationCodec(folder / _DAMAGED, encryption_key=KEY) as codec:
        codec.extend([*OLD, NEW])
    raw = bytearray((folder / _DAMAGED).read_bytes())
    raw[-40] ^= 0x01
    (folder / _DAMAGED).write_bytes(bytes(raw))


def _salvage_state(folder: Path, ctx: Any) -> str:
    """No destination log (a rerun then succeeds), or one holding every intact record."""
    if not (folder / LOG).exists():
        return "old"
    got = _history(folder)
    assert got == OLD, f"salvage wrote {got!r}"
    return "new"


WRITERS: list[Writer] = [
    _log_writer("log append", lambda c: c.append(NEW), [*OLD, NEW]),
    _log_writer("log truncate", lambda c: c.pop(), OLD[:-1]),
    _log_writer("log rewrite", lambda c: c.replace([NEW, OLD[0]]), [NEW, OLD[0]]),
    Writer("index", _index_prepare, _index_act, _index_state),
    Writer("keyword index", _kwi_prepare, _kwi_act, _kwi_state),
    Writer(
        "keyword index merge",
        _merge_prepare,
        _merge_act,
        _merge_state,
        crash_states=frozenset({"old", "part", "new"}),
    ),
    Writer(
        "lock counters",
        _lock_prepare,
        _lock_act,
        _lock_state,
        errors=(OSError,),
        crash_states=frozenset({"old", "new", "lost"}),
    ),
    Writer(
        "key file",
        lambda folder: None,
        lambda folder, io, ctx: load_or_create_key(folder / _KEY_FILE, io=io),
        _key_state,
        secret=None,  # a key file holds its key
    ),
    Writer("keygen", lambda folder: None, _keygen_act, _key_state, None, (ExitCode,)),
    Writer(
        "blob put",
        _blob_prepare,
        lambda folder, io, ctx: _blobs(folder, io).put(_NEW_BLOB),
        _blob_state,
    ),
    Writer(
        "blob delete",
        _delete_prepare,
        lambda folder, io, ctx: _blobs(folder, io).delete_unreferenced([ctx[0]]),
        _delete_state,
        # Like the lock, a part that runs inside the log's write transaction (compact()),
        # which raises its OSError as StorageError; put() wraps its own, as it may run alone.
        errors=(OSError,),
    ),
    Writer("export", _export_prepare, _export_act, _export_state, secret=None),  # plaintext
    Writer("migrate", _migrate_prepare, _migrate_act, _migrate_state),
    Writer(
        "migrate to dst",  # published with a hard link: never replaces what appeared there
        _migrate_prepare,
        lambda folder, io, ctx: migrate(
            folder / _LEGACY, folder / LOG, encryption_key=KEY, legacy_key=LEGACY_KEY, io=io
        ),
        _migrate_to_state,
    ),
    Writer(
        "salvage",  # writes a new log: all of it or nothing, so that a rerun can succeed
        _salvage_prepare,
        lambda folder, io, ctx: salvage(folder / _DAMAGED, folder / LOG, encryption_key=KEY, io=io),
        _salvage_state,
    ),
]
BY_NAME = {w.name: w for w in WRITERS}


# -- counting and failing calls -------------------------------------------------------------


class FaultyIO(FileIO):
    """The operating system, counting every seam call; the ``nth`` (1-based, all kinds
    together; 0: none) fails with ``err``, and every later one too if ``persistent``."""

    def __init__(
        self, nth: int = 0, err: int = errno.EIO, *, persistent: bool = False, stop: int = 0
    ) -> None:
        self.nth, self.err, self.persistent = nth, err, persistent
        self.stop = stop  # raise Interrupted at this step mark (1-based; 0: never)
        self.calls: list[str] = []
        self.steps: list[str] = []
        self.failed: list[str] = []

    def _call(self, kind: str) -> None:
        self.calls.append(kind)
        n = len(self.calls)
        if self.nth and (n == self.nth or (self.persistent and n > self.nth)):
            self.failed.append(kind)
            raise OSError(self.err, os.strerror(self.err))

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._call("pwrite")
        return super().pwrite(fd, data, offset)

    def sync(self, fd: int, *, data_only: bool) -> None:
        self._call("sync")
        super().sync(fd, data_only=data_only)

    def truncate(self, fd: int, size: int) -> None:
        self._call("truncate")
        super().truncate(fd, size)

    def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        self._call("rename")
        super().rename(src, dst, dir_fd=dir_fd)

    def link(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        self._call("link")
        super().link(src, dst, dir_fd=dir_fd)

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._call("unlink")
        super().unlink(path, dir_fd=dir_fd)

    def fsync_dir(self, folder: Any) -> None:  # sync_dir() comes here too
        self._call("fsync_dir")
        super().fsync_dir(folder)

    def step(self, name: str) -> None:
        self.steps.append(name)
        if len(self.steps) == self.stop:
            raise Interrupted(name)


@dataclass(frozen=True, slots=True)
class Points:
    """A writer's fault points: its seam calls by kind, and its step marks."""

    calls: Counter[str]
    steps: int

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __str__(self) -> str:
        kinds = ", ".join(f"{self.calls[k]} {k}" for k in KINDS if self.calls[k])
        return f"{self.total} fault points ({kinds}); {self.steps} steps"


def fault_points(writer: Writer, folder: Path) -> Points:
    """Run ``writer`` once without faults and count its seam calls."""
    folder.mkdir(parents=True)
    ctx = writer.prepare(folder)
    io = FaultyIO()
    writer.act(folder, io, ctx)
    assert writer.state(folder, ctx) == "new", f"{writer.name}: the write did not happen"
    return Points(Counter(io.calls), len(io.steps))


def _written_secrets(writer: Writer, folder: Path, chunks: Iterator[bytes]) -> None:
    if writer.secret is None:
        return
    for chunk in chunks:
        assert writer.secret not in chunk, f"{writer.name}: plaintext written through the seam"
    for path in folder.rglob("*"):
        if path.is_file():
            assert writer.secret not in path.read_bytes(), f"{writer.name}: plaintext in {path}"


def io_fault(writer: Writer, folder: Path, nth: int, err: int, persistent: bool) -> str:
    """Fail the ``nth`` seam call of ``writer``; check the error and what is stored.

    Return the state left (``"old"`` or ``"new"``).
    """
    folder.mkdir(parents=True)
    ctx = writer.prepare(folder)
    io = FaultyIO(nth, err, persistent=persistent)
    where = f"{writer.name}: call #{nth} failing ({os.strerror(err)}, "
    where += f"{'persistent' if persistent else 'once'})"
    try:
        writer.act(folder, io, ctx)
    except writer.errors as exc:
        assert io.failed, f"{where}: raised with no fault injected: {exc!r}"
        if isinstance(exc, OSError) and not isinstance(exc, ExitCode):
            assert exc.errno == err, f"{where}: errno {exc.errno}, not {err}"
        raised = True
    except BaseException as exc:
        raise AssertionError(f"{where}: raised {exc!r}, not a library error") from exc
    else:
        raised = False
    assert io.failed, f"{where}: the call was never reached"
    try:
        got = writer.state(folder, ctx)
        assert got in ("old", "new"), f"state {got}"
        assert raised or got == "new", "returned as if it succeeded, but the write is not there"
        _written_secrets(writer, folder, iter(()))
    except Exception as exc:
        raise AssertionError(f"{where}: {exc}") from exc
    return got


def interrupted(writer: Writer, folder: Path, stop: int) -> str:
    """Raise :class:`Interrupted` at ``writer``'s ``stop``-th step mark; check what is
    stored, as :func:`io_fault` does. Return the state left."""
    folder.mkdir(parents=True)
    ctx = writer.prepare(folder)
    io = FaultyIO(stop=stop)
    with contextlib.suppress(Interrupted):
        writer.act(folder, io, ctx)
    assert len(io.steps) == stop, f"{writer.name}: step {stop} was never reached"
    try:
        got = writer.state(folder, ctx)
        assert got in ("old", "new"), f"state {got}"
        _written_secrets(writer, folder, iter(()))
    except Exception as exc:
        raise AssertionError(f"{writer.name}: interrupted at {io.steps[-1]}: {exc}") from exc
    return got


def sample(total: int, count: int, seed: str) -> list[int]:
    """``count`` of the call numbers 1..total, the first and the last always among them
    (a fixed choice per ``seed``: the default run draws the same every time)."""
    if total <= count:
        return list(range(1, total + 1))
    middle = random.Random(seed).sample(range(2, total), count - 2)
    return sorted({1, total, *middle})


# -- power loss ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One seam call as the disk saw it (files by id: one per inode)."""

    kind: str  # create | write | truncate | sync | rename | link | unlink | dirsync
    file: int = -1
    offset: int = 0  # write: where; truncate: the new size
    data: bytes = b""
    folder: str = ""  # namespace ops: the directory (relative to the root)
    name: str = ""  # create/unlink: the name; rename/link: the destination
    src: str = ""  # rename/link: the source name
    names: tuple[tuple[str, int], ...] = ()  # dirsync: every name -> file id then


class PowerLossIO(FileIO):
    """Perform every seam call and record it with the file (inode) it touched."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.ops: list[Op] = []
        self.steps: list[tuple[int, str]] = []  # (ops before it, step name)
        self._ids: dict[tuple[int, int], int] = {}
        self.initial: list[bytes] = []
        self._content: list[bytearray] = []
        self.folders: set[str] = set()
        self.start: dict[str, dict[str, int]] = defaultdict(dict)  # folder -> name -> id
        for folder, _, names in os.walk(self.root):
            rel = os.path.relpath(folder, self.root)
            self.folders.add(rel)
            for name in names:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                self.start[rel][name] = self._new(st, Path(path).read_bytes())

    def _new(self, st: os.stat_result, data: bytes = b"") -> int:
        fid = len(self._content)
        self._ids[(st.st_dev, st.st_ino)] = fid
        self.initial.append(data)
        self._content.append(bytearray(data))
        return fid

    def _where(self, path: Any, dir_fd: int | None) -> tuple[str, str]:
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()
        full = os.path.realpath(os.path.join(base, os.fspath(path)))
        folder, name = os.path.split(full)
        rel = os.path.relpath(folder, self.root)
        assert not rel.startswith(".."), f"a write outside the folder under test: {full}"
        return rel, name

    def _file(self, fd: int) -> int:
        st = os.fstat(fd)
        fid = self._ids.get((st.st_dev, st.st_ino))
        if fid is None:
            assert st.st_size == 0, "a file written outside the FileIO seam"
            fid = self._new(st)
            if st.st_nlink == 0:  # unnamed (O_TMPFILE): in no directory until linked in
                return fid
            folder, name = self._where(os.readlink(f"/proc/self/fd/{fd}"), None)
            self.ops.append(Op("create", fid, folder=folder, name=name))
        assert len(self._content[fid]) == st.st_size, "a change bypassed the FileIO seam"
        return fid

    def _named(self, path: Any, dir_fd: int | None) -> tuple[int, str, str]:
        if os.fspath(path).startswith("/proc/self/fd/"):  # an unnamed file, being linked in
            fd = int(os.path.basename(path))
            folder, _ = self._where(os.readlink(path), None)  # "<folder>/#<inode> (deleted)"
            return self._file(fd), folder, ""
        folder, name = self._where(path, dir_fd)
        st = os.lstat(os.path.join(self.root, folder, name))
        fid = self._ids.get((st.st_dev, st.st_ino))
        if fid is None:
            assert st.st_size == 0, f"{name} was written outside the FileIO seam"
            fid = self._new(st)
            self.ops.append(Op("create", fid, folder=folder, name=name))
        return fid, folder, name

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        fid = self._file(fd)
        n = super().pwrite(fd, data, offset)
        chunk = bytes(data[:n])
        write_at(self._content[fid], offset, chunk)
        self.ops.append(Op("write", fid, offset, chunk))
        return n

    def truncate(self, fd: int, size: int) -> None:
        fid = self._file(fd)
        super().truncate(fd, size)
        truncate_to(self._content[fid], size)
        self.ops.append(Op("truncate", fid, size))

    def sync(self, fd: int, *, data_only: bool) -> None:
        fid = self._file(fd)
        super().sync(fd, data_only=data_only)
        with open(f"/proc/self/fd/{fd}", "rb") as f:  # the descriptor may be write-only
            real = f.read()
        assert real == self._content[fid], "the file holds bytes the seam never wrote"
        self.ops.append(Op("sync", fid))

    def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        fid, folder, old = self._named(src, dir_fd)
        new = self._where(dst, dir_fd)
        assert new[0] == folder, "a rename across directories"
        self._forget(os.path.join(self.root, *new))  # the file renamed over, if any
        super().rename(src, dst, dir_fd=dir_fd)
        self.ops.append(Op("rename", fid, folder=folder, name=new[1], src=old))

    def link(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        fid, folder, old = self._named(src, dir_fd)
        new = self._where(dst, dir_fd)
        assert new[0] == folder, "a link across directories"
        super().link(src, dst, dir_fd=dir_fd)
        self.ops.append(Op("link", fid, folder=folder, name=new[1], src=old))

    def unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        fid, folder, name = self._named(path, dir_fd)
        self._forget(os.path.join(self.root, folder, name))
        super().unlink(path, dir_fd=dir_fd)
        self.ops.append(Op("unlink", fid, folder=folder, name=name))

    def _forget(self, path: str) -> None:
        """Drop the inode of the last name ``path`` is about to lose: it may be reused."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if st.st_nlink == 1:
                self._ids.pop((st.st_dev, st.st_ino), None)

    def fsync_dir(self, folder: Any) -> None:
        path = os.readlink(f"/proc/self/fd/{folder}") if isinstance(folder, int) else folder
        rel = os.path.relpath(os.path.realpath(path), self.root)
        assert not rel.startswith(".."), f"a directory outside the folder under test: {path}"
        super().fsync_dir(folder)
        names = []
        for entry in os.scandir(os.path.join(self.root, rel)):
            if entry.is_file(follow_symlinks=False):
                fid, _, _ = self._named(entry.path, None)
                names.append((entry.name, fid))
        self.ops.append(Op("dirsync", folder=rel, names=tuple(sorted(names))))

    def step(self, name: str) -> None:
        self.steps.append((len(self.ops), name))

    def finish(self) -> None:
        """Note the directories the run created (an image holds them all, empty or not)."""
        for folder, _, _ in os.walk(self.root):
            self.folders.add(os.path.relpath(folder, self.root))


def write_at(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))  # a hole reads as zeros
    buf[offset : offset + len(data)] = data


def truncate_to(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(bytes(size - len(buf)))


def _land(buf: bytearray, op: Op, fate: str, rng: random.Random) -> None:
    if fate == "none":
        return
    if op.kind == "truncate":
        truncate_to(buf, op.offset)
    elif fate == "full":
        write_at(buf, op.offset, op.data)
    elif fate == "prefix":
        write_at(buf, op.offset, op.data[: rng.randrange(len(op.data))] if op.data else b"")
    elif fate == "zeros":
        write_at(buf, op.offset, bytes(len(op.data)))
    elif fate == "garbage":
        write_at(buf, op.offset, rng.randbytes(len(op.data)))


def _fates(pending: list[Op], scrambled: bool, rng: random.Random) -> list[str]:
    torn = ["prefix", "zeros", "garbage", "none"]
    if scrambled:  # an unordered device: each write lands, or not, on its own
        return [
            rng.choice(["full", "none"] if op.kind == "truncate" else ["full", *torn])
            for op in pending
        ]
    cut = rng.randint(0, len(pending))
    fates = ["full"] * cut + ["none"] * (len(pending) - cut)
    if cut < len(pending) and pending[cut].kind == "write":
        fates[cut] = rng.choice(torn)
    return fates


@dataclass(slots=True)
class Image:
    """What a power loss left: files by path (relative to the root), and how."""

    files: dict[str, bytes] = field(default_factory=dict)
    story: list[str] = field(default_factory=list)


def crash_image(
    rec: PowerLossIO, point: int, scrambled: bool, rng: random.Random, *, lose: bool = True
) -> Image:
    """The disk a power loss right before ``rec.ops[point]`` may leave (``lose=False``:
    the disk with every call applied, which must be the real folder at the last point)."""
    durable = [bytearray(data) for data in rec.initial]
    pending: dict[int, list[Op]] = defaultdict(list)
    names = {folder: dict(entries) for folder, entries in rec.start.items()}
    moves: dict[str, list[Op]] = defaultdict(list)
    for op in rec.ops[:point]:
        if op.kind in ("write", "truncate"):
            pending[op.file].append(op)
        elif op.kind == "sync":
            for p in pending.pop(op.file, []):
                _land(durable[op.file], p, "full", rng)
        elif op.kind == "dirsync":
            names[op.folder], moves[op.folder] = dict(op.names), []
        else:
            moves[op.folder].append(op)
    image = Image(
        story=[f"point {point}/{len(rec.ops)}, {'scrambled' if scrambled else 'ordered'}"]
    )
    for folder, ops in moves.items():
        kept = rng.randint(0, len(ops)) if lose else len(ops)
        entries = names.setdefault(folder, {})
        for op in ops[:kept]:
            if op.kind == "rename":
                entries.pop(op.src, None)
            if op.kind == "unlink":
                entries.pop(op.name, None)
            else:
                entries[op.name] = op.file
        image.story.append(f"{folder}: {kept} of {len(ops)} unsynced names kept")
    contents: dict[int, bytes] = {}
    for folder, entries in sorted(names.items()):
        for name, fid in sorted(entries.items()):
            if fid not in contents:
                buf = bytearray(durable[fid])
                fates = (
                    _fates(pending[fid], scrambled, rng) if lose else ["full"] * len(pending[fid])
                )
                for op, fate in zip(pending[fid], fates, strict=True):
                    _land(buf, op, fate, rng)
                contents[fid] = bytes(buf)
                image.story.append(f"{folder}/{name}: {len(durable[fid])} synced, {fates}")
            image.files[os.path.normpath(os.path.join(folder, name))] = contents[fid]
    return image


def record(writer: Writer, folder: Path) -> tuple[PowerLossIO, Any]:
    """Run ``writer`` under a :class:`PowerLossIO`; return it and the writer's context."""
    folder.mkdir(parents=True)
    ctx = writer.prepare(folder)
    rec = PowerLossIO(folder)
    writer.act(folder, rec, ctx)
    rec.finish()
    _written_secrets(writer, folder, (op.data for op in rec.ops))
    check_model(rec, folder)
    return rec, ctx


def check_model(rec: PowerLossIO, folder: Path) -> None:
    """With every recorded call applied the model must be the real folder, byte for byte:
    a file changed outside the seam shows up here. The one exception, a file created
    (``O_CREAT``) and never written, is empty."""
    model = crash_image(rec, len(rec.ops), False, random.Random(0), lose=False).files
    real = {os.path.relpath(p, folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for rel, data in real.items():
        assert model.get(rel, b"") == data, f"{rel} was written outside the FileIO seam"
    assert not model.keys() - real.keys(), f"the model has files that are not there: {model}"


def check_image(writer: Writer, rec: PowerLossIO, ctx: Any, image: Image, folder: Path) -> str:
    """Lay ``image`` out in ``folder`` and return the state ``writer.state`` finds there."""
    if folder.exists():
        shutil.rmtree(folder)
    for rel in rec.folders:
        (folder / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
    for rel, data in image.files.items():
        fd = os.open(folder / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
    try:
        got = writer.state(folder, ctx)
        assert got in writer.crash_states, f"state {got}"
    except Exception as exc:
        story = "\n  ".join(image.story)
        raise AssertionError(f"{writer.name}, power lost: {exc!r}\n  {story}") from exc
    return got


def power_losses(
    writer: Writer, folder: Path, images: int | None, seed: str, per_point: int = 4
) -> Counter[str]:
    """Record ``writer`` once and check crash images: ``images`` at random points, or
    (None) ``per_point`` at every point. Return the states found, counted."""
    rec, ctx = record(writer, folder / "live")
    rng = random.Random(seed)
    last = len(rec.ops)
    if images is None:
        points = [p for p in range(last + 1) for _ in range(per_point)]
    else:
        points = sorted([0, last, *(rng.randint(0, last) for _ in range(max(images - 2, 0)))])
    found: Counter[str] = Counter()
    for n, point in enumerate(points):
        image = crash_image(rec, point, scrambled=n % 3 == 2, rng=rng)
        found[check_image(writer, rec, ctx, image, folder / "image")] += 1
    assert found["new"], f"{writer.name}: no image holds the new state (the last point must)"
    return found


def table(root: Path) -> dict[str, Points]:
    """Every writer's fault points, counted in folders under ``root``."""
    return {w.name: fault_points(w, root / f"w{i}") for i, w in enumerate(WRITERS)}


def main() -> None:
    """Print the fault points per writer (``python -m tests._faults``)."""
    with tempfile.TemporaryDirectory() as scratch:
        for name, points in table(Path(scratch)).items():
            print(f"{name + ':':<15} {points}")


if __name__ == "__main__":
    sys.exit(main())

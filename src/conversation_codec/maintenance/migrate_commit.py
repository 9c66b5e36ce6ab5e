"""Write, check and publish one migrated log, crash-safe (``migrate``, steps 2-4).

Every write, sync, rename, link and unlink goes through the ``FileIO`` seam given (``io``),
the temp log's included; ``io.step`` is called between the steps (``"migrate:verified"``,
``"migrate:renamed"``, …; the temp log's own steps are the file storage's: ``"rewrite:…"``,
``"append:…"``), which is where crash tests stop or kill a migration.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from .._fsio import FileIO, check_file, open_file, unlink_file
from .._time import to_datetime
from ..codec import ConversationCodec
from ..errors import ConversationCodecError, StorageError
from ..paths import index_path, lock_path, migrate_leftovers, temp_path
from ..storage.file.lock import LogLock
from ..storage.file.packs import PACKS_DIR, Packs
from ..storage.file.store import LOG_SUFFIX, decode_id
from .migrate_source import Plan

__all__ = [
    "WRITE_BATCH",
    "as_storage_errors",
    "check_unchanged",
    "finish",
    "holds_plan",
    "publish",
    "refuse_packed",
    "remove_temp",
    "sweep_existing",
    "sweep_leftovers",
    "verify_copy",
    "write_backup",
    "write_log",
    "writer_lock",
]

WRITE_BATCH = 4096  # messages per extend() while writing the new log: bounds memory per call


@contextlib.contextmanager
def as_storage_errors(path: Path) -> Iterator[None]:
    """Raise an ``OSError`` of the steps below as ``StorageError`` naming ``path``."""
    try:
        yield
    except ConversationCodecError:
        raise
    except OSError as exc:
        raise StorageError(
            exc.errno or 0, f"cannot migrate to {path}: {exc.strerror or exc}"
        ) from exc


@contextlib.contextmanager
def writer_lock(target: Path, io: FileIO) -> Iterator[Callable[[], None]]:
    """Hold the writer lock of the log at ``target`` (FORMAT.md §8.1), as every rewrite does.

    Codecs on ``target`` wait meanwhile, and no rewrite or ``clear()`` of that log sweeps
    this migration's temp files as leftovers of a crash. Yields ``announce``, which bumps
    the change counters just before the commit (§8.4): a codec that saw no log at
    ``target`` reloads instead of writing a new one over the migrated history. A lock file
    this call created is removed again (as ``clear()`` does: a waiting process then locks
    the new file, and its new inode makes every codec reload).
    """
    lock = LogLock(str(target), None, io=io)

    def announce() -> None:
        _, generation, truncations = lock.state()
        lock.write_state(generation + 1, truncations + 1)

    try:
        lock.acquire(exclusive=True)
    except OSError as exc:
        raise StorageError(exc.errno or 0, f"{lock.path}: {exc.strerror or exc}") from None
    try:
        yield announce
    finally:
        try:
            lock.forget_created(keep=False)
        finally:
            lock.close()  # even when that unlink failed: a leaked descriptor keeps the lock


def refuse_packed(target: Path, io: FileIO, *, settled: bool = True) -> None:
    """Refuse ``target`` when it names a store conversation that a pack holds (FORMAT.md §18).

    A store's log ``<root>/<encoded id>.log`` is absent while its conversation is packed in
    ``<root>/.packs``: it exists all the same, and an existing log is never replaced (a file
    there would shadow it, "loose wins", and its next write drop the packed history).
    ``settled``: look under ``.packs/pack.lock``, as a writer about to create a log does
    (§18.2.2), with the log's writer lock held (no unpack, and no pack of a log that has
    no file, runs meanwhile). Otherwise a look that writes nothing, for a dry run.

    :raises StorageError: a pack holds the conversation.
    :raises FormatError: a pack is unreadable, and may hold it.
    """
    if not target.name.endswith(LOG_SUFFIX) or not os.path.isdir(target.parent / PACKS_DIR):
        return
    conversation_id = decode_id(target.name[: -len(LOG_SUFFIX)])
    if conversation_id is None:
        return  # a name no id encodes to (a hashed one among them): never packed
    packs = Packs(target.parent, io=io)
    try:
        where = packs.find_settled(conversation_id) if settled else packs.find(conversation_id)
    finally:
        packs.close()
    if where is not None:
        raise StorageError(
            errno.EEXIST,
            f"{target} already exists (packed in {where.path}); choose another destination "
            "or delete that conversation first",
        )


def sweep_leftovers(target: Path, bak: Path | None, io: FileIO) -> int:
    """Delete what a crashed migration of ``target`` left behind (never the backup).

    Return how many files were removed.
    """
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return 0
    leftover, removed = migrate_leftovers(target.name, None if bak is None else bak.name), 0
    for name in names:
        if name.startswith(target.name) and leftover.fullmatch(name):
            removed += unlink_file(target.parent / name, io=io)  # refuses a planted link
    return removed


def sweep_existing(target: Path, io: FileIO) -> int:
    """Delete, under its writer lock, what a migration to the existing ``target`` left
    (killed after its commit: the temp log's link, index and lock); return how many."""
    with as_storage_errors(target), writer_lock(target, io):
        return sweep_leftovers(target, None, io)


def holds_plan(target: Path, plan: Plan, secret: dict[str, Any], io: FileIO) -> bool:
    """Whether the log at ``target`` opens with ``secret`` and holds exactly the planned
    messages (and times, when the source had any): a migration done already."""
    try:
        with ConversationCodec(target, **secret, io=io) as codec:
            if (codec.load() or []) != plan.messages:
                return False
            times = plan.times
            return times is None or all(
                codec.timestamp(i) == _datetime(t) for i, t in enumerate(times)
            )
    except (ConversationCodecError, OSError):  # another key, another log, damage: not ours
        return False


def write_log(tmp: str, plan: Plan, secret: dict[str, Any], io: FileIO) -> None:
    """Write the planned messages to the new log at ``tmp`` and fsync it; ``secret``:
    its ``encryption_key=`` or ``password=``."""
    # "flush" and one fsync at the end: a temp log needs no per-batch durability.
    with ConversationCodec(tmp, **secret, durability="flush", io=io) as codec:
        times = plan.times
        for i in range(0, len(plan.messages), WRITE_BATCH):
            stamps = None if times is None else [_datetime(t) for t in times[i : i + WRITE_BATCH]]
            codec.extend(plan.messages[i : i + WRITE_BATCH], timestamps=stamps)
    io.step("migrate:temp-written")
    fd = open_file(tmp, os.O_RDONLY)
    try:
        io.sync(fd, data_only=False)
    finally:
        os.close(fd)
    io.step("migrate:temp-synced")


def _datetime(us: int) -> datetime:
    return to_datetime(us)  # exact, unlike float epoch seconds


def verify_copy(tmp: str, plan: Plan, secret: dict[str, Any], io: FileIO) -> None:
    """Re-open the new log and compare every message (and timestamp) with the source's.

    :raises ConversationCodecError: they differ (a bug: nothing was changed).
    """
    with ConversationCodec(tmp, **secret, io=io) as codec:
        stored = codec.load() or []
        if len(stored) != len(plan.messages):
            _mismatch(f"{len(stored)} messages instead of {len(plan.messages)}")
        for seq, (got, want) in enumerate(zip(stored, plan.messages, strict=True)):
            if got != want:
                _mismatch(f"message {seq} differs")
            if plan.times is not None and codec.timestamp(seq) != _datetime(plan.times[seq]):
                _mismatch(f"timestamp of message {seq} differs")


def _mismatch(what: str) -> None:
    raise ConversationCodecError(
        f"the new log does not read back as the source ({what}); nothing was changed — "
        "please report this as a bug"
    )


def write_backup(bak: Path, data: bytes, io: FileIO) -> bool:
    """Store the original bytes at ``bak``; return False when an identical one exists.

    Written to a temp file and hard-linked into place, which fails rather than overwrite
    a backup that appeared meanwhile (``os.replace`` would clobber it).

    :raises StorageError: another file is at ``bak``, or it cannot be written.
    """
    if os.path.lexists(bak):
        check_file(bak)  # a link or a directory there is refused as such
        if bak.read_bytes() == data:
            return False  # left by an earlier run that crashed before its commit
        raise StorageError(
            errno.EEXIST, f"{bak} exists and is not this file's original; move it away"
        )
    tmp = temp_path(bak)
    try:
        # Durable (directory synced) before the source is replaced. Where hard links are
        # unsupported the backup is created in place with O_EXCL: a crash may leave it
        # short, and the next run then refuses it (it is not this file's original).
        atomic_write(
            bak,
            data,
            io=io,
            exclusive=True,
            tmp=tmp,
            fault=lambda _: io.step("migrate:backup-written"),
        )
    except FileExistsError:
        raise StorageError(errno.EEXIST, f"{bak} appeared meanwhile; nothing was changed") from None
    return True


def _link(tmp: str, path: str | Path, io: FileIO) -> None:
    """Give ``tmp`` the name ``path`` without ever replacing an existing ``path``."""
    try:
        io.link(tmp, path)
    except FileExistsError:
        raise StorageError(
            errno.EEXIST, f"{path} appeared meanwhile; nothing was changed"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):  # no hard links here: check, then rename (small race)
            raise StorageError(errno.EEXIST, f"{path} appeared meanwhile") from None
        io.rename(tmp, path)


def check_unchanged(path: Path, before: os.stat_result) -> None:
    """:raises StorageError: the source at ``path`` changed since ``before`` was taken."""
    now = os.stat(path)
    keys = ("st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
    if any(getattr(now, k) != getattr(before, k) for k in keys):
        raise StorageError(
            errno.EAGAIN, f"{path} was modified while migrating; nothing was changed — retry"
        )


def publish(tmp: str, target: Path, in_place: bool, io: FileIO) -> None:
    """Move the new log to ``target``: the commit point."""
    if in_place:
        check_file(target)  # rename would replace a link put there meanwhile
        io.rename(tmp, target)
    else:
        _link(tmp, target, io)  # never replace a destination that appeared meanwhile
        with contextlib.suppress(FileNotFoundError):  # gone if the link fell back to rename
            io.unlink(tmp)


def finish(tmp: str, target: Path, io: FileIO) -> None:
    """After the commit: move the index beside the log, drop the temp lock, sync."""
    with contextlib.suppress(OSError):  # a cache: a missing index is rebuilt on open
        check_file(index_path(target))  # a link there is left alone (the log refuses it)
        io.rename(index_path(tmp), index_path(target))
    io.step("migrate:index-moved")
    for leftover in (lock_path(tmp), index_path(tmp)):  # the index is still here if its move failed
        with contextlib.suppress(FileNotFoundError):
            io.unlink(leftover)
    io.sync_dir(target)
    io.step("migrate:dir-synced")


def remove_temp(tmp: str, io: FileIO) -> None:
    """Delete the temp log ``tmp`` and its sidecars (after a failure before the commit)."""
    folder, name = os.path.split(tmp)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(folder or "."):
            if entry == name or entry.startswith(f"{name}."):
                with contextlib.suppress(FileNotFoundError):
                    io.unlink(os.path.join(folder, entry))

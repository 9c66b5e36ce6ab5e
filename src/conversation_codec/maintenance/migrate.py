"""Convert legacy history files into conversation-codec logs: one file, or whole trees.

:func:`migrate` converts one file; :func:`migrate_many` walks files and directories and
never stops on one bad file (the CLI's ``migrate`` command is a thin wrapper over it).
Reading and format detection live in ``legacy``; compaction and key rotation are
``ConversationCodec.compact`` / ``rotate_key``.

How a file is converted, so that a crash at any point leaves the source intact:

1. Read the source and parse it (nothing is written yet; a wrong key, an unknown layout
   or a malformed file raises here and changes nothing).
2. Write the new log beside the destination as ``<dst>.migrating-<16 hex>`` (0600; with
   ``encryption_key`` it is sealed from its first byte, so no plaintext of an encrypted
   source ever reaches the disk), fsync it, re-open it and compare every message and
   timestamp with what was parsed.
3. In place: copy the original bytes to ``<name>.bak`` (0600, fsync; a hard link from a
   temp file, so an existing backup is never overwritten) and fsync the directory.
4. Check that the source was not modified meanwhile, then rename the new log over the
   destination (the commit point), move its index beside it, drop its lock file and
   fsync the directory.

A crash leaves the source, or the complete new log (and the backup); leftovers named
``<dst>.migrating-*`` are removed by the next migration of the same destination, or by
the next rewrite or ``clear()`` of the log there. Steps 2-4 hold the writer lock of
``<dst>``, as a rewrite does: no codec writes there, or sweeps the temp files, meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .._fsio import DEFAULT_IO, atomic_write, check_file, open_file, unlink_file
from .._time import iso_z, to_datetime
from ..codec import ConversationCodec
from ..crypto import KeyInput, Keyring
from ..errors import ConversationCodecError, KeyRequiredError, StorageError
from ..format.header import LogKind, sniff_log
from ..paths import (
    backup_path,
    index_path,
    is_sidecar,
    lock_path,
    migrate_leftovers,
    migrating_path,
    temp_path,
)
from ..storage.file.lock import LogLock
from ..storage.file.log import FileLog
from .legacy import MAX_LEGACY_BYTES, LegacyFormat, read_legacy

__all__ = ["BatchItem", "BatchReport", "BatchStatus", "MigrationReport", "migrate", "migrate_many"]

BatchStatus = Literal["converted", "skipped", "failed"]
Fault = Callable[[str], None]

WRITE_BATCH = 4096  # messages per extend() while writing the new log: bounds memory per call
_IO = DEFAULT_IO  # the filesystem seam (_fsio)
_ENCRYPTED = (LegacyFormat.FERNET_JSONL, LegacyFormat.FERNET_JSON_ARRAY)
# Files a directory walk never treats as histories: our sidecars and temp files, legacy
# salt files, backups made by an earlier run (migrating those would make .bak.bak files).


def _no_fault(step: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What :func:`migrate` did (or, with ``dry_run``, would do) to one file.

    ``messages`` is None for a source that is already a log (it is not opened).
    ``bytes_after`` counts the new log and its index (as ``CompactionReport`` does); 0
    when nothing was written. ``backup`` is the ``.bak`` path when one holds the original.
    """

    source: Path
    destination: Path
    format: LegacyFormat
    messages: int | None
    bytes_before: int
    bytes_after: int
    backup: Path | None
    converted: bool
    notes: tuple[str, ...] = ()


def migrate(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    encryption_key: KeyInput | None = None,
    legacy_key: KeyInput | None = None,
    password: str | bytes | None = None,
    log_password: str | None = None,
    backup: bool = True,
    dry_run: bool = False,
    _fault: Fault | None = None,
) -> MigrationReport:
    """Convert the legacy history at ``src`` into a conversation-codec log.

    :param dst: where the log goes; default ``src`` itself (in place), the original kept
        as ``<name>.bak`` unless ``backup=False``. An existing ``dst`` is never replaced.
    :param encryption_key: key(s) of the new log; None (and no ``log_password``) writes a
        plaintext log, which is refused for an encrypted source.
    :param log_password: seal the new log with this password instead of a key.
    :param legacy_key: Fernet key(s) of an encrypted source; or give ``password``, with
        its 16-byte salt in the ``.salt`` file beside the source.
    :param dry_run: read, decrypt and check everything, but write nothing.
    :param _fault: test seam, called with a step name between the steps that write.
    :raises FormatError: unknown layout or malformed source (nothing was changed).
    :raises DecryptionError: wrong legacy key or password (nothing was changed).
    :raises KeyRequiredError: the source is encrypted and no key/password or no
        ``encryption_key`` was given.
    :raises StorageError: unreadable source, existing destination, or an I/O failure.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "chat.jsonl").write_text('{"role": "user", "content": "hi"}\\n')
    >>> report = migrate(folder / "chat.jsonl")
    >>> report.format.value, report.messages, report.converted, report.backup.name
    ('jsonl', 1, True, 'chat.jsonl.bak')
    >>> ConversationCodec(folder / "chat.jsonl").load()
    [{'role': 'user', 'content': 'hi'}]
    """
    fault = _fault or _no_fault
    for name, value in (("encryption_key", encryption_key), ("legacy_key", legacy_key)):
        _check_key(name, value)
    source = Path(src)
    # In place through a symbolic link: convert its target (a rename would replace the link).
    real = Path(os.path.realpath(source)) if source.is_symlink() else source
    data, before = _read_source(real)
    if sniff_log(data[:64]) in (LogKind.SEALED, LogKind.PLAIN):
        notes = ["already a conversation-codec log; left as it is"]
        if not dry_run:
            with _writer_lock(real):
                if _sweep_leftovers(real, None):
                    notes.append("removed the temp files of an interrupted migration")
        return MigrationReport(
            source, real, LegacyFormat.CODEC_LOG, None, len(data), len(data), None, False, (*notes,)
        )
    target, in_place = _destination(real, dst)
    history = read_legacy(real, legacy_key=legacy_key, password=password)
    plan = _Plan.make(history.format, history.messages, history.timestamps)
    report = _Report(source, target, history.format, len(plan.messages), len(data), plan.notes)
    if not plan.messages:
        return report.done(0, None, False, "holds no messages; left as it is")
    secret = {"password": log_password} if log_password else {"encryption_key": encryption_key}
    if history.format in _ENCRYPTED and encryption_key is None and log_password is None:
        raise KeyRequiredError(
            f"{source} is encrypted; pass encryption_key= for the new log (migrating it "
            "without one would write its messages to disk in plaintext)"
        )
    if dry_run:
        return report.done(0, None, False, "dry run: nothing was written")
    bak = Path(backup_path(target)) if in_place and backup else None
    with _writer_lock(target) as announce:
        _sweep_leftovers(target, bak)
        tmp = migrating_path(target)
        made_backup = False
        try:
            _write_log(tmp, plan, secret, fault)
            _verify(tmp, plan, secret)
            fault("migrate:verified")
            if bak is not None:
                made_backup = _write_backup(bak, data, fault)
                fault("migrate:backup-synced")
            _check_unchanged(real, before)
            announce()
            _publish(tmp, target, in_place)
        except BaseException:
            _remove_temp(tmp)
            if made_backup and bak is not None:
                with contextlib.suppress(OSError):
                    _IO.unlink(bak)
            raise
        fault("migrate:renamed")
        _finish(tmp, target, fault)
    after = _size(target) + _size(index_path(target))
    if bak is not None and None not in secret.values() and history.format not in _ENCRYPTED:
        report.notes.append(f"{bak} holds the plaintext original; delete it once checked")
    return report.done(after, bak, True)


@dataclass(slots=True)
class _Report:
    """The parts of a MigrationReport known before anything is written."""

    source: Path
    destination: Path
    format: LegacyFormat
    messages: int
    bytes_before: int
    notes: list[str]

    def done(
        self, after: int, bak: Path | None, converted: bool, note: str | None = None
    ) -> MigrationReport:
        notes = (*self.notes, note) if note else tuple(self.notes)
        return MigrationReport(
            self.source,
            self.destination,
            self.format,
            self.messages,
            self.bytes_before,
            after,
            bak,
            converted,
            notes,
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """The messages and record timestamps (µs, or None for "now") to write."""

    messages: list[dict[str, Any]]
    times: list[int] | None
    notes: list[str]

    @classmethod
    def make(
        cls, fmt: LegacyFormat, messages: list[dict[str, Any]], stamps: Sequence[int | None]
    ) -> _Plan:
        """Fill missing timestamps and keep every one representable in a log.

        An untimed message takes the time of the message before it (the first known time
        for leading ones): ``legacy`` already sorted them so, and a log's timestamps never
        decrease. With no time at all every record gets the migration time. A time before
        1970 cannot be stored (the format counts from the epoch): it becomes 1970-01-01
        and the original instant is kept in the message's ``"timestamp"`` key, rather
        than failing the whole file or silently dropping it.
        """
        notes: list[str] = []
        first = next((t for t in stamps if t is not None), None)
        if first is None:
            if messages:
                notes.append("no timestamps in the source: records carry the migration time")
            return cls(list(messages), None, notes)
        out, times, last, early = list(messages), [], first, 0
        for i, ts in enumerate(stamps):
            last = last if ts is None else ts
            if ts is not None and ts < 0:
                out[i] = {**out[i], "timestamp": _iso(ts)}
                early += 1
            times.append(max(last, 0))
        if early:
            notes.append(
                f"{early} timestamp(s) before 1970 stored as 1970-01-01T00:00:00Z; "
                'the original kept in the message\'s "timestamp" key'
            )
        missing = sum(ts is None for ts in stamps)
        if missing:
            notes.append(f"{missing} message(s) without a timestamp took the previous one's")
        return cls(out, times, notes)


def _iso(us: int) -> str:
    return iso_z(us)


def _check_key(name: str, key: KeyInput | None) -> None:
    # Fail on a malformed key before touching any file (and before a batch starts).
    if key is not None:
        try:
            Keyring.from_input(key)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None


def _read_source(path: Path) -> tuple[bytes, os.stat_result]:
    """Return the source's bytes and its stat from before the read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            # Too large: read nothing (read_legacy raises the size error); never allocate.
            data = b"" if st.st_size > MAX_LEGACY_BYTES else f.read(MAX_LEGACY_BYTES + 1)
    except IsADirectoryError:
        raise StorageError(errno.EISDIR, f"{path} is a directory; use migrate_many") from None
    except FileNotFoundError:
        raise StorageError(errno.ENOENT, f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise StorageError(exc.errno or 0, f"cannot read {path}: {exc.strerror or exc}") from None
    return data, st


def _destination(real: Path, dst: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """Return the destination path and whether the migration is in place."""
    if dst is None:
        return real, True
    target = Path(dst)
    if os.path.islink(target):
        check_file(target)  # raises: a link is never written through, nor replaced
    if not os.path.lexists(target):
        return target, False
    with contextlib.suppress(OSError):
        if os.path.samefile(target, real):
            return real, True
    what = "a conversation-codec log" if _is_log(target) else "a file"
    raise StorageError(
        errno.EEXIST,
        f"{target} already exists ({what}); choose another destination or remove it first",
    )


def _is_log(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return sniff_log(f.read(64)) in (LogKind.SEALED, LogKind.PLAIN)
    except OSError:
        return False


@contextlib.contextmanager
def _writer_lock(target: Path) -> Iterator[Callable[[], None]]:
    """Hold the writer lock of the log at ``target`` (FORMAT.md §8.1), as every rewrite does.

    Codecs on ``target`` wait meanwhile, and no rewrite or ``clear()`` of that log sweeps
    this migration's temp files as leftovers of a crash. Yields ``announce``, which bumps
    the change counters just before the commit (§8.4): a codec that saw no log at
    ``target`` reloads instead of writing a new one over the migrated history. A lock file
    this call created is removed again (as ``clear()`` does: a waiting process then locks
    the new file, and its new inode makes every codec reload).
    """
    lock = LogLock(str(target), None)

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
        lock.forget_created(keep=False)
        lock.close()


def _sweep_leftovers(target: Path, bak: Path | None) -> int:
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
            removed += unlink_file(target.parent / name)  # refuses a planted link
    return removed


def _write_log(tmp: str, plan: _Plan, secret: dict[str, Any], fault: Fault) -> None:
    # "flush" and one fsync at the end: a temp log needs no per-batch durability.
    codec = ConversationCodec(tmp, **secret, durability="flush")
    try:
        log = codec._log
        if isinstance(log, FileLog):  # always: a temp log is a file
            log.fault = lambda step: fault(f"temp:{step}")
        times = plan.times
        for i in range(0, len(plan.messages), WRITE_BATCH):
            stamps = None if times is None else [_datetime(t) for t in times[i : i + WRITE_BATCH]]
            codec.extend(plan.messages[i : i + WRITE_BATCH], timestamps=stamps)
    finally:
        codec.close()
    fault("migrate:temp-written")
    fd = open_file(tmp, os.O_RDONLY)
    try:
        _IO.sync(fd, data_only=False)
    finally:
        os.close(fd)
    fault("migrate:temp-synced")


def _datetime(us: int) -> datetime:
    return to_datetime(us)  # exact, unlike float epoch seconds


def _verify(tmp: str, plan: _Plan, secret: dict[str, Any]) -> None:
    """Re-open the new log and compare every message (and timestamp) with the source's."""
    with ConversationCodec(tmp, **secret) as codec:
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


def _write_backup(bak: Path, data: bytes, fault: Fault) -> bool:
    """Store the original bytes at ``bak``; return False when an identical one exists.

    Written to a temp file and hard-linked into place, which fails rather than overwrite
    a backup that appeared meanwhile (``os.replace`` would clobber it).
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
            bak, data, exclusive=True, tmp=tmp, fault=lambda _: fault("migrate:backup-written")
        )
    except FileExistsError:
        raise StorageError(errno.EEXIST, f"{bak} appeared meanwhile; nothing was changed") from None
    return True


def _link(tmp: str, path: str | Path) -> None:
    """Give ``tmp`` the name ``path`` without ever replacing an existing ``path``."""
    try:
        _IO.link(tmp, path)
    except FileExistsError:
        raise StorageError(
            errno.EEXIST, f"{path} appeared meanwhile; nothing was changed"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):  # no hard links here: check, then rename (small race)
            raise StorageError(errno.EEXIST, f"{path} appeared meanwhile") from None
        _IO.rename(tmp, path)


def _check_unchanged(path: Path, before: os.stat_result) -> None:
    now = os.stat(path)
    keys = ("st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
    if any(getattr(now, k) != getattr(before, k) for k in keys):
        raise StorageError(
            errno.EAGAIN, f"{path} was modified while migrating; nothing was changed — retry"
        )


def _publish(tmp: str, target: Path, in_place: bool) -> None:
    """Move the new log to ``target``: the commit point."""
    if in_place:
        check_file(target)  # rename would replace a link put there meanwhile
        _IO.rename(tmp, target)
    else:
        _link(tmp, target)  # never replace a destination that appeared meanwhile
        _IO.unlink(tmp)


def _finish(tmp: str, target: Path, fault: Fault) -> None:
    """After the commit: move the index beside the log, drop the temp lock, sync."""
    with contextlib.suppress(OSError):  # a cache: a missing index is rebuilt on open
        check_file(index_path(target))  # a link there is left alone (the log refuses it)
        _IO.rename(index_path(tmp), index_path(target))
    fault("migrate:index-moved")
    for leftover in (lock_path(tmp), index_path(tmp)):  # the index is still here if its move failed
        with contextlib.suppress(FileNotFoundError):
            _IO.unlink(leftover)
    _IO.sync_dir(target)
    fault("migrate:dir-synced")


def _remove_temp(tmp: str) -> None:
    folder, name = os.path.split(tmp)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(folder or "."):
            if entry == name or entry.startswith(f"{name}."):
                with contextlib.suppress(FileNotFoundError):
                    _IO.unlink(os.path.join(folder, entry))


def _size(path: str | Path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


# -- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One file of a batch: what happened to it and why."""

    path: Path
    status: BatchStatus
    reason: str
    report: MigrationReport | None = None


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What :func:`migrate_many` did; with ``dry_run``, "converted" means "would be"."""

    items: tuple[BatchItem, ...]
    dry_run: bool = False

    def _having(self, status: BatchStatus) -> tuple[BatchItem, ...]:
        return tuple(item for item in self.items if item.status == status)

    @property
    def converted(self) -> tuple[BatchItem, ...]:
        return self._having("converted")

    @property
    def skipped(self) -> tuple[BatchItem, ...]:
        return self._having("skipped")

    @property
    def failed(self) -> tuple[BatchItem, ...]:
        return self._having("failed")

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary (for ``--json``)."""
        return {
            "dry_run": self.dry_run,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "files": [_item_dict(item) for item in self.items],
        }


def _item_dict(item: BatchItem) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(item.path), "status": item.status, "reason": item.reason}
    r = item.report
    if r is not None:
        out.update(
            format=r.format.value,
            destination=str(r.destination),
            messages=r.messages,
            bytes_before=r.bytes_before,
            bytes_after=r.bytes_after,
            backup=None if r.backup is None else str(r.backup),
        )
    return out


def migrate_many(
    paths: Iterable[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    encryption_key: KeyInput | None = None,
    legacy_key: KeyInput | None = None,
    password: str | bytes | None = None,
    log_password: str | None = None,
    backup: bool = True,
    dry_run: bool = False,
    progress: Callable[[int, int, BatchItem], None] | None = None,
) -> BatchReport:
    """Migrate files and directories (recursively); one bad file never stops the batch.

    In place by default; with ``out_dir`` each log goes to ``out_dir/<path relative to the
    directory given>`` (``out_dir/<name>`` for a file given) and sources are left alone.
    Directory walks skip symbolic links and our own sidecars (``.idx``, ``.lock``,
    ``.bak``, ``.salt``, temp files). ``progress(done, total, item)`` is called after
    each file. Other arguments are as for :func:`migrate`.

    :raises TypeError, ValueError: a malformed key, before any file is touched.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_text('{"role": "user", "content": "hi"}\\n')
    >>> _ = (folder / "b.json").write_text("not a history")
    >>> batch = migrate_many([folder])
    >>> [(i.path.name, i.status) for i in batch.items]
    [('a.jsonl', 'converted'), ('b.json', 'failed')]
    """
    for name, value in (("encryption_key", encryption_key), ("legacy_key", legacy_key)):
        _check_key(name, value)
    out = None if out_dir is None else Path(out_dir)
    options: dict[str, Any] = {
        "encryption_key": encryption_key,
        "legacy_key": legacy_key,
        "password": password,
    }
    options.update(log_password=log_password, backup=backup, dry_run=dry_run)
    jobs = list(_jobs(paths, out))
    items: list[BatchItem] = []
    for path, dst, decided in jobs:
        item = decided or _one(path, dst, options)
        items.append(item)
        if progress is not None:
            progress(len(items), len(jobs), item)
    return BatchReport(tuple(items), dry_run)


def _one(path: Path, dst: Path | None, options: dict[str, Any]) -> BatchItem:
    try:
        report = migrate(path, dst, **options)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ConversationCodecError) else repr(exc)
        return BatchItem(path, "failed", reason)
    if report.format is LegacyFormat.CODEC_LOG or not report.messages:
        return BatchItem(path, "skipped", "; ".join(report.notes), report)
    what = "would convert" if options["dry_run"] else "converted"
    reason = f"{what} {report.messages} messages ({report.format.value})"
    if not options["dry_run"]:
        reason += f", {report.bytes_before} -> {report.bytes_after} bytes"
    return BatchItem(path, "converted", reason, report)


_Job = tuple[Path, Path | None, BatchItem | None]  # path, destination, or a decided outcome


def _jobs(paths: Iterable[str | os.PathLike[str]], out: Path | None) -> Iterator[_Job]:
    """Yield each file to migrate once, with its destination (or why it is left out)."""
    seen: set[str] = set()
    out_real = None if out is None else os.path.realpath(out)
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            files = _walk(root, out_real)
        elif os.path.lexists(root):
            files = iter([(root, Path(root.name))])
        else:
            yield root, None, BatchItem(root, "failed", f"{root} does not exist")
            continue
        for path, rel in files:
            if path != root and path.is_symlink():
                reason = "a symbolic link; name it on its own to migrate its target"
                yield path, None, BatchItem(path, "skipped", reason)
                continue
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                yield path, None if out is None else out / rel, None


def _walk(root: Path, out_real: str | None) -> Iterator[tuple[Path, Path]]:
    for folder, dirs, files in os.walk(root):  # followlinks=False: no loops, no escapes
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) != out_real)
        for name in sorted(files):
            if not is_sidecar(name):
                path = Path(folder, name)
                yield path, path.relative_to(root)

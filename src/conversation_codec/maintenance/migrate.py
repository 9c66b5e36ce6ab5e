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
``<dst>.migrating-*`` are removed by the next migration of the same destination (also
when that one refuses it), or by the next rewrite or ``clear()`` of the log there. An
existing destination that holds the source's messages already (it opens with the new
log's key and reads back as the plan) is "already migrated": left as it is, reported
not converted (``migrate_many``: skipped), so an interrupted batch reruns to completion;
any other existing destination is refused. A dry run does not open it (that would write
its lock file): it refuses it. Steps 2-4 hold the writer lock of
``<dst>``, as a rewrite does: no codec writes there, or sweeps the temp files, meanwhile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._fsio import DEFAULT_IO, FileIO
from ..crypto import KeyInput
from ..errors import ConversationCodecError, FormatError, KeyRequiredError, NotAHistoryError
from ..format.header import LogKind, sniff_log
from ..paths import backup_path, blobs_path, index_path, migrating_path
from ..storage.file.store import FileStore
from ..storage.file.writer import remove_leftovers
from .legacy import LegacyFormat, read_legacy
from .migrate_commit import (
    as_storage_errors,
    check_unchanged,
    finish,
    holds_plan,
    publish,
    refuse_packed,
    remove_temp,
    sweep_existing,
    sweep_leftovers,
    verify_copy,
    write_backup,
    write_log,
    writer_lock,
)
from .migrate_packed import PACKED_NOTE, find_packed, migrate_packed
from .migrate_report import BatchItem, BatchReport, BatchStatus, MigrationReport
from .migrate_seal import read_plain_log, seal_plain_log
from .migrate_source import (
    Plan,
    check_log_header,
    check_secrets,
    destination,
    header_opens,
    plain_log_context,
    read_source,
)
from .migrate_walk import jobs, store_id
from .plain_blobs import plain_blobs, plain_blobs_note, remove_plain_blobs

__all__ = [
    "BatchItem",
    "BatchReport",
    "BatchStatus",
    "MigrationReport",
    "migrate",
    "migrate_many",
    "store_id",
]

_ENCRYPTED = (LegacyFormat.FERNET_JSONL, LegacyFormat.FERNET_JSON_ARRAY)


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
    io: FileIO = DEFAULT_IO,
    context: str | None = None,
) -> MigrationReport:
    """Convert the legacy history at ``src`` into a conversation-codec log.

    :param dst: where the log goes; default ``src`` itself (in place), the original kept
        as ``<name>.bak`` unless ``backup=False``. An existing ``dst`` is never replaced,
        nor (``dst`` a store's log path) a conversation that store holds in a pack.
    :param encryption_key: key(s) of the new log; None (and no ``log_password``) writes a
        plaintext log, which is refused for an encrypted source. A plaintext
        conversation-codec log at ``src`` (``dst`` None or ``src``) is encrypted in place
        with it: a compaction, atomic, which seals its index and attachments too and keeps
        no ``.bak``; with ``log_password`` its messages go through the steps below (a
        ``.bak`` unless ``backup=False``). Other logs are left as they are. A store's
        conversation that a pack holds (``src`` its log path, no file there; FORMAT.md
        §18) is sealed in place too: unpacked, then sealed (``migrate_packed``).
    :param log_password: seal the new log with this password instead of a key.
    :param context: bind the new log to this identity (a store's conversation id; FORMAT.md
        §4.2), as ``ConversationStore`` opens it. A store's plaintext log sealed in place
        keeps the id it is bound to, read from its name (a hashed name: ``BindingError``).
    :param legacy_key: Fernet key(s) of an encrypted source; or give ``password``, with
        its 16-byte salt in the ``.salt`` file beside the source.
    :param dry_run: read, decrypt and check everything, but write nothing.
    :param io: the filesystem seam (as ``ConversationCodec(io=...)``): every write, sync,
        rename, link and unlink goes through it, and ``io.step`` is called between the
        steps that write (``"migrate:verified"``, ``"migrate:renamed"``, …).
    :raises FormatError: unknown layout or malformed source (nothing was changed).
    :raises NotAHistoryError: no object of the source looks like a chat message (a
        ``FormatError``; nothing was changed).
    :raises DecryptionError: wrong legacy key or password (nothing was changed).
    :raises KeyRequiredError: the source is encrypted and no key/password or no
        ``encryption_key`` was given.
    :raises StorageError: unreadable source, existing destination, or an I/O failure.
    :raises InvalidKeyError: a malformed key, an empty password (``""`` is no "no
        password"), or ``KeyTypeError`` for a wrong type: before any file is touched.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "chat.jsonl").write_text('{"role": "user", "content": "hi"}\\n')
    >>> report = migrate(folder / "chat.jsonl")
    >>> report.format.value, report.messages, report.converted, report.backup.name
    ('jsonl', 1, True, 'chat.jsonl.bak')
    >>> from conversation_codec import ConversationCodec
    >>> ConversationCodec(folder / "chat.jsonl").load()
    [{'role': 'user', 'content': 'hi'}]
    """
    check_secrets(encryption_key, legacy_key, password, log_password)
    source = Path(src)
    # In place through a symbolic link: convert its target (a rename would replace the link).
    real = Path(os.path.realpath(source)) if source.is_symlink() else source
    packed = None if os.path.lexists(real) else find_packed(real, context, io)
    if packed is not None:  # a store's conversation that a pack holds: no file of its own
        elsewhere = None if dst is None or not _elsewhere(Path(dst), real) else str(dst)
        done = migrate_packed(
            source,
            packed,
            elsewhere=elsewhere,
            encryption_key=encryption_key,
            log_password=log_password,
            context=context,
            dry_run=dry_run,
            io=io,
        )
        if done is not None:
            return done  # else unpacked, for log_password: sealed below as a log file
    data, before = read_source(real)
    kind = sniff_log(data[:64])
    plain_log = None  # a plaintext log to seal with log_password, read as a history
    if kind in (LogKind.SEALED, LogKind.PLAIN):
        check_log_header(real, data)  # a log no codec can open is no "log, left as it is"
        sealing = encryption_key is not None or log_password is not None
        sealing = (
            sealing
            and kind is LogKind.PLAIN
            and not (dst is not None and _elsewhere(Path(dst), real))
        )
        if sealing:  # a store's conversation: under the id it is bound to
            context = plain_log_context(real, data, context)
        if sealing and encryption_key is not None:  # a compaction seals it (migrate_seal)
            messages, before_, after, note = seal_plain_log(
                real, encryption_key, context=context, dry_run=dry_run, io=io
            )
            fmt = LegacyFormat.CODEC_LOG
            return MigrationReport(
                source, real, fmt, messages, before_, after, None, not dry_run, (note,)
            )
        if sealing:  # a password: the steps below, with the log's messages and times
            plain_log = read_plain_log(real, context=context, io=io)
    if kind in (LogKind.SEALED, LogKind.PLAIN) and plain_log is None:
        notes = ["already a conversation-codec log; left as it is"]
        if not header_opens(real, data, encryption_key, log_password, context):
            notes[0] += " (the key given does not open it: another key's log, or damaged)"
        if dst is not None and _elsewhere(Path(dst), real):
            notes[0] += f"; not copied to {dst} (to copy a log, import it there)"
        if not dry_run:
            with as_storage_errors(real), writer_lock(real, io):
                if sweep_leftovers(real, None, io):
                    notes.append("removed the temp files of an interrupted migration")
                if kind is LogKind.SEALED:  # a sealing killed before its blob sweep
                    notes += plain_blobs_note(real, remove_plain_blobs(real, io), "removed")
        elif kind is LogKind.SEALED:
            notes += plain_blobs_note(real, len(plain_blobs(blobs_path(real))), "would remove")
        return MigrationReport(
            source, real, LegacyFormat.CODEC_LOG, None, len(data), len(data), None, False, (*notes,)
        )
    target, in_place, existing = destination(real, dst)
    swept = 0 if existing is None or dry_run else sweep_existing(target, io)
    if not in_place:
        refuse_packed(target, io, settled=False)  # again under the writer lock, below
    history = (
        read_legacy(real, legacy_key=legacy_key, password=password)
        if plain_log is None
        else plain_log
    )
    if plain_log is None and history.format is LegacyFormat.CODEC_LOG:  # not as logs begin
        raise FormatError(
            f"{source} starts with a conversation-codec header line, but not as a log writes "
            "it: no codec opens it; check where the file comes from"
        )
    plan = Plan.make(history, source)
    report = _Report(source, target, history.format, len(plan.messages), len(data), plan.notes)
    if not plan.messages:
        return report.done(0, None, False, "holds no messages; left as it is")
    secret: dict[str, Any] = (
        {"encryption_key": encryption_key} if log_password is None else {"password": log_password}
    )
    if context is not None:
        secret["context"] = context
    if history.format in _ENCRYPTED and encryption_key is None and log_password is None:
        raise KeyRequiredError(
            f"{source} is encrypted; pass encryption_key= for the new log (migrating it "
            "without one would write its messages to disk in plaintext)"
        )
    if existing is not None:  # a dry run does not open it: opening writes a lock file
        if dry_run or not holds_plan(target, plan, secret, io):
            raise existing
        note = f"already migrated: {target} holds these messages; left as it is"
        report.notes[:] = [note + ("; swept temp files" if swept else "")]  # nothing written
        return report.done(0, None, False)
    if dry_run:
        return report.done(0, None, False, "dry run: nothing was written")
    bak = Path(backup_path(target)) if in_place and backup else None
    with as_storage_errors(target), writer_lock(target, io) as announce:
        if not in_place:
            refuse_packed(target, io)
        sweep_leftovers(target, bak, io)
        if plain_log is not None:  # a sealing: no crashed rewrite's plaintext copy stays
            remove_leftovers(str(target), io)
        tmp = migrating_path(target)
        made_backup = False
        try:
            write_log(tmp, plan, secret, io)
            verify_copy(tmp, plan, secret, io)
            io.step("migrate:verified")
            if bak is not None:
                made_backup = write_backup(bak, data, io)
                io.step("migrate:backup-synced")
            check_unchanged(real, before)
            announce()
            publish(tmp, target, in_place, io)
        except BaseException:
            with contextlib.suppress(OSError):  # the first error is the one to report
                remove_temp(tmp, io)
            if made_backup and bak is not None:
                with contextlib.suppress(OSError):
                    io.unlink(bak)
            raise
        io.step("migrate:renamed")
        finish(tmp, target, io)
    after = _size(target) + _size(index_path(target))
    sealed = log_password is not None or encryption_key is not None
    if bak is not None and sealed and history.format not in _ENCRYPTED:
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


def _elsewhere(dst: Path, real: Path) -> bool:
    """Whether ``dst`` is another file than ``real`` (a destination really asked for)."""
    with contextlib.suppress(OSError):
        return not os.path.samefile(dst, real)
    return os.path.abspath(dst) != os.path.abspath(real)


def _size(path: str | Path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def migrate_many(
    paths: Iterable[str | os.PathLike[str]] | str | bytes | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    encryption_key: KeyInput | None = None,
    legacy_key: KeyInput | None = None,
    password: str | bytes | None = None,
    log_password: str | None = None,
    backup: bool = True,
    dry_run: bool = False,
    progress: Callable[[int, int, BatchItem], None] | None = None,
    io: FileIO = DEFAULT_IO,
) -> BatchReport:
    """Migrate files and directories (recursively); one bad file never stops the batch.

    ``paths`` may also be one path (a ``str``, ``bytes`` or ``os.PathLike``), taken whole.
    In place by default; with ``out_dir`` each log goes to ``out_dir/<path relative to the
    directory given>`` (``out_dir/<name>`` for a file given) and sources are left alone.
    With ``store`` (a ``ConversationStore`` root directory) each becomes a conversation of
    that store, sources left alone: its id is the file's path relative to the directory
    given, with ``/`` between folders and without a final ``.jsonl``, ``.json`` or
    ``.enc`` (``users/ana/chat.jsonl`` under ``users`` is ``ana/chat``; a file given alone:
    its name without that suffix), stored as the store names ids and bound to the id, so
    ``ConversationStore(store).open(id)`` reads it. Two sources with one id: the second
    fails (an existing log is never replaced, nor a conversation the store holds in a pack).
    Directory walks skip symbolic links, our own sidecars (``.idx``, ``.lock``, ``.bak``,
    ``.salt``, temp files), hidden folders (``.git``, a store's ``.packs``) and attachment
    folders (``P.blobs``). In place, a walk names each conversation a store's packs hold
    (and no log file does) by its log path ``<root>/<encoded id>.log``: sealed with a key
    or ``log_password`` as a log file is (unpacked first), else skipped; an unreadable
    pack fails. A file whose objects look like no message (``NotAHistoryError``)
    is skipped, "not a history". ``progress(done, total, item)`` is called after each
    file. Other arguments are as for :func:`migrate`.

    :raises TypeError, ValueError: a malformed key or password (``InvalidKeyError``,
        ``KeyTypeError``), before any file is touched.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_text('{"role": "user", "content": "hi"}\\n')
    >>> _ = (folder / "b.json").write_text("not a history")
    >>> batch = migrate_many([folder])
    >>> [(i.path.name, i.status) for i in batch.items]
    [('a.jsonl', 'converted'), ('b.json', 'failed')]
    """
    check_secrets(encryption_key, legacy_key, password, log_password)
    if isinstance(paths, (str, bytes, os.PathLike)):  # one path, not its characters
        paths = [os.fsdecode(paths)]
    if out_dir is not None and store is not None:
        raise ValueError("pass out_dir= or store=, not both")
    out = None if out_dir is None else Path(out_dir)
    into = None if store is None else FileStore(Path(store))
    options: dict[str, Any] = {
        "encryption_key": encryption_key,
        "legacy_key": legacy_key,
        "password": password,
        "log_password": log_password,
        "backup": backup,
        "dry_run": dry_run,
        "io": io,
    }
    found = list(jobs(paths, out if into is None else into.root))
    items: list[BatchItem] = []
    for path, dst, decided, context in found:
        if into is not None and dst is not None and decided is None:
            context = store_id(dst.relative_to(into.root))
            try:
                dst = into.path(context)
            except ValueError as exc:  # e.g. a name not UTF-8: no id; this file fails alone
                reason = _NO_ID if not context.isascii() else f"no conversation id: {exc}"
                decided = BatchItem(path, "failed", reason)
        item = decided or _one(path, dst, {**options, "context": context})
        items.append(item)
        if progress is not None:
            progress(len(items), len(found), item)
    return BatchReport(tuple(items), dry_run)


_NO_ID = "its name is not UTF-8, so it names no conversation id; rename it (or use out_dir=)"


def _one(path: Path, dst: Path | None, options: dict[str, Any]) -> BatchItem:
    try:
        report = migrate(path, dst, **options)
    except NotAHistoryError as exc:  # an app's settings beside its histories: not a failure
        return BatchItem(path, "skipped", str(exc))
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ConversationCodecError) else repr(exc)
        return BatchItem(path, "failed", reason)
    if report.format is LegacyFormat.CODEC_LOG and (
        report.converted or (options["dry_run"] and report.messages is not None)
    ):
        what = "would encrypt" if options["dry_run"] else "encrypted"  # a plaintext log, sealed
        packed = report.notes and report.notes[0].startswith(PACKED_NOTE)
        what += " the packed" if packed else " the"  # a store's conversation, unpacked
        reason = f"{what} plaintext log in place ({report.messages} messages)"
        return BatchItem(path, "converted", reason, report)
    if (
        report.format is LegacyFormat.CODEC_LOG
        or not (report.converted or options["dry_run"])  # e.g. already migrated
        or not report.messages
    ):
        return BatchItem(path, "skipped", "; ".join(report.notes), report)
    what = "would convert" if options["dry_run"] else "converted"
    reason = f"{what} {report.messages} messages ({report.format.value})"
    if not options["dry_run"]:
        reason += f", {report.bytes_before} -> {report.bytes_after} bytes"
    return BatchItem(path, "converted", reason, report)

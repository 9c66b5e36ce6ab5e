"""Maintenance: the methods of ``ConversationCodec`` that rewrite, check or copy a whole log.

``compact``, ``rotate_key``, ``change_password`` and ``prune`` rewrite the log atomically
through ``compact.Compactor``; ``verify`` checks a log file's bytes; ``export`` and
``import_`` go through ``transfer``. A mixin on ``CodecCore``: the codec inherits it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable
from typing import BinaryIO, cast

from .._time import to_us
from ..attachments import BlobStore, references
from ..core import CodecCore, TimeInput
from ..crypto import KeyInput
from ..errors import (
    ConversationCodecError,
    DecryptionError,
    KeyRequiredError,
    KeyTypeError,
    MissingBlobError,
    StorageError,
)
from ..sealing import check_password
from ..storage.file.check import Problem, VerifyReport, check_file_log
from ..storage.file.log import FileLog
from ..storage.file.packed import StoreLog, check_store_log
from ..storage.memory import MemoryLog
from .compact import CompactionReport
from .plain_blobs import plain_blobs
from .transfer import History, ImportReport, export_history, import_history

__all__ = ["Maintenance"]


class Maintenance(CodecCore):
    """Rewrites (compaction, key rotation, password change, pruning), checks, export/import."""

    def compact(
        self,
        *,
        encryption_key: KeyInput | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> CompactionReport:
        """Rewrite the log: re-seal every record under the first key (or ``encryption_key``,
        which rotates the key), re-compress, and rebuild the index. ``progress(done, total)``
        is called after each record.

        Every message keeps its timestamp and its position in the visible history; records
        hidden by ``max_messages`` are dropped (only here: ``rotate_key``, ``change_password``
        and a rewriting ``save`` keep them). The rewrite holds the writer lock and is
        atomic (temp file, fsync, rename, directory fsync): a crash leaves the old log or the
        new one. Giving a key to a plaintext or password log switches it to that key. After
        a rotation only the new key opens the log.
        """
        return self._reseal(
            lambda start: self._compactor.compact(start, encryption_key, progress), retention=True
        )

    def _reseal(
        self, rewrite: Callable[[int], CompactionReport], *, retention: bool = False
    ) -> CompactionReport:
        """Run ``rewrite(start)``, which rewrites the records from ``start`` on: from the
        first visible one for a compaction (``retention``: what ``max_messages`` hides
        goes), else from the first (a key or password change is not retention)."""
        # A storage may commit when the outermost transaction ends, after the rewrite
        # returned (a database), even in a caller's own transaction(): if that commit
        # fails, the log keeps its old secrets, and so must this codec.
        secrets = self._secrets

        def undo() -> None:
            secrets.keyring, secrets.password, secrets.kdf, self._encoder.blobs = saved
            self._history.forget()

        with self._holding(write=True):
            self._adopt_blobs()
            saved = (secrets.keyring, secrets.password, secrets.kdf, self._encoder.blobs)
            before = self._history.state()
            self._history.forget()
            self._log.on_rollback(undo)
            start = self._base() if retention else 0
            report = rewrite(start)
            # The same messages (but the first ``start``): seen stays seen.
            self._history.moved(before, keeps_view=True, dropped=start)
            return report

    def rotate_key(self, new_key: KeyInput) -> CompactionReport:
        """Re-encrypt the whole log under ``new_key``; afterwards the old key fails.

        Unlike ``compact()``, every record is kept, those ``max_messages`` hides included
        (the report counts them all).

        :raises KeyRequiredError: ``new_key`` is None. Rotation needs the new key; a log is
            never decrypted in place (``export()`` writes a plaintext copy).
        """
        if new_key is None:  # compact(encryption_key=None) would keep the old key working
            raise KeyRequiredError(
                "rotate_key() needs the new key: pass it (generate one with "
                "conversation_codec.generate_key()); to keep a decrypted copy of the history, "
                "use export(), which writes plaintext JSONL"
            )
        return self._reseal(lambda start: self._compactor.compact(start, new_key))

    def change_password(self, old: str, new: str) -> CompactionReport:
        """Re-encrypt a password-protected log under a new password (and a new salt).

        The rewrite is atomic: a crash leaves a log that opens with one of the two. Every
        record is kept, those ``max_messages`` hides included (the report counts them all).

        :raises DecryptionError: ``old`` is not the password this codec opened the log with.
        :raises InvalidKeyError: ``new`` is empty (``KeyTypeError``: not a str).
        """
        if not isinstance(old, str):
            raise KeyTypeError(f"old password must be a str, not {type(old).__name__}")
        check_password(new, "new password")  # what the constructor refuses, as it does
        return self._reseal(lambda start: self._compactor.change_password(start, old, new))

    def prune(self, before: TimeInput) -> int:
        """Permanently remove the messages older than ``before``; return how many went.

        With ``max_messages``, the hidden records older than ``before`` go too, and are
        counted; the hidden ones not older stay (still hidden until the window reaches
        them). The log is rewritten without them (atomically), so their ciphertext is gone
        from every file; the remaining messages keep their timestamps. The cut is found in the
        index and confirmed by authenticating the records on both sides of it: a deletion
        never rests on the index alone (``LogReader.first_at_or_after``).
        """
        cutoff = to_us(before, "before")
        with self._holding(write=True):
            start = self._reader.first_at_or_after(cutoff, (-1, 0))
            if start == 0:
                return 0
            self._history.forget()
            self._adopt_blobs()
            self._compactor.rewrite_from(start)
            self._history.partial()  # a list loaded before still holds them
            return start

    def verify(self) -> VerifyReport:
        """Check every record's authentication, seq continuity, log binding and time order,
        the header, and the index's agreement; report each problem with its byte offset,
        and how many records a keyword index covers (``keyword_index``; searches scan the
        rest until one indexes them).

        Reads only: nothing is modified, a damaged log included (see ``salvage``). A keyword
        index (``search_index``) that does not match the log is reported as a
        ``"keyword-index"`` problem, which is not damage: searches then scan, and
        ``reindex()`` rebuilds it.

        In a database, every record is read, authenticated and checked at its seq, in one
        snapshot, and the keyword index against them; a problem's offset is the seq.

        :raises StorageError: the log is in memory (nothing there to check).
        """
        if isinstance(self._log, MemoryLog):
            raise StorageError(errno.EOPNOTSUPP, f"{self._name}: verify() checks stored logs")
        if isinstance(self._log, StoreLog):  # a store's conversation, maybe packed
            report = check_store_log(self._log)
        elif isinstance(self._log, FileLog):
            report = check_file_log(self._log)
        else:
            report = self._verify_records()
        found = None
        if report.ok:  # (a damaged log is left at that: its reads raise)
            with self._holding(write=False):
                found = self._kwi.check() if self._kwi.present() else None
        if found is not None and found.present:
            report = dataclasses.replace(report, keyword_index=found.covered)
        if found is not None and found.problem:  # reported, not damage: reindex() rebuilds it
            extra = Problem("keyword-index", 0, found.problem)
            report = dataclasses.replace(report, problems=(*report.problems, extra))
        if report.ok and self._encoder.blobs is not None:
            report = dataclasses.replace(
                report, problems=(*report.problems, *self._check_blobs(self._encoder.blobs))
            )
        return report

    def _check_blobs(self, blobs: BlobStore) -> list[Problem]:
        """Open every blob the records refer to, once each (FORMAT.md §15): a missing or
        damaged one is damage, reported at the first record that refers to it."""
        problems: list[Problem] = []
        seen: set[str] = set()
        with self._holding(write=False):
            for seq, message, _ in self._reader.decoded(0, len(self._log.index)):
                for name in sorted(references(message) - seen):
                    seen.add(name)
                    try:
                        blobs.get(name)
                    except MissingBlobError:
                        kind, why = "blob-missing", "is missing"
                    except DecryptionError:
                        kind, why = "blob-damaged", "does not open with this key, or was altered"
                    else:
                        continue
                    detail = f"blob {name} {why} (record {seq} refers to it)"
                    problems.append(Problem(kind, self._log.index.span(seq)[0], detail))
            problems += self._stray_blobs(blobs, seen)
        return problems

    def _stray_blobs(self, blobs: BlobStore, referenced: set[str]) -> list[Problem]:
        """The blobs no record refers to (not damage): ``blob-plaintext`` for one stored
        unsealed beside a sealed log (a sealing killed before its sweep: ``migrate()`` of
        the log removes it), ``blob-unreferenced`` for any other (the next rewrite deletes
        it). Lock held."""
        fmt = self._log.fmt
        stray = blobs.names() - referenced
        sealed = fmt is not None and fmt.sealed
        plain = set(plain_blobs(blobs.directory, among=stray)) if sealed and stray else set()
        problems = []
        for name in sorted(stray):
            if name in plain:
                why = "is stored unsealed (plaintext) beside this sealed log; migrate() removes it"
                problems.append(Problem("blob-plaintext", 0, f"blob {name} {why}"))
            else:
                why = "no record refers to it; the next rewrite (compact()) deletes it"
                problems.append(Problem("blob-unreferenced", 0, f"blob {name}: {why}"))
        return problems

    def _verify_records(self) -> VerifyReport:
        """Read every record of a log that is not a file (no bytes to scan), in one read
        transaction; report the first that fails as damage at its seq."""
        count, problems = 0, []
        with self._holding(write=False):
            try:
                for count, _, _ in self._reader.decoded(0, len(self._log.index)):
                    count += 1
            except ConversationCodecError as exc:
                problems.append(Problem("damaged", count, f"record {count}: {exc}"))
        return VerifyReport(self._path, count, tuple(problems))

    def reindex(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Build the keyword index (FORMAT.md §17) again from the log; return the messages
        indexed. Turns the index on for this log (``search_index=True``): from now on every
        writer keeps it. ``progress(done, total)`` is called after each record.

        :raises ValueError: the log is not an encrypted log file (nothing to index privately).
        """
        with self._holding(write=True):
            if self._kwi.keys() is None:
                raise ValueError(
                    "only an existing encrypted log (a file or a database) can have a keyword index"
                )
            self._kwi.wanted = True
            return self._kwi.rebuild(progress)

    def copy_records_to(self, other: CodecCore) -> bool:
        """Replace ``other``'s log with this log's records, their bytes unchanged, when
        ``other``'s secrets open this log (same key or password, same context); return
        False, changing nothing, when they must be re-sealed instead (or external
        attachments, kept beside a log file, would be left behind, or the destination keeps
        a keyword index, which a re-sealing rewrite builds). A log with a keyword index
        makes ``other`` keep one too (file or database), whichever way it is then written.

        Atomic as every rewrite; the caller verifies the copy (``maintenance.copy``).
        """
        with self._holding(write=False):
            if self._kwi.active():
                other._kwi.wanted = True
        if self._encoder.blobs is not None or other._encoder.blobs is not None:
            return False
        with self._holding(write=False):
            stored = self._log.stored()
            count = len(self._log.index)
            tss = list(self._log.index.tss)
            bodies = [body for _, body in self._log.read_bodies(0, count)] if stored else []
        if stored is None:
            return False
        header, dictionary = stored
        with other._holding(write=True):
            if other._kwi.wanted or other._kwi.present():  # a rewrite through the Compactor
                return False  # keeps the destination's keyword index exact
            try:
                fmt = other._secrets.attach(header)
            except ConversationCodecError:  # another key, password or context: re-seal
                return False
            other._log.rewrite(header, fmt, zip(bodies, tss, strict=True), dictionary)
            other._history.forget()
            other._history.partial()
        return True

    # -- export and import -------------------------------------------------------------------

    def export(
        self,
        dst: str | os.PathLike[str] | BinaryIO,
        format: str = "jsonl",
        with_timestamps: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Write the history as **unencrypted** JSONL or JSON to ``dst`` (0600, atomic), or
        to a binary stream as it goes; ``progress(done, total)`` after each message.

        Warning: the file holds every message in plaintext. Returns the message count.
        """
        return export_history(
            cast(History, self), dst, format, with_timestamps=with_timestamps, progress=progress
        )

    def import_(
        self,
        src: str | os.PathLike[str] | BinaryIO,
        merge: bool = False,
        *,
        replace: bool = False,
        legacy_key: KeyInput | None = None,
        password: str | None = None,
    ) -> ImportReport:
        """Read any history ``migrate`` understands into this log, keeping what is there:
        add every message (in time order), or with ``merge`` only those not already present
        (same time, role and content). Only ``replace=True`` discards the stored history,
        and never for a file with messages it cannot store. ``src`` may be a binary stream
        (read to its end). See ``transfer.import_history``."""
        with self._holding(write=True):
            report = import_history(
                cast(History, self),
                src,
                merge=merge,
                legacy_key=legacy_key,
                password=password,
                replace=replace,
            )
            if replace or report.added:  # the caller was handed no list of the new history
                self._history.partial()
            return report

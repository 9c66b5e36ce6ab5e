"""Compaction: rewrite a log under its current (or new) secrets, atomically.

``compact``, ``rotate_key``, ``change_password``, ``prune``, ``save`` and ``replace`` of
``ConversationCodec`` are thin wrappers over a ``Compactor``, which works on the codec's
parts (its storage, reader, secrets and encoder) and knows nothing of the codec itself: the
codec imports this module, and this module imports no codec (issue 13: no cycles). The
codec keeps what is its own: the lock (every method here runs with the writer lock held)
and the ``save()`` view of the history.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .._fsio import remove_flat_dir
from ..attachments import BlobStore, apply_mode, references, restore
from ..compression import REWRITE_DICTIONARY_BYTES, REWRITE_SAMPLES, TRAIN_AFTER, train_dictionary
from ..crypto import KeyInput, Keyring
from ..encoding import MessageEncoder, encode_json
from ..errors import DecryptionError
from ..indexing import KeywordIndexer
from ..paths import blobs_path
from ..reading import LogReader
from ..records import SealedRecords
from ..sealing import LogSecrets
from ..storage.base import LogStorage
from ..storage.file.kwi import TAG_BYTES

__all__ = ["CompactionReport", "Compactor", "fresh_dictionary"]


@dataclass(frozen=True, slots=True)
class CompactionReport:
    """What ``compact()`` did: messages kept and bytes (log + index) before and after."""

    messages: int
    bytes_before: int
    bytes_after: int


def fresh_dictionary(
    records: object, count: int, sample: Callable[[int], list[bytes]], ts: int
) -> bytes | None:
    """For a rewrite of ``count`` messages: train a dictionary on every k-th message
    (``sample(k)``), start sealing with it, and return its record body, which goes right
    after the header (FORMAT.md §5.3); None for a plain log or too few messages."""
    if not isinstance(records, SealedRecords) or count < TRAIN_AFTER:
        return None
    # A better dictionary than the first messages gave, and records before
    # TRAIN_AFTER get one too.
    trained = train_dictionary(sample(max(1, count // REWRITE_SAMPLES)), REWRITE_DICTIONARY_BYTES)
    if trained is None:
        return None
    records.use_dictionary(1, trained)
    return records.encode_dictionary(1, ts, trained)


class Compactor:
    """Rewrite the log in ``log`` (read through ``reader``) under ``secrets``; attachments
    go through ``encoder.blobs``. Every method expects the writer lock held."""

    def __init__(
        self,
        log: LogStorage,
        reader: LogReader,
        secrets: LogSecrets,
        encoder: MessageEncoder,
        index: KeywordIndexer | None = None,
    ) -> None:
        self._log = log
        self._reader = reader
        self._secrets = secrets
        self._encoder = encoder
        self._index = index  # the keyword index, rewritten with the log (FORMAT.md §17.5)

    def rewrite(self, datas: list[bytes], tss: list[int]) -> None:
        """Atomically replace the log with these messages (stored JSON) and timestamps."""
        header, fmt = self._secrets.new_log()
        dictionary = fresh_dictionary(
            fmt.records, len(datas), lambda k: datas[::k], tss[0] if tss else 0
        )
        builder = None if self._index is None else self._index.builder_for(fmt)
        last = [b""]

        def records() -> Iterator[tuple[bytes, int]]:
            for seq, (data, ts) in enumerate(zip(datas, tss, strict=True)):
                if builder is not None:
                    builder.add(seq, fmt.records.parse(data))
                last[0] = fmt.records.encode(seq, ts, data)
                yield last[0], ts

        self._log.rewrite(header, fmt, records(), dictionary)
        if self._index is not None:
            self._index.rewritten(builder, len(datas), last[0][-TAG_BYTES:])

    def compact(self, start: int, encryption_key: KeyInput | None) -> CompactionReport:
        """Rewrite the records from ``start`` on, under ``encryption_key`` when given (a
        rotation: the blob store moves to the new key too). On failure before the commit
        the old secrets stay; past it the new ones are the log's."""
        secrets = self._secrets
        saved = (secrets.keyring, secrets.password, secrets.kdf)
        if encryption_key is not None:
            secrets.keyring, secrets.password, secrets.kdf = (
                Keyring.from_input(encryption_key),
                None,
                None,
            )
        new_blobs = None
        if encryption_key is not None and self._encoder.blobs is not None:
            new_blobs = BlobStore.for_key(blobs_path(secrets.path), encryption_key)
        committed = self._rewrites_committed()
        try:
            return self.rewrite_from(start, new_blobs)
        except BaseException:
            if not committed():  # past the rename the new secrets are the log's
                secrets.keyring, secrets.password, secrets.kdf = saved
            elif new_blobs is not None:
                self._encoder.blobs = new_blobs
            raise

    def change_password(self, start: int, old: str, new: str) -> CompactionReport:
        """Rewrite the log under password ``new`` (and a new salt), given the current one."""
        secrets = self._secrets
        current = secrets.password or ""
        if not hmac.compare_digest(old.encode(), current.encode()) or secrets.keyring:
            raise DecryptionError("wrong password: the log was not opened with it")
        secrets.password, secrets.kdf = new, None
        committed = self._rewrites_committed()
        try:
            return self.rewrite_from(start)
        except BaseException:
            if not committed():
                secrets.password = old
            raise

    def _rewrites_committed(self) -> Callable[[], bool]:
        """Return a check of whether a rewrite started now has replaced the log."""
        before = self._log.fmt.log_id if self._log.fmt else None
        return lambda: (self._log.fmt.log_id if self._log.fmt else None) != before

    def rewrite_from(self, start: int, new_blobs: BlobStore | None = None) -> CompactionReport:
        """Rewrite the records from ``start`` on under the current secrets.

        ``new_blobs``: a blob store under a new key; every attachment is moved into it (a key
        rotation must re-seal attachments too, or only the old key would open them).
        """
        log, reader = self._log, self._reader
        before = log.size() + reader.index_size()
        count = len(log.index)
        if log.fmt is None:
            return CompactionReport(0, 0, 0)
        header, new = self._secrets.new_log()

        def sample(step: int) -> list[bytes]:
            return [
                text
                for seq in range(start, count, step)
                for _, text, _ in reader.payloads(seq, seq + 1)
            ]

        first_ts = log.index.tss[start] if count > start else 0
        dictionary = fresh_dictionary(new.records, count - start, sample, first_ts)
        referenced: set[str] = set()
        old_blobs = self._encoder.blobs
        if old_blobs is not None:  # the sweep after the commit must not be refused
            remove_flat_dir(old_blobs.directory, check_only=True)

        builder = None if self._index is None else self._index.builder_for(new)
        last = [b""]

        def reseal() -> Iterator[tuple[bytes, int]]:
            for seq, message, ts in reader.decoded(start, count):
                if old_blobs is not None:
                    if new_blobs is not None:
                        message = apply_mode(restore(message, old_blobs), "external", new_blobs)
                    referenced.update(references(message))
                if builder is not None:
                    builder.add(seq - start, message)
                last[0] = new.records.encode(seq - start, ts, encode_json(message))
                yield last[0], ts

        log.rewrite(header, new, reseal(), dictionary)
        if self._index is not None:
            self._index.rewritten(builder, count - start, last[0][-TAG_BYTES:])
        if old_blobs is not None:
            self._encoder.blobs = new_blobs or old_blobs
            self._encoder.blobs.delete_unreferenced(referenced)
        return CompactionReport(count - start, before, log.size() + reader.index_size())

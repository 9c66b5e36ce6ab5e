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
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .._fsio import remove_flat_dir
from ..attachments import BlobStore, Message, apply_mode, references, restore
from ..compression import (
    REWRITE_DICTIONARY_BYTES,
    REWRITE_SAMPLES,
    TRAIN_AFTER,
    compressed_sizes,
    train_dictionary,
)
from ..crypto import KeyInput, Keyring
from ..encoding import MessageEncoder, encode_json
from ..errors import DecryptionError
from ..indexing import IndexBuilder, KeywordIndexer
from ..paths import blobs_path
from ..reading import LogReader
from ..records import RecordCodec, SealedRecords
from ..sealing import LogSecrets
from ..storage.base import LogFormat, LogStorage
from ..storage.file.kwi import TAG_BYTES

__all__ = ["CompactionReport", "Compactor", "fresh_dictionary"]

Progress = Callable[[int, int], None]  # progress(done, total): records re-sealed so far
_Item = tuple[int, int, bytes, bytes | None]  # seq, ts_us, message JSON, kept frame or None
_SEAL_BATCH = 256  # records a rewrite of messages in memory seals in one call
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CompactionReport:
    """What ``compact()`` did: messages kept and bytes (log + index) before and after."""

    messages: int
    bytes_before: int
    bytes_after: int


# A trained dictionary replaces the safe choice only when it wins, on messages it was not
# trained on, by more than this many standard errors of the paired per-message difference.
# The safe choice is the log's own dictionary when the rewrite keeps every message (or none
# when it has none): with encode_smallest no record then grows. A dictionary judged on its
# own training samples always looks better than it is (it holds pieces of them verbatim);
# issue 15 measured compactions that grew logs by up to 12% that way.
_CONFIDENCE = 3.0
_DICT_RECORD_OVERHEAD = 80  # bytes around a dictionary's own: frame, envelope, Fernet


def fresh_dictionary(
    records: object,
    count: int,
    sample: Callable[[int, int], list[bytes]],
    ts: int,
    keep: bytes | None = None,
) -> bytes | None:
    """Choose the dictionary of a rewrite of ``count`` messages (FORMAT.md §5.3), start
    sealing with it, and return its record body, which goes right after the header; None
    for none (a plain log, fewer than ``TRAIN_AFTER`` messages, or nothing wins).

    ``sample(first, step)`` returns the stored JSON of every ``step``-th message from
    ``first``. With k = max(2, count // REWRITE_SAMPLES), dictionaries are trained on every
    k-th message from the first, and judged on the messages k // 2 after those. ``keep``
    is the log's dictionary when the rewrite keeps every message it may hold pieces of
    (a compaction that drops nothing); a new one must then beat it.
    """
    if not isinstance(records, SealedRecords) or count < TRAIN_AFTER:
        return None
    step = max(2, count // REWRITE_SAMPLES)
    train, judge = sample(0, step), sample(step // 2, step)
    trained = train_dictionary(train, REWRITE_DICTIONARY_BYTES)
    chosen = _choose(judge, count, keep, [] if trained is None else [trained])
    if chosen is None:
        return None
    records.use_dictionary(1, chosen)
    return records.encode_dictionary(1, ts, chosen)


def _choose(
    judge: list[bytes], count: int, keep: bytes | None, trained: list[bytes]
) -> bytes | None:
    """Return the dictionary (or None) that stores ``count`` messages like ``judge`` in the
    fewest bytes, preferring ``keep`` unless another wins with confidence."""

    def costs(dictionary: bytes | None) -> list[int]:
        # With a dictionary, as records past the first TRAIN_AFTER are encoded: the
        # dictionary's frame or the JSON (the first ones may do better, never worse).
        return [_sealed(size) for size in compressed_sizes(judge, dictionary)]

    def fixed(dictionary: bytes | None) -> int:
        return 0 if dictionary is None else len(dictionary) + _DICT_RECORD_OVERHEAD

    base = costs(keep)
    best, best_gain = keep, 0.0
    m = len(judge)
    for candidate in [*trained, *([None] if keep is not None else [])]:
        saved = [b - c for b, c in zip(base, costs(candidate), strict=True)]
        mean = sum(saved) / m
        spread = math.sqrt(sum((d - mean) ** 2 for d in saved) / max(1, m - 1) / m)
        gain = (mean - _CONFIDENCE * spread) * count - (fixed(candidate) - fixed(keep))
        if gain > best_gain:
            best, best_gain = candidate, gain
    return best


def _sealed(payload: int) -> int:
    """Bytes a record with this payload takes in a sealed log, near enough (FORMAT.md §5.1:
    an envelope of ~8 bytes around the payload, PKCS7 to 16-byte blocks, 58 bytes more)."""
    return 16 * ((payload + 8) // 16 + 1) + 58


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

    def rewrite(
        self, datas: list[bytes], tss: list[int], messages: list[Message], keep: int = 0
    ) -> None:
        """Atomically replace the log with these messages (stored JSON, and as stored) and
        timestamps, after its first ``keep`` records, kept as they are: the ones
        ``max_messages`` hid from a ``save()``, which its caller never saw (they are read a
        batch at a time); then delete the blobs no record refers to (FORMAT.md §15)."""
        if len(datas) != len(tss):
            raise ValueError(f"{len(datas)} messages and {len(tss)} timestamps")
        blobs = self._encoder.blobs
        if blobs is not None:  # the sweep after the commit must not be refused
            remove_flat_dir(blobs.directory, check_only=True)
        header, fmt = self._secrets.new_log()
        total = keep + len(datas)

        def sample(first: int, k: int) -> list[bytes]:
            return [
                datas[seq - keep] if seq >= keep else next(self._kept(seq, seq + 1))[0][2]
                for seq in range(first, total, k)
            ]

        first_ts = self._log.index.tss[0] if keep else tss[0] if tss else 0
        dictionary = fresh_dictionary(fmt.records, total, sample, first_ts)
        encode = _encoder(fmt.records)
        builder = None if self._index is None else self._index.builder_for(fmt)
        last = [b""]

        kept_refs: set[str] = set()

        def batches() -> Iterator[list[_Item]]:
            yield from self._kept(0, keep, None if blobs is None else kept_refs)
            for first in range(0, len(datas), _SEAL_BATCH):
                stop = min(len(datas), first + _SEAL_BATCH)
                yield [(keep + i, tss[i], datas[i], None) for i in range(first, stop)]

        def records() -> Iterator[tuple[bytes, int]]:
            for items in batches():
                if builder is not None:
                    for seq, _, data, _ in items:
                        builder.add(seq, fmt.records.parse(data))
                bodies = encode(items)
                last[0] = bodies[-1]
                yield from zip(bodies, [ts for _, ts, _, _ in items], strict=True)

        indexed = self._indexing(builder, fmt, total, last)
        self._log.rewrite(header, fmt, _then(records(), indexed), dictionary)
        indexed(committed=True)
        if blobs is not None:
            blobs.delete_unreferenced(kept_refs.union(*map(references, messages)))

    def _kept(self, start: int, stop: int, refs: set[str] | None = None) -> Iterator[list[_Item]]:
        """The records ``start..stop`` as rewrite items ``(seq, ts_us, message JSON, None)``,
        a list per decryption batch (each parsed, so that a malformed one stops the
        rewrite; a sealed record's text is its stored JSON, as ``rewrite_from`` keeps);
        ``refs`` gathers the blobs they refer to."""
        fmt = self._log.fmt
        sealed = fmt is not None and isinstance(fmt.records, SealedRecords)
        for batch in self._reader.batches(start, stop):
            messages = self._reader.messages(batch)
            if refs is not None:
                refs.update(*map(references, messages))
            yield [
                (seq, ts, text if sealed else encode_json(message), None)
                for (seq, text, ts), message in zip(batch, messages, strict=True)
            ]

    def compact(
        self, start: int, encryption_key: KeyInput | None, progress: Progress | None = None
    ) -> CompactionReport:
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
            return self.rewrite_from(start, new_blobs, progress)
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

    def rewrite_from(
        self, start: int, new_blobs: BlobStore | None = None, progress: Progress | None = None
    ) -> CompactionReport:
        """Rewrite the records from ``start`` on under the current secrets.

        ``new_blobs``: a blob store under a new key; every attachment is moved into it (a key
        rotation must re-seal attachments too, or only the old key would open them).
        ``progress(done, total)`` is called after each record is re-sealed.
        """
        log, reader = self._log, self._reader
        before = log.size() + reader.index_size()
        count = len(log.index)
        if log.fmt is None:  # nothing to re-seal: the next write creates the log, under
            if new_blobs is not None:  # the new key, and its attachments go under it too
                self._encoder.blobs = new_blobs
            return CompactionReport(0, 0, 0)
        header, new = self._secrets.new_log()

        def sample(first: int, step: int) -> list[bytes]:
            return [
                text
                for seq in range(start + first, count, step)
                for _, text, _ in reader.payloads(seq, seq + 1)
            ]

        first_ts = log.index.tss[start] if count > start else 0
        # The log's own dictionary may hold pieces of any message it was trained on: only
        # a rewrite that keeps them all may keep it (prune and retention drop messages).
        old = log.fmt.records
        keep = old.dictionary if start == 0 and isinstance(old, SealedRecords) else None
        dictionary = fresh_dictionary(new.records, count - start, sample, first_ts, keep)
        encode = _encoder(new.records)
        referenced: set[str] = set()
        old_blobs = self._encoder.blobs
        if old_blobs is not None:  # the sweep after the commit must not be refused
            remove_flat_dir(old_blobs.directory, check_only=True)

        builder = None if self._index is None else self._index.builder_for(new)
        last = [b""]

        # A sealed record's text is the stored JSON of its message (parsed all the same, so
        # that a malformed one stops the rewrite): without attachments to move it is sealed
        # again as it is, not encoded again from the message.
        as_stored = isinstance(old, SealedRecords) and old_blobs is None
        # And when the rewrite keeps the log's dictionary, a record stored compressed with
        # it keeps that payload, sealed again under the new log's key (FORMAT.md §8.4: a
        # fresh log_id, so every record is re-sealed): the compression it would get again
        # was ~a quarter of a compaction (issue 15). The first TRAIN_AFTER records still
        # go through encode_smallest (with or without the dictionary, the smaller).
        reuse = _kept_dictionary(old, new.records) if as_stored else None

        def reseal() -> Iterator[tuple[bytes, int]]:
            for batch in reader.batches(start, count):
                items: list[_Item] = []
                for (seq, text, ts), message in zip(batch, reader.messages(batch), strict=True):
                    if old_blobs is not None:
                        if new_blobs is not None:
                            message = apply_mode(restore(message, old_blobs), "external", new_blobs)
                        referenced.update(references(message))
                    if builder is not None:
                        builder.add(seq - start, message)
                    frame = None
                    if reuse is not None and seq - start >= TRAIN_AFTER:
                        frame = reuse.stored_frame(text)
                    data = text if as_stored else encode_json(message)
                    items.append((seq - start, ts, data, frame))
                bodies = encode(items)  # sealed as a batch: one AES-CBC call
                last[0] = bodies[-1]
                for body, (seq, ts, _, _) in zip(bodies, items, strict=True):
                    yield body, ts
                    if progress is not None:
                        progress(seq + 1, count - start)

        if reuse is not None:
            reuse.keep_frames(True)
        indexed = self._indexing(builder, new, count - start, last)
        try:
            log.rewrite(header, new, _then(reseal(), indexed), dictionary)
        finally:
            if reuse is not None:
                reuse.keep_frames(False)
        indexed(committed=True)
        if old_blobs is not None:
            self._encoder.blobs = new_blobs or old_blobs
            self._encoder.blobs.delete_unreferenced(referenced)
        return CompactionReport(count - start, before, log.size() + reader.index_size())

    def _indexing(
        self, builder: IndexBuilder | None, fmt: LogFormat, count: int, last: list[bytes]
    ) -> Callable[..., None]:
        """What writes the keyword index of a rewrite to ``fmt``: called once the storage
        has taken every record, before it commits (a sidecar: FORMAT.md §17.5, step 3),
        and again with ``committed=True`` after (a database, in the same transaction)."""
        index, done = self._index, [False]

        def indexed(*, committed: bool = False) -> None:
            if index is None or done[0]:
                return
            tag = last[0][-TAG_BYTES:]
            if committed:
                index.rewritten(builder, count, tag)
            else:
                done[0] = index.rewriting(builder, fmt, count, tag)

        return indexed


def _then(items: Iterable[_T], last: Callable[[], None]) -> Iterator[_T]:
    """Yield ``items``, then call ``last``: a storage takes every record of a rewrite
    before it commits it, so ``last`` runs between the two."""
    yield from items
    last()


def _kept_dictionary(old: RecordCodec, new: RecordCodec) -> SealedRecords | None:
    """``old`` when a rewrite from it into ``new`` keeps the dictionary (the same bytes
    under the same id): a payload compressed with it stays valid as it is."""
    if (
        isinstance(old, SealedRecords)
        and isinstance(new, SealedRecords)
        and old.dictionary is not None
        and new.dictionary == old.dictionary
        and new.dict_id == old.dict_id
    ):
        return old
    return None


def _encoder(records: RecordCodec) -> Callable[[list[_Item]], list[bytes]]:
    """The record encoder of a rewrite: the bodies of a batch of ``(seq, ts_us, message
    JSON, frame)``, sealed in one call. ``frame``: the record's stored payload, compressed
    with the dictionary the rewrite keeps (``_kept_dictionary``), sealed again as it is.

    In a sealed log the first ``TRAIN_AFTER`` records also try zstd without the dictionary
    (``SealedRecords.smallest_envelope``): an appender wrote them before its log had a
    dictionary, and re-compressed with one a record could grow. Later records were written
    with the dictionary (or stored as they are), so with the same dictionary they come out
    as they were; a second compression each would cost ~20% of a compaction for nothing."""
    if not isinstance(records, SealedRecords):
        encode = records.encode
        return lambda items: [encode(seq, ts, data) for seq, ts, data, _ in items]
    smallest, usual, kept = records.smallest_envelope, records.envelope, records.frame_envelope

    def encoder(items: list[_Item]) -> list[bytes]:
        envelopes = [
            kept(seq, ts, frame)
            if frame is not None
            else (smallest if seq < TRAIN_AFTER else usual)(seq, ts, data)
            for seq, ts, data, frame in items
        ]
        return records.seal_many(envelopes, [ts for _, ts, _, _ in items])

    return encoder

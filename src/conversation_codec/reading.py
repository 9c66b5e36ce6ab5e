"""LogReader: authenticated reads of a log's records through a ``LogStorage``.

Every record read is authenticated and checked against its seq and its index entry; an
index that disagrees with the log is rebuilt once and the read resumes (FORMAT.md §7,
§10.2). The codec reads only through this class; it knows nothing of keys or messages
beyond the storage's ``LogFormat``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ._time import to_datetime
from .errors import CorruptRecordError, LogReplacedError
from .records import DictionaryMissing, RecordCodec, RecordRejected
from .search import Hit, Query, SearchQuery
from .search_progress import SearchProgress
from .storage.base import IndexMismatch, LogStorage

__all__ = ["DECRYPT_BATCH", "DECRYPT_BATCH_BYTES", "READ_BATCH", "LogInfo", "LogReader"]

Message = dict[str, Any]
READ_BATCH = 256  # records decoded per lock hold while iterating or searching
# Records authenticated, then decrypted in one AES-CBC call (records.payloads): past a few
# dozen records the per-call cost is paid off; the byte bound keeps the joined ciphertext
# and its plaintext (two copies of the batch) small next to long records.
DECRYPT_BATCH = 256  # records
DECRYPT_BATCH_BYTES = 1024 * 1024  # bytes of record bodies


@dataclass(frozen=True, slots=True)
class LogInfo:
    """What ``ConversationCodec.info()`` reports; nothing in it needs the key to learn."""

    path: Path
    encrypted: bool
    format_version: int | None  # None when no log exists yet
    message_count: int
    first_timestamp: datetime | None
    last_timestamp: datetime | None
    log_bytes: int
    index_bytes: int


class LogReader:
    """Read records of ``log`` (the file at ``path``, named in errors); lock held by caller."""

    def __init__(self, log: LogStorage, path: str | Path) -> None:
        self._log = log
        self._path = path

    def corrupt(self, exc: RecordRejected, seq: int) -> CorruptRecordError:
        offset = self._log.index.span(seq)[0]
        return CorruptRecordError(f"record {seq}: {exc}", path=self._path, offset=offset)

    def payloads(self, start: int, stop: int) -> Iterator[tuple[int, bytes, int]]:
        """Yield ``(seq, message JSON text, ts_us)`` for a range, inside a transaction.

        Every record is authenticated and checked against its position and index entry; an
        index that disagrees with the log is rebuilt once and the read resumes.
        """
        for batch in self.batches(start, stop):
            yield from batch

    def batches(self, start: int, stop: int) -> Iterator[list[tuple[int, bytes, int]]]:
        """Yield what ``payloads`` yields, a list per decryption batch (no generator step
        per record). A record that fails ends its batch: the records before it are
        yielded first, then its error raised, as one by one."""
        fmt = self._log.fmt
        if fmt is None or start >= stop:
            return
        for attempt in (0, 1):
            try:
                for batch in _batches(self._log.read_bodies(start, stop)):
                    opened, error = _opened(fmt.records, batch)
                    wrong = _mistimed(opened, self._log.index.tss)
                    if wrong is not None:
                        error = IndexMismatch(self._log.index.span(opened[wrong][0])[0])
                        del opened[wrong:]
                    if opened:
                        yield opened
                        start = opened[-1][0] + 1
                    if isinstance(error, RecordRejected):
                        raise self.corrupt(error, start) from None  # records come in order
                    if error is not None:
                        raise error
                return
            except (IndexMismatch, DictionaryMissing):
                if attempt:
                    raise CorruptRecordError(
                        "index and log disagree even after a rebuild",
                        path=self._path,
                        offset=self._log.index.span(start)[0],
                    ) from None
                self._log.rebuild_index()
                stop = min(stop, len(self._log.index))

    def parsed(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, list[bytes], list[Message], Sequence[int]]]:
        """Yield ``(first seq, texts, messages, ts_us)`` for a range, lists per decryption
        batch, as ``batches`` reads them and ``parse`` parses them: a record that fails ends
        its batch, the records before it yielded first, then its error raised.

        A batch of usual records (``usual.py``) is read in one loop. From the first batch
        that is not, the rest is read through ``batches``, which reports what is wrong (or
        rebuilds the index); an error of the storage itself is raised where it happens.
        """
        fmt = self._log.fmt
        if fmt is None or start >= stop:
            return
        start = yield from self._usual(start, stop, parse=True)
        for batch in self.batches(start, stop):
            texts = [text for _, text, _ in batch]
            tss_us = [ts for _, _, ts in batch]
            try:
                messages = fmt.records.parse_many(texts)
            except RecordRejected:  # one by one: the messages before it, then its error
                messages = []
                for seq, text, _ in batch:
                    try:
                        messages.append(fmt.records.parse(text))
                    except RecordRejected as exc:
                        if messages:
                            done = len(messages)
                            yield batch[0][0], texts[:done], messages, tss_us[:done]
                        raise self.corrupt(exc, seq) from None
            yield batch[0][0], texts, messages, tss_us

    def texts(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, list[bytes], list[Message], Sequence[int]]]:
        """Yield ``(first seq, texts, [], ts_us)`` for a range, lists per decryption batch:
        what ``batches`` yields, the usual batches read in one loop as ``parsed`` reads them
        (their texts not parsed)."""
        if self._log.fmt is None or start >= stop:
            return
        start = yield from self._usual(start, stop, parse=False)
        for batch in self.batches(start, stop):
            yield batch[0][0], [text for _, text, _ in batch], [], [ts for _, _, ts in batch]

    def _usual(
        self, start: int, stop: int, *, parse: bool
    ) -> Generator[tuple[int, list[bytes], list[Message], Sequence[int]], None, int]:
        """Yield the batches of a range read the usual way while they are (for ``parsed``,
        and for ``texts``: not ``parse``); return the seq from which the rest must be read
        through ``batches``."""
        fmt = self._log.fmt
        if fmt is None or not fmt.sealed:
            return start
        raw = _batches(self._log.read_bodies(start, stop))
        tss = self._log.index.tss
        try:
            while start < stop:
                try:
                    bodies = next(raw, None)
                except (IndexMismatch, DictionaryMissing):
                    break  # batches rebuilds the index and reads on
                got = None if bodies is None else _read_usual(fmt.records, bodies, tss, parse)
                if bodies is None or got is None:
                    break
                first, start = bodies[0][0], bodies[-1][0] + 1
                yield first, got[0], got[1], tss[first:start]
        finally:
            raw.close()
        return start

    def parse(self, seq: int, text: bytes) -> Message:
        assert self._log.fmt is not None
        try:
            return self._log.fmt.records.parse(text)
        except RecordRejected as exc:
            raise self.corrupt(exc, seq) from None

    def messages(self, batch: list[tuple[int, bytes, int]]) -> list[Message]:
        """Parse the texts of a batch from ``batches``, in one call on the record codec."""
        assert self._log.fmt is not None
        try:
            return self._log.fmt.records.parse_many([text for _, text, _ in batch])
        except RecordRejected:  # find the first that fails, for its seq and offset
            return [self.parse(seq, text) for seq, text, _ in batch]

    def decoded(self, start: int, stop: int) -> Iterator[tuple[int, Message, int]]:
        """Yield ``(seq, message, ts_us)`` for a range, inside the current transaction."""
        for first, _, messages, tss in self.parsed(start, stop):
            yield from zip(range(first, first + len(messages)), messages, tss, strict=True)

    def read_one(self, seq: int) -> Message:
        for _, message, _ in self.decoded(seq, seq + 1):
            return message
        raise IndexError(f"record {seq} vanished while reading")

    def first_at_or_after(self, ts_us: int, sides: tuple[int, ...]) -> int:
        """Return the first seq whose record time is >= ``ts_us`` (lock held).

        The index's times are a cache that anyone can edit, so its binary search only
        proposes the cut; the records at ``cut + d`` for each ``d`` in ``sides`` (-1: the
        one before the cut, 0: the one at it) are authenticated and must carry the time
        the index gives them. Record times never decrease along seq, so two records that
        agree bound every other one: the cut is confirmed with at most two decryptions.
        If one disagrees, the index is stale or tampered with: it is rebuilt from the log
        (FORMAT.md §7, §10.2) and the search repeated.
        """
        cut = self._log.index.first_at_or_after(ts_us)
        if self._disagreeing(cut, sides, final=False) is None:
            return cut
        self._log.rebuild_index()
        cut = self._log.index.first_at_or_after(ts_us)
        wrong = self._disagreeing(cut, sides, final=True)
        if wrong is not None:
            raise CorruptRecordError(
                "index and log disagree even after a rebuild",
                path=self._path,
                offset=self._log.index.span(wrong)[0],
            )
        return cut

    def _disagreeing(self, cut: int, sides: tuple[int, ...], *, final: bool) -> int | None:
        """Return the first seq ``cut + d`` whose record's time is not the index's."""
        for seq in (cut + d for d in sides):
            if 0 <= seq < len(self._log.index) and not self._time_holds(seq, final=final):
                return seq
        return None

    def _time_holds(self, seq: int, *, final: bool) -> bool:
        """Authenticate record ``seq`` (no decompression): does its time match the index's?

        A record that fails is damage once the index has been rebuilt (``final``); before
        that, it may just be a stale index pointing at the wrong bytes.
        """
        assert self._log.fmt is not None
        try:
            ts = self._log.fmt.records.check(self._log.read_body(seq), seq)
        except IndexMismatch:
            return False
        except RecordRejected as exc:
            if final:
                raise self.corrupt(exc, seq) from None
            return False
        return ts == self._log.index.tss[seq]

    def when(self, seq: int, ts_us: int | None = None) -> datetime:
        """Return record ``seq``'s time (``ts_us``, or the index's) as an aware datetime.

        The index never holds a time outside 1970..9999 that it loaded from its file (such
        entries are rebuilt from the log, FORMAT.md §7); one that no datetime can hold came
        from the record itself, stamped so by a key holder or edited into a plain log.
        That is a ``CorruptRecordError``, never Python's ``OverflowError``.
        """
        us = self._log.index.tss[seq] if ts_us is None else ts_us
        try:
            return to_datetime(us)
        except OverflowError:
            raise CorruptRecordError(
                f"record {seq} carries a time ({us} us since 1970) that is no date in "
                "years 1..9999",
                path=self._path,
                offset=self._log.index.span(seq)[0],
            ) from None

    def info(self, base: int, encrypted: bool) -> LogInfo:
        """Describe the log from its header and index (records ``base..`` visible)."""
        index, fmt = self._log.index, self._log.fmt
        count = len(index) - base
        return LogInfo(
            path=Path(self._path),
            encrypted=encrypted,
            format_version=fmt.format_version if fmt else None,
            message_count=count,
            first_timestamp=self.when(base) if count else None,
            last_timestamp=self.when(len(index) - 1) if count else None,
            log_bytes=self._log.size(),
            index_bytes=self.index_size() if fmt else 0,
        )

    def index_size(self) -> int:
        if not self._log.index.path:  # a storage without an index file
            return 0
        try:
            return os.path.getsize(self._log.index.path)
        except FileNotFoundError:
            return 0

    def matches(
        self,
        matcher: Query,
        roles: frozenset[str] | None,
        start: int,
        end: int,
        base: int,
        span: tuple[int | None, int | None],
        present: Callable[[Message], Message],
        progress: SearchProgress | None = None,
    ) -> list[Hit]:
        """Return the hits among records ``start .. end`` whose own (authenticated) time is
        in ``span``: their seq counted from ``base``, their message passed through ``present``
        (and the first and last record read noted in ``progress``)."""
        hits = []
        lo, hi = span
        for first, texts, _, tss in self.texts(start, end):
            if progress is not None and texts:
                progress.saw(first, tss[0], texts[0])
                progress.saw(first + len(texts) - 1, tss[len(texts) - 1], texts[-1])
            if not matcher.maybe_any(texts):
                continue  # no record of the batch holds every term
            for seq, text, ts in zip(range(first, first + len(texts)), texts, tss, strict=True):
                # ts is the record's own (authenticated) time, whatever the index said.
                if (lo is not None and ts < lo) or (hi is not None and ts >= hi):
                    continue
                if not matcher.maybe(text.decode("utf-8", "replace")):
                    continue
                message = self.parse(seq, text)
                if (roles is None or message.get("role") in roles) and matcher.matches(message):
                    hits.append(Hit(seq - base, self.when(seq, ts), present(message)))
        return hits

    def record(self, seq: int) -> tuple[int, bytes] | None:
        """Return ``(ts_us, message JSON text)`` of record ``seq`` (authenticated), None
        past the end (lock held)."""
        if not 0 <= seq < len(self._log.index):
            return None
        for _, texts, _, tss in self.texts(seq, seq + 1):
            return tss[0], texts[0]
        return None

    def plan(
        self, span: tuple[int | None, int | None], base: int, progress: SearchProgress
    ) -> tuple[int, int, int]:
        """Return ``(base, first, stop)``: the records a search still has to read (lock held),
        as ``SearchProgress.plan`` clips them."""
        lo, hi = span
        # Authenticate the records just outside the range (see first_at_or_after): then
        # no record outside [first, stop) can match, and matches keeps the records inside
        # by their own authenticated times.
        first = max(base, 0 if lo is None else self.first_at_or_after(lo, (-1,)))
        stop = max(first, len(self._log.index) if hi is None else self.first_at_or_after(hi, (0,)))
        return progress.plan(base, first, stop, self.record, self.parse, self._same_time)

    def _same_time(self, ts_us: int, top: int) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(seq, ts_us, text)`` of the records the index gives time ``ts_us``, at
        seqs up to ``top``, from there down, a batch read at a time (lock held)."""
        index = self._log.index
        low, stop = index.first_at_or_after(ts_us), index.first_at_or_after(ts_us + 1)
        for end in range(min(stop, top + 1), low, -READ_BATCH):
            got = [
                (first + k, tss[k], text)
                for first, texts, _, tss in self.texts(max(low, end - READ_BATCH), end)
                for k, text in enumerate(texts)
            ]
            yield from reversed(got)

    def search(
        self,
        query: SearchQuery,
        *,
        reading: Callable[[], contextlib.AbstractContextManager[None]],
        base: Callable[[], int],
        present: Callable[[Message], Message],
        progress: SearchProgress | None = None,
    ) -> Iterator[Hit]:
        """Stream the hits of ``ConversationCodec.search`` (arguments checked there): one
        batch of records per ``reading()`` lock hold, from the visible start ``base()``;
        what is left to read, after ``progress`` (``search_progress``)."""
        matcher, roles, span = query.matcher, query.roles, query.span
        limit, newest_first = query.limit, query.newest_first
        progress = SearchProgress() if progress is None else progress
        with reading():
            log_id = self._log.fmt.log_id if self._log.fmt else None
            first_seq, first, stop = self.plan(span, base(), progress)
        left = limit
        bounds = range(first, stop, READ_BATCH)
        for start in reversed(bounds) if newest_first else bounds:
            if left == 0:
                return
            end = min(start + READ_BATCH, stop)
            with reading():
                if (self._log.fmt.log_id if self._log.fmt else None) != log_id or len(
                    self._log.index
                ) < end:
                    raise LogReplacedError("the log was replaced or truncated during a search")
                hits = self.matches(matcher, roles, start, end, first_seq, span, present, progress)
                progress.batch(self.record, last=start == first if newest_first else end == stop)
            for hit in reversed(hits) if newest_first else hits:
                if left == 0:
                    return
                yield hit
                left = None if left is None else left - 1
            progress.passed(start, end, newest_first=newest_first)


def _opened(
    records: RecordCodec, batch: list[tuple[int, bytes]]
) -> tuple[list[tuple[int, bytes, int]], Exception | None]:
    """Return what ``records.payloads`` yields for a batch, and what it raised (or None)."""
    opened: list[tuple[int, bytes, int]] = []
    try:
        opened.extend(records.payloads(batch))  # keeps what came before an exception
    except Exception as exc:  # raised by the caller once the records before it are out
        return opened, exc
    return opened, None


def _read_usual(
    records: RecordCodec, batch: list[tuple[int, bytes]], tss: Sequence[int], parse: bool
) -> tuple[list[bytes], list[Message]] | None:
    """``records.read_usual``, with anything it raises taken as "not usual": the caller
    reads the batch again through ``LogReader.batches``, which reports it."""
    try:
        return records.read_usual(batch, tss, parse)
    except Exception:
        return None


def _mistimed(opened: list[tuple[int, bytes, int]], tss: Sequence[int]) -> int | None:
    """Return the position of the first record whose own time is not the index's."""
    if not opened:
        return None
    first = opened[0][0]
    if [ts for _, _, ts in opened] == list(tss[first : first + len(opened)]):
        return None
    return next((k for k, (seq, _, ts) in enumerate(opened) if ts != tss[seq]), None)


def _batches(bodies: Iterator[tuple[int, bytes]]) -> Generator[list[tuple[int, bytes]], None, None]:
    """Group ``(seq, body)`` pairs into decryption batches (``DECRYPT_BATCH`` records, or
    ``DECRYPT_BATCH_BYTES``). When reading fails part way (the storage finds a span that is
    no record), the records read before it are yielded first, then the error raised: they
    are read as they were one by one."""
    batch: list[tuple[int, bytes]] = []
    size = 0
    try:
        for seq, body in bodies:
            batch.append((seq, body))
            size += len(body)
            if len(batch) >= DECRYPT_BATCH or size >= DECRYPT_BATCH_BYTES:
                yield batch
                batch, size = [], 0
    except Exception:
        if batch:
            yield batch
        raise
    if batch:
        yield batch

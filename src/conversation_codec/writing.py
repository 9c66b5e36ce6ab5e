"""LogWriter: append records to a log, stamping their times and training its dictionary.

The codec hands over messages already encoded (``encoding.MessageEncoder``) and keeps its
own bookkeeping (``save()``'s view, digests); this class assigns times, seals the bodies and
writes them in one storage append. Every method expects the writer lock held.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from ._time import MAX_US, to_datetime, to_us
from .compression import TRAIN_AFTER, train_dictionary
from .reading import LogReader
from .records import RecordCodec, SealedRecords
from .sealing import LogSecrets
from .storage.base import LogStorage

__all__ = ["LogWriter", "TimestampInput", "check_timestamp"]

TimestampInput = datetime | int | float


def _now_us() -> int:
    return time.time_ns() // 1000


def check_timestamp(value: TimestampInput) -> int:
    """Convert an aware datetime or epoch seconds to microseconds since the epoch."""
    us = to_us(value, "timestamp", text=False)  # a naive datetime: NaiveDatetimeError
    if not 0 <= us < MAX_US:
        raise ValueError(f"timestamp {value!r} is out of range (1970 .. 9999)")
    return us


class LogWriter:
    """Append to ``log`` (read back through ``reader``), sealing with ``secrets``; new
    records are stamped by ``clock`` (microseconds since the epoch; default: now)."""

    def __init__(
        self,
        log: LogStorage,
        reader: LogReader,
        secrets: LogSecrets,
        clock: Callable[[], int] | None,
    ) -> None:
        self._log = log
        self._reader = reader
        self._secrets = secrets
        self.clock = clock or _now_us
        self._swept = False
        self._untrainable = False

    def ensure_log(self) -> bool:
        """Sweep a crashed rewrite's temp files (once); create the log when there is none.
        Return True when it was created (a creation sweeps them itself: it is a rewrite)."""
        if self._log.fmt is None:
            header, fmt = self._secrets.new_log()
            self._log.create(header, fmt)
            self._swept = True
            return True
        if not self._swept:
            self._log.remove_stale_temps()
            self._swept = True
        return False

    def create_with(self, datas: list[bytes], timestamps: Sequence[TimestampInput] | None) -> bool:
        """Create the log holding these first messages, in one rewrite (FORMAT.md §8.4:
        its temp file synced, renamed, the directory synced), rather than create an empty
        log and append to it: one sync fewer for a new conversation. Return False, having
        written nothing, when the log exists or the batch would train a dictionary."""
        if self._log.fmt is not None or len(datas) >= TRAIN_AFTER:
            return False
        tss = self.stamps(len(datas), timestamps)  # checked before anything is written
        header, fmt = self._secrets.new_log()
        bodies = list(map(fmt.records.encode, range(len(datas)), tss, datas))
        self._log.rewrite(header, fmt, list(zip(bodies, tss, strict=True)))
        self._swept = True  # a rewrite sweeps leftovers itself
        return True

    def now(self) -> int:
        """The clock's reading to stamp a new record with (never before 1970), checked before
        anything is written: every writer path stamps through here or ``stamps``.

        :raises ValueError: the clock reads 10000-01-01 or later (FORMAT.md §9.2: readers
            would refuse the record).
        """
        now = max(self.clock(), 0)
        if now >= MAX_US:
            raise ValueError(f"the clock reads {now} us, past 9999: no record time")
        return now

    def stamps(self, count: int, given: Sequence[TimestampInput] | None) -> list[int]:
        """Return the times of ``count`` new records: ``given`` checked, or now (never
        before the last record's)."""
        tss = self._log.index.tss
        last = tss[-1] if len(tss) else 0
        if given is None:
            return [max(self.now(), last)] * count  # a clock that steps back is clamped
        if len(given) != count:
            raise ValueError(f"got {len(given)} timestamps for {count} messages")
        out = []
        for value in given:
            us = check_timestamp(value)
            if us < last:
                raise ValueError(
                    "timestamps in a log never go backwards: "
                    f"{to_datetime(us).isoformat()} is "
                    "earlier than the last record"
                )
            out.append(us)
            last = us
        return out

    def single(
        self, records: RecordCodec, seq: int, last_us: int, data: bytes
    ) -> tuple[int, bytes] | None:
        """``(ts_us, body)`` of the message ``data`` appended alone at ``seq`` after a record
        stamped ``last_us``, for a quick append (``storage.file.quick``); None, without
        reading the clock, when ``append`` must do it: this writer's first append (it
        sweeps leftovers first), or one that trains the dictionary."""
        if not self._swept or (
            seq + 1 >= TRAIN_AFTER
            and not self._untrainable
            and isinstance(records, SealedRecords)
            and not records.dict_id
        ):
            return None
        clock = self.clock
        ts = time.time_ns() // 1000 if clock is _now_us else clock()  # (_now_us inline)
        if ts < last_us:
            ts = last_us  # a clock that steps back is clamped (as stamps())
        elif ts >= MAX_US:
            return None  # append() refuses it (stamps())
        return ts, records.encode(seq, ts, data)

    def append(self, datas: list[bytes], timestamps: Sequence[TimestampInput] | None) -> int:
        """Append these messages (stored JSON) with one write; return the first one's seq.
        The log exists (``ensure_log``)."""
        fmt = self._log.fmt
        assert fmt is not None
        first = len(self._log.index)
        tss = self.stamps(len(datas), timestamps)
        # FORMAT.md §5.3: the dictionary goes where the log first holds TRAIN_AFTER messages
        # (at the batch's start when it already does), trained on the TRAIN_AFTER messages
        # before that point; the records after it, in this same write, are sealed with it.
        records = fmt.records
        train = (
            isinstance(records, SealedRecords)
            and not records.dict_id
            and not self._untrainable
            and first + len(datas) >= TRAIN_AFTER
        )
        if not train:  # the usual case: map() and no per-record frame
            bodies = list(map(records.encode, range(first, first + len(datas)), tss, datas))
            self._log.append(bodies, tss, None)
            return first
        at = max(0, TRAIN_AFTER - first)
        bodies = [records.encode(first + i, tss[i], datas[i]) for i in range(at)]
        assert isinstance(records, SealedRecords)
        dictionary = self._train(records, first, datas[:at], tss[:at])
        if len(self._log.index) != first:
            # Reading the samples found the index stale and rebuilt it: seqs and
            # timestamps were assigned from the old count, so start again.
            records.drop_dictionary()
            return self.append(datas, timestamps)
        bodies += [records.encode(first + i, tss[i], datas[i]) for i in range(at, len(datas))]
        try:
            self._log.append(bodies, tss, None if dictionary is None else (at, dictionary))
        except BaseException:
            if dictionary is not None:
                records.drop_dictionary()  # it never reached the log
            raise
        return first

    def _train(
        self, records: SealedRecords, first: int, before: list[bytes], tss: list[int]
    ) -> bytes | None:
        """Train the log's zstd dictionary on the ``TRAIN_AFTER`` messages before the point
        where it goes: the last stored ones (the log holds ``first``), then ``before`` (this
        batch's messages ahead of that point, stamped ``tss``). Start sealing with it and
        return its record body (FORMAT.md §5.3), or None when zstd cannot train. Done once per
        log: ~20 ms, after which a typical chat record compresses about 3x smaller than zstd
        alone manages."""
        lo = first + len(before) - TRAIN_AFTER
        samples = [text for _, text, _ in self._reader.payloads(lo, first)] if lo < first else []
        samples += before[max(0, lo - first) :]
        dictionary = train_dictionary(samples)
        if dictionary is None:
            self._untrainable = True  # too few or too uniform samples: stay without one
            return None
        ts = tss[-1] if tss else self._log.index.tss[first - 1]
        records.use_dictionary(1, dictionary)
        return records.encode_dictionary(1, ts, dictionary)

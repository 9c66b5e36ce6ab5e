"""The dictionary record of a log (FORMAT.md §5.3): where it lies, and whether the record
codec holds it. Format v1 allows one per log; the index file remembers its span.

``log.FileLog`` keeps one ``Dictionary`` per open log and calls it when a record walk meets a
dictionary record, when an append writes one, when the index is (re)loaded, and when a
truncation cuts the dictionary away.
"""

from __future__ import annotations

from ...errors import UnsupportedVersionError
from ...records import RecordRejected, SealedRecords
from ..base import LogFormat
from .index import OffsetIndex
from .reader import read_dictionary

__all__ = ["Dictionary"]

_NONE = (0, 0)  # the span of no dictionary record


class Dictionary:
    """The dictionary the record codec of one open log holds, by the span of its record."""

    __slots__ = ("span",)

    def __init__(self, span: tuple[int, int] = _NONE) -> None:
        self.span = span  # (0, 0): the record codec holds none

    def use(
        self,
        fmt: LogFormat,
        index: OffsetIndex,
        body: bytes,
        span: tuple[int, int],
        *,
        persist: bool,
    ) -> None:
        """Adopt the dictionary record ``body`` at ``span``; record the span in ``index``
        (in its file too when ``persist``).

        :raises RecordRejected: it does not authenticate, or the log is plain.
        :raises UnsupportedVersionError: the log holds a second dictionary record.
        """
        records = fmt.records
        if not isinstance(records, SealedRecords):
            raise RecordRejected("a plain log holds no dictionary records")
        # Authenticate first (FORMAT.md §10.1): a torn frame whose prefix happens to carry
        # the control bit is a torn tail, not a "second dictionary" from a newer writer.
        dictionary = records.decode_dictionary(body, 1)
        if self.span not in (_NONE, span):
            raise UnsupportedVersionError(
                "log holds a second dictionary record; upgrade conversation-codec"
            )
        records.use_dictionary(1, dictionary)
        index.set_dict_span(span, persist=persist)
        self.span = span

    def drop(self, fmt: LogFormat | None) -> None:
        """Stop using the dictionary (its record was cut away, or the index forgot it)."""
        self.span = _NONE
        if fmt is not None and isinstance(fmt.records, SealedRecords):
            fmt.records.drop_dictionary()

    def follow(self, fd: int, fmt: LogFormat, index: OffsetIndex) -> bool:
        """Adopt the dictionary record a freshly loaded ``index`` names; return False when
        none is there (a stale index: it is reset, to be rebuilt from the log, keeping what
        its entries proved)."""
        span = index.dict_span
        if span != self.span and self.span != _NONE:
            # Another process cut the dictionary away (a pop) or the index forgot it: stop
            # using ours; a record that still needs it makes the reader rebuild and find it.
            self.drop(fmt)
        if span != _NONE and span != self.span:
            try:
                self.use(fmt, index, read_dictionary(fd, span, fmt.sealed), span, persist=False)
            except (RecordRejected, ValueError):
                index.reset(fmt.data_start, keep_evidence=True)
                return False
        return True

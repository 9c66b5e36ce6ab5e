"""Keyword search with the blind keyword index (FORMAT.md §17.6): the candidate blocks the
index names, plus every record past what it covers, each matched as the scan matches it.

A search first brings a lagging sidecar up to date (``KeywordIndexer.catch_up``, under the
writer lock): appends leave it alone (§17.5), so the records they added are indexed by the
first search that finds ``FLUSH_MESSAGES`` or more of them; fewer are scanned.

A log replaced or truncated by another process between two lock holds of a search is
planned again from where the search is (``search_progress``): a compaction loses no hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ConversationCodecError, LogReplacedError
from .indexing import KeywordIndexer
from .keyword_builder import candidate_ranges, joined
from .keyword_index import BLOCK, query_grams
from .reading import READ_BATCH, LogReader
from .search import Hit, SearchQuery
from .search_progress import SearchProgress
from .storage.base import LogStorage

__all__ = ["indexed_search"]

Message = dict[str, Any]
Holding = Callable[[], contextlib.AbstractContextManager[None]]


_REPLANS_BEFORE_SCAN = 2  # replacements in a row after which a search scans


def indexed_search(
    indexer: KeywordIndexer,
    reader: LogReader,
    log: LogStorage,
    query: SearchQuery,
    *,
    reading: Holding,
    base: Callable[[], int],
    present: Callable[[Message], Message],
    writing: Holding | None = None,
    progress: SearchProgress | None = None,
) -> Iterator[Hit]:
    """``LogReader.search``, reading only the candidate blocks when the index answers;
    with ``writing`` (the writer lock), first ``catch_up`` a lagging sidecar. A catch-up
    that fails (a full disk, a lock timeout, a damaged record) leaves the scan to it.

    A log replaced or truncated meanwhile is planned again, after what was read
    (``progress``: a new one, or one an earlier search of the same query left, to go on
    after it); the hits handed out count against ``limit``. Replaced twice in a row, the
    search goes on as a scan: its batches need no plan of the whole log, which a writer
    compacting back to back (each compaction making the next search re-index) outruns.

    :raises LogReplacedError: what the search had read was rewritten, or the log was
        replaced ``MAX_REPLANS`` times in a row with no batch read in between.
    """
    progress = SearchProgress() if progress is None else progress
    left = query.limit
    while True:
        attempt = _attempt(
            indexer,
            reader,
            log,
            dataclasses.replace(query, limit=left),
            reading=reading,
            base=base,
            present=present,
            writing=writing,
            progress=progress,
            use_index=progress.replans < _REPLANS_BEFORE_SCAN,
        )
        try:
            for hit in attempt:
                yield hit
                left = None if left is None else left - 1
            return
        except LogReplacedError as exc:
            progress.retry(exc)
            writing = None  # caught up (or tried to) once


def _attempt(
    indexer: KeywordIndexer,
    reader: LogReader,
    log: LogStorage,
    query: SearchQuery,
    *,
    reading: Holding,
    base: Callable[[], int],
    present: Callable[[Message], Message],
    writing: Holding | None,
    progress: SearchProgress,
    use_index: bool = True,
) -> Iterator[Hit]:
    """One plan of ``indexed_search`` and its reads, after ``progress`` (a scan unless
    ``use_index``)."""
    # Only a query the index can answer catches it up (a date range, a regex, a query of no
    # three-character run are scans), and a store whose index is written with its records
    # (a database) never lags: neither takes a lock hold for it.
    if writing is not None and indexer.may_lag() and query_grams(query.matcher.index_terms):
        with reading():
            lagging = indexer.lagging()
        if lagging:
            with contextlib.suppress(OSError, ConversationCodecError), writing():
                indexer.catch_up()
    with reading():
        found = indexer.candidates(query) if use_index else None
        if found is not None:
            first_seq, first, stop = reader.plan(query.span, base(), progress)
            newest = query.newest_first
            plan = candidate_ranges(found[0], found[1], first, stop, newest_first=newest)
            log_id = log.fmt.log_id if log.fmt else None
    if found is None:
        yield from reader.search(
            query, reading=reading, base=base, present=present, progress=progress
        )
        return
    left, budget = query.limit, 2 * BLOCK
    carry = next(plan, None)
    while carry is not None and left != 0:
        # A batch of ranges per lock hold: small at first (a limit is often met in the
        # newest blocks), growing to READ_BATCH records.
        batch, size = [carry], len(carry)
        carry = next(plan, None)
        while carry is not None and size + len(carry) <= budget:
            batch.append(carry)
            size += len(carry)
            carry = next(plan, None)
        budget = min(2 * budget, READ_BATCH)
        hits: list[Hit] = []
        with reading():
            fmt = log.fmt
            if (fmt.log_id if fmt else None) != log_id or len(log.index) < max(
                r.stop for r in batch
            ):
                raise LogReplacedError("the log was replaced or truncated during a search")
            for r in joined(batch, newest_first=query.newest_first):
                some = reader.matches(
                    query.matcher,
                    query.roles,
                    r.start,
                    r.stop,
                    first_seq,
                    query.span,
                    present,
                    progress,
                )
                hits.extend(reversed(some) if query.newest_first else some)
            progress.batch(reader.record, last=carry is None)
        for hit in hits:
            if left == 0:
                return
            yield hit
            left = None if left is None else left - 1
        read = (min(r.start for r in batch), max(r.stop for r in batch))
        progress.passed(*read, newest_first=query.newest_first)

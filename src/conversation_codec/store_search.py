"""One conversation's part of ``ConversationStore.search()``: its hits, read a chunk per open.

The store merges one such stream per conversation (``heapq.merge``); each reopens its log
per chunk, so merging thousands of conversations holds no file open between chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from ._time import EPOCH, MAX_US, ONE_US, to_datetime
from .codec import ConversationCodec
from .errors import ConversationCodecError, LogReplacedError
from .search import Hit, SearchQuery
from .search_progress import SearchProgress

__all__ = ["OnError", "conversation_hits"]

_FIRST_CHUNK = 64  # hits read from one conversation per open, growing x4 per reopen
_MAX_CHUNK = 4096

# Called with (conversation_id, error) for each conversation search() or prune() skipped
# (and with a pack's path for an unreadable pack, FORMAT.md §18.2.3).
OnError = Callable[[str, ConversationCodecError], None]


def conversation_hits(
    open_log: Callable[[str], ConversationCodec],
    conversation_id: str,
    query: str | None,
    span: tuple[int | None, int | None],
    options: dict[str, Any],
    limit: int | None,
    on_error: OnError | None = None,
) -> Iterator[tuple[tuple[int, str, int], tuple[str, Hit]]]:
    """Yield one conversation's hits keyed for the merge, reopening the log per chunk.

    Every chunk goes on with the same ``SearchProgress``: what is left to read, numbered
    as when the first chunk began, and the first and last record read, checked again. So
    the chunks give what one ``ConversationCodec.search`` gives; a chunk that ends inside
    a batch reads it again from the start, skipping the hits already yielded (by seq).

    A conversation that cannot be read is skipped (``on_error``). ``LogReplacedError`` is
    raised instead: the codec's search already planned again across a compaction, so it
    means the history being read was rewritten, or replaced again and again (a state that
    passes, not a log that cannot be read: its hits are not dropped silently).
    """
    lo, hi = span
    # Records lie in [0, MAX_US) (FORMAT.md §6): a bound outside, which no datetime holds
    # (since=1e300), is the same as none, or matches nothing.
    if (lo is not None and lo >= MAX_US) or (hi is not None and hi <= 0):
        return
    lo = None if lo is None or lo <= 0 else lo
    hi = None if hi is None or hi >= MAX_US else hi
    newest_first = options["newest_first"]
    parsed = SearchQuery.parse(
        query,
        since=_at(lo) if lo is not None else None,
        until=_at(hi) if hi is not None else None,
        **options,
    )
    progress = SearchProgress()
    chunk = min(limit, _FIRST_CHUNK) if limit is not None else _FIRST_CHUNK
    after: int | None = None  # the seq of the last hit yielded
    while chunk:
        batch: list[Hit] = []
        failed = None
        try:
            with open_log(conversation_id) as codec:
                hits = codec._search(parsed, progress)
                if after is not None:
                    hits = (h for h in hits if _is_past(h.seq, after, newest_first))
                batch.extend(islice(hits, chunk))  # keeps what was read before a failure
        except ConversationCodecError as exc:
            failed = exc
        for hit in batch:
            ts = (hit.timestamp - EPOCH) // ONE_US
            yield (ts, conversation_id, hit.seq), (conversation_id, hit)
        if isinstance(failed, LogReplacedError):
            raise failed
        if failed is not None:
            if on_error is not None:
                on_error(conversation_id, failed)
            return
        if len(batch) < chunk:
            return
        after = batch[-1].seq
        chunk = min(chunk * 4, _MAX_CHUNK)


def _at(us: int) -> datetime:
    return to_datetime(us)


def _is_past(seq: int, after: int, newest_first: bool) -> bool:
    return seq < after if newest_first else seq > after

"""KeywordIndexer: keep a log's blind keyword index (``P.kwi``) exact, and search with it.

The index is opt-in (``search_index=True``) but, once a log has one, every writer of this
library keeps it in step whether or not it passed the option: the sidecar's existence is
the signal (FORMAT.md §17.5). Appends add a segment; a pop re-derives the last block's
postings; every rewrite (``Compactor``) writes a fresh index under the new log's keys;
``clear`` deletes it with the log. A reader that finds the index behind, ahead of, or not
matching the log (a writer without this code) scans instead, so a search never returns
fewer hits than the scan (§17.6).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._fsio import FileIO
from .crypto import RecordKey
from .errors import LogReplacedError
from .index_cache import IndexCache
from .keyword_index import (
    BLOCK,
    BLOCK_SHIFT,
    PendingIndex,
    Postings,
    Tokenizer,
    block_entries,
    message_words,
    query_grams,
)
from .paths import kwi_path
from .reading import READ_BATCH, LogReader
from .records import SealedRecords
from .search import Hit, SearchQuery
from .storage.base import IndexMismatch, LogFormat, LogStorage
from .storage.file import kwi
from .storage.file.kwi import TAG_BYTES, KwiState, Segment

__all__ = ["FLUSH_MESSAGES", "MERGE_SEGMENTS", "IndexBuilder", "KeywordIndexer", "KwiCheck"]

Message = dict[str, Any]
# FORMAT.md §17.5: an append merges the sidecar into one segment when the segments after the
# first outweigh it (geometric: each posting is rewritten O(1) times on average) or number
# more than MERGE_SEGMENTS (a new reader decrypts each once).
MERGE_SEGMENTS = 1024
FLUSH_MESSAGES = 32  # appended messages whose postings are written as one segment
MERGE_MIN_BYTES = 64 * 1024
_NO_TAG = bytes(TAG_BYTES)
_UNREAD = b""  # KwiState.tag of postings held in memory whose record tag is not read yet


@dataclass(frozen=True, slots=True)
class KwiCheck:
    """What ``ConversationCodec.verify()`` learned of the keyword index: ``problem`` is ""
    when the sidecar is present and equals an index rebuilt from the log."""

    present: bool
    covered: int
    problem: str


class IndexBuilder:
    """Collect the postings of messages seen in seq order (a rebuild, a rewrite)."""

    def __init__(self, tokens: Tokenizer) -> None:
        self._tokens = tokens
        self._words: dict[int, set[str]] = {}  # block -> its words (a block's share most)

    def add(self, seq: int, message: Message) -> None:
        words = message_words(message)
        block = seq >> BLOCK_SHIFT
        found = self._words.get(block)
        if found is None:
            self._words[block] = set(words)
        else:
            found.update(words)

    def postings(self) -> Postings:
        out = Postings()
        for block in sorted(self._words):
            out.add_tokens(self._tokens.tokens(self._words[block]), block)
        return out

    def blocks(self) -> dict[bytes, list[int]]:
        """token -> the ascending blocks holding it."""
        blocks: dict[bytes, list[int]] = {}
        for block in sorted(self._words):
            for token in self._tokens.tokens(self._words[block]):  # each token once
                found = blocks.get(token)
                if found is None:
                    blocks[token] = [block]
                else:
                    found.append(block)
        return blocks


class KeywordIndexer:
    """The keyword index of the log in ``log`` at ``path`` (read through ``reader``);
    ``wanted``: the codec was opened with ``search_index=True``; ``cache``: where states
    are handed back on ``release()`` and looked for before reading the sidecar. Every
    method but ``search`` expects the log's lock held."""

    def __init__(
        self,
        log: LogStorage,
        reader: LogReader,
        path: Path | None,
        io: FileIO,
        *,
        wanted: bool,
        cache: IndexCache | None = None,
    ) -> None:
        self._log = log
        self._reader = reader
        self._path = None if path is None else os.fspath(path)
        self._io = io
        self.wanted = wanted
        self._cache = cache
        self._state: KwiState | None = None
        self._keys: tuple[bytes, Tokenizer, RecordKey] | None = None  # for one log_id
        self._pending = PendingIndex()  # appended messages not yet in P.kwi
        # (log_id, covered, lock inode, truncations) when the tag last matched: until a
        # writer truncates or rewrites, the records the index covers cannot change.
        self._validated: tuple[bytes, int, int, int] | None = None

    # -- state -----------------------------------------------------------------------------

    def keys(self) -> tuple[Tokenizer, RecordKey] | None:
        """The current log's token and segment keys; None when it cannot have an index."""
        fmt = self._log.fmt
        if self._path is None or fmt is None or not isinstance(fmt.records, SealedRecords):
            return None
        if self._keys is None or self._keys[0] != fmt.log_id:
            token_key, segment_key = fmt.records.cipher.index_keys()
            self._keys = (fmt.log_id, Tokenizer(token_key), segment_key)
        return self._keys[1], self._keys[2]

    def present(self) -> bool:
        """Whether the log has a keyword index file (what makes writers keep it)."""
        return self._path is not None and os.path.lexists(kwi_path(self._path))

    def active(self) -> bool:
        return self.keys() is not None and (self.wanted or self.present())

    def current(self) -> KwiState | None:
        """The sidecar as it is now, read incrementally; None when there is none."""
        keys, fmt = self.keys(), self._log.fmt
        if keys is None or fmt is None or self._path is None:
            return None
        state = self._state
        if (state is None or state.log_id != fmt.log_id) and self._cache is not None:
            state = self._state = self._cache.take(self._path, fmt.log_id)
        if state is not None and state.log_id == fmt.log_id:
            if not self._pending and kwi.more(self._path, keys[1], state):
                return state
            if self._pending and kwi.unchanged(self._path, state):
                self._pending.fold(state.postings, keys[0])
                return state  # postings in memory beyond the file, which no one changed
        self._pending = PendingIndex()  # another writer came by: it indexed them, or we catch up
        self._state = state = kwi.load(self._path, fmt.log_id, keys[1])
        return state

    def _tag(self, count: int) -> bytes:
        """The tag of the segment ending at ``count``: record ``count-1``'s HMAC tail."""
        return self._log.read_body(count - 1)[-TAG_BYTES:] if count else _NO_TAG

    def usable(self, state: KwiState | None) -> bool:
        """Whether ``state`` describes a prefix of the log as it is (§17.4): the chain of
        segments read before any damage, or nothing (then the search is a scan)."""
        if state is None or state.covered > len(self._log.index):
            return False
        memo = self._memo(state)
        if memo is not None and memo == self._validated:
            return True
        try:
            ok = self._tag(state.covered) == state.tag
        except IndexMismatch:
            return False
        if ok:
            self._validated = memo
        return ok

    def _memo(self, state: KwiState) -> tuple[bytes, int, int, int] | None:
        seen = self._log.seen
        return None if seen is None else (state.log_id, state.covered, seen[0], seen[2])

    # -- writes ----------------------------------------------------------------------------

    def appended(self, first: int, messages: list[Message]) -> None:
        """Index the messages just appended at ``first``.

        Their words are held in memory (tokenized per block when a search or the write
        needs them) and reach ``P.kwi`` as one segment
        per ``FLUSH_MESSAGES`` appended messages (§17.5): a write per append would double
        an fsync-durable append's cost (ext4 commits the sidecar's new blocks with the
        log's). Postings not yet written are lost with the process, which costs nothing
        but speed: readers scan the records the file does not cover, and the next writer
        indexes them again (reading only those).
        """
        keys = self.keys()
        if keys is None or self._path is None or not (self.wanted or self.present()):
            return
        state, pending = self._state, self._pending
        fast = pending and state is not None and state.covered == first and self._fresh(state)
        if not fast or state is None:
            state = self.current()  # the usual append skips this stat: no writer came by
            if (
                state is None
                or not state.segments
                or not self.usable(state)
                or state.covered > first
            ):
                self.rebuild()  # none yet, not this log's, or for records a pop took back
                return
            pending = self._pending
            if not pending:
                pending = self._pending = PendingIndex(state.covered, state.tag)
            for seq, message, _ in self._reader.decoded(state.covered, first):  # a lagging file
                pending.add(seq, message)
        for i, message in enumerate(messages):
            pending.add(first + i, message)
        # The tag is read when the postings are written (by flush, in this same lock hold),
        # not per append: _fresh() vouches for the records meanwhile, as usable() does.
        state.covered, state.tag = first + len(messages), _UNREAD
        self._validated = self._memo(state)
        if pending.hi - pending.lo >= FLUSH_MESSAGES:
            self.flush(checked=not fast)

    def _fresh(self, state: KwiState) -> bool:
        """Whether no writer truncated or rewrote the log since ``state`` was validated."""
        memo = self._memo(state)
        return memo is not None and memo == self._validated

    def flush(self, *, checked: bool = False) -> None:
        """Write the postings held in memory to ``P.kwi`` (one segment, or a merge).

        Only right after an append, in its lock hold (``checked``: after ``current()``); a
        file that another writer changed meanwhile is left alone (the next append reads
        it and catches up)."""
        state, keys, pending = self._state, self.keys(), self._pending
        if not pending or state is None or keys is None or self._path is None:
            return
        self._pending = PendingIndex()
        if not self._fresh(state) or not (checked or kwi.unchanged(self._path, state)):
            self._state = None
            return
        if state.tag == _UNREAD:
            state.tag = self._tag(state.covered)
        blocks = pending.tokens(keys[0])
        pending.fold(state.postings, keys[0])
        segment = Segment(pending.lo, state.covered, state.tag)
        frame = kwi.encode_segment(keys[1], segment, block_entries(blocks))
        tail = state.size + len(frame) - state.first_size
        try:
            if state.segments >= MERGE_SEGMENTS or tail > max(state.first_size, MERGE_MIN_BYTES):
                self._write(state.postings, state.covered, state.tag)
                return
            kwi.append_segment(self._path, self._io, frame, state.size)
        except OSError:
            self._state = None  # the records are committed; the index lags, readers scan
            return
        state.size += len(frame)
        state.segments += 1

    def before_pop(self) -> KwiState | None:
        """Return the index's state if it is exact now (call before a pop)."""
        if not self.active():
            return None
        state = self.current()
        return state if self.usable(state) and state is not None else None

    def popped(self, exact: KwiState | None, count: int) -> None:
        """Drop the postings of the records from ``count`` on (after a pop): the last
        block's are derived again from the messages left in it, and the file is rewritten."""
        if not self.active():
            return
        if exact is None or exact.covered < count:
            self.rebuild()
            return
        keys = self.keys()
        assert keys is not None
        start = (count >> BLOCK_SHIFT) << BLOCK_SHIFT
        exact.postings.drop_from(count >> BLOCK_SHIFT)
        builder = IndexBuilder(keys[0])
        for seq, message, _ in self._reader.decoded(start, count):
            builder.add(seq, message)
        exact.postings.add_blocks(builder.blocks())
        self._write(exact.postings, count)

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Index every record of the log again, replacing the sidecar; return the count.
        ``progress(done, total)`` is called after each record."""
        keys = self.keys()
        if keys is None:
            return 0
        count = len(self._log.index)
        builder = IndexBuilder(keys[0])
        for seq, message, _ in self._reader.decoded(0, count):
            builder.add(seq, message)
            if progress is not None:
                progress(seq + 1, count)
        self._write(builder.postings(), count)
        return count

    def builder_for(self, fmt: LogFormat) -> IndexBuilder | None:
        """A builder under the keys of ``fmt``, a log a rewrite is about to write, when the
        index is kept (the option, or a sidecar); None otherwise."""
        if self._path is None or not (self.wanted or self.present()):
            return None
        if not isinstance(fmt.records, SealedRecords):
            return None
        return IndexBuilder(Tokenizer(fmt.records.cipher.index_keys()[0]))

    def rewritten(self, builder: IndexBuilder | None, count: int, tag: bytes) -> None:
        """After a rewrite: write the index it built, or delete the old log's (whose
        postings name records that may be gone, under keys that may be retired)."""
        try:
            if builder is None:
                if self.present():
                    self.remove()
                return
            self._write(builder.postings(), count, tag if count else _NO_TAG)
        except OSError:
            # The log is committed; the old index names another log_id, so readers scan.
            with contextlib.suppress(OSError):
                self.remove()

    def _write(self, postings: Postings, count: int, tag: bytes | None = None) -> None:
        keys, fmt = self.keys(), self._log.fmt
        assert keys is not None and fmt is not None and self._path is not None
        segment = Segment(0, count, self._tag(count) if tag is None else tag)
        frame = kwi.encode_segment(keys[1], segment, postings.encode())
        self._state, self._pending = None, PendingIndex()
        kwi.write_all_segments(self._path, self._io, fmt.log_id, [frame])
        self._state = kwi.written(self._path, fmt.log_id, segment, postings, len(frame))
        self._validated = None if self._state is None else self._memo(self._state)

    def release(self) -> None:
        """Hand the state to the cache, if any (the codec closes): the file's postings,
        never ones held in memory only (appended messages not folded in are dropped)."""
        state, pending, cache = self._state, self._pending, self._cache
        self._state = None
        if cache is None or self._path is None or state is None or pending.folded:
            return
        if pending:
            state.covered, state.tag = pending.lo, pending.tag  # as the file holds it
        if state.tag != _UNREAD:
            cache.put(self._path, state)

    def remove(self) -> None:
        """Delete the sidecar (the log was deleted, or a rewrite without the index)."""
        if self._path is not None:
            kwi.remove(self._path, self._io)
        self._state, self._pending = None, PendingIndex()

    def check(self) -> KwiCheck:
        """Compare the sidecar with an index rebuilt from the log (``verify``)."""
        keys = self.keys()
        state = self.current()
        if keys is None or state is None:
            return KwiCheck(self.present(), 0, "")
        if not self.usable(state):
            why = state.problem or "it does not describe the log as it is"
            return KwiCheck(True, state.covered, f"keyword index not used: {why}")
        builder = IndexBuilder(keys[0])
        for seq, message, _ in self._reader.decoded(0, state.covered):
            builder.add(seq, message)
        if builder.postings().lists != state.postings.lists:
            return KwiCheck(True, state.covered, "the keyword index disagrees with the log")
        if state.problem:
            why = f"keyword index used for seqs before {state.covered} only: {state.problem}"
            return KwiCheck(True, state.covered, why)
        return KwiCheck(True, state.covered, "")

    # -- search ----------------------------------------------------------------------------

    def _candidates(self, query: SearchQuery) -> tuple[list[int], int] | None:
        """The candidate blocks of a query and the records the index covers; None when the
        index cannot answer (no grams, no usable index): then the scan does."""
        grams = query_grams(query.matcher.index_terms)
        keys = self.keys()
        if grams is None or keys is None:
            return None
        state = self.current()
        if state is None or not self.usable(state):
            return None
        return state.postings.candidates(keys[0].token(g) for g in grams), state.covered

    def search(
        self,
        query: SearchQuery,
        *,
        reading: Callable[[], contextlib.AbstractContextManager[None]],
        base: Callable[[], int],
        present: Callable[[Message], Message],
    ) -> Iterator[Hit]:
        """``LogReader.search``, reading only the candidate blocks when the index answers."""
        with reading():
            found = self._candidates(query)
            if found is not None:
                lo, hi = query.span
                first_seq = base()
                first = 0 if lo is None else self._reader.first_at_or_after(lo, (-1,))
                first = max(first_seq, first)
                stop = len(self._log.index)
                stop = max(first, stop if hi is None else self._reader.first_at_or_after(hi, (0,)))
                newest = query.newest_first
                plan = _ranges(found[0], found[1], first, stop, newest_first=newest)
                log_id = self._log.fmt.log_id if self._log.fmt else None
        if found is None:
            yield from self._reader.search(query, reading=reading, base=base, present=present)
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
                fmt = self._log.fmt
                if (fmt.log_id if fmt else None) != log_id or len(self._log.index) < max(
                    r.stop for r in batch
                ):
                    raise LogReplacedError("the log was replaced or truncated during a search")
                for r in batch:
                    some = self._reader.matches(
                        query.matcher, query.roles, r.start, r.stop, first_seq, query.span, present
                    )
                    hits.extend(reversed(some) if query.newest_first else some)
            for hit in hits:
                if left == 0:
                    return
                yield hit
                left = None if left is None else left - 1


def _ranges(
    blocks: list[int], covered: int, first: int, stop: int, *, newest_first: bool
) -> Iterator[range]:
    """Yield the seqs to read, in pieces of at most ``BLOCK``: the candidate ``blocks``
    (ascending) within the ``covered`` records, then every record from ``covered`` (not
    indexed yet), all clipped to ``[first, stop)``; newest first when asked."""
    lo_block = bisect.bisect_left(blocks, first >> BLOCK_SHIFT)
    hi_block = bisect.bisect_left(blocks, ((min(stop, covered) - 1) >> BLOCK_SHIFT) + 1)
    wanted = blocks[lo_block:hi_block]
    pieces: Iterable[range] = (
        range(max(b * BLOCK, first), min(b * BLOCK + BLOCK, covered, stop)) for b in wanted
    )
    tail = range(max(covered, first), stop, BLOCK)
    tails = (range(a, min(a + BLOCK, stop)) for a in tail)
    if newest_first:
        pieces = (
            range(max(b * BLOCK, first), min(b * BLOCK + BLOCK, covered, stop))
            for b in reversed(wanted)
        )
        tails = (range(a, min(a + BLOCK, stop)) for a in reversed(tail))
        yield from (r for r in itertools.chain(tails, pieces) if r)
        return
    yield from (r for r in itertools.chain(pieces, tails) if r)

"""KeywordIndexer: keep a log's blind keyword index (``P.kwi``) true, and answer searches.

The index is opt-in (``search_index=True``) but, once a log has one, every writer of this
library keeps it true whether or not it passed the option: the index's existence is the
signal (FORMAT.md §17.5). Appends leave a file's index alone (it covers a prefix of the
log), and the first search that finds ``FLUSH_MESSAGES`` records past it indexes them
(``catch_up``, under the writer lock; ``keyword_search``); a pop re-derives the last
block's postings; every rewrite (``Compactor``) writes a fresh index under the new log's
keys; ``clear`` deletes it with the log. A reader that finds the index behind, ahead of,
or not matching the log (a writer without this code) scans what it does not cover, so a
search never returns fewer hits than the scan (§17.6).

The segments live where the log's storage keeps them (``storage.postings``): the sidecar
``P.kwi`` beside a log file, a table in the database of a PostgreSQL log. The logic here
is the same for both; an ``exact`` store (the database: written in the records' own
transaction) gets each append's segment at once, and needs no check against the log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .crypto import RecordKey
from .index_cache import IndexCache
from .keyword_builder import IndexBuilder
from .keyword_index import (
    BLOCK_SHIFT,
    PendingIndex,
    Postings,
    Tokenizer,
    block_entries,
    query_grams,
)
from .reading import LogReader
from .records import SealedRecords
from .search import SearchQuery
from .storage.base import IndexMismatch, LogFormat, LogStorage
from .storage.file import kwi
from .storage.file.kwi import TAG_BYTES, KwiState, Segment
from .storage.postings import ChainMoved

__all__ = ["FLUSH_MESSAGES", "MERGE_SEGMENTS", "IndexBuilder", "KeywordIndexer", "KwiCheck"]

Message = dict[str, Any]
# FORMAT.md §17.5: a catch-up merges the sidecar into one segment when the segments after the
# first outweigh it (geometric: each posting is rewritten O(1) times on average) or number
# more than MERGE_SEGMENTS (a new reader decrypts each once).
MERGE_SEGMENTS = 1024
FLUSH_MESSAGES = 32  # records past the sidecar that make a search index them first
CATCH_UP_MESSAGES = 4096  # records indexed per segment when a search catches up
MERGE_MIN_BYTES = 64 * 1024
# An exact store (a database) counts messages, not bytes: it merges when the segments after
# the first cover more messages than it, and this many at least (or number MERGE_SEGMENTS).
MERGE_MIN_MESSAGES = 1024
_NO_TAG = bytes(TAG_BYTES)
_UNREAD = b""  # KwiState.tag of postings held in memory whose record tag is not read yet


@dataclass(frozen=True, slots=True)
class KwiCheck:
    """What ``ConversationCodec.verify()`` learned of the keyword index: ``problem`` is ""
    when the sidecar is present and equals an index rebuilt from the log."""

    present: bool
    covered: int
    problem: str


class KeywordIndexer:
    """The keyword index of the log in ``log`` (read through ``reader``), kept where the
    storage says (``log.keyword_index()``); ``wanted``: the codec was opened with
    ``search_index=True``; ``cache``: where states are handed back on ``release()`` and
    looked for before reading the index (a store that names it: the sidecar). Every method
    but ``may_lag`` expects the log's lock held (``keyword_search`` takes it)."""

    def __init__(
        self, log: LogStorage, reader: LogReader, *, wanted: bool, cache: IndexCache | None = None
    ) -> None:
        self._log = log
        self._reader = reader
        self._store = log.keyword_index()
        self.wanted = wanted
        self._cache = cache
        self._state: KwiState | None = None
        self._keys: tuple[bytes, Tokenizer, RecordKey] | None = None  # for one log_id
        # An exact store's segment of the append under way: (blocks, segment, frame).
        self._staged: tuple[list[tuple[int, set[bytes]]], Segment, bytes] | None = None
        # (log_id, covered, lock inode, truncations) when the tag last matched: until a
        # writer truncates or rewrites, the records the index covers cannot change.
        self._validated: tuple[bytes, int, int, int] | None = None

    # -- state -----------------------------------------------------------------------------

    def keys(self, fmt: LogFormat | None = None) -> tuple[Tokenizer, RecordKey] | None:
        """The current log's (or ``fmt``'s) token and segment keys; None when it cannot
        have an index."""
        fmt = fmt or self._log.fmt
        if self._store is None or fmt is None or not isinstance(fmt.records, SealedRecords):
            return None
        if self._keys is None or self._keys[0] != fmt.log_id:
            token_key, segment_key = fmt.records.cipher.index_keys()
            self._keys = (fmt.log_id, Tokenizer(token_key), segment_key)
        return self._keys[1], self._keys[2]

    def present(self) -> bool:
        """Whether the log has a keyword index (what makes writers keep it)."""
        return self._store is not None and self._store.exists()

    def active(self) -> bool:
        return self.keys() is not None and (self.wanted or self.present())

    def current(self) -> KwiState | None:
        """The index as it is now, read incrementally; None when there is none."""
        keys, fmt, store = self.keys(), self._log.fmt, self._store
        if keys is None or fmt is None or store is None:
            return None
        state = self._state
        if (state is None or state.log_id != fmt.log_id) and self._cache is not None:
            state = self._state = self._cache.take(store, fmt.log_id)
        if state is not None and state.log_id == fmt.log_id and store.more(keys[1], state):
            return state.settle()
        self._state = state = store.load(fmt.log_id, keys[1])
        return state

    def _exact(self) -> bool:
        return self._store is not None and self._store.exact

    def _tag(self, count: int) -> bytes:
        """The tag of the segment ending at ``count``: record ``count-1``'s HMAC tail;
        zeros in an exact store, written with the records (§17.9: no check needed)."""
        if self._exact() or not count:
            return _NO_TAG
        return self._log.read_body(count - 1)[-TAG_BYTES:]

    def usable(self, state: KwiState | None) -> bool:
        """Whether ``state`` describes a prefix of the log as it is (§17.4): the chain of
        segments read before any damage, or nothing (then the search is a scan)."""
        if state is None or state.covered > len(self._log.index):
            return False
        if self._exact():
            return True
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
        """After an append at ``first``: an exact store (a database) writes the messages'
        segment with them; a file's sidecar is not touched (FORMAT.md §17.5), except that a
        codec asked for an index creates it when the log has none. The records past what
        the sidecar covers are scanned by searches, and the first search that finds
        ``FLUSH_MESSAGES`` of them indexes them (``catch_up``): an append pays nothing."""
        store = self._store
        if store is None or not (store.exact or self.wanted):
            return  # a sidecar nobody asked for: a file log's usual append, no keys needed
        keys = self.keys()
        if keys is None:
            return
        if store.exact:
            if self.wanted or self.present():
                self._append_exact(first, messages, *keys)
            return
        if not store.exists():
            try:
                self.rebuild()
            except OSError:  # the records are committed (§17.5): no index, readers scan,
                self._forget()  # and the next append that finds none tries again

    def may_lag(self) -> bool:
        """Whether the index can lag behind the log (a sidecar; no lock needed): the records
        of an exact store (a database) are indexed in their own transaction."""
        return self._store is not None and not self._store.exact

    def lagging(self) -> bool:
        """Whether a search should first bring the sidecar up to date (``catch_up``): it
        exists, and lacks ``FLUSH_MESSAGES`` records or more, is damaged past the records
        it covers (even with none to add: a torn segment's records were popped since), or
        does not describe the log. Any lock held."""
        if self._exact() or self.keys() is None or not self.present():
            return False
        state = self.current()
        if state is None:
            return False  # deleted since: a search does not bring it back
        if not state.segments or not self.usable(state):
            return True
        lacks = len(self._log.index) - state.covered
        return lacks >= FLUSH_MESSAGES or bool(state.problem)

    def catch_up(self) -> None:
        """Index the records the sidecar lacks (writer lock held): a segment per
        ``CATCH_UP_MESSAGES`` read, merged as §17.5 says; a sidecar that does not describe
        the log is rebuilt. On failure what is held in memory is dropped (readers scan)."""
        try:
            if not self.lagging():  # looked again under the writer lock
                return
            state, count = self.current(), len(self._log.index)
            if state is None or not state.segments or not self.usable(state):
                self.rebuild()
                return
            torn = bool(state.problem)  # its next segment overwrites the damaged bytes
            while state is not None and count > state.covered:
                if count - state.covered < FLUSH_MESSAGES and not torn:
                    break
                stop, torn = min(count, state.covered + CATCH_UP_MESSAGES), False
                pending = PendingIndex(state.covered)
                for seq, message, _ in self._reader.decoded(state.covered, stop):
                    pending.add(seq, message)
                state.covered, state.tag = stop, _UNREAD
                self._validated = self._memo(state)
                self._add_segment(pending)
                state = self._state
            if torn and state is not None:  # damage past records since popped: cut it off
                self._write(state.settle().postings, state.covered, state.tag, merge=True)
        except BaseException:
            self._forget()
            raise

    def appending(self, first: int, messages: list[Message]) -> None:
        """Offer an exact store the segment of the messages about to be appended at
        ``first``, to be written with them (a database: one statement for both)."""
        store, self._staged = self._store, None
        if store is None or not store.exact:
            return
        keys = self.keys()
        if messages and keys is not None and self.active():
            self._staged = self._segment(first, messages, *keys)
            store.stage(self._staged[2], self._staged[1])
        else:
            store.stage(None, None)  # nothing left from an append that failed before

    def _segment(
        self, first: int, messages: list[Message], tokens: Tokenizer, key: RecordKey
    ) -> tuple[list[tuple[int, set[bytes]]], Segment, bytes]:
        """The tokens of each block, segment and sealed frame of ``messages`` appended at
        ``first`` (words gathered per block and tokenized once, as a file's held ones)."""
        words = PendingIndex(first)
        for i, message in enumerate(messages):
            words.add(first + i, message)
        blocks, segment = words.tokens(tokens), Segment(first, first + len(messages), _NO_TAG)
        return blocks, segment, kwi.encode_segment(key, segment, block_entries(blocks))

    def _append_exact(
        self, first: int, messages: list[Message], tokens: Tokenizer, key: RecordKey
    ) -> None:
        """Append to an exact store: the segment of these messages alone, in the
        transaction that writes them, with no need to read the index first (a writer
        opened for one append reads none of it); merged as the file's (§17.9)."""
        staged, self._staged = self._staged, None
        if not messages:
            return
        hi = first + len(messages)
        if staged is None or (staged[1].lo, staged[1].hi) != (first, hi):
            staged = self._segment(first, messages, tokens, key)
        blocks, segment, frame = staged
        assert self._store is not None
        self._log.on_rollback(self._forget)
        try:
            counted = self._store.append(frame, segment, 0)
        except ChainMoved:
            self.rebuild()  # records no writer indexed (or a view gone stale): all again
            return
        state, fmt = self._state, self._log.fmt
        log_id = None if fmt is None else fmt.log_id
        # A state held in memory grows with it, unless another writer's segments come first.
        if state is not None and state.log_id == log_id and state.covered == first:
            for block, found in blocks:  # none before the last block the state holds
                state.postings.add_tokens(found, block)
            state.covered, state.size = hi, state.size + len(frame)
            state.segments += 1
        if counted is not None:
            head, count = counted
            if count >= MERGE_SEGMENTS or hi - head > max(head, MERGE_MIN_MESSAGES):
                state = self.current()
                if state is not None and state.covered == hi:
                    self._write(state.postings, hi)
                else:
                    self.rebuild()

    def _forget(self) -> None:
        """Drop what is held in memory (the transaction that wrote it rolled back)."""
        self._state, self._validated = None, None

    def _fresh(self, state: KwiState) -> bool:
        """Whether no writer truncated or rewrote the log since ``state`` was validated."""
        memo = self._memo(state)
        return memo is not None and memo == self._validated

    def _add_segment(self, pending: PendingIndex) -> None:
        """Write the postings of ``pending`` (the records past the chain) to ``P.kwi``: one
        segment, or a merge. In ``catch_up``'s lock hold, after ``current()``; a log that a
        writer truncated or rewrote meanwhile is left alone (the next search catches up)."""
        state, keys = self._state, self.keys()
        if not pending or state is None or keys is None or self._store is None:
            return
        if not self._fresh(state):
            self._state = None
            return
        if state.tag == _UNREAD:
            state.tag = self._tag(state.covered)
        blocks = pending.tokens(keys[0])
        segment = Segment(pending.lo, state.covered, state.tag)
        frame = kwi.encode_segment(keys[1], segment, block_entries(blocks))
        tail = state.size + len(frame) - state.first_size
        try:
            if state.segments >= MERGE_SEGMENTS or tail > max(state.first_size, MERGE_MIN_BYTES):
                pending.fold(state.settle().postings, keys[0])
                self._write(state.postings, state.covered, state.tag, merge=True)
                return
            self._store.append(frame, segment, state.size)
        except OSError:
            self._state = None  # the records are committed; the index lags, readers scan
            return
        state.size, state.last = state.size + len(frame), frame[-TAG_BYTES:]
        state.segments += 1
        state.hold(pending.unfolded(blocks))  # they join the postings in memory when needed

    def before_pop(self, count: int) -> KwiState | None:
        """Return the index's state if it is exact now (call before a pop of the records
        from ``count`` on). A sidecar is rewritten here, before the truncation commits, as
        a prefix of the log before and after it: no crash leaves the popped records'
        postings (FORMAT.md §17.5, step 2)."""
        if not self.active():
            return None
        state = self.current()
        exact = state if self.usable(state) and state is not None else None
        if not self._exact():
            try:
                self._pop(exact, count)
            except OSError:  # the sidecar may hold their postings: it goes, or the pop fails
                self.remove()
        return exact

    def popped(self, exact: KwiState | None, count: int) -> None:
        """Drop the postings of the records from ``count`` on (after a pop), in the pop's
        transaction (a database): the last block's are derived again from the messages
        left in it, and the index is written again."""
        if self._exact() and self.active():
            self._pop(exact, count)

    def _pop(self, exact: KwiState | None, count: int) -> None:
        if exact is None:
            self.rebuild(count=count)
            return
        if exact.covered <= count and not exact.problem:
            return  # the pop took only records the index does not cover
        if exact.covered <= count:  # bytes past the chain may hold the popped postings
            self._write(exact.postings, exact.covered)
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

    def rebuild(
        self, progress: Callable[[int, int], None] | None = None, *, count: int | None = None
    ) -> int:
        """Index every record of the log again (the first ``count``), replacing the sidecar;
        return the count. ``progress(done, total)`` is called after each record."""
        keys = self.keys()
        if keys is None:
            return 0
        count = len(self._log.index) if count is None else count
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
        if self._store is None or not (self.wanted or self.present()):
            return None
        if not isinstance(fmt.records, SealedRecords):
            return None
        return IndexBuilder(Tokenizer(fmt.records.cipher.index_keys()[0]))

    def rewriting(
        self, builder: IndexBuilder | None, fmt: LogFormat, count: int, tag: bytes
    ) -> bool:
        """Before a rewrite to ``fmt`` commits (its records all written): replace a sidecar
        by the index ``builder`` built, under the new log's keys, or delete it; True when
        done (a database's waits for ``rewritten``). A crash between the two renames then
        leaves the new log's index beside the old log, which readers ignore, never the old
        one beside the new (FORMAT.md §17.5, step 3). Raises OSError when the sidecar can
        be neither written nor deleted: the rewrite fails."""
        if self._store is None or self._store.exact:
            return False
        try:
            if builder is not None:
                self._write(builder.postings(), count, tag if count else _NO_TAG, fmt=fmt)
            elif self.present():
                self.remove()
        except OSError:
            self.remove()  # it may hold postings of messages the rewrite drops
        return True

    def rewritten(self, builder: IndexBuilder | None, count: int, tag: bytes) -> None:
        """After a rewrite, in its transaction (a database): write the index it built."""
        if builder is None:
            if self.present():
                self.remove()
            return
        self._write(builder.postings(), count, tag if count else _NO_TAG)

    def _write(
        self,
        postings: Postings,
        count: int,
        tag: bytes | None = None,
        *,
        merge: bool = False,
        fmt: LogFormat | None = None,
    ) -> None:
        keys, fmt, store = self.keys(fmt), fmt or self._log.fmt, self._store
        assert keys is not None and fmt is not None and store is not None
        if tag is None or store.exact:
            tag = self._tag(count)
        segment = Segment(0, count, tag)
        frame = kwi.encode_segment(keys[1], segment, postings.encode())
        self._state = None
        if store.exact:
            self._log.on_rollback(self._forget)
        self._state = store.replace(fmt.log_id, frame, segment, postings, merge=merge)
        self._validated = None if self._state is None else self._memo(self._state)

    def release(self) -> None:
        """Hand the state to the cache, if any (the codec closes): the file's postings."""
        state, cache = self._state, self._cache
        self._state = None
        if cache is None or self._store is None or state is None:
            return
        if state.tag != _UNREAD:
            cache.put(self._store, state.settle())

    def remove(self) -> None:
        """Delete the index (the log was deleted, or a rewrite without the index)."""
        if self._store is not None:
            self._store.remove()
        self._state = None

    def check(self) -> KwiCheck:
        """Compare the index with one rebuilt from the log (``verify``)."""
        if self._exact():
            self._forget()  # read it from the database: nothing there to compare a cache with
        keys = self.keys()
        state = self.current()
        if keys is None or state is None:
            return KwiCheck(self.present(), 0, "")
        if not self.usable(state):
            why = state.problem or "it does not describe the log as it is"
            return KwiCheck(True, 0, f"keyword index not used: {why}")  # it covers none
        if self._exact() and state.covered != len(self._log.index):  # it never lags
            why = f"the keyword index covers {state.covered} of {len(self._log.index)} records"
            return KwiCheck(True, state.covered, why)
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

    def candidates(self, query: SearchQuery) -> tuple[list[int], int] | None:
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

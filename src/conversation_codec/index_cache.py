"""IndexCache: decrypted keyword indexes kept across reopens (``ConversationStore.search``).

A store reopens a conversation's log for every chunk of every search, and each new codec
would decrypt and parse the whole ``P.kwi`` again (FORMAT.md §17.4). The store keeps one
``IndexCache``: a codec that closes hands its index state back (``put``), and the next
codec of that log takes it (``take``) instead of reading the file, when the file is still
the one the state was read from.

Why the state cannot be stale, layer by layer:

* The identity is the postings store's (``storage.postings``, ``identity``): for the
  sidecar, ``FileSegments`` gives it only while ``P.kwi`` is the very file the state was
  read from or written to (device, inode and size as read), as that file's device, inode,
  size, mtime and ctime in nanoseconds. ``put`` records it, and ``take`` gives the state
  back only when all five are unchanged, and only for the same ``log_id`` (a rewrite or
  key change makes a new log, whose index is another). Anything that wrote the sidecar
  since (a segment, a merge, a pop's rewrite, a ``reindex``) changed at least one of them.
  A store that names no index (``name`` None: a database, whose codec keeps its own state
  and reads only the rows written since) is never cached.
* The codec then checks the state against the log as it checks one it read (§17.4): the
  log holds at least the records it covers, and record ``covered - 1``'s stored body still
  ends with the state's tag. Removing or changing any record it covers means popping that
  one, and a record written again carries a fresh IV and HMAC: so even a sidecar swapped
  for another of the same identity could not make it answer for records it never saw.

Each state is held by one codec at a time (``take`` removes it), so no two codecs share
its mutable postings. Memory is bounded (``max_bytes``, least recently used first out); a
state's cost is counted as ``MEMORY_PER_SIDECAR_BYTE`` times its sidecar's size (postings
in memory measured at ~3.6 bytes per sidecar byte on the benchmark corpus).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .storage.file.kwi import KwiState
from .storage.postings import Identity, PostingsStore

__all__ = ["DEFAULT_MAX_BYTES", "MEMORY_PER_SIDECAR_BYTE", "IndexCache"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # estimated bytes of memory for the states held
MEMORY_PER_SIDECAR_BYTE = 4
_OVERHEAD = 1024  # bytes counted per state besides its postings


class IndexCache:
    """Keyword index states of closed codecs, by index name (a sidecar's path), for the
    next codec to open it.

    ``hits`` and ``misses`` count the ``take`` calls that returned a state and those that
    did not (the codec then read the sidecar, if there was one).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError("max_bytes must be a non-negative int")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Identity, KwiState, int]] = OrderedDict()
        self._bytes = 0
        self._mutex = threading.Lock()
        self.hits = self.misses = 0

    def take(self, store: PostingsStore, log_id: bytes) -> KwiState | None:
        """Remove and return the state kept for the index of ``store`` when the index is
        unchanged since ``put`` and the state describes ``log_id``; None otherwise."""
        name = store.name
        if name is None:
            return None
        with self._mutex:
            entry = self._entries.pop(name, None)
            if entry is not None:
                self._bytes -= entry[2]
        found = None
        if entry is not None and entry[1].log_id == log_id and store.identity() == entry[0]:
            found = entry[1]
        with self._mutex:
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def put(self, store: PostingsStore, state: KwiState) -> None:
        """Keep ``state`` (read from, or written to, the index of ``store``) if that index
        is still as it was read; evict the least recently used beyond ``max_bytes``."""
        name = store.name
        if name is None or state.problem or not state.segments:
            return
        identity = store.identity(state)
        if identity is None:
            return
        cost = MEMORY_PER_SIDECAR_BYTE * state.size + _OVERHEAD
        if cost > self.max_bytes:
            return
        with self._mutex:
            old = self._entries.pop(name, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[name] = (identity, state, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, (_, _, freed) = self._entries.popitem(last=False)
                self._bytes -= freed

    def clear(self) -> None:
        """Forget every state."""
        with self._mutex:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        """The estimated memory of the states held (at most ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never a path or a posting
        return f"<IndexCache {len(self._entries)} indexes, ~{self._bytes} of {self.max_bytes} B>"

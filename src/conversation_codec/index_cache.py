"""IndexCache: decrypted keyword indexes kept across reopens (``ConversationStore.search``).

A store reopens a conversation's log for every chunk of every search, and each new codec
would decrypt and parse the whole ``P.kwi`` again (FORMAT.md §17.4). The store keeps one
``IndexCache``: a codec that closes hands its index state back (``put``), and the next
codec of that log takes it (``take``) instead of reading the file, when the file is still
the one the state was read from.

Why the state cannot be stale, layer by layer:

* ``put`` keeps a state only while ``P.kwi`` is the very file it was read from or written
  to (device, inode and size as read), and records that file's full identity: device,
  inode, size, mtime and ctime in nanoseconds. ``take`` gives it back only when all five
  are unchanged, and only for the same ``log_id`` (a rewrite or key change makes a new
  log, whose index is another). Anything that wrote the sidecar since (a segment, a merge,
  a pop's rewrite, a ``reindex``) changed at least one of them.
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

import os
import threading
from collections import OrderedDict

from ._fsio import check_file
from .paths import kwi_path
from .storage.file.kwi import KwiState

__all__ = ["DEFAULT_MAX_BYTES", "MEMORY_PER_SIDECAR_BYTE", "IndexCache"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # estimated bytes of memory for the states held
MEMORY_PER_SIDECAR_BYTE = 4
_OVERHEAD = 1024  # bytes counted per state besides its postings

_Identity = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class IndexCache:
    """Keyword index states of closed codecs, by log path, for the next codec to open it.

    ``hits`` and ``misses`` count the ``take`` calls that returned a state and those that
    did not (the codec then read the sidecar, if there was one).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError("max_bytes must be a non-negative int")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[_Identity, KwiState, int]] = OrderedDict()
        self._bytes = 0
        self._mutex = threading.Lock()
        self.hits = self.misses = 0

    def take(self, path: str, log_id: bytes) -> KwiState | None:
        """Remove and return the state kept for the log ``path`` when its sidecar is
        unchanged since ``put`` and it describes ``log_id``; None otherwise."""
        with self._mutex:
            entry = self._entries.pop(path, None)
            if entry is not None:
                self._bytes -= entry[2]
        found = None
        if entry is not None and entry[1].log_id == log_id:
            st = check_file(kwi_path(path))
            found = entry[1] if st is not None and _identity(st) == entry[0] else None
        with self._mutex:
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def put(self, path: str, state: KwiState) -> None:
        """Keep ``state`` (read from, or written to, the sidecar of the log ``path``) if
        that file is still there as it was read; evict the least recently used beyond
        ``max_bytes``."""
        if state.problem or not state.segments:
            return
        st = check_file(kwi_path(path))
        if st is None or ((st.st_dev, st.st_ino), st.st_size) != (state.ident, state.size):
            return
        cost = MEMORY_PER_SIDECAR_BYTE * state.size + _OVERHEAD
        if cost > self.max_bytes:
            return
        with self._mutex:
            old = self._entries.pop(path, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[path] = (_identity(st), state, cost)
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

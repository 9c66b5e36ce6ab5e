"""``PostingsStore``: where a log keeps the sealed segments of its blind keyword index.

The keyword index (FORMAT.md §17; ``indexing.KeywordIndexer``) is one design on every
storage: the same keyed tokens in the same sealed segments (§17.3), read by the same rules
(§17.4), and kept by the same writer logic (append, pop, rewrite, clear, rebuild, check).
What differs is where the segments live, which each ``LogStorage`` says through
``keyword_index()``:

- ``storage.file.kwi_store.FileSegments``: the sidecar ``P.kwi``, a cache written after
  the log commits; it may lag or be stale, so readers check it against the log (``exact``
  is False);
- ``storage.postgres.kwi.PostgresSegments``: rows of ``cc_kwi_segments``, written in the
  log's own transaction, so they always describe exactly the records committed with them
  (``exact`` is True): every segment is written at once, and a failed write fails the
  transaction that wrote the records.

A storage that returns None from ``keyword_index()`` (memory) keeps no index.

A store whose index lives outside the process (the sidecar) names it (``name``) and tells
its ``identity``, so that decrypted states can outlive the codec that read them
(``index_cache.IndexCache``); an exact store keeps its own state and names none.
"""

from __future__ import annotations

from typing import Protocol

from ..crypto import RecordKey
from ..keyword_index import Postings
from .file.kwi import KwiState, Segment

__all__ = ["ChainMoved", "Identity", "PostingsStore"]

# What every write of an index changes (a sidecar: device, inode, size, mtime_ns, ctime_ns).
Identity = tuple[int, int, int, int, int]


class ChainMoved(Exception):
    """The stored segments do not end where the writer's new segment starts (another
    writer's view, or records indexed by no one): rebuild the index."""


class PostingsStore(Protocol):
    """The sealed segments of one log's keyword index (see the module docstring)."""

    @property
    def exact(self) -> bool:
        """True: written in the log's own transactions (never lags the records)."""
        ...

    @property
    def name(self) -> str | None:
        """What names this index across reopens (the sidecar's path), the key of a cache
        of decrypted states; None: the store keeps no such cache (an exact store)."""
        ...

    def identity(self, state: KwiState | None = None) -> Identity | None:
        """The index's identity as it is now, which every write changes; None when there
        is none, or (given ``state``) it is not the very index ``state`` was read from or
        written to, as ``state`` left it."""
        ...

    def exists(self) -> bool:
        """Whether the log has an index (what makes every writer keep it)."""
        ...

    def load(self, log_id: bytes, key: RecordKey) -> KwiState | None:
        """Read every segment of the log ``log_id``; None when there is no index."""
        ...

    def more(self, key: RecordKey, state: KwiState) -> bool:
        """Read the segments written after ``state`` into it; False when the index was
        replaced or removed since (the caller loads it again)."""
        ...

    def unchanged(self, state: KwiState) -> bool:
        """Whether nothing was written to the index since ``state`` was read."""
        ...

    def stage(self, frame: bytes | None, segment: Segment | None) -> None:
        """Offer the segment of records about to be appended (None: no segment), for the
        store to write with them where it can (a database: in the same statement);
        ``append`` of the same ``frame`` then only reports what became of it."""
        ...

    def append(self, frame: bytes, segment: Segment, at: int) -> tuple[int, int] | None:
        """Write one framed ``segment`` after the chain (byte ``at`` of a file).

        Return ``(head, count)`` where the store counts cheaply (a database): the records
        the first segment covers, and the segments there are now; else None.

        :raises ChainMoved: (an exact store) the chain does not end at ``segment.lo``.
        """
        ...

    def replace(
        self,
        log_id: bytes,
        frame: bytes,
        segment: Segment,
        postings: Postings,
        *,
        merge: bool = False,
    ) -> KwiState | None:
        """Replace the whole index with one segment; return its state (None: unknown).
        ``merge``: it holds every posting the index held and no other (an append's merge,
        which a store may write as durably as the segments it replaces: FORMAT.md §17.5)."""
        ...

    def remove(self) -> None:
        """Delete the index (the log no longer keeps one)."""
        ...

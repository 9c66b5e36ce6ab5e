"""``PostgresIndex``: the cached view of a conversation's records (their timestamps)."""

from __future__ import annotations

import bisect

__all__ = ["PostgresIndex"]


class PostgresIndex:
    """Record ``seq`` lies at ``[seq, seq + 1)``: positions are sequence numbers (as for
    ``MemoryLog``); ``tss`` is the cached column ``cc_records.ts`` of the conversation."""

    __slots__ = ("tss",)

    path = ""  # no index file: the records table's primary key is the index

    def __init__(self) -> None:
        self.tss: list[int] = []

    def __len__(self) -> int:
        return len(self.tss)

    def span(self, seq: int) -> tuple[int, int]:
        if not 0 <= seq < len(self.tss):
            raise IndexError(f"no record {seq}: the log holds {len(self.tss)}")
        return seq, seq + 1

    def first_at_or_after(self, ts_us: int) -> int:
        return bisect.bisect_left(self.tss, ts_us)

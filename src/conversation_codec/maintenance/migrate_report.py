"""What a migration reports: ``MigrationReport`` for one file (``migrate``), ``BatchReport``
for a batch (``migrate_many``), and the JSON the CLI prints of them (``--json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .legacy import LegacyFormat

__all__ = ["BatchItem", "BatchReport", "BatchStatus", "MigrationReport"]

BatchStatus = Literal["converted", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What :func:`migrate` did (or, with ``dry_run``, would do) to one file.

    ``messages`` is None for a source that is already a log, left as it is (not opened).
    A plaintext log given a key or ``log_password`` is sealed in place instead (a
    compaction, ``migrate_seal``): ``format`` is ``CODEC_LOG``, no backup.
    ``bytes_after`` counts the new log and its index (as ``CompactionReport`` does); 0
    when nothing was written. ``backup`` is the ``.bak`` path when one holds the original.
    """

    source: Path
    destination: Path
    format: LegacyFormat
    messages: int | None
    bytes_before: int
    bytes_after: int
    backup: Path | None
    converted: bool
    notes: tuple[str, ...] = ()


# -- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One file of a batch: what happened to it and why."""

    path: Path
    status: BatchStatus
    reason: str
    report: MigrationReport | None = None


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What :func:`migrate_many` did; with ``dry_run``, "converted" means "would be"."""

    items: tuple[BatchItem, ...]
    dry_run: bool = False

    def _having(self, status: BatchStatus) -> tuple[BatchItem, ...]:
        return tuple(item for item in self.items if item.status == status)

    @property
    def converted(self) -> tuple[BatchItem, ...]:
        return self._having("converted")

    @property
    def skipped(self) -> tuple[BatchItem, ...]:
        return self._having("skipped")

    @property
    def failed(self) -> tuple[BatchItem, ...]:
        return self._having("failed")

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary (for ``--json``)."""
        return {
            "dry_run": self.dry_run,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "files": [_item_dict(item) for item in self.items],
        }


def _item_dict(item: BatchItem) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(item.path), "status": item.status, "reason": item.reason}
    r = item.report
    if r is not None:
        out.update(
            format=r.format.value,
            destination=str(r.destination),
            messages=r.messages,
            bytes_before=r.bytes_before,
            bytes_after=r.bytes_after,
            backup=None if r.backup is None else str(r.backup),
        )
    return out

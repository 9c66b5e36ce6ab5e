"""pack_store: move a store's small, cold conversations into packs (FORMAT.md §18).

Packing is a maintenance step, like ``compact``: a store of thousands of short
conversations costs three file-system blocks per conversation while they are loose (the
log, its index, its lock file: 12 KiB on ext4 for 2 KB of messages), and a share of one
file once packed. Reads of a packed conversation cost one ``pread``; its first write moves
it back to its own file (``storage.file.packed``).

The procedure (FORMAT.md §18.3): each candidate is settled and read under its lock, the new
pack is published with the logs that still hold exactly those bytes, checked under the
pack lock (the conversation is then both loose and packed, and the loose copy wins; a
clear drops packed copies under that lock before it deletes the log, so a deleted
conversation is never published), and only then are the loose files removed, under the
lock again and only if they still hold exactly what was packed. A crash anywhere leaves
every conversation readable and every deleted one deleted; running ``pack()`` again
finishes the work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Protocol

from .._fsio import open_file
from .._time import EPOCH, NOT_A_CUTOFF, ONE_US, age_cutoff_us, datetime_to_us
from ..codec import ConversationCodec
from ..errors import ConversationCodecError
from ..paths import blobs_path, is_leftover, kwi_path
from ..storage.base import StoreBackend
from ..storage.file.packed import StoreLog, retire_loose
from ..storage.file.store import LOG_SUFFIX, FileStore, decode_id

__all__ = ["DEFAULT_MAX_LOG_BYTES", "DEFAULT_MAX_PACK_BYTES", "PackReport", "pack_store"]

DEFAULT_MAX_PACK_BYTES = 16 * 1024 * 1024  # bytes of logs per pack: an unpack rewrites one
DEFAULT_MAX_LOG_BYTES = 64 * 1024  # bytes: a bigger log is worth its own blocks


class ConversationStore(Protocol):
    """What packing needs of ``store.ConversationStore`` (which imports this module)."""

    @property
    def backend(self) -> StoreBackend: ...

    def open(self, conversation_id: str) -> ConversationCodec: ...


@dataclass(frozen=True, slots=True)
class PackReport:
    """What ``pack_store`` did."""

    packed: list[str] = field(default_factory=list)  # ids moved into a pack
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why it stayed loose
    packs: list[str] = field(default_factory=list)  # pack files written (merges included)
    log_bytes: int = 0  # bytes of logs packed


def pack_store(
    store: ConversationStore,
    *,
    older_than: datetime | timedelta | None = None,
    max_bytes: int = DEFAULT_MAX_PACK_BYTES,
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    now: datetime | None = None,
) -> PackReport:
    """Pack the store's loose conversations whose last message is older than a cutoff.

    :param older_than: an aware datetime (the cutoff), or a timedelta >= 0 before ``now``;
        None packs every conversation, however recent.
    :param max_bytes: bytes of logs per pack file (more conversations: more packs).
    :param max_log_bytes: a log bigger than this stays loose.

    Conversations with a keyword index or external attachments stay loose (their
    sidecars are files of their own), as do those this store's key cannot open (reported
    in ``skipped``).

    :raises ValueError: the store keeps its conversations in a database, or a bad limit.
    """
    backend = store.backend
    if not isinstance(backend, FileStore):
        raise ValueError("pack() packs log files: this store keeps conversations in a database")
    if max_bytes < 1 or max_log_bytes < 1:
        raise ValueError("max_bytes and max_log_bytes must be positive")
    cutoff_us = _cutoff(older_than, now)
    with backend.packs.packing():  # one packer at a time: see retire_loose
        return _pack(store, backend, cutoff_us, max_bytes, max_log_bytes)


def _pack(
    store: ConversationStore,
    backend: FileStore,
    cutoff_us: int | None,
    max_bytes: int,
    max_log_bytes: int,
) -> PackReport:
    report = PackReport()
    chosen: list[tuple[str, bytes, list[int]]] = []
    for conversation_id in _loose_ids(backend):
        try:
            picked = _read(store, backend, conversation_id, cutoff_us, max_log_bytes)
        except ConversationCodecError as exc:
            report.skipped[conversation_id] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(picked, str):
            report.skipped[conversation_id] = picked
        else:
            chosen.append((conversation_id, *picked))
    io = backend.io
    io.step("pack:chosen")
    leftovers = _leftovers(backend.root)
    for batch in _batches(chosen, max_bytes):
        # Step 2 publishes only the logs still as step 1 read them, checked under
        # .packs/pack.lock, which a clear holds from before it deletes P until its packed
        # copies are dropped: a log deleted since step 1 is left out, and one deleted
        # after this check finds its copy published and drops it (FORMAT.md §18.3).
        pack, left = backend.packs.write(batch, keep=partial(_holds, backend))
        for conversation_id in left:
            report.skipped[conversation_id] = "written to or deleted while being packed"
        if pack is None:
            continue
        report.packs.append(pack.name)
        io.step("pack:written")
        for conversation_id, data, _ in batch:
            if conversation_id in left:
                continue
            path = backend.path(conversation_id)
            temps = leftovers.get(path.name, [])
            if retire_loose(str(path), conversation_id, backend.packs, data, leftovers=temps):
                report.packed.append(conversation_id)
            else:
                report.skipped[conversation_id] = "written to while being packed: kept loose"
            io.step("pack:retired")
        io.fsync_dir(backend.root)  # the unlinks, once per pack (see retire_loose)
    merged = backend.packs.merge(max_bytes)
    if merged is not None:
        report.packs.append(merged.name)
    moved = set(report.packed)
    total = sum(len(data) for cid, data, _ in chosen if cid in moved)
    return PackReport(report.packed, report.skipped, report.packs, total)


def _cutoff(older_than: datetime | timedelta | None, now: datetime | None) -> int | None:
    if older_than is None:
        return None
    if isinstance(older_than, timedelta):
        now_us = datetime_to_us(now or datetime.now(timezone.utc), "now")
        return age_cutoff_us(now_us, older_than, "older_than")  # ValueError if negative
    if isinstance(older_than, datetime):
        return datetime_to_us(older_than, "older_than")
    raise TypeError(NOT_A_CUTOFF)


def _loose_ids(backend: FileStore) -> list[str]:
    """Ids with a log file of their own (not those only packed)."""
    try:
        names = os.listdir(backend.root)
    except FileNotFoundError:
        return []
    found = (decode_id(n[: -len(LOG_SUFFIX)]) for n in names if n.endswith(LOG_SUFFIX))
    return sorted(cid for cid in found if cid is not None)


def _leftovers(root: os.PathLike[str]) -> dict[str, list[str]]:
    """Crashed rewrites' temp files in the store, by the log name they belong to (one
    listing of the directory for the whole run, not one per log)."""
    out: dict[str, list[str]] = {}
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return out
    for name in names:
        at = name.rfind(LOG_SUFFIX + ".")
        if at > 0 and is_leftover(name, name[: at + len(LOG_SUFFIX)]):
            out.setdefault(name[: at + len(LOG_SUFFIX)], []).append(name)
    return out


def _read(
    store: ConversationStore,
    backend: FileStore,
    conversation_id: str,
    cutoff_us: int | None,
    max_log_bytes: int,
) -> tuple[bytes, list[int]] | str:
    """The log's bytes and timestamps, settled under its lock; or why it stays loose."""
    path = backend.path(conversation_id)
    if os.path.lexists(kwi_path(path)) or os.path.lexists(blobs_path(path)):
        return "has a keyword index or attachment blobs: kept loose"
    with store.open(conversation_id) as codec, codec.transaction():  # settles the log
        log = codec.storage
        assert isinstance(log, StoreLog)
        info = codec.info()
        if info.last_timestamp is None:
            return "empty: kept loose"
        last_us = (info.last_timestamp - EPOCH) // ONE_US
        if cutoff_us is not None and last_us >= cutoff_us:
            return "newer than the cutoff: kept loose"
        size = log.size()
        if size > max_log_bytes:
            return f"{size} bytes, over max_log_bytes: kept loose"
        tss = list(log.index.tss)
        fd = open_file(path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    return data, tss


def _holds(backend: FileStore, conversation_id: str, data: bytes) -> bool:
    """Whether the conversation's log file holds exactly ``data`` (read without its lock:
    a writer's append under way makes it differ, and the log stays loose)."""
    try:
        fd = open_file(backend.path(conversation_id), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)


def _batches(
    chosen: list[tuple[str, bytes, list[int]]], max_bytes: int
) -> list[list[tuple[str, bytes, list[int]]]]:
    out: list[list[tuple[str, bytes, list[int]]]] = []
    size = max_bytes
    for item in chosen:
        if size + len(item[1]) > max_bytes and (not out or out[-1]):
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item[1])
    return out

"""copy_conversations: move conversations between any two stores (directory or database).

Each conversation is read whole from the source (messages with their own, authenticated
timestamps, external attachments restored) and written to the destination in one atomic
rewrite: when the destination's key opens the source's log (same key or password, and the
same conversation id it is bound to) its records are copied with their bytes unchanged
(``copy_records_to``: the header, the dictionary and each sealed record); otherwise they are
re-sealed under the destination store's key (``replace()``). Then the destination is read
back and compared with what was read (verification). A conversation whose attachments live
in a blob store (FORMAT.md §15) gets one in a destination directory, its blobs sealed into it
under the destination's key; a database gets them inline.

Resume: a conversation whose destination already holds exactly the source's messages and
timestamps is skipped, so a copy interrupted anywhere (a crash, Ctrl-C, a lost connection)
is finished by running it again; since each conversation is replaced atomically, a
conversation is never left half-copied. A destination conversation that holds something
else is overwritten only with ``overwrite=True``; without it, it is reported as failed
and kept as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from .._fsio import make_private_dirs, remove_flat_dir
from ..errors import ConflictError, ConversationCodecError
from ..paths import blobs_path
from ..storage.file.store import FileStore

if TYPE_CHECKING:
    from ..codec import ConversationCodec
    from ..store import ConversationStore

__all__ = ["CopyReport", "copy_conversations"]

Message = dict[str, Any]
Progress = Callable[[int, int, str], None]  # (done, total, conversation id)


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What ``copy_conversations`` did, per conversation id."""

    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # already identical: skipped
    failed: dict[str, str] = field(default_factory=dict)  # id -> the error's message
    messages: int = 0  # messages written


def _history(store: ConversationStore, conversation_id: str) -> list[tuple[Message, datetime]]:
    with store.open(conversation_id) as codec:
        return [(hit.message, hit.timestamp) for hit in codec.search(None)]


def copy_conversations(
    src: ConversationStore,
    dst: ConversationStore,
    ids: Iterable[str] | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy conversations from the store ``src`` to the store ``dst``; return a report.

    :param ids: which conversations (default: every one of ``src``); an id with no log in
        ``src`` is reported as failed.
    :param overwrite: replace a destination conversation that holds other messages
        (default: report it as failed and leave it).
    :param progress: called as ``progress(done, total, conversation_id)`` after each one.

    A conversation that cannot be read, written or verified is reported in ``failed`` with
    its error (never a key); the others are copied.
    """
    wanted = sorted(set(src.ids() if ids is None else ids))
    report = CopyReport()
    written = 0
    for done, conversation_id in enumerate(wanted, 1):
        try:
            if conversation_id not in src:
                raise ConflictError(f"{conversation_id!r} has no log in the source store")
            outcome = _copy_one(src, dst, conversation_id, overwrite)
        except ConversationCodecError as exc:
            report.failed[conversation_id] = f"{type(exc).__name__}: {exc}"
        else:
            if outcome is None:
                report.unchanged.append(conversation_id)
            else:
                report.copied.append(conversation_id)
                written += outcome
        if progress is not None:
            progress(done, len(wanted), conversation_id)
    return CopyReport(report.copied, report.unchanged, report.failed, written)


def _copy_one(
    src: ConversationStore, dst: ConversationStore, conversation_id: str, overwrite: bool
) -> int | None:
    """Copy one conversation; return the messages written, or None when it was identical."""
    source = _history(src, conversation_id)
    made = _blob_store_for(src, dst, conversation_id)
    with dst.open(conversation_id) as codec, codec.transaction():
        try:
            there = [(hit.message, hit.timestamp) for hit in codec.search(None)]
            if there == source:
                return None
            if there and not overwrite:
                raise ConflictError(
                    f"{conversation_id!r} holds {len(there)} other messages in the "
                    "destination; pass overwrite=True (--overwrite) to replace them"
                )
            if not _raw(src, codec, conversation_id):
                codec.replace([m for m, _ in source], timestamps=[t for _, t in source])
        finally:  # a password log keeps no blobs; nor needs one that none were put in
            if made is not None and not os.listdir(made):
                remove_flat_dir(made, io=cast(FileStore, dst.backend).io)
    if _history(dst, conversation_id) != source:  # verification, on a fresh open
        raise ConflictError(f"{conversation_id!r} differs from its source after the copy")
    return len(source)


def _blob_store_for(
    src: ConversationStore, dst: ConversationStore, conversation_id: str
) -> str | None:
    """Make the destination's blob directory when the source conversation keeps its
    attachments in one (FORMAT.md §15), and return it (None: not made). A log with a blob
    store keeps using it, so the copy's attachments are sealed into it under the
    destination's key, not written into the log inline (outside review 3); a database
    destination has no files beside its logs, and gets them inline."""
    if not isinstance(src.backend, FileStore) or not isinstance(dst.backend, FileStore):
        return None
    target = blobs_path(dst.path(conversation_id))
    if not os.path.lexists(blobs_path(src.path(conversation_id))) or os.path.lexists(target):
        return None
    make_private_dirs(target, io=dst.backend.io)
    return target


def _raw(src: ConversationStore, dst_codec: ConversationCodec, conversation_id: str) -> bool:
    """Copy the records' bytes as they are, when the destination's key opens them."""
    with src.open(conversation_id) as codec:
        return codec.copy_records_to(dst_codec)

"""Seal a plaintext conversation-codec log in place: what ``migrate(P, encryption_key=K)``
(or ``log_password=``) does with a log written without a key.

A plaintext log is no legacy file: it is already a log, so it is not converted record by
record through ``migrate_commit``, but rewritten by a compaction
(``ConversationCodec.compact(encryption_key=K)`` or ``compact(password=...)``), which seals
the log, rebuilds its index and moves its external attachments into a sealed blob store,
atomically under the writer lock (FORMAT.md's rules for rewrites: a crash leaves the old
log or the new one). No ``.bak`` is kept: the point is that no plaintext copy stays.

``NotEncryptedError`` (a plaintext log opened with a key) advises this route; it used to
leave the log as it was and report success (outside review, sec.md defect 4).
"""

from __future__ import annotations

from pathlib import Path

from .._fsio import FileIO
from ..codec import ConversationCodec
from ..crypto import KeyInput

__all__ = ["seal_plain_log"]


def seal_plain_log(
    path: Path,
    *,
    encryption_key: KeyInput | None,
    log_password: str | None,
    context: str | None,
    dry_run: bool,
    io: FileIO,
) -> tuple[int, int, int, str]:
    """Seal the plaintext log at ``path`` with the key or password given (exactly one).

    Return ``(messages, bytes_before, bytes_after, note)``; with ``dry_run`` the log is
    opened and counted, and nothing is written (``bytes_after`` is 0).

    :raises ValueError: ``log_password`` for a log with external attachments (they need a
        key); nothing was changed.
    """
    with ConversationCodec(path, context=context, io=io) as codec:
        if dry_run:
            info = codec.info()
            before = info.log_bytes + info.index_bytes
            return info.message_count, before, 0, "dry run: nothing was written"
        report = codec.compact(encryption_key=encryption_key, password=log_password)
    what = "a password" if log_password is not None else "encryption_key"
    note = (
        f"encrypted in place with {what} (a compaction: the log, its index and its "
        "attachments); no .bak is kept, so no plaintext copy stays"
    )
    return report.messages, report.bytes_before, report.bytes_after, note

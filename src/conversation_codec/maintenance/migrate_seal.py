"""Seal a plaintext conversation-codec log in place: what ``migrate(P, encryption_key=K)``
(or ``log_password=``) does with a log written without a key.

With a key, the log is rewritten by a compaction (``ConversationCodec(P).compact(
encryption_key=K)``), which seals the log, rebuilds its index and moves its external
attachments into a sealed blob store, atomically under the writer lock (FORMAT.md's rules
for rewrites: a crash leaves the old log or the new one). No ``.bak`` is kept: the point is
that no plaintext copy stays. A crash between the compaction's commit and its sweep of
``P.blobs`` leaves the plaintext blobs beside the sealed log: a rerun finds the log sealed
and removes every blob that is not sealed (``plain_blobs.remove_plain_blobs``), and ``verify()``
reports them as ``blob-plaintext`` (outside review r1, defect 3). A compaction cannot
switch a log to a password, so with ``log_password`` the log's messages and record times
are read here (:func:`read_plain_log`) and go through migrate's own steps, as a plaintext
legacy file's do (sealed temp log, read back and compared, ``.bak`` unless
``backup=False``, rename); under the writer lock, the temp copies crashed rewrites left
beside the log (plaintext) are removed first, as the compaction's ``remove_stale_temps``
does (review r2a defect 6).

``NotEncryptedError`` (a plaintext log opened with a key) advises this route; it used to
leave the log as it was and report success (outside review, sec.md defect 4).
"""

from __future__ import annotations

import os
from pathlib import Path

from .._fsio import FileIO
from .._time import datetime_to_us
from ..codec import ConversationCodec
from ..crypto import KeyInput
from ..paths import blobs_path
from .legacy import LegacyFormat, LegacyHistory

__all__ = ["read_plain_log", "seal_plain_log"]


def seal_plain_log(
    path: Path, encryption_key: KeyInput, *, context: str | None, dry_run: bool, io: FileIO
) -> tuple[int, int, int, str]:
    """Seal the plaintext log at ``path`` with ``encryption_key``, by a compaction.

    Return ``(messages, bytes_before, bytes_after, note)``; with ``dry_run`` the log is
    opened and counted, and nothing is written (``bytes_after`` is 0).
    """
    with ConversationCodec(path, context=context, io=io) as codec:
        if dry_run:
            info = codec.info()
            before = info.log_bytes + info.index_bytes
            return info.message_count, before, 0, "dry run: nothing was written"
        report = codec.compact(encryption_key=encryption_key)
    note = (
        "encrypted in place with encryption_key (a compaction: the log, its index and its "
        "attachments); no .bak is kept, so no plaintext copy stays"
    )
    return report.messages, report.bytes_before, report.bytes_after, note


def read_plain_log(path: Path, *, context: str | None, io: FileIO) -> LegacyHistory:
    """Read the plaintext log at ``path`` as a history to seal with a password.

    :raises ValueError: the log keeps external attachments (``P.blobs``), which a password
        log cannot (they need a key): nothing was changed.
    """
    if os.path.lexists(blobs_path(path)):
        raise ValueError(
            f"{path} keeps external attachments, which a password log cannot: encrypt it "
            "with encryption_key= instead of log_password="
        )
    with ConversationCodec(path, context=context, io=io) as codec:
        hits = [(h.message, datetime_to_us(h.timestamp, "time")) for h in codec.search()]
    stamps: list[int | None] = [ts for _, ts in hits]
    return LegacyHistory(LegacyFormat.CODEC_LOG, [m for m, _ in hits], stamps)

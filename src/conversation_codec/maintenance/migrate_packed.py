"""``migrate`` of a store conversation that a pack holds (FORMAT.md §18): no file of its own.

A store's conversation lives at ``<root>/<encoded id>.log`` or, once packed, as an entry of
``<root>/.packs/*.pack``. ``migrate(<root>/<encoded id>.log, encryption_key=K)`` of a packed
plaintext conversation seals it: a compaction of the codec opened on that path, which reads
through the store's packs (``storage.file.store.packed_opener``); its write transaction first
*unpacks* (writes the entry to ``P``, then rewrites the pack without it, FORMAT.md §18.3),
then the compaction seals ``P`` in place. The pack is replaced by a rename (or deleted when
left empty), so no file keeps the plaintext entry. A crash leaves the conversation packed,
loose in plaintext (with or without its stale packed copy: the loose log wins, and sealing it
drops the copy), or sealed: readable each time, and a rerun finishes the job.

With ``log_password`` (which a compaction cannot switch to), the conversation is unpacked
by a plaintext compaction and then sealed as a log file is (``migrate``'s own steps).

It used to fail ("does not exist") while ``NotEncryptedError`` advised this very call, and
``migrate_many`` of a store root left packed conversations in plaintext, reporting success
(outside review r1, defect 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .._fsio import FileIO
from ..codec import ConversationCodec
from ..crypto import KeyInput
from ..format.header import LogKind, sniff_log
from ..storage.file.packs import PACKS_DIR
from ..storage.file.store import LOG_SUFFIX, FileStore, decode_id
from .legacy import LegacyFormat
from .migrate_report import MigrationReport
from .migrate_seal import seal_plain_log
from .migrate_source import check_log_header, header_opens

__all__ = ["PACKED_NOTE", "PackedLog", "find_packed", "migrate_packed"]

PACKED_NOTE = "packed in "  # how the first note of a packed conversation's report begins


@dataclass(frozen=True, slots=True)
class PackedLog:
    """A store conversation's packed log: its id, the pack holding it, and its bytes."""

    conversation_id: str
    pack: Path
    data: bytes
    messages: int  # from the pack's table of contents


def find_packed(path: Path, context: str | None, io: FileIO) -> PackedLog | None:
    """The packed log of the store conversation whose log path is ``path`` (which has no
    file): ``context`` is its id, or else its file name gives it. None when ``path`` is no
    such path or no pack holds it.

    :raises FormatError: a pack is unreadable, and may hold it (FORMAT.md §18.2.3).
    :raises CorruptRecordError: its entry fails its CRC.
    """
    if not os.path.isdir(path.parent / PACKS_DIR):
        return None
    name = path.name
    found = decode_id(name[: -len(LOG_SUFFIX)]) if name.endswith(LOG_SUFFIX) else None
    conversation_id = found if context is None else context
    if conversation_id is None:
        return None
    store = FileStore(path.parent, io=io)
    try:
        try:
            if store.path(conversation_id).name != name:
                return None  # the context given is another conversation's
        except ValueError:  # an id no file name encodes (empty, a lone surrogate)
            return None
        where = store.packs.find(conversation_id)
        if where is None:
            return None
        data = store.packs.read(where)
    finally:
        store.close()
    return PackedLog(conversation_id, where.path, data, len(where.entry.tss))


def migrate_packed(
    source: Path,
    found: PackedLog,
    *,
    elsewhere: str | None,
    encryption_key: KeyInput | None,
    log_password: str | None,
    context: str | None,
    dry_run: bool,
    io: FileIO,
) -> MigrationReport | None:
    """Seal the packed conversation ``found`` (its store log path: ``source``) in place, or
    say why it is left as it is; None when, for ``log_password``, it was unpacked: the
    caller goes on with it as with a log file.

    ``elsewhere``: the other destination asked for (a log is never copied by ``migrate``).
    """
    data = found.data
    # Bound to its id, as the store opens it (an unbound plaintext entry: bound from now on).
    context = found.conversation_id if context is None else context
    check_log_header(source, data)  # a log no codec can open is no "log, left as it is"
    where = f"{PACKED_NOTE}{found.pack}"
    kind = sniff_log(data[:64])
    sealing = encryption_key is not None or log_password is not None
    if not sealing or kind is not LogKind.PLAIN or elsewhere is not None:
        note = f"already a conversation-codec log ({where}); left as it is"
        if not header_opens(source, data, encryption_key, log_password, context):
            note += " (the key given does not open it: another key's log, or damaged)"
        if elsewhere is not None:
            note += f"; not copied to {elsewhere} (to copy a log, import it there)"
        return _report(source, None, len(data), 0, False, note)
    if dry_run:
        note = f"{where}; dry run: nothing was written"
        return _report(source, found.messages, len(data), 0, False, note)
    if encryption_key is None:  # a password: unpacked first (a plaintext compaction)
        with ConversationCodec(source, context=context, io=io) as codec:
            codec.compact()
        return None
    messages, _, after, note = seal_plain_log(
        source, encryption_key, context=context, dry_run=False, io=io
    )
    return _report(source, messages, len(data), after, True, f"{where}: unpacked; {note}")


def _report(
    source: Path, messages: int | None, before: int, after: int, converted: bool, note: str
) -> MigrationReport:
    fmt = LegacyFormat.CODEC_LOG
    return MigrationReport(source, source, fmt, messages, before, after, None, converted, (note,))

"""Attachment blobs stored unsealed beside a sealed log: found without its key, removed.

A sealing (``migrate(P, encryption_key=K)``: a compaction) moves a plaintext log's external
attachments into a sealed blob store and deletes the old, plaintext blobs after its commit
(FORMAT.md §15). A crash between the two leaves them beside the sealed log, which no longer
refers to any of them; a rerun of ``migrate`` removes them (:func:`remove_plain_blobs`) and
``verify()`` reports them (``blob-plaintext``), found by :func:`plain_blobs` (outside review
r1, defect 3). Imports no codec: ``verify()`` (``maintenance.api``) is a codec method.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .._fsio import DEFAULT_IO, FileIO
from ..attachments import BlobStore
from ..errors import DecryptionError, MissingBlobError
from ..paths import blobs_path

__all__ = ["plain_blobs", "plain_blobs_note", "remove_plain_blobs"]


def plain_blobs(
    directory: str | os.PathLike[str],
    io: FileIO | None = None,
    *,
    among: Iterable[str] | None = None,
) -> list[str]:
    """The blobs in ``directory`` (a log's ``P.blobs``) stored unsealed, as a plaintext
    log's are (FORMAT.md §15.2: the file is the plaintext, named by its HMAC under the
    empty name key), sorted.

    Beside a sealed log these are garbage, whatever key it has: its records name blobs by
    an HMAC under a secret name key, and its blob files are Fernet tokens. So they are
    found without the log's key, and none of them is ever a blob the log refers to.
    ``among``: look at these names only (each file is read), not at every blob there.
    """
    plain = BlobStore.for_key(directory, None, io=io or DEFAULT_IO)
    found = []
    for name in sorted(plain.names() if among is None else among):
        try:
            plain.get(name)  # unsealed, and named by its content: a plaintext log's blob
        except (DecryptionError, MissingBlobError):
            continue  # a sealed blob (or gone meanwhile)
        found.append(name)
    return found


def remove_plain_blobs(path: str | os.PathLike[str], io: FileIO) -> int:
    """Delete the unsealed blobs (:func:`plain_blobs`) beside the sealed log at ``path``;
    return how many went. Under the log's writer lock (``BlobStore.delete_unreferenced``:
    it also removes the temp files of crashed puts)."""
    store = BlobStore.for_key(blobs_path(path), None, io=io)
    stale = plain_blobs(store.directory, io)
    if not stale:
        return 0
    return store.delete_unreferenced(store.names() - set(stale))


def plain_blobs_note(path: str | os.PathLike[str], count: int, done: str) -> list[str]:
    """The report note for ``count`` plaintext blobs ``done`` ("removed") beside a log."""
    if not count:
        return []
    return [
        f"{done} {count} plaintext attachment blob(s) that an interrupted sealing left in "
        f"{blobs_path(path)}"
    ]

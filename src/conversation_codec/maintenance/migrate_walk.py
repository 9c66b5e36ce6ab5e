"""Which files a batch (``migrate_many``) migrates: the walk of the paths given.

Each file is named once, with its destination, or with the outcome already decided (a
symbolic link met in a walk, a path that does not exist). A walk in place also names the
conversations a store holds in packs (``<root>/.packs``, FORMAT.md §18): they have no file
of their own, and a walk that skipped them left them in plaintext while the batch reported
success (outside review r1, defect 2). Each goes to ``migrate`` as its store log path
``<root>/<encoded id>.log`` with its id as ``context``, which ``migrate_packed`` seals.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ConversationCodecError
from ..paths import BLOBS_SUFFIX, is_sidecar
from ..storage.file.packs import PACKS_DIR, Packs
from ..storage.file.store import FileStore, is_packed
from .migrate_report import BatchItem

__all__ = ["Job", "jobs", "store_id"]

# path, destination (None: in place), a decided outcome or None, the context (a packed
# conversation's id, in place) or None
Job = tuple[Path, Path | None, BatchItem | None, str | None]
_Found = tuple[Path, Path, BatchItem | None, str | None]  # path, path relative to the root, …


def store_id(rel: Path) -> str:
    """The conversation id of a source at ``rel`` (relative to the directory given)."""
    name = rel.name
    for suffix in (".jsonl", ".json", ".enc"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return "/".join([*rel.parent.parts, name])


def jobs(paths: Iterable[str | os.PathLike[str]], out: Path | None) -> Iterator[Job]:
    """Yield each file to migrate once, with its destination (or why it is left out).

    ``out`` None: in place, and a store's packed conversations are named too."""
    seen: set[str] = set()
    out_real = None if out is None else os.path.realpath(out)
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            files = _walk(root, out_real, in_place=out is None)
        elif os.path.lexists(root):
            files = iter([(root, Path(root.name), None, None)])
        else:
            yield root, None, _absent(root), None
            continue
        for path, rel, decided, context in files:
            if decided is not None:
                yield path, None, decided, None
                continue
            if path != root and path.is_symlink():
                reason = "a symbolic link; name it on its own to migrate its target"
                yield path, None, BatchItem(path, "skipped", reason), None
                continue
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                yield path, None if out is None else out / rel, None, context


def _absent(path: Path) -> BatchItem | None:
    """The outcome for a path with no file: None for a store log path whose conversation a
    pack holds (``migrate`` seals it there), else a failure."""
    try:
        if is_packed(str(path)):
            return None
    except ConversationCodecError as exc:  # an unreadable pack, which may hold it
        return BatchItem(path, "failed", str(exc))
    return BatchItem(path, "failed", f"{path} does not exist")


def _walk(root: Path, out_real: str | None, *, in_place: bool) -> Iterator[_Found]:
    for folder, dirs, files in os.walk(root):  # followlinks=False: no loops, no escapes
        packed = in_place and PACKS_DIR in dirs and not os.path.islink(Path(folder, PACKS_DIR))
        dirs[:] = sorted(d for d in dirs if not _skipped_dir(folder, d, out_real))
        for name in sorted(files):
            if not is_sidecar(name):
                path = Path(folder, name)
                yield path, path.relative_to(root), None, None
        if packed:
            yield from _packed(Path(folder), root, set(files))


def _packed(folder: Path, root: Path, files: set[str]) -> Iterator[_Found]:
    """The conversations a pack of the store at ``folder`` holds and no log file does (one
    with a file is walked as that file: it wins, and sealing it drops its packed copy);
    each unreadable pack fails, naming it (what it holds cannot be listed)."""
    packs = Packs(folder)
    try:
        found, broken = packs.readable_ids()
    except (ConversationCodecError, OSError) as exc:
        where = folder / PACKS_DIR
        yield where, where.relative_to(root), BatchItem(where, "failed", str(exc)), None
        return
    finally:
        packs.close()
    for name, error in broken:
        pack = Path(name)
        reason = f"{error}; the conversations it holds were not migrated"
        yield pack, pack.relative_to(root), BatchItem(pack, "failed", reason), None
    store = FileStore(folder)
    for conversation_id in sorted(found):
        path = store.path(conversation_id)
        if path.name not in files:
            yield path, path.relative_to(root), None, conversation_id


def _skipped_dir(folder: str, name: str, out_real: str | None) -> bool:
    """The output folder; hidden ones (``.git``, ``.vscode``, a store's ``.packs``: its
    conversations are named apart) and a log's attachments (``P.blobs``), which hold no
    histories (named on its own, one is walked all the same)."""
    hidden = name.startswith(".") or name.endswith(BLOBS_SUFFIX)
    return hidden or os.path.realpath(os.path.join(folder, name)) == out_real

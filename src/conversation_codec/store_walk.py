"""Store-wide walks: what listings cannot name (reported, never skipped in silence), and
retention over every conversation (``expire``).

Two kinds of thing sit in a directory store without an id its listings could give: an
unreadable pack (which may hold any ids, FORMAT.md §18.2.3) and the loose log of a
conversation whose id is too long for a file name, stored under a hashed name
(``storage.file.store``: the name carries the id's SHA-256, not the id). ``ids()``,
``infos()`` and ``search()`` hand each to ``on_error`` as ``(path, error)``; without it they
raise the first error, so a partial list is never returned as the whole. ``prune()`` needs
no name to apply retention: it opens a hashed log by the digest its name carries, which
authenticates it as bound to that id (FORMAT.md §4.2), and lists it by its path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ._time import EPOCH, ONE_US
from .codec import ConversationCodec
from .errors import ConversationCodecError, FormatError, HashedIdError
from .store_search import OnError

__all__ = ["Reported", "Scan", "Unlisted", "expire", "hashed_error", "report", "reported"]

Reported = tuple[str, ConversationCodecError]  # (path, error)
Unlisted = list[Reported]  # in report order
# ids; paths of logs under hashed names; unreadable packs (``FileStore.scan``)
Scan = tuple[list[str], list[str], list[tuple[str, FormatError]]]


def hashed_error(path: str, *, key_fn: bool = False) -> HashedIdError:
    """The report of the log at ``path`` under a hashed name: listed (``key_fn`` False)
    or pruned (``key_fn`` True: the store's keys are per id, so it cannot be opened)."""
    why = f"{path}: a conversation whose id is too long to recover from its file name "
    if key_fn:
        return HashedIdError(
            why + "(which holds its SHA-256 only): kept, since key_fn= needs the id to give "
            "its key; delete it by its id"
        )
    return HashedIdError(
        why + "(which holds its SHA-256 only): not listed or searched; open it by its id"
    )


def report(unlisted: Sequence[Reported], on_error: OnError | None) -> None:
    """Hand each of ``unlisted`` to ``on_error`` as ``(path, error)``; without it, raise
    the first one's error."""
    for path, exc in unlisted:
        if on_error is None:
            raise exc
        on_error(path, exc)


def reported(unlisted: Unlisted, on_error: OnError | None, hits: Iterator[Any]) -> Iterator[Any]:
    """``hits``, with ``unlisted`` reported first (from the consuming thread)."""
    report(unlisted, on_error)
    yield from hits


def expire(
    names: Iterable[str],
    open_log: Callable[[str], ConversationCodec],
    delete: Callable[[str], bool],
    cutoff_us: int,
    on_error: OnError | None,
) -> list[str]:
    """Delete each of ``names`` whose last message is older than ``cutoff_us``; return those
    deleted. ``delete(name)`` decides again under the log's lock (a message appended
    since keeps the conversation); an error is ``on_error``'s, and that one is kept."""
    deleted = []
    for name in names:
        try:
            with open_log(name) as codec:
                last = codec.info().last_timestamp
            stale = last is not None and (last - EPOCH) // ONE_US < cutoff_us
            if stale and delete(name):
                deleted.append(name)
        except ConversationCodecError as exc:
            if on_error is not None:
                on_error(name, exc)
    return deleted

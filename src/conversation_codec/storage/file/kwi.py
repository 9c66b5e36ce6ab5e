"""The keyword index sidecar ``P.kwi`` (FORMAT.md §17.3): a header, then sealed segments.

Each segment covers the messages ``[lo, hi)`` and holds their postings; segments are only
appended (one per append that the index follows), and merged by rewriting the whole file
(temp file, fsync, rename; under durability "flush" an append's merge syncs nothing,
FORMAT.md §17.5). A reader keeps the longest chain of segments that authenticate
and follow each other (``lo`` = the previous ``hi``): anything after is ignored, like a
torn tail, and the messages it would have covered are scanned.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..._atomic import atomic_write
from ..._fsio import FileIO, check_file, open_file, unlink_file, write_all
from ...crypto import RecordKey
from ...format.varint import decode_varint, encode_varint
from ...keyword_index import BLOCK_SHIFT, TOKEN_BYTES, Postings
from ...paths import kwi_path, temp_path

__all__ = [
    "KWI_MAGIC",
    "KwiState",
    "Segment",
    "append_segment",
    "encode_segment",
    "load",
    "more",
    "read_frames",
    "remove",
    "unchanged",
    "write_all_segments",
    "written",
]

KWI_MAGIC = b"\x89CCK\r\n\x1a\n"
KWI_VERSION = 1
_HEADER = struct.Struct("<8sHBBI16s")  # FORMAT.md §17.3 magic, version, block_shift, token_bytes
HEADER_BYTES = _HEADER.size  # 32
TAG_BYTES = 16  # the tail of record hi-1's HMAC, binding a segment to that record
MAX_SEGMENT_BYTES = 1 << 30  # a body no writer makes (a 50k-message index is ~2 MB)
UNFOLDED_MAX = 64  # KwiState.unfolded: blocks (~1,000 messages) held before they join postings


@dataclass(frozen=True, slots=True)
class Segment:
    """A decoded segment header: the messages ``[lo, hi)`` and record ``hi-1``'s tag."""

    lo: int
    hi: int
    tag: bytes


@dataclass(slots=True)
class KwiState:
    """What a load found: the postings of the usable chain, what it covers, and why the
    rest (if any) was dropped.

    ``unfolded``: ``(block, tokens)`` of segments this process wrote, ascending, whose
    postings are not in ``postings`` yet (``settle`` adds them): a writer adds them only
    when something needs the postings in memory (a search, merge, pop or check), which
    most processes that append never do."""

    log_id: bytes = b""
    postings: Postings = field(default_factory=Postings)
    covered: int = 0
    tag: bytes = bytes(TAG_BYTES)
    segments: int = 0
    size: int = 0  # bytes of the file that were read
    first_size: int = 0  # where the first segment ends (the merged part)
    ident: tuple[int, int] = (0, 0)  # device, inode
    # The file's TAG_BYTES before ``size``: a file grown from the one read holds them there;
    # one that replaced it under the same inode number (reused once freed) does not.
    last: bytes = b""
    problem: str = ""
    unfolded: list[tuple[int, set[bytes]]] = field(default_factory=list)

    def hold(self, blocks: list[tuple[int, set[bytes]]]) -> None:
        """Keep the blocks of a segment just written in ``unfolded`` (at most UNFOLDED_MAX)."""
        self.unfolded += blocks
        if len(self.unfolded) > UNFOLDED_MAX:
            self.settle()

    def settle(self) -> KwiState:
        """Add the postings of ``unfolded`` to ``postings``; return this state."""
        for block, tokens in self.unfolded:
            self.postings.add_tokens(tokens, block)  # a block written in two parts: no harm
        self.unfolded = []
        return self


def encode_header(log_id: bytes) -> bytes:
    return _HEADER.pack(KWI_MAGIC, KWI_VERSION, BLOCK_SHIFT, TOKEN_BYTES, 0, log_id)


def encode_segment(key: RecordKey, segment: Segment, entries: Iterable[bytes]) -> bytes:
    """Seal one segment (``lo``, ``hi``, tag, entries) and frame it as ``varint || body``."""
    plain = b"".join([encode_varint(segment.lo), encode_varint(segment.hi), segment.tag, *entries])
    body = key.seal(plain, 0)  # the Fernet time is 0: an index says nothing of when
    return encode_varint(len(body)) + body


def _decode_entries(plain: bytes, pos: int, into: Postings) -> bool:
    """Merge the entries of a segment body from ``pos`` into ``into``; False if malformed."""
    view, end = memoryview(plain), len(plain)
    while pos < end:
        if pos + TOKEN_BYTES > end:
            return False
        token = bytes(view[pos : pos + TOKEN_BYTES])
        first, pos = decode_varint(view, pos + TOKEN_BYTES)
        last, pos = decode_varint(view, pos)
        n, pos = decode_varint(view, pos)
        if pos + n > end or last < first or (n == 0) != (last == first):
            return False
        if not into.add(token, first, last, view[pos : pos + n]):
            return False
        pos += n
    return True


def _merge(plain: bytes, pos: int, state: KwiState) -> bool:
    """Decode a segment's entries from ``pos`` and append them to ``state.postings``, all
    or none; False when they are malformed or not after what the state holds."""
    segment = Postings()
    try:
        if not _decode_entries(plain, pos, segment):
            return False
    except ValueError:
        return False
    lists = state.postings.lists
    if not lists:
        state.postings = segment  # the first (usually the merged, largest) segment
        return True
    if any(t in lists and e[0] < lists[t][1] for t, e in segment.lists.items()):
        return False
    for token, (first, last, deltas) in segment.lists.items():
        state.postings.add(token, first, last, deltas)
    return True


def _read_segments(data: bytes, offset: int, key: RecordKey, state: KwiState) -> None:
    """Read the segments in ``data`` (the file's bytes from ``offset``) into ``state``,
    stopping at the first that does not hold up (its reason goes to ``state.problem``)."""
    state.settle()  # the segments this process wrote come first
    pos = 0
    while pos < len(data):
        try:
            n, start = decode_varint(data, pos)
        except ValueError:
            state.problem = "a segment length is malformed"
            return
        if n < 72 or (n - 56) % 16 or n > MAX_SEGMENT_BYTES or start + n > len(data):
            state.problem = "a segment is truncated or its length is impossible"
            return
        plain = key.open(data[start : start + n])
        if plain is None:
            state.problem = "a segment does not authenticate"
            return
        try:
            lo, p = decode_varint(plain, 0)
            hi, p = decode_varint(plain, p)
        except ValueError:
            state.problem = "a segment header is malformed"
            return
        tag = plain[p : p + TAG_BYTES]
        if lo != state.covered or hi < lo or len(tag) != TAG_BYTES:
            state.problem = "a segment does not follow the one before it"
            return
        if not _merge(plain, p + TAG_BYTES, state):
            state.problem = "a segment's postings are malformed"
            return
        state.covered, state.tag = hi, tag
        state.segments += 1
        pos = start + n
        state.size, state.last = offset + pos, data[pos - TAG_BYTES : pos]
        if state.segments == 1:
            state.first_size = state.size


def _read(path: str, at: int) -> tuple[bytes, tuple[int, int]] | None:
    """Return the bytes of ``P.kwi`` from ``at`` and its identity; None when missing."""
    try:
        fd = open_file(kwi_path(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        return os.pread(fd, max(0, st.st_size - at), at), (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def load(path: str, log_id: bytes, key: RecordKey) -> KwiState | None:
    """Read ``P.kwi`` for the log ``path`` (``log_id``); None when there is none.

    A file for another log (a rewrite replaced the log), or of another layout, yields an
    empty state with its ``problem`` said; a usable prefix of segments is kept.
    """
    found = _read(path, 0)
    if found is None:
        return None
    data, ident = found
    state = KwiState(log_id=log_id, size=HEADER_BYTES, ident=ident)
    state.last = data[HEADER_BYTES - TAG_BYTES : HEADER_BYTES]
    if len(data) < HEADER_BYTES:
        state.problem = "the header is truncated"
        return state
    magic, version, shift, token_bytes, _, file_log_id = _HEADER.unpack_from(data)
    layout = (version, shift, token_bytes)
    if magic != KWI_MAGIC or layout != (KWI_VERSION, BLOCK_SHIFT, TOKEN_BYTES):
        state.problem = "not a keyword index of this version"
    elif file_log_id != log_id:
        state.problem = "it describes another log (stale since a rewrite)"
    else:
        _read_segments(data[HEADER_BYTES:], HEADER_BYTES, key, state)
    return state


def unchanged(path: str, state: KwiState) -> bool:
    """Whether ``P.kwi`` is still the file and size ``state`` read, ending with the bytes
    it read (a file written whole may get the inode number, and size, of the one before)."""
    found = _read(path, state.size - TAG_BYTES)
    return found is not None and found[1] == state.ident and found[0] == state.last


def more(path: str, key: RecordKey, state: KwiState) -> bool:
    """Read the segments appended after ``state.size`` into ``state``; False when the file
    is gone, was replaced (another inode, or the same inode number with other bytes before
    ``size``) or holds a problem: the caller loads it again."""
    if state.problem or len(state.last) != TAG_BYTES:
        return False
    found = _read(path, state.size - TAG_BYTES)  # one read: the check and what was added
    if found is None or found[1] != state.ident or found[0][:TAG_BYTES] != state.last:
        return False
    if len(found[0]) > TAG_BYTES:
        _read_segments(found[0][TAG_BYTES:], state.size, key, state)
    return True


def written(
    path: str, log_id: bytes, segment: Segment, postings: Postings, frame: bytes
) -> KwiState | None:
    """The state of a sidecar just written whole with one segment (no need to read it)."""
    st = check_file(kwi_path(path))
    if st is None:
        return None
    size, ident = HEADER_BYTES + len(frame), (st.st_dev, st.st_ino)
    state = KwiState(log_id, postings, segment.hi, segment.tag, 1, size, size, ident)
    state.last = frame[-TAG_BYTES:]
    return state


def append_segment(path: str, io: FileIO, frame: bytes, at: int) -> None:
    """Write one framed segment at byte ``at`` of ``P.kwi`` (not synced: a cache, §17.5)."""
    fd = open_file(kwi_path(path), os.O_WRONLY)
    try:
        write_all(fd, frame, at, io=io)
        if os.fstat(fd).st_size > at + len(frame):
            io.truncate(fd, at + len(frame))  # a torn segment an earlier crash left
    finally:
        os.close(fd)


def write_all_segments(
    path: str, io: FileIO, log_id: bytes, frames: Iterable[bytes], *, synced: bool = True
) -> None:
    """Replace ``P.kwi`` with a header and these framed segments (temp, fsync, rename,
    directory fsync; not ``synced``: temp, rename, FORMAT.md §17.5)."""
    name = kwi_path(path)
    header = encode_header(log_id)
    atomic_write(name, [header, *frames], io=io, tmp=temp_path(name), synced=synced)


def remove(path: str, io: FileIO) -> None:
    """Delete ``P.kwi`` (and sync the directory, so it does not come back)."""
    name = kwi_path(path)
    with contextlib.suppress(FileNotFoundError):
        if check_file(name) is not None:
            unlink_file(name, io=io)
            io.sync_dir(name)


def read_frames(frames: bytes, key: RecordKey, state: KwiState) -> None:
    """Read framed segments (``varint(len) || body``, as they follow the file's header)
    into ``state`` by the rules of FORMAT.md §17.4: for a storage that keeps the segments
    elsewhere (a database table, ``storage.postings``)."""
    _read_segments(frames, state.size, key, state)

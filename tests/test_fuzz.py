"""Fuzz the reader: mutated logs and index sidecars fed to every read entry point.

Hypothesis builds files from valid logs (sealed, sealed with a dictionary record, plain)
and a short list of structural mutations: bit flips, insertions, deletions, truncation,
ranges spliced in from another log or duplicated from the same one, zeroed ranges, frame
length prefixes replaced by huge or borderline values (a varint claiming 4 GiB, the largest
legal body, the smallest, a control flag), and for plain logs whole lines replaced by
generated JSON of the wrong shapes. The index sidecar is kept, dropped, mutated the same
way, taken from another log, or random. Each file is then opened and read through
``load``, ``message_count``, ``get``, ``tail``, ``timestamp``, ``__iter__``, ``search``
(text and date range), ``info`` and ``verify``, and finally appended to by a writer.

Required of every example: no exception but ``ConversationCodecError`` subclasses (a
foreign ``IndexError``, ``KeyError``, ``UnicodeDecodeError``... fails), each call within a
time bound (a SIGALRM interrupts a hang), and for sealed logs no message that was never
written (what ``load`` returns is a prefix of one of the base logs' histories). Memory is
checked with tracemalloc on hostile lengths in dedicated tests: a record claiming 4 GiB, and
an index file claiming 4 GiB of entries, are refused without allocating anything near that.
(``tests/test_tamper.py`` already flips every byte and fuzzes multi-byte damage against the
true answers; this module adds structure-aware mutations, the index, and the bounds.)

``fuzz/fuzz_reader.py`` runs the same checks under atheris, by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversation_codec import ConversationCodec, ConversationCodecError, CorruptRecordError
from conversation_codec.format.record import MAX_BODY_BYTES, MIN_BODY_BYTES
from conversation_codec.format.varint import decode_varint, encode_varint

from conftest import KEY, Clock

Message = dict[str, Any]
EXAMPLES = {"sealed": 60, "plain": 30, "index": 25}  # 115 by default
SLOW_FACTOR = 50  # -m slow: 5,750 examples (no fewer per kind than before)
CALL_SECONDS = 10.0  # no single call may take longer (a hang fails, it does not stall)
GIB = 1 << 30


# -- the base logs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Base:
    """A valid log: its bytes, its index, its key, its messages and where its frames start."""

    name: str
    log: bytes
    idx: bytes
    key: str | None
    messages: list[Message]
    frames: tuple[int, ...]  # offset of every record frame (message or control)


def _messages(tag: str, n: int) -> list[Message]:
    return [
        {"role": "user" if i % 2 else "assistant", "content": f"{tag} message {i} " + "ab" * i}
        for i in range(n)
    ]


def _frames(log: bytes, sealed: bool, start: int) -> tuple[int, ...]:
    out, pos = [], start
    while pos < len(log):
        out.append(pos)
        if sealed:
            prefix, body = decode_varint(log, pos)
            pos = body + (prefix >> 1)
        else:
            pos = log.index(b"\n", pos) + 1
    return tuple(out)


def _build(folder: Path, name: str, key: str | None, n: int) -> Base:
    path = folder / f"{name}.log"
    messages = _messages(name, n)
    with ConversationCodec(path, encryption_key=key, durability="flush", clock=Clock()) as c:
        c.extend(messages[: n - 3])
        for m in messages[n - 3 :]:
            c.append(m)
        start = c.storage.fmt.data_start if c.storage.fmt else 0
    log = path.read_bytes()
    idx = Path(f"{path}.idx").read_bytes()
    return Base(name, log, idx, key, messages, _frames(log, key is not None, start))


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Base]:
    folder = tmp_path_factory.mktemp("bases")
    built = [
        _build(folder, "sealed", KEY, 6),
        _build(folder, "other", KEY, 4),  # same key, another log: splices never authenticate
        _build(folder, "dict", KEY, 515),  # holds a dictionary record after message 511
        _build(folder, "plain", None, 6),
    ]
    return {b.name: b for b in built}


# -- mutations ---------------------------------------------------------------------------------

Mutation = tuple[str, int, int, bytes]
KINDS = ("flip", "insert", "delete", "truncate", "splice", "duplicate", "zero", "length", "frame")
# Length prefixes a hostile or damaged frame may carry (all encodable in the 5-byte varint).
HOSTILE_LENGTHS = (
    (4 * GIB) << 1,  # 4 GiB
    (MAX_BODY_BYTES << 1),  # the largest legal body: more than the file holds
    ((MAX_BODY_BYTES + 16) << 1),  # one block too many
    (MIN_BODY_BYTES << 1),  # the smallest legal body
    ((MIN_BODY_BYTES - 1) << 1),  # too small
    (200 << 1) | 1,  # a control frame of a plausible size
    (1 << 35) - 1,  # the largest 5-byte varint
    0,
)

mutations = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 1 << 20),
        st.integers(0, 1 << 20),
        st.binary(max_size=24),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, muts: list[Mutation], base: Base, donor: bytes) -> bytes:
    """Apply ``muts`` in order; positions wrap around the current length."""
    buf = bytearray(data)
    for kind, a, b, blob in muts:
        n = len(buf)
        pos = a % (n + 1)
        if kind == "flip" and n:
            buf[a % n] ^= 1 << (b % 8)
        elif kind == "insert":
            buf[pos:pos] = blob or b"\x00"
        elif kind == "delete":
            del buf[pos : pos + 1 + b % 64]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "splice" and donor:
            start = b % len(donor)
            piece = donor[start : start + 1 + len(blob) * 16]
            buf[pos : pos + (len(piece) if a % 2 else 0)] = piece
        elif kind == "duplicate" and n:
            start = b % n
            buf[pos:pos] = buf[start : start + 1 + len(blob) * 16]
        elif kind == "zero":
            buf[pos : pos + 1 + b % 256] = bytes(len(buf[pos : pos + 1 + b % 256]))
        elif kind == "length" and base.key is not None and base.frames:
            at = base.frames[a % len(base.frames)]
            if at < len(buf):
                with contextlib.suppress(ValueError):
                    _, body = decode_varint(bytes(buf[at : at + 5]))
                    buf[at : at + body] = encode_varint(HOSTILE_LENGTHS[b % len(HOSTILE_LENGTHS)])
        elif kind == "frame" and len(base.frames) > 1:
            _move_frame(buf, base, a, b)
    return bytes(buf)


def _move_frame(buf: bytearray, base: Base, a: int, b: int) -> None:
    """Whole records out of place: duplicate one, drop one, or swap two neighbours."""
    bounds = [*base.frames, len(base.log)]
    k = a % (len(bounds) - 2)
    lo, mid, hi = bounds[k], bounds[k + 1], bounds[k + 2]
    if hi > len(buf):
        return
    first, second = bytes(buf[lo:mid]), bytes(buf[mid:hi])
    how = b % 3
    if how == 0:  # a replayed record
        buf[hi:hi] = first
    elif how == 1:  # a record deleted from the middle
        del buf[lo:mid]
    else:  # two records swapped
        buf[lo:hi] = second + first


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
plain_lines = st.fixed_dictionaries(
    {},
    optional={
        "seq": st.integers(-2, 8) | json_values,
        "ts": st.sampled_from(["2025-11-21T04:40:00.000000Z", "2025-13-40T99:99:99Z", "", "Z"])
        | json_values,
        "message": st.fixed_dictionaries({"role": st.text(max_size=5)}) | json_values,
    },
).map(lambda d: json.dumps(d, allow_nan=True).encode() + b"\n") | st.binary(max_size=40).map(
    lambda b: b + b"\n"
)


def replace_line(data: bytes, which: int, line: bytes) -> bytes:
    lines = data.split(b"\n")
    k = 1 + which % max(1, len(lines) - 1)  # never the header line
    lines[k : k + 1] = [line.rstrip(b"\n")]
    return b"\n".join(lines)


# -- exercising a file -------------------------------------------------------------------------


class Hang(BaseException):
    """A call ran past CALL_SECONDS (BaseException: no library handler may swallow it)."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"a call took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _calls(codec: ConversationCodec, n: int) -> list[tuple[str, Callable[[], object]]]:
    calls: list[tuple[str, Callable[[], object]]] = [
        ("tail", lambda: codec.tail(3)),
        ("iter", lambda: list(codec)),
        ("search", lambda: list(codec.search("message 3"))),
        ("search range", lambda: list(codec.search(None, since=1.7e9, until=1.8e9, limit=5))),
        ("search newest", lambda: list(codec.search("ab", newest_first=True, limit=2))),
        ("info", codec.info),
        ("verify", codec.verify),
    ]
    if n:
        for seq in (0, -1, n // 2):
            calls.append((f"get({seq})", lambda s=seq: codec.get(s)))  # type: ignore[misc]
            calls.append((f"timestamp({seq})", lambda s=seq: codec.timestamp(s)))  # type: ignore[misc]
    return calls


def _guarded(what: str, call: Callable[[], Any], seconds: float = CALL_SECONDS) -> tuple[bool, Any]:
    """Run one call; return (True, result), or (False, None) for a library error."""
    try:
        with time_bound(seconds):
            return True, call()
    except ConversationCodecError:
        return False, None
    except Hang:
        raise AssertionError(f"{what} hung (> {seconds} s)") from None
    except Exception as exc:
        raise AssertionError(f"{what} raised a foreign {type(exc).__name__}: {exc!r}") from exc


def exercise(path: Path, key: str | None) -> list[Message] | None:
    """Read a (damaged) log through every entry point; then append to it. Return what
    ``load()`` gave (None when it raised a library error)."""
    ok, codec = _guarded("open", lambda: ConversationCodec(path, encryption_key=key))
    if not ok:
        return None
    loaded = None
    with codec:
        ok, count = _guarded("message_count", codec.message_count)
        ok, got = _guarded("load", codec.load)
        if ok:
            loaded = got or []
        for what, call in _calls(codec, count if isinstance(count, int) else 0):
            _guarded(what, call)
    with ConversationCodec(path, encryption_key=key, clock=Clock(1 << 52)) as writer:
        _guarded("append", lambda: writer.append({"role": "user", "content": "fuzz"}))
    return loaded


def _check_sealed(loaded: list[Message] | None, bases: dict[str, Base]) -> None:
    if not loaded:
        return
    for base in bases.values():
        if base.key is not None and base.messages[: len(loaded)] == loaded:
            return
    raise AssertionError(f"load() returned messages that were never written: {loaded[:3]}")


@contextlib.contextmanager
def files(log: bytes, idx: bytes | None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cc-fuzz-"))
    try:
        path = folder / "chat.log"
        path.write_bytes(log)
        if idx is not None:
            Path(f"{path}.idx").write_bytes(idx)
        yield path
    finally:
        shutil.rmtree(folder)


def _settings(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _index_choice(base: Base, how: int, bases: dict[str, Base]) -> bytes | None:
    return {0: base.idx, 1: None, 2: bases["other"].idx}.get(how % 3)


# -- the fuzz tests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "examples",
    [EXAMPLES["sealed"], pytest.param(EXAMPLES["sealed"] * SLOW_FACTOR, marks=pytest.mark.slow)],
)
def test_fuzz_sealed_logs(bases: dict[str, Base], examples: int) -> None:
    """Mutated sealed logs (with and without a dictionary record): library errors only,
    never a message that was not written."""

    ran = [0]

    @_settings(examples)
    @given(which=st.sampled_from(["sealed", "sealed", "dict"]), muts=mutations, how=st.integers())
    def run(which: str, muts: list[Mutation], how: int) -> None:
        ran[0] += 1
        base = bases[which]
        log = mutate(base.log, muts, base, bases["other"].log)
        with files(log, _index_choice(base, how, bases)) as path:
            _check_sealed(exercise(path, KEY), bases)

    run()
    print(f"{examples} examples asked, {ran[0]} run")
    assert ran[0] >= examples


@pytest.mark.parametrize(
    "examples",
    [EXAMPLES["plain"], pytest.param(EXAMPLES["plain"] * SLOW_FACTOR, marks=pytest.mark.slow)],
)
def test_fuzz_plain_logs(bases: dict[str, Base], examples: int) -> None:
    """Mutated plain logs, and lines replaced by JSON of the wrong shape: library errors
    only (plain logs have no integrity to check, FORMAT.md §11)."""

    ran = [0]

    @_settings(examples)
    @given(muts=mutations, line=plain_lines, which=st.integers(), how=st.integers())
    def run(muts: list[Mutation], line: bytes, which: int, how: int) -> None:
        ran[0] += 1
        base = bases["plain"]
        log = replace_line(base.log, which, line) if how % 2 else base.log
        log = mutate(log, muts, base, bases["sealed"].log)
        with files(log, _index_choice(base, how // 2, bases)) as path:
            exercise(path, None)

    run()
    print(f"{examples} examples asked, {ran[0]} run")
    assert ran[0] >= examples


@pytest.mark.parametrize(
    "examples",
    [EXAMPLES["index"], pytest.param(EXAMPLES["index"] * SLOW_FACTOR, marks=pytest.mark.slow)],
)
def test_fuzz_index_files(bases: dict[str, Base], examples: int) -> None:
    """An intact log with a mutated or random index: the same answers as without one."""

    ran = [0]

    @_settings(examples)
    @given(
        which=st.sampled_from(["sealed", "plain", "dict"]),
        muts=mutations,
        noise=st.binary(max_size=200),
        how=st.integers(0, 3),
    )
    def run(which: str, muts: list[Mutation], noise: bytes, how: int) -> None:
        ran[0] += 1
        base = bases[which]
        idx = noise if how == 3 else mutate(base.idx, muts, base, bases["other"].idx)
        with files(base.log, idx) as path:
            loaded = exercise(path, base.key)
        assert loaded == base.messages, "a damaged index changed what load() returns"

    run()
    print(f"{examples} examples asked, {ran[0]} run")
    assert ran[0] >= examples


# -- memory and time bounds on hostile lengths ---------------------------------------------------


def _peak(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with time_bound(CALL_SECONDS):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("claim", [4 * GIB, MAX_BODY_BYTES, (1 << 34) - 16])
@pytest.mark.parametrize("where", ["last", "middle"])
def test_huge_length_is_refused_without_allocating(
    bases: dict[str, Base], claim: int, where: str
) -> None:
    """A frame claiming up to 16 GiB: the reader rejects it (a torn tail at the end,
    corruption before intact records) with a peak of a few MiB, never the claimed size."""
    base = bases["sealed"]
    at = base.frames[-1 if where == "last" else 1]
    _, body = decode_varint(base.log, at)
    log = base.log[:at] + encode_varint(claim << 1) + base.log[body:]
    with files(log, None) as path:
        out: list[Any] = []

        def read() -> None:
            with ConversationCodec(path, encryption_key=KEY) as codec:
                try:
                    out.append(codec.load())
                except CorruptRecordError as exc:
                    out.append(exc)
                out.append(codec.verify())

        peak = _peak(read)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {claim}-byte claim"
    if where == "last":
        assert out[0] == base.messages[:-1]
    else:
        assert isinstance(out[0], CorruptRecordError)
    assert not out[1].ok


def test_huge_sparse_index_is_read_within_bounds(bases: dict[str, Base]) -> None:
    """A 4 GiB (sparse) index sidecar claiming 268 million entries: bounded by the log's
    size, the reader allocates little and answers right."""
    base = bases["sealed"]
    with files(base.log, base.idx) as path:
        with open(f"{path}.idx", "r+b") as f:
            f.truncate(4 * GIB)
        out: list[Any] = []

        def read() -> None:
            with ConversationCodec(path, encryption_key=KEY) as codec:
                out.append(codec.load())

        peak = _peak(read)
    assert out == [base.messages]
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_opening_a_large_log_allocates_little(tmp_path: Path) -> None:
    """Opening a 3 MiB log (index 64 KiB) must not allocate many times the log's size
    (it allocated 16x the log's size before 71de437)."""
    path = tmp_path / "big.log"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend([{"role": "user", "content": os.urandom(600).hex()} for _ in range(4000)])
    size = path.stat().st_size

    def count() -> None:
        with ConversationCodec(path, encryption_key=KEY) as codec:
            assert codec.message_count() == 4000

    peak = _peak(count)
    assert peak < 2 * size, f"peak {peak / 2**20:.1f} MiB opening a {size / 2**20:.1f} MiB log"


def test_time_bound_catches_a_hang() -> None:
    """The per-call bound itself works: a call that never returns fails, it does not stall."""

    def forever() -> None:
        while True:
            pass

    with pytest.raises(AssertionError, match="hung"):
        _guarded("spin", forever, seconds=0.1)

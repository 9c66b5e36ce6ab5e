"""Hostile bytes: flipped bits, wrong keys, garbled indexes, spliced and reordered records.

What must hold (STYLE.md §10, API.md): damage yields a ConversationCodecError subclass,
never wrong plaintext and never a foreign exception; a wrong or missing key changes no
byte on disk; the index is a cache that can be deleted or garbled without changing any
answer; and records cannot be moved between logs or positions unnoticed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conversation_codec import ConversationCodec, generate_key
from conversation_codec.errors import (
    ConversationCodecError,
    CorruptRecordError,
    DecryptionError,
    KeyRequiredError,
    NotEncryptedError,
)

T0_US = 1_763_700_000_000_000  # 2025-11-21 in microseconds: the fixed clock's start
NEW = {"role": "user", "content": "appended after the damage", "n": -1}
NEW_TS = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["encrypted", "plaintext"])
def variant_key(request: pytest.FixtureRequest, key: str) -> str | None:
    """Run a test on an encrypted log (the fixed ``key``) and on a plaintext log."""
    return key if request.param == "encrypted" else None


def _clock(start_us: int = T0_US, step_us: int = 1_234_567) -> Callable[[], int]:
    """Return a clock seam; the odd step makes every timestamp's digits distinct."""
    ticks = iter(range(start_us, start_us + 10**15, step_us))
    return lambda: next(ticks)


def _message(i: int, tag: str = "message") -> dict[str, Any]:
    return {
        "role": ("user", "assistant", "tool")[i % 3],
        "content": f"{tag} number {i}: " + "lorem ipsum " * (i % 4),
        "n": i,
        "nested": {"list": [i, str(i), None, True], "f": i / 4},
    }


class _Log:
    """A log built with a fixed clock; remembers its bytes and every record's span."""

    def __init__(self, path: Path, key: str | None, count: int, tag: str = "message") -> None:
        self.path, self.key = path, key
        self.idx_path = Path(f"{path}.idx")
        self.messages = [_message(i, tag) for i in range(count)]
        self.sizes: list[int] = []
        self.idx_after: list[bytes] = []
        with ConversationCodec(path, encryption_key=key, clock=_clock()) as codec:
            for i, m in enumerate(self.messages):
                assert codec.append(m) == i
                self.sizes.append(path.stat().st_size)
                self.idx_after.append(self.idx_path.read_bytes())
        self.log = path.read_bytes()
        self.idx = self.idx_path.read_bytes()
        with ConversationCodec(path, encryption_key=key) as codec:
            self.stamps = [codec.timestamp(i) for i in range(count)]
        assert self.stamps == sorted(set(self.stamps)), "the clock seam was not used"

    def span(self, i: int) -> tuple[int, int]:
        """Return record ``i``'s ``[start, end)`` (``i >= 1``: record 0 starts after the header)."""
        assert i >= 1
        return self.sizes[i - 1], self.sizes[i]

    def rec(self, i: int) -> bytes:
        start, end = self.span(i)
        return self.log[start:end]

    def write(self, log: bytes, idx: bytes | None) -> None:
        self.path.write_bytes(log)
        if idx is None:
            self.idx_path.unlink(missing_ok=True)
        else:
            self.idx_path.write_bytes(idx)


# --- (a) flip every byte ------------------------------------------------------------

ERR = "<ConversationCodecError>"

# Read operations that cannot legitimately raise IndexError on a log of >= 1 record.
_READS: dict[str, Callable[[ConversationCodec], Any]] = {
    "load": lambda c: c.load(),
    "iter": lambda c: list(c),
    "count": lambda c: c.message_count(),
    "len": len,
    "tail1": lambda c: c.tail(1),
    "tail2": lambda c: c.tail(2),
    "get0": lambda c: c.get(0),
    "get-1": lambda c: c.get(-1),
    "ts0": lambda c: c.timestamp(0),
}


def _reads(path: Path, key: str | None) -> dict[str, Any]:
    """Run every read; a library error becomes ERR, anything else propagates."""
    try:
        codec = ConversationCodec(path, encryption_key=key)
    except ConversationCodecError:
        return dict.fromkeys(_READS, ERR)
    out: dict[str, Any] = {}
    with codec:
        for name, read in _READS.items():
            try:
                out[name] = read(codec)
            except ConversationCodecError:
                out[name] = ERR
            except IndexError:  # the API's answer for a missing seq: wrong iff seq exists
                out[name] = "<IndexError>"
    return out


def _model(messages: list[dict[str, Any]], stamps: list[datetime]) -> dict[str, Any]:
    """What ``_reads`` must return for a log holding ``messages``."""
    return {
        "load": messages,
        "iter": messages,
        "count": len(messages),
        "len": len(messages),
        "tail1": messages[-1:],
        "tail2": messages[-2:],
        "get0": messages[0],
        "get-1": messages[-1],
        "ts0": stamps[0],
    }


def _brief(answers: dict[str, Any]) -> str:
    """Summarise answers: lists by length, messages by their ``n``."""

    def short(v: Any) -> str:
        if isinstance(v, list):
            return f"[{len(v)} msgs]"
        if isinstance(v, dict) and "n" in v:
            return f"msg#{v['n']}"
        return repr(v)

    return ", ".join(f"{k}={short(v)}" for k, v in answers.items())


FLIP_EVERY = 4  # the default run flips one offset in 4 (fixed seed) and every boundary


def _offsets(size: int, boundaries: list[int], every: int) -> list[int]:
    """All of ``range(size)`` for ``every == 1``; else a fixed sample of ``size // every``
    offsets, plus each boundary and its two neighbours (where framing bugs live)."""
    if every == 1:
        return list(range(size))
    picked = set(random.Random(size).sample(range(size), size // every))  # fixed per size
    picked.update(b + d for b in boundaries for d in (-1, 0, 1))
    return sorted(o for o in picked if 0 <= o < size)


@pytest.mark.parametrize("every", [FLIP_EVERY, pytest.param(1, marks=pytest.mark.slow)])
def test_flip_every_byte(tmp_path: Path, variant_key: str | None, every: int) -> None:
    """Flip each byte of a 3-message log (XOR 0x01 and 0xFF), with and without index.

    The default run flips a fixed sample of the offsets (every record boundary among
    them); ``-m slow`` flips every byte.

    Encrypted: every read gives the true answer or a library error; a flip inside the last
    record may also read as a torn tail (the first two messages). load() must never return
    the three messages' worth of wrong data. Plaintext has no integrity, so only "no
    foreign exception" holds. Either way readers leave the log untouched, and restoring
    the original bytes restores the original answers (nothing poisoned was cached).
    """
    log = _Log(tmp_path / "flip.log", variant_key, 3)
    truth = _model(log.messages, log.stamps)
    torn = _model(log.messages[:2], log.stamps[:2])
    assert _reads(log.path, log.key) == truth
    last_start, _ = log.span(2)
    problems: list[str] = []
    outcomes = {"error": 0, "truth": 0, "torn": 0}
    offsets = _offsets(len(log.log), [0, *log.sizes], every)
    for offset in offsets:
        for xor in (0x01, 0xFF):
            with_idx = (offset + (xor == 0xFF)) % 2 == 0
            damaged = bytearray(log.log)
            damaged[offset] ^= xor
            log.write(bytes(damaged), log.idx if with_idx else None)
            case = f"offset {offset} xor 0x{xor:02x} {'with' if with_idx else 'no'} index"
            try:
                got = _reads(log.path, log.key)
            except Exception as exc:  # the point: nothing but library errors may escape
                problems.append(f"{case}: foreign {type(exc).__name__}: {exc}")
                continue
            if log.path.read_bytes() != damaged:
                problems.append(f"{case}: a reader modified the log")
            if variant_key is not None:
                in_last = offset >= last_start
                wrong = {
                    name: value
                    for name, value in got.items()
                    if value not in (ERR, truth[name]) and not (in_last and value == torn[name])
                }
                if wrong:
                    problems.append(f"{case}: wrong data {_brief(wrong)}")
                kind = {ERR: "error", str(truth["load"]): "truth", str(torn["load"]): "torn"}
                outcome = kind.get(str(got["load"]), "wrong")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome == "truth":
                    problems.append(f"{case}: load() accepted a flipped byte")
            log.path.write_bytes(log.log)  # restore; keep whatever index the reader left
            try:
                restored = _reads(log.path, log.key)
            except Exception as exc:
                restored = {"foreign": repr(exc)}
            if restored != truth:
                problems.append(f"{case}: after restoring the bytes, reads differ")
        if len(problems) > 30:
            break
    assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:30])
    if variant_key is not None:
        assert outcomes["error"] > len(offsets), outcomes  # most of the 2 flips per offset


def _prefix_model(log: _Log, k: int) -> dict[str, Any]:
    """What ``_reads`` returns for a log cut back to its first ``k`` records."""
    if k:
        return _model(log.messages[:k], log.stamps[:k])
    missing = "<IndexError>"
    empty: dict[str, Any] = {"iter": [], "count": 0, "len": 0, "tail1": [], "tail2": []}
    return {**empty, "load": None, "get0": missing, "get-1": missing, "ts0": missing}


def _check_random_damage(log: _Log, max_examples: int) -> None:
    """Fuzz ``log`` (3 records) with flipped bytes and cuts; see the caller's docstring."""
    truth = _model(log.messages, log.stamps)
    spans = [(0 if i == 0 else log.sizes[i - 1], log.sizes[i]) for i in range(3)]  # 0: + header
    size = len(log.log)

    @settings(max_examples=max_examples, deadline=None, database=None)
    @given(
        flips=st.dictionaries(st.integers(0, size - 1), st.integers(1, 255), max_size=6),
        cut=st.one_of(st.none(), st.integers(0, size - 1)),
        with_idx=st.booleans(),
    )
    def check(flips: dict[int, int], cut: int | None, with_idx: bool) -> None:
        assume(flips or cut is not None)
        end = size if cut is None else cut
        damaged = bytearray(log.log[:end])
        for offset, xor in flips.items():
            if offset < end:
                damaged[offset] ^= xor
        hurt = [
            i
            for i, (a, b) in enumerate(spans)
            if b > end or any(a <= o < b for o in flips if o < end)
        ]
        assume(hurt)
        log.write(bytes(damaged), log.idx if with_idx else None)
        got = _reads(log.path, log.key)  # anything but a library error propagates: a failure
        assert log.path.read_bytes() == damaged, "a reader modified the log"
        if log.key is None:
            return  # plaintext has no integrity: "no foreign exception" is all that holds
        # Damage with nothing intact after it may read as a torn tail: the records before it.
        intact_after = any(i not in hurt for i in range(hurt[0] + 1, 3))
        prefix = None if intact_after else _prefix_model(log, hurt[0])
        # Damaged records at the very end may read as a torn tail (FORMAT.md §10.1) while
        # earlier damage waits for a read that touches it: a read that answers must then
        # give exactly the records before that tail.
        torn_from = (
            min(i for i in range(3) if all(j in hurt for j in range(i, 3))) if (2 in hurt) else None
        )
        index_only = None if torn_from is None else _prefix_model(log, torn_from)
        for name, value in got.items():
            ok = value in (ERR, truth[name]) or (prefix is not None and value == prefix[name])
            if index_only is not None:  # true data of the log minus its torn tail
                ok = ok or value == index_only[name]
            assert ok, f"{name} returned wrong data {value!r:.120}"
        assert got["load"] != truth["load"], "load() accepted damaged bytes"

    check()


@pytest.mark.parametrize(
    "max_examples", [60, *(pytest.param(n, marks=pytest.mark.slow) for n in (150, 3000))]
)
def test_random_multi_byte_damage(
    tmp_path: Path, variant_key: str | None, max_examples: int
) -> None:
    """Several flipped bytes and maybe a cut, anywhere: never wrong data or foreign errors.

    Encrypted: every answer is the truth or a library error, except that damage with no
    intact record after it may read as a torn tail (the records before it). Plaintext: no
    foreign exception. Readers never modify the log.
    """
    _check_random_damage(_Log(tmp_path / "fuzz.log", variant_key, 3), max_examples)


@pytest.mark.parametrize("every", [FLIP_EVERY, pytest.param(1, marks=pytest.mark.slow)])
def test_flip_every_index_byte(tmp_path: Path, variant_key: str | None, every: int) -> None:
    """Flip each byte of the index sidecar: every read still gives the true answer.

    The default run flips a fixed sample of the offsets; ``-m slow`` flips every byte."""
    log = _Log(tmp_path / "flipidx.log", variant_key, 3)
    truth = _model(log.messages, log.stamps)
    problems = []
    for offset in _offsets(len(log.idx), [0, len(log.idx)], every):
        for xor in (0x01, 0x80, 0xFF):
            damaged = bytearray(log.idx)
            damaged[offset] ^= xor
            log.write(log.log, bytes(damaged))
            got = _reads(log.path, log.key)
            bad = {k: v for k, v in got.items() if v != truth[k]}
            if bad:
                problems.append(f"index offset {offset} xor 0x{xor:02x}: {bad!r:.200}")
    assert not problems, f"{len(problems)} wrong answers, e.g.:\n" + "\n".join(problems[:20])


# --- (b) wrong key, missing key, key for a plaintext log -----------------------------

_OPS: dict[str, Callable[[ConversationCodec], Any]] = {
    "load": lambda c: c.load(),
    "append": lambda c: c.append(NEW),
    "extend": lambda c: c.extend([NEW, NEW]),
    "tail": lambda c: c.tail(2),
    "pop": lambda c: c.pop(),
    "clear": lambda c: c.clear(),
    "save": lambda c: c.save([NEW]),
    "save-prefix": lambda c: c.save([_message(0), _message(1), _message(2), NEW]),
    "get": lambda c: c.get(0),
    "count": lambda c: c.message_count(),
    "timestamp": lambda c: c.timestamp(0),
    "iter": lambda c: list(c),
}


def _snapshot(directory: Path) -> dict[str, tuple[str, int, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in directory.iterdir()
    }


def _assert_refused(path: Path, key: Any, error: type[ConversationCodecError], op: str) -> None:
    """Opening with ``key`` and running ``op`` raises ``error`` and changes no file."""
    before = _snapshot(path.parent)
    with pytest.raises(error), ConversationCodec(path, encryption_key=key) as codec:
        _OPS[op](codec)
    after = _snapshot(path.parent)
    lock = f"{path.name}.lock"
    if lock in after and lock not in before:  # creating the (empty) lock file is harmless
        assert after.pop(lock)[0] == hashlib.sha256(b"").hexdigest()
    assert after == before, f"{op} with a refused key changed files on disk"


@pytest.mark.parametrize("op", list(_OPS))
@pytest.mark.parametrize("wrong", ["other-key", "other-key-bytes", "key-list"])
def test_wrong_key_is_refused_and_changes_nothing(
    tmp_path: Path, key: str, op: str, wrong: str
) -> None:
    """Every operation with a wrong key raises DecryptionError and touches no byte."""
    log = _Log(tmp_path / "enc.log", key, 3)
    other = generate_key()
    wrong_key: Any = {
        "other-key": other,
        "other-key-bytes": other.encode() if isinstance(other, str) else other,
        "key-list": [other, generate_key()],
    }[wrong]
    _assert_refused(log.path, wrong_key, DecryptionError, op)
    assert _reads(log.path, key) == _model(log.messages, log.stamps)


@pytest.mark.parametrize("op", list(_OPS))
def test_missing_key_is_refused_and_changes_nothing(tmp_path: Path, key: str, op: str) -> None:
    """An encrypted log opened without a key raises KeyRequiredError and touches no byte."""
    log = _Log(tmp_path / "enc.log", key, 3)
    _assert_refused(log.path, None, KeyRequiredError, op)
    assert _reads(log.path, key) == _model(log.messages, log.stamps)


@pytest.mark.parametrize("op", list(_OPS))
def test_key_for_plaintext_log_is_refused_and_changes_nothing(
    tmp_path: Path, key: str, op: str
) -> None:
    """A plaintext log opened with a key raises NotEncryptedError and touches no byte."""
    log = _Log(tmp_path / "plain.log", None, 3)
    _assert_refused(log.path, key, NotEncryptedError, op)
    assert _reads(log.path, None) == _model(log.messages, log.stamps)


def test_wrong_key_error_says_nothing_about_why(tmp_path: Path, key: str) -> None:
    """The DecryptionError message leaks no key material and no detail (Fernet's rule)."""
    log = _Log(tmp_path / "enc.log", key, 1)
    other = generate_key()
    with (
        pytest.raises(DecryptionError) as info,
        ConversationCodec(log.path, encryption_key=other) as codec,
    ):
        codec.load()
    text = str(info.value) + repr(info.value.args)
    assert key not in text and str(other) not in text


# --- (c) the index is only a cache ---------------------------------------------------

_COUNT_C = 20


def _full_answers(codec: ConversationCodec, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "load": codec.load(),
        "count": codec.message_count(),
        "len": len(codec),
        "iter": list(codec),
        **{f"tail{k}": codec.tail(k) for k in (0, 1, 3, n - 1, n, n + 5)},
        **{f"get{i}": codec.get(i) for i in range(-n, n)},
        **{f"ts{i}": codec.timestamp(i) for i in range(n)},
    }
    for i in (n, -n - 1):
        with pytest.raises(IndexError):
            codec.get(i)
    return out


def _full_model(msgs: list[dict[str, Any]], stamps: list[datetime]) -> dict[str, Any]:
    n = len(msgs)
    return {
        "load": msgs,
        "count": n,
        "len": n,
        "iter": msgs,
        **{f"tail{k}": msgs[max(0, n - k) :] for k in (0, 1, 3, n - 1, n, n + 5)},
        **{f"get{i}": msgs[i] for i in range(-n, n)},
        **{f"ts{i}": stamps[i] for i in range(n)},
    }


def _garbles(log: _Log, rng: random.Random) -> dict[str, bytes | None]:
    """Damaged variants of the index of a 20-record log (None: the sidecar is gone)."""
    idx, n = log.idx, _COUNT_C
    entry = len(log.idx_after[-1]) - len(log.idx_after[-2])
    head = len(idx) - n * entry
    assert entry > 0 and head >= 0
    assert len(log.idx_after[4]) == head + 5 * entry, "index entries are not fixed-size"

    def at(k: int) -> slice:
        return slice(head + k * entry, head + (k + 1) * entry)

    def swapped(a: int, b: int) -> bytes:
        out = bytearray(idx)
        out[at(a)], out[at(b)] = idx[at(b)], idx[at(a)]
        return bytes(out)

    def nudged(k: int, field_offset: int, delta: int) -> bytes:
        out = bytearray(idx)
        pos = head + k * entry + field_offset
        out[pos] = (out[pos] + delta) % 256
        return bytes(out)

    zero_one = bytearray(idx)
    zero_one[at(7)] = bytes(entry)
    return {
        "deleted": None,
        "empty": b"",
        "random-same-length": rng.randbytes(len(idx)),
        "random-short": rng.randbytes(7),
        "random-after-header": idx[:head] + rng.randbytes(len(idx) - head),
        "header-only": idx[:head],
        "mid-header": idx[: max(1, head // 2)],
        "mid-entry": idx[: head + 5 * entry + entry // 2],
        "last-entry-cut": idx[:-1],
        "swap-3-7": swapped(3, 7),
        "swap-0-19": swapped(0, 19),
        "swap-18-19": swapped(18, 19),
        "zero-entry-7": bytes(zero_one),
        "all-zero": bytes(len(idx)),
        "stale-15": log.idx_after[14],
        "trailing-junk": idx + rng.randbytes(entry + 3),
        # One byte of one entry changed, keeping everything monotonic: a first field
        # (an offset, for the engine of 2025-11) and a second field (a timestamp).
        "entry-9-first-field-low-byte+1": nudged(9, 0, 1),
        "entry-9-first-field-low-byte-1": nudged(9, 0, -1),
        "entry-9-second-field-low-byte+1": nudged(9, entry // 2, 1),
        "entry-9-second-field-low-byte-1": nudged(9, entry // 2, -1),
    }


def test_garbled_index_gives_the_same_answers(
    tmp_path: Path, variant_key: str | None, rng: random.Random
) -> None:
    """Delete or garble the index: a reader, then a writer, then a fresh reader agree."""
    log = _Log(tmp_path / "cache.log", variant_key, _COUNT_C)
    truth = _full_model(log.messages, log.stamps)
    after = _full_model([*log.messages, NEW], [*log.stamps, NEW_TS])
    with ConversationCodec(log.path, encryption_key=log.key) as codec:
        assert _full_answers(codec, _COUNT_C) == truth
    other = _Log(tmp_path / "other.log", variant_key, _COUNT_C, tag="OTHER")
    variants = {**_garbles(log, rng), "other-logs-index": other.idx}
    problems = []
    for name, idx in variants.items():
        log.write(log.log, idx)
        try:
            with ConversationCodec(log.path, encryption_key=log.key) as codec:
                if _full_answers(codec, _COUNT_C) != truth:
                    problems.append(f"{name}: reader answers differ")
            assert log.path.read_bytes() == log.log, "a reader modified the log"
            with ConversationCodec(log.path, encryption_key=log.key) as codec:
                assert codec.append(NEW, timestamp=NEW_TS) == _COUNT_C
                if _full_answers(codec, _COUNT_C + 1) != after:
                    problems.append(f"{name}: answers after append differ")
            with ConversationCodec(log.path, encryption_key=log.key) as codec:
                if _full_answers(codec, _COUNT_C + 1) != after:
                    problems.append(f"{name}: answers after reopen differ")
        except Exception as exc:  # collect, so one run shows every failing variant
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not problems, "\n".join(problems)


def test_index_ahead_of_log(tmp_path: Path, variant_key: str | None) -> None:
    """A power loss can keep index entries for records the log lost: they are ignored."""
    log = _Log(tmp_path / "ahead.log", variant_key, _COUNT_C)
    cut = log.sizes[14]
    log.write(log.log[:cut], log.idx)
    truth = _full_model(log.messages[:15], log.stamps[:15])
    with ConversationCodec(log.path, encryption_key=log.key) as codec:
        assert _full_answers(codec, 15) == truth
    with ConversationCodec(log.path, encryption_key=log.key) as codec:
        assert codec.append(NEW, timestamp=NEW_TS) == 15
    with ConversationCodec(log.path, encryption_key=log.key) as codec:
        assert _full_answers(codec, 16) == _full_model(
            [*log.messages[:15], NEW], [*log.stamps[:15], NEW_TS]
        )


# --- (d) records moved between logs or positions --------------------------------------


def _spliced(a: _Log, b: _Log, how: str) -> bytes:
    """Rearrange whole records of the 4-record log ``b`` (record 0 stays first)."""
    head_and_r0 = b.log[: b.sizes[0]]
    r = {i: b.rec(i) for i in (1, 2, 3)}
    layouts = {
        "from-other-log": [a.rec(1), r[2], r[3]],
        "other-log-record-at-end": [r[1], r[2], r[3], a.rec(3)],
        "duplicate-1": [r[1], r[1], r[2], r[3]],
        "duplicate-last": [r[1], r[2], r[3], r[3]],
        "swap-1-2": [r[2], r[1], r[3]],
        "swap-2-3": [r[1], r[3], r[2]],
        "drop-1": [r[2], r[3]],
        "drop-2": [r[1], r[3]],
        "last-moved-to-1": [r[3], r[1], r[2]],
        "replay-1-over-3": [r[1], r[2], r[1]],
    }
    return head_and_r0 + b"".join(layouts[how])


# Layouts where the foreign/duplicate record is the very last frame: a reader may treat it
# as a torn tail (it cannot tell it from a crash that left a complete-length frame of
# garbage); it must then show exactly the original history.
_TAIL_ONLY = {"other-log-record-at-end", "duplicate-last"}


@pytest.mark.parametrize(
    "how",
    [
        "from-other-log",
        "other-log-record-at-end",
        "duplicate-1",
        "duplicate-last",
        "swap-1-2",
        "swap-2-3",
        "drop-1",
        "drop-2",
        "last-moved-to-1",
        "replay-1-over-3",
    ],
)
@pytest.mark.parametrize("index", ["keep-idx", "no-idx"])
def test_moved_records_are_detected(
    tmp_path: Path, variant_key: str | None, how: str, index: str
) -> None:
    """Records copied from another log (same key), duplicated, reordered or dropped."""
    a = _Log(tmp_path / "a.log", variant_key, 4, tag="A-log")
    b = _Log(tmp_path / "b.log", variant_key, 4, tag="B-log")
    assert len(a.log) == len(b.log)  # same shape: only the log binding can tell them apart
    damaged = _spliced(a, b, how)
    b.write(damaged, b.idx if index == "keep-idx" else None)
    if variant_key is None and how == "from-other-log":
        # Documented limit (FORMAT.md §11): a plain log has no integrity, so a same-seq
        # record from another plain log reads as valid. It must read, not crash.
        with ConversationCodec(b.path) as codec:
            assert len(codec.load() or []) == 4
        return
    try:
        with ConversationCodec(b.path, encryption_key=b.key) as codec:
            got = codec.load()
    except ConversationCodecError:
        got = ERR
    if how in _TAIL_ONLY:
        assert got in (ERR, b.messages), f"{how}: load() returned {got!r:.200}"
        return
    assert got == ERR, f"{how}: load() returned {got!r:.200} instead of raising"
    # A writer may refuse, or append without scanning the whole log; it must not cut.
    try:
        with ConversationCodec(b.path, encryption_key=b.key) as codec:
            codec.append(NEW)
    except ConversationCodecError:
        assert b.path.read_bytes() == damaged, "a refusing writer modified the log"
    else:
        assert b.path.read_bytes().startswith(damaged), "a writer cut intact records"
        with (
            pytest.raises(ConversationCodecError),
            ConversationCodec(b.path, encryption_key=b.key) as codec,
        ):
            codec.load()


def test_copied_record_error_is_corrupt_record(tmp_path: Path, key: str) -> None:
    """A foreign record in the middle is reported as CorruptRecordError at its offset."""
    a = _Log(tmp_path / "a.log", key, 4, tag="A-log")
    b = _Log(tmp_path / "b.log", key, 4, tag="B-log")
    b.write(_spliced(a, b, "from-other-log"), None)
    with (
        pytest.raises(CorruptRecordError) as info,
        ConversationCodec(b.path, encryption_key=key) as codec,
    ):
        codec.load()
    assert info.value.offset == b.sizes[0]

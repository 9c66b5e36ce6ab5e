"""Multi-process stress: writers appending and popping at random, a reader polling, all at once.

Each writer is a real process running ``python tests/test_stress.py writer ...``: it appends
its own numbered messages and, now and then, pops whatever is last, and logs every call with
what it returned (the seq an append got, the message a pop removed), its start and end time
(``CLOCK_MONOTONIC``, shared by all processes) and the ``generation`` counter it wrote into
the lock file (FORMAT.md §8.1), read through the ``fault`` seam while the call still holds
the exclusive lock. A reader process polls ``message_count``/``tail``/``get``/``load``
meanwhile and must never see an error, a torn or foreign message, or one writer's messages
out of order. The log starts with 505 messages so that the 512th, and the dictionary record
(FORMAT.md §5.3), are crossed (and popped below again) under contention.

Afterwards the final log is checked against the logs of the writers:

* every surviving message was appended by someone, and not reported popped; every message
  appended and not reported popped survives; every popped message had been appended, and
  was popped once; a surviving message stands at the seq its append returned;
* the writes are serialised by the lock, so sorting them by the generation each one wrote
  gives *the* order they happened in: replaying appends and pops in that order over a list
  must reproduce every returned seq, every popped message and the final log exactly, and
  that order must agree with real time (a call that ended before another began comes first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import KEY_ENV, subprocess_env
from conversation_codec import ConversationCodec, FileIO

from conftest import KEY, Steps

SCRIPT = os.path.abspath(__file__)
PREFILL = 505  # messages before the writers start: they cross TRAIN_AFTER (512) under load
TIMEOUT = 300.0  # seconds any child may take; a hang fails, it does not stall
_LOCK_STATE = struct.Struct("<QQ")  # FORMAT.md §8.1: generation, truncations
Message = dict[str, Any]


def stress_message(writer: int, i: int) -> Message:
    """Message ``i`` of ``writer`` (-1: the prefill); sizes vary so frames do too."""
    pad = "".join(chr(0x61 + (writer * 7 + i * 13 + k) % 26) for k in range((i * 37) % 300))
    return {
        "role": "user" if (writer + i) % 2 else "assistant",
        "content": f"w{writer} i{i} {pad}",
        "w": writer,
        "i": i,
    }


# -- the child processes ---------------------------------------------------------------


def _open(path: str, io: FileIO | None = None) -> ConversationCodec:
    key = os.environ.get(KEY_ENV)
    return ConversationCodec(path, encryption_key=key, durability="fsync", io=io or FileIO())


def _run_writer(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    seen: list[int | None] = [None]
    lock = args.path + ".lock"

    def fault(step: str) -> None:  # called with the exclusive lock held, after the bump
        if step in ("append:written", "truncate:index-truncated"):
            with open(lock, "rb") as f:
                seen[0] = _LOCK_STATE.unpack(f.read(_LOCK_STATE.size))[0]

    with _open(args.path, Steps(fault)) as codec, open(args.out, "w") as out:
        for i in range(args.ops):
            seen[0] = None
            t0 = time.monotonic_ns()
            entry: dict[str, Any]
            if rng.random() < args.pop:
                entry = {"op": "pop", "got": codec.pop()}
            else:
                message = stress_message(args.writer, i)
                entry = {"op": "append", "w": args.writer, "i": i, "seq": codec.append(message)}
            entry.update(gen=seen[0], t0=t0, t1=time.monotonic_ns())
            out.write(json.dumps(entry) + "\n")
    return 0


def _check_seen(messages: list[Message], where: str) -> None:
    """Every message is one that some writer writes, whole; each writer's are in order."""
    last: dict[int, int] = {}
    for m in messages:
        if not isinstance(m, dict) or m != stress_message(m.get("w", -2), m.get("i", -1)):
            raise AssertionError(f"{where}: torn or foreign message {m!r}")
        if m["i"] <= last.get(m["w"], -1):
            raise AssertionError(f"{where}: writer {m['w']}'s {m['i']} after {last[m['w']]}")
        last[m["w"]] = m["i"]


def _run_reader(args: argparse.Namespace) -> int:
    stats = {"iterations": 0, "loads": 0, "max_count": 0}
    codec = _open(args.path)
    try:
        while not os.path.exists(args.stop):
            if stats["iterations"] % 5 == 4:  # now and then a fresh instance: no stale caches
                codec.close()
                codec = _open(args.path)
            count = codec.message_count()
            stats["max_count"] = max(stats["max_count"], count)
            _check_seen(codec.tail(5), "tail(5)")
            _check_seen([codec.get(-1)], "get(-1)")
            if stats["iterations"] % 10 == 0:
                _check_seen(codec.load() or [], "load()")
                stats["loads"] += 1
            stats["iterations"] += 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        codec.close()
    Path(args.out).write_text(json.dumps(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="stress-test child process")
    sub = parser.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("writer")
    w.add_argument("path")
    w.add_argument("--writer", type=int, required=True)
    w.add_argument("--ops", type=int, required=True)
    w.add_argument("--pop", type=float, required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--out", required=True)
    r = sub.add_parser("reader")
    r.add_argument("path")
    r.add_argument("--stop", required=True)
    r.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return _run_writer(args) if args.mode == "writer" else _run_reader(args)


# -- the checker -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One logged call of one writer."""

    writer: int
    op: str  # append | pop
    message: Message | None  # appended, or popped (None: the pop found an empty log)
    seq: int  # append: the seq returned; pop: -1
    gen: int | None  # the generation the call wrote while holding the lock
    t0: int
    t1: int


def _events(outs: list[Path]) -> list[Event]:
    events = []
    for w, out in enumerate(outs):
        for line in out.read_text().splitlines():
            e = json.loads(line)
            if e["op"] == "append":
                events.append(
                    Event(
                        w, "append", stress_message(w, e["i"]), e["seq"], e["gen"], e["t0"], e["t1"]
                    )
                )
            else:
                events.append(Event(w, "pop", e["got"], -1, e["gen"], e["t0"], e["t1"]))
    return events


def _key(m: Message) -> tuple[int, int]:
    return m["w"], m["i"]


def check_history(prefill: list[Message], events: list[Event], final: list[Message]) -> None:
    """The checks of the module docstring; raise AssertionError at the first breach."""
    appended = {_key(e.message): e for e in events if e.op == "append" and e.message}
    appended.update({_key(m): None for m in prefill})  # type: ignore[misc]
    popped = [_key(e.message) for e in events if e.op == "pop" and e.message is not None]
    assert len(popped) == len(set(popped)), "a message was popped twice"
    assert all(k in appended for k in popped), "a pop returned a message nobody appended"
    gone = set(popped)
    survivors = [_key(m) for m in final]
    assert len(survivors) == len(set(survivors)), "a message is in the log twice"
    assert all(k in appended and k not in gone for k in survivors), "a survivor was popped"
    assert set(survivors) == set(appended) - gone, "an appended, unpopped message is missing"
    for pos, m in enumerate(final):
        e = appended[_key(m)]
        assert e is None or e.seq == pos, f"{_key(m)} got seq {e.seq} but stands at {pos}"
    _replay(prefill, events, final)


def _replay(prefill: list[Message], events: list[Event], final: list[Message]) -> None:
    """Replay the writes in the order of the generations they wrote (the lock's order)."""
    writes = [e for e in events if e.gen is not None]
    assert len(writes) == len([e for e in events if e.op == "append" or e.message]), (
        "a write did not record its generation"
    )
    writes.sort(key=lambda e: e.gen or 0)
    gens = [e.gen for e in writes]
    assert len(gens) == len(set(gens)), "two writes wrote the same generation"
    state = list(prefill)
    latest_start = 0
    for e in writes:
        assert e.t1 >= latest_start, "the lock order contradicts real time"
        latest_start = max(latest_start, e.t0)
        if e.op == "append":
            assert e.seq == len(state), f"append got seq {e.seq} with {len(state)} before it"
            state.append(e.message)  # type: ignore[arg-type]
        else:
            assert state and state[-1] == e.message, "a pop returned what was not last"
            state.pop()
    assert state == final, "replaying the writes in lock order does not give the final log"
    for w in {e.writer for e in events}:
        mine = [e.gen or 0 for e in writes if e.writer == w]
        assert mine == sorted(mine), f"writer {w}'s own calls are out of order"


# -- the tests -------------------------------------------------------------------------


def _spawn(args: list[str], key: str | None) -> subprocess.Popen[str]:
    return _children.Popen(
        [sys.executable, SCRIPT, *args],
        env=subprocess_env(key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen[str], what: str) -> None:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{what} hung: {err[-2000:]}") from None
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {out[-500:]}{err[-3000:]}"


def run_stress(
    tmp_path: Path, key: str | None, writers: int, ops: int, seed: int
) -> dict[str, Any]:
    """Start the writers and a reader on one log; check everything; return the numbers."""
    path = tmp_path / "stress.log"
    prefill = [stress_message(-1, i) for i in range(PREFILL)]
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.extend(prefill)
    stop, reader_out = tmp_path / "stop", tmp_path / "reader.json"
    reader = _spawn(["reader", str(path), "--stop", str(stop), "--out", str(reader_out)], key)
    outs = [tmp_path / f"writer{w}.jsonl" for w in range(writers)]
    procs = [
        _spawn(
            [
                "writer", str(path), "--writer", str(w), "--ops", str(ops), "--pop", "0.35",
                "--seed", str(seed + w), "--out", str(outs[w]),
            ],
            key,
        )
        for w in range(writers)
    ]  # fmt: skip
    try:
        for w, proc in enumerate(procs):
            _wait(proc, f"writer {w}")
    finally:
        stop.touch()
        for proc in procs:  # after a failure: leave no child, and no pipe, behind
            if proc.returncode is None:
                proc.kill()
                proc.communicate()
        _wait(reader, "reader")
    with ConversationCodec(path, encryption_key=key) as codec:
        final = codec.load() or []
        report = codec.verify()
        dictionary = codec.storage.index.dict_span != (0, 0)
    assert report.ok, report.problems
    events = _events(outs)
    check_history(prefill, events, final)
    numbers: dict[str, Any] = json.loads(reader_out.read_text())
    assert numbers["loads"] >= 1, "the reader never completed a load() while writers ran"
    numbers.update(
        appends=sum(e.op == "append" for e in events),
        pops=sum(e.op == "pop" for e in events),
        final=len(final),
        dictionary=dictionary,
    )
    print(f"{writers} writers x {ops} ops: {numbers}")
    return numbers


@pytest.mark.parametrize(
    ("writers", "ops", "scheme"),
    [
        (4, 60, "sealed"),  # the default run: a bounded sample
        pytest.param(4, 150, "sealed", marks=pytest.mark.slow),
        pytest.param(8, 1000, "sealed", marks=pytest.mark.slow),
        pytest.param(8, 1000, "plain", marks=pytest.mark.slow),
    ],
)
def test_writers_and_a_reader(
    tmp_path: Path, rng: random.Random, writers: int, ops: int, scheme: str
) -> None:
    """Concurrent appends and pops from several processes and a polling reader."""
    numbers = run_stress(
        tmp_path, KEY if scheme == "sealed" else None, writers, ops, rng.randrange(1 << 30)
    )
    assert numbers["appends"] + numbers["pops"] == writers * ops
    assert numbers["pops"] > 0 and numbers["iterations"] > 0


def _event(writer: int, op: str, m: Message | None, seq: int, gen: int, t: int) -> Event:
    return Event(writer, op, m, seq, gen, t, t + 1)


def test_checker_rejects_impossible_histories() -> None:
    """The checker is not vacuous: each kind of breach it claims to catch, it catches."""
    a, b, c = stress_message(0, 0), stress_message(1, 0), stress_message(0, 1)
    good = [_event(0, "append", a, 1, 10, 0), _event(1, "append", b, 2, 11, 2)]
    good += [_event(1, "pop", b, -1, 12, 4), _event(0, "append", c, 2, 13, 6)]
    prefill = [stress_message(-1, 0)]
    check_history(prefill, good, [prefill[0], a, c])
    breaches = {
        "missing": (good, [prefill[0], a]),
        "popped survivor": (good, [prefill[0], a, b]),
        "wrong order": (good, [prefill[0], c, a]),
        "invented": (good, [prefill[0], a, c, stress_message(2, 0)]),
        "pop of the wrong message": (
            [*good[:2], _event(1, "pop", a, -1, 12, 4), good[3]],
            [prefill[0], a, c],
        ),
        "lock order against real time": (
            [good[0], good[1], good[2], _event(0, "append", c, 2, 9, 6)],
            [prefill[0], a, c],
        ),
    }
    for what, (events, final) in breaches.items():
        with pytest.raises(AssertionError):
            check_history(prefill, events, final)
            pytest.fail(f"the checker accepted: {what}")


def test_adopted_dictionary_survives_a_pop_and_retrain(tmp_path: Path) -> None:
    """Process A adopted the dictionary record; B pops below 512 (cutting it) and appends
    a different 512th message (a new dictionary is trained): A's next call must work (it
    failed with "a second dictionary record" before 14cc10b; found by the stress test)."""
    path = tmp_path / "chat.log"
    with (
        ConversationCodec(path, encryption_key=KEY) as a,
        ConversationCodec(path, encryption_key=KEY) as b,
    ):
        a.extend([stress_message(0, i) for i in range(512)])
        assert a.load() and a.storage.index.dict_span != (0, 0)
        b.pop()
        b.append(stress_message(1, 0) | {"content": "x" * 3000})
        assert a.append(stress_message(2, 0)) == 512


if __name__ == "__main__":
    sys.exit(main())

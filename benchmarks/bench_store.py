"""A store of many short conversations, written a turn at a time (issue 15), side by side.

The first ``--conversations`` conversations of the Taskmaster-4 corpus (default 1,000; 200
with ``--quick``) are written one message per turn, round-robin across conversations (turn
0 of every conversation, then turn 1, ...), as an agent server handling one request per turn
would: open the conversation, append one message, close. Contestants, each in its own
directory, their turns interleaved one by one (the order rotating) so that the machine's
drift falls on all of them alike:

* ours: ``ConversationStore(dir, encryption_key=key)``, ``durability="fsync"`` (the default)
  and ``"flush"``; a turn is ``with store.open(cid) as c: c.append(message)``;
* peer: openai-agents ``EncryptedSession`` over ``SQLiteSession``, every conversation in ONE
  SQLite file, ``synchronous=FULL`` (its default, fsync) and ``NORMAL`` (flush); a turn
  builds the two session objects, ``add_items([message])``, closes.

Figures: allocated bytes (``du``: st_blocks x 512 over every file, SQLite's -wal/-shm
included when present after closing) and apparent bytes, each / the plaintext JSON; the
total turn-by-turn write time; the total time to reopen every conversation and read its
last 20 messages (peer: ``get_items(limit=20)``), best of ``--rounds`` interleaved rounds.
Then our stores are packed (``ConversationStore.pack()``, a maintenance step: FORMAT.md
§18), and disk and reopen + tail are measured again, the peer's reads interleaved with ours
in the same rounds.
Then a cProfile of our turns (first turn = creation, later turns apart) and of our reopen +
tail, in the measured store, names what costs.

    python -m benchmarks.bench_store [--quick] [--conversations N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import gzip
import json
import os
import pstats
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._peers import sqlite_session_class
from benchmarks._store_report import TAIL, plot, render
from benchmarks._workload import DEFAULT_CORPUS, Message, plain_json

RESULTS = Path(__file__).resolve().parent / "results"
# Fernet ttl for EncryptedSession; its default (600 s) would silently hide older messages.
_TTL_FOREVER = 10 * 365 * 24 * 3600  # seconds
# Built-in calls counted per turn in the profile: the system calls a turn makes.
_SYSCALLS = (
    "open",
    "close",
    "fsync",
    "fdatasync",
    "pwrite",
    "write",
    "pread",
    "read",
    "stat",
    "lstat",
    "fstat",
    "listdir",
    "scandir",
    "mkdir",
    "ftruncate",
    "replace",
    "flock",
    "lockf",
)


def load_conversations(path: Path, count: int) -> list[tuple[str, list[Message]]]:
    """Return the first ``count`` conversations of the corpus, as (id, messages), file order."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.append((row["conversation_id"], row["messages"]))
            if len(out) == count:
                break
    return out


def turns(conversations: list[tuple[str, list[Message]]]) -> list[tuple[str, Message]]:
    """Return every (conversation id, message), round-robin: turn 0 of each, then turn 1..."""
    longest = max(len(m) for _, m in conversations)
    return [(cid, msgs[r]) for r in range(longest) for cid, msgs in conversations if r < len(msgs)]


def disk(directory: Path) -> dict[str, Any]:
    """Return allocated (st_blocks x 512) and apparent bytes under ``directory``, per suffix."""
    allocated = apparent = files = 0
    by_suffix: dict[str, dict[str, int]] = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            suffix = name.rsplit(".", 1)[-1] if "." in name else name
            if suffix == "db" or name.endswith(("-wal", "-shm")):
                suffix = name.rsplit("-", 1)[-1] if name.endswith(("-wal", "-shm")) else "db"
            cell = by_suffix.setdefault(suffix, {"files": 0, "allocated": 0, "apparent": 0})
            cell["files"] += 1
            cell["allocated"] += st.st_blocks * 512
            cell["apparent"] += st.st_size
            allocated += st.st_blocks * 512
            apparent += st.st_size
            files += 1
    return {"allocated": allocated, "apparent": apparent, "files": files, "by_suffix": by_suffix}


class Ours:
    """``ConversationStore`` in a directory: each turn opens, appends, closes."""

    def __init__(self, directory: Path, key: bytes, durability: str) -> None:
        from conversation_codec import ConversationStore

        self.directory = directory
        self._store = ConversationStore(directory, encryption_key=key, durability=durability)

    def write(self, cid: str, message: Message) -> None:
        with self._store.open(cid) as codec:
            codec.append(message)

    def tail(self, cid: str) -> list[Any]:
        with self._store.open(cid) as codec:
            return list(codec.tail(TAIL))

    def pack(self) -> float:
        """Pack every conversation (a maintenance step, FORMAT.md §18); return seconds."""
        t0 = time.perf_counter()
        report = self._store.pack()
        elapsed = time.perf_counter() - t0
        assert not report.skipped, report.skipped
        return elapsed

    def close(self) -> None:
        pass


class Peer:
    """openai-agents ``EncryptedSession`` over ``SQLiteSession``, every conversation in one file.

    A turn builds ``SQLiteSession(cid, db)`` and ``EncryptedSession`` over it, as a request
    handler would, calls ``add_items([message])`` and closes the session. With ``keep_open``
    (writes only) every conversation's session stays open from its first turn to the end, as
    a server caching sessions would: no schema check, connection or key derivation per turn.
    """

    keep_open = False

    def __init__(self, directory: Path, key: bytes, durability: str) -> None:
        from agents.extensions.memory import EncryptedSession

        cls = sqlite_session_class(durability)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._db = directory / "sessions.db"
        self._cls = cls
        self._encrypted = EncryptedSession
        self._key = key.decode()
        # One loop for the run: asyncio.run() per turn would start a thread pool per turn.
        # One worker thread: SQLiteSession opens a connection per session and thread.
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(1))
        self._open: dict[str, tuple[Any, Any]] = {}

    def _session(self, cid: str) -> tuple[Any, Any]:
        inner = self._cls(cid, self._db)
        return inner, self._encrypted(cid, inner, self._key, ttl=_TTL_FOREVER)

    def write(self, cid: str, message: Message) -> None:
        if self.keep_open:
            if cid not in self._open:
                self._open[cid] = self._session(cid)
            self._loop.run_until_complete(self._open[cid][1].add_items([message]))
            return
        inner, session = self._session(cid)
        try:
            self._loop.run_until_complete(session.add_items([message]))
        finally:
            inner.close()

    def tail(self, cid: str) -> list[Any]:
        inner, session = self._session(cid)
        try:
            return list(self._loop.run_until_complete(session.get_items(limit=TAIL)))
        finally:
            inner.close()

    def close(self) -> None:
        for inner, _session in self._open.values():
            inner.close()
        self._open.clear()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()


class PeerKeptOpen(Peer):
    """The peer with its sessions cached across turns (writes only)."""

    keep_open = True


CONTESTANTS: tuple[tuple[str, str, type[Ours] | type[Peer], str], ...] = (
    ("ours-fsync", "conversation-codec ConversationStore, fsync", Ours, "fsync"),
    ("peer-fsync", "EncryptedSession / SQLiteSession, synchronous=FULL", Peer, "fsync"),
    ("ours-flush", "conversation-codec ConversationStore, flush", Ours, "flush"),
    ("peer-flush", "EncryptedSession / SQLiteSession, synchronous=NORMAL", Peer, "flush"),
    (
        "peer-open-fsync",
        "EncryptedSession / SQLiteSession, FULL, sessions kept open (writes only)",
        PeerKeptOpen,
        "fsync",
    ),
)
PAIRS = (
    ("ours-fsync", "peer-fsync"),
    ("ours-flush", "peer-flush"),
    ("ours-fsync", "peer-open-fsync"),
)


def _interleaved(
    names: list[str], items: list[Any], call: Callable[[str, Any], object]
) -> dict[str, float]:
    """Time ``call(name, item)`` for every item and name, rotating the names' order per item."""
    totals = dict.fromkeys(names, 0.0)
    clock = time.perf_counter
    k = len(names)
    for i, item in enumerate(items):
        for j in range(k):
            name = names[(i + j) % k]
            t0 = clock()
            call(name, item)
            totals[name] += clock() - t0
    return totals


def _stats(prof: cProfile.Profile, count: int, wall: float) -> dict[str, Any]:
    """Summarise a profile of ``count`` operations: system calls and top functions, per op."""
    rows = []
    calls: dict[str, dict[str, float]] = {}
    for (file, line, func), (_cc, nc, tt, ct, _callers) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({func})" if file != "~" else func
        rows.append((tt, ct, nc, where))
        base = func.strip("<>").replace("built-in method ", "").split(".")[-1]
        if file == "~" and base in _SYSCALLS:
            cell = calls.setdefault(base, {"per_turn": 0.0, "us_per_turn": 0.0})
            cell["per_turn"] += nc / count
            cell["us_per_turn"] += tt / count * 1e6
    rows.sort(reverse=True)
    return {
        "turns": count,
        "us_per_turn_profiled": wall / count * 1e6,
        "syscalls": dict(sorted(calls.items(), key=lambda kv: -kv[1]["us_per_turn"])),
        "top_tottime": [
            {
                "where": w,
                "calls_per_turn": nc / count,
                "tottime_us_per_turn": tt / count * 1e6,
                "cumtime_us_per_turn": ct / count * 1e6,
            }
            for tt, ct, nc, w in rows[:15]
        ],
        "top_cumulative": [
            {"where": w, "cumtime_us_per_turn": ct / count * 1e6}
            for _tt, ct, _nc, w in sorted(rows, key=lambda row: -row[1])[:25]
            if "bench_store" not in w and "<lambda>" not in w
        ],
    }


def _profile(
    directory: Path, key: bytes, conversations: list[tuple[str, list[Message]]], durability: str
) -> dict[str, Any]:
    """cProfile our turns in the measured store (so a directory listing costs what it did).

    The conversations are written again under new ids (``<id>-profiled``): their first turns
    (each creates a log), then the later turns, then a reopen + tail of each.
    """
    store = Ours(directory, key, durability)
    renamed = [(f"{cid}-profiled", msgs) for cid, msgs in conversations]
    everything = turns(renamed)
    phases: list[tuple[str, list[Any], Callable[[Any], object]]] = [
        ("first_turn", everything[: len(renamed)], lambda t: store.write(*t)),
        ("later_turns", everything[len(renamed) :], lambda t: store.write(*t)),
        ("reopen_tail", [cid for cid, _ in renamed], store.tail),
    ]
    out: dict[str, Any] = {}
    for phase, batch, call in phases:
        prof = cProfile.Profile()
        gc.collect()
        t0 = time.perf_counter()
        prof.enable()
        for item in batch:
            call(item)
        prof.disable()
        out[phase] = _stats(prof, len(batch), time.perf_counter() - t0)
    return out


def _read_phase(
    conversations: list[tuple[str, list[Message]]], rounds: int, tmp: Path, key: bytes
) -> tuple[dict[str, list[float]], dict[str, int]]:  # ours read loose or packed, as on disk
    """Reopen every conversation and read its tail, ``rounds`` times, contestants interleaved.

    Return each contestant's total per round, and how many tails differed from the corpus.
    A reopen is a reopen: the kept-open peer reads as the per-turn one does, so it is left out.
    """
    ids = [cid for cid, _ in conversations]
    expected = {cid: msgs[-TAIL:] for cid, msgs in conversations}
    reading = [n for n, _label, cls, _d in CONTESTANTS if not getattr(cls, "keep_open", False)]
    tails: dict[str, list[float]] = {n: [] for n in reading}
    mismatches = dict.fromkeys(reading, 0)
    for r in range(rounds):
        readers = {
            name: cls(tmp / name, key, durability)
            for name, _label, cls, durability in CONTESTANTS
            if name in reading
        }

        def read(name: str, cid: str, check: bool = r == 0) -> None:
            got = readers[name].tail(cid)  # noqa: B023 (called before the loop moves on)
            if check and got != expected[cid]:
                mismatches[name] += 1

        gc.collect()
        for name, total in _interleaved(reading, ids, read).items():
            tails[name].append(total)
        for reader in readers.values():
            reader.close()
        print(f"reopen + tail round {r + 1}/{rounds} done", file=sys.stderr)
    return tails, mismatches


def _ratios(figures: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for ours, peer in PAIRS:
        a, b = figures[ours], figures[peer]
        read = None if b["reopen_tail_s"] is None else a["reopen_tail_s"] / b["reopen_tail_s"]
        out[f"{ours} / {peer}"] = {
            "allocated": a["allocated_bytes"] / b["allocated_bytes"],
            "apparent": a["apparent_bytes"] / b["apparent_bytes"],
            "write": a["write_s"] / b["write_s"],
            "reopen_tail": read,
        }
        if "packed" in a:
            peer_read = b.get("reopen_tail_beside_packed_s")
            out[f"{ours} / {peer}"]["allocated_packed"] = (
                a["packed"]["allocated_bytes"] / b["allocated_bytes"]
            )
            out[f"{ours} / {peer}"]["reopen_tail_packed"] = (
                None if peer_read is None else a["packed"]["reopen_tail_s"] / peer_read
            )
    return out


def run(conversations: list[tuple[str, list[Message]]], rounds: int, tmp: Path) -> dict[str, Any]:
    """Write, measure the disk, reopen and read, profile: return the results dict."""
    key = Fernet.generate_key()
    stores: dict[str, Any] = {
        name: cls(tmp / name, key, durability) for name, _label, cls, durability in CONTESTANTS
    }
    names = list(stores)
    all_turns = turns(conversations)
    plaintext = sum(len(plain_json(m)) for _, msgs in conversations for m in msgs)
    print(f"{len(conversations):,} conversations, {len(all_turns):,} turns", file=sys.stderr)
    gc.collect()
    write = _interleaved(names, all_turns, lambda n, t: stores[n].write(*t))
    for s in stores.values():
        s.close()
    sizes = {n: disk(stores[n].directory) for n in names}
    tails, mismatches = _read_phase(conversations, rounds, tmp, key)
    # Then the maintenance step: pack our stores, and measure disk and reads again, the
    # peer's reads interleaved with ours as before (the peer's store is unchanged).
    ours = [n for n in names if isinstance(stores[n], Ours)]
    pack_s = {n: stores[n].pack() for n in ours}
    packed_sizes = {n: disk(stores[n].directory) for n in ours}
    print("packed; reading again", file=sys.stderr)
    packed_tails, packed_mismatches = _read_phase(conversations, rounds, tmp, key)
    figures: dict[str, Any] = {}
    for name in names:
        best = min(tails[name]) if name in tails else None
        figures[name] = {
            "write_s": write[name],
            "write_us_per_turn": write[name] / len(all_turns) * 1e6,
            "reopen_tail_s": best,
            "reopen_tail_rounds_s": tails.get(name, []),
            "reopen_tail_us_per_conversation": None
            if best is None
            else best / len(conversations) * 1e6,
            "allocated_bytes": sizes[name]["allocated"],
            "apparent_bytes": sizes[name]["apparent"],
            "allocated_ratio": sizes[name]["allocated"] / plaintext,
            "apparent_ratio": sizes[name]["apparent"] / plaintext,
            "files": sizes[name]["files"],
            "by_suffix": sizes[name]["by_suffix"],
            "tail_mismatches": mismatches.get(name),
        }
        if name in pack_s:
            packed = packed_sizes[name]
            figures[name]["packed"] = {
                "pack_s": pack_s[name],
                "allocated_bytes": packed["allocated"],
                "apparent_bytes": packed["apparent"],
                "allocated_ratio": packed["allocated"] / plaintext,
                "files": packed["files"],
                "by_suffix": packed["by_suffix"],
                "reopen_tail_s": min(packed_tails[name]),
                "reopen_tail_rounds_s": packed_tails[name],
                "reopen_tail_us_per_conversation": min(packed_tails[name])
                / len(conversations)
                * 1e6,
                "tail_mismatches": packed_mismatches[name],
            }
        if name in packed_tails and name not in pack_s:  # the peer, read in the same rounds
            figures[name]["reopen_tail_beside_packed_s"] = min(packed_tails[name])
            figures[name]["reopen_tail_beside_packed_rounds_s"] = packed_tails[name]
    # What the logs alone would take if each conversation were one file (no .idx, no .lock).
    logs_only = figures["ours-fsync"]["by_suffix"].get("log", {}).get("allocated", 0)
    result: dict[str, Any] = {
        "conversations": len(conversations),
        "turns": len(all_turns),
        "messages_per_conversation": len(all_turns) / len(conversations),
        "plaintext_bytes": plaintext,
        "plaintext_per_conversation": plaintext / len(conversations),
        "rounds": rounds,
        "figures": figures,
        "ratios": _ratios(figures),
        "ours_logs_only_allocated_ratio_to_peer": logs_only
        / figures["peer-fsync"]["allocated_bytes"],
        "labels": {name: label for name, label, _cls, _d in CONTESTANTS},
    }
    print("profiling our turns", file=sys.stderr)
    profiled = conversations[: max(50, len(conversations) // 5)]
    result["profile"] = {
        d: _profile(tmp / f"ours-{d}", key, profiled, d) for d in ("fsync", "flush")
    }
    result["profile_conversations"] = len(profiled)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_store", description=__doc__)
    p.add_argument("--quick", action="store_true", help="200 conversations, 2 rounds")
    p.add_argument("--conversations", type=int, help="how many (default 1,000; quick 200)")
    p.add_argument("--rounds", type=int, help="reopen + tail rounds (default 3; quick 2)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    count = args.conversations or (200 if args.quick else 1000)
    rounds = args.rounds or (2 if args.quick else 3)
    started = time.perf_counter()
    # The kept-open peer holds a SQLite connection (3 descriptors) per conversation.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * count + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    conversations = load_conversations(args.corpus, count)
    with tempfile.TemporaryDirectory(prefix="cc-bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        meta = _machine.describe(tmp)
        result = run(conversations, rounds, tmp)
    meta["loadavg_end"] = _machine.loadavg()
    argv_used = sys.argv[1:] if argv is None else argv
    result.update(
        meta=meta,
        quick=args.quick,
        command="python -m benchmarks.bench_store " + shlex.join(argv_used),
        wall_s=time.perf_counter() - started,
    )
    stem = "store_quick" if args.quick else "store"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = render(result)
    (args.out / f"{stem}.md").write_text(text)
    written = [args.out / f"{stem}.md", args.out / f"{stem}.json"]
    if not args.no_plots:
        written.append(plot(result, args.out / f"{stem}.png"))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

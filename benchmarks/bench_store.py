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
Then a cProfile of our turns (first turn = creation, later turns apart) names what costs.

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
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._workload import DEFAULT_CORPUS, Message, plain_json

RESULTS = Path(__file__).resolve().parent / "results"
TAIL = 20
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
        self._make = lambda: ConversationStore(directory, encryption_key=key, durability=durability)
        self._store = self._make()

    def write(self, cid: str, message: Message) -> None:
        with self._store.open(cid) as codec:
            codec.append(message)

    def reopen(self) -> None:
        """Start afresh, as a new process would (a new store object)."""
        self._store = self._make()

    def tail(self, cid: str) -> list[Any]:
        with self._store.open(cid) as codec:
            return list(codec.tail(TAIL))

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
        from agents.memory import SQLiteSession

        cls: type[SQLiteSession] = SQLiteSession
        if durability == "flush":

            class _NormalSyncSession(SQLiteSession):
                @staticmethod
                def _configure_connection(conn: sqlite3.Connection) -> None:
                    SQLiteSession._configure_connection(conn)
                    conn.execute("PRAGMA synchronous=NORMAL")

            cls = _NormalSyncSession
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

    def reopen(self) -> None:
        pass  # nothing is kept between turns but the event loop

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


def _profile(
    tmp: Path, key: bytes, conversations: list[tuple[str, list[Message]]], durability: str
) -> dict[str, Any]:
    """cProfile our turns: the first turn of each conversation (creation), then the rest."""
    store = Ours(tmp / f"profile-{durability}", key, durability)
    everything = turns(conversations)
    first = [(c, m) for c, m in everything[: len(conversations)]]
    later = everything[len(conversations) :]
    out: dict[str, Any] = {}
    for phase, batch in (("first_turn", first), ("later_turns", later)):
        prof = cProfile.Profile()
        gc.collect()
        t0 = time.perf_counter()
        prof.enable()
        for cid, message in batch:
            store.write(cid, message)
        prof.disable()
        wall = time.perf_counter() - t0
        stats = pstats.Stats(prof)
        rows = []
        calls: dict[str, dict[str, float]] = {}
        for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = f"{Path(file).name}:{line}({func})" if file != "~" else func
            rows.append((tt, ct, nc, where))
            if file == "~":
                base = func.strip("<>").replace("built-in method ", "").split(".")[-1]
                if base in _SYSCALLS:
                    cell = calls.setdefault(base, {"per_turn": 0.0, "us_per_turn": 0.0})
                    cell["per_turn"] += nc / len(batch)
                    cell["us_per_turn"] += tt / len(batch) * 1e6
        rows.sort(reverse=True)
        out[phase] = {
            "turns": len(batch),
            "us_per_turn_profiled": wall / len(batch) * 1e6,
            "syscalls": dict(sorted(calls.items(), key=lambda kv: -kv[1]["us_per_turn"])),
            "top_tottime": [
                {
                    "where": w,
                    "calls_per_turn": nc / len(batch),
                    "tottime_us_per_turn": tt / len(batch) * 1e6,
                    "cumtime_us_per_turn": ct / len(batch) * 1e6,
                }
                for tt, ct, nc, w in rows[:15]
            ],
        }
    return out


def run(conversations: list[tuple[str, list[Message]]], rounds: int, tmp: Path) -> dict[str, Any]:
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
    ids = [cid for cid, _ in conversations]
    expected = {cid: msgs[-TAIL:] for cid, msgs in conversations}
    # A reopen is a reopen: the kept-open peer reads as the per-turn one does.
    reading = [n for n, _label, cls, _d in CONTESTANTS if not getattr(cls, "keep_open", False)]
    tails: dict[str, list[float]] = {n: [] for n in reading}
    mismatches = dict.fromkeys(reading, 0)
    for r in range(rounds):
        readers = {
            name: cls(tmp / name, key, durability)
            for name, _label, cls, durability in CONTESTANTS
            if name in reading
        }
        for reader in readers.values():
            reader.reopen()

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
    figures: dict[str, Any] = {}
    for name in names:
        best = min(tails[name]) if name in tails else None
        figures[name] = {
            "write_s": write[name],
            "write_us_per_turn": write[name] / len(all_turns) * 1e6,
            "reopen_tail_s": best,
            "reopen_tail_rounds_s": tails.get(name, []),
            "reopen_tail_us_per_conversation": None if best is None else best / len(ids) * 1e6,
            "allocated_bytes": sizes[name]["allocated"],
            "apparent_bytes": sizes[name]["apparent"],
            "allocated_ratio": sizes[name]["allocated"] / plaintext,
            "apparent_ratio": sizes[name]["apparent"] / plaintext,
            "files": sizes[name]["files"],
            "by_suffix": sizes[name]["by_suffix"],
            "tail_mismatches": mismatches.get(name),
        }
    ratios = {}
    for ours, peer in PAIRS:
        a, b = figures[ours], figures[peer]
        ratios[f"{ours} / {peer}"] = {
            "allocated": a["allocated_bytes"] / b["allocated_bytes"],
            "apparent": a["apparent_bytes"] / b["apparent_bytes"],
            "write": a["write_s"] / b["write_s"],
            "reopen_tail": None
            if b["reopen_tail_s"] is None
            else a["reopen_tail_s"] / b["reopen_tail_s"],
        }
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
        "ratios": ratios,
        "ours_logs_only_allocated_ratio_to_peer": logs_only
        / figures["peer-fsync"]["allocated_bytes"],
        "labels": {name: label for name, label, _cls, _d in CONTESTANTS},
    }
    print("profiling our turns", file=sys.stderr)
    profiled = conversations[: max(50, len(conversations) // 5)]
    result["profile"] = {d: _profile(tmp, key, profiled, d) for d in ("fsync", "flush")}
    result["profile_conversations"] = len(profiled)
    return result


TARGETS = {"allocated": 0.5, "write": 0.7, "reopen_tail": 0.25}


def _b(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.1f} MiB"


def render(r: dict[str, Any]) -> str:
    """Return the markdown report."""
    m, f, labels = r["meta"], r["figures"], r["labels"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        f"# Store of many short conversations: {r['conversations']:,} corpus conversations, "
        "written a turn at a time" + (" (--quick)" if r["quick"] else ""),
        "",
        f"- commit: `{m['commit']}` — date: {m['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['kernel']}; temp dir {m['tmp_dir']} on "
        f"{m['filesystem']}",
        f"- {m['python']}; {pk}",
        f"- command: `{r['command']}`; wall time {r['wall_s']:.0f} s; load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at end (other processes share "
        "the CPUs)",
        "",
        f"{r['turns']:,} turns ({r['messages_per_conversation']:.1f} messages per conversation, "
        f"{r['plaintext_per_conversation']:,.0f} B of plaintext JSON each, "
        f"{_b(r['plaintext_bytes'])} in all), one message per turn, round-robin across "
        "conversations; each turn opens, appends, closes (the kept-open peer excepted). "
        f"Turns of all contestants interleaved; reopen + tail({TAIL}): best of {r['rounds']} "
        "interleaved rounds. The peer's WAL is checkpointed and removed when its last "
        "connection closes, so its figures are the one .db file.",
        "",
        "| contestant | du ÷ plain | apparent ÷ plain | files | writes, total | per turn | "
        f"reopen + tail({TAIL}), total | per conversation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in f.items():
        read = c["reopen_tail_s"]
        read_cells = (
            "— | —"
            if read is None
            else f"{read:.2f} s | {c['reopen_tail_us_per_conversation']:,.0f} µs"
        )
        lines.append(
            f"| {labels[name]} | {c['allocated_ratio']:.2f} ({_b(c['allocated_bytes'])}) | "
            f"{c['apparent_ratio']:.2f} | {c['files']:,} | {c['write_s']:.2f} s | "
            f"{c['write_us_per_turn']:,.0f} µs | {read_cells} |"
        )
    lines += [
        "",
        "Ratios, ours ÷ peer (below 1: ours smaller / faster), against issue 15's targets:",
        "",
        "| pair | du | apparent | writes | reopen + tail |",
        "|---|---:|---:|---:|---:|",
    ]
    for pair, q in r["ratios"].items():
        lines.append(
            f"| {pair} | {q['allocated']:.2f} | {q['apparent']:.2f} | {q['write']:.2f} | "
            + ("— |" if q["reopen_tail"] is None else f"{q['reopen_tail']:.2f} |")
        )
    lines.append(
        f"| target | ≤ {TARGETS['allocated']} | | ≤ {TARGETS['write']} | "
        f"≤ {TARGETS['reopen_tail']} |"
    )
    ours = f["ours-fsync"]
    lines += [
        "",
        "Where our bytes are (fsync store; flush is alike): "
        + "; ".join(
            f"`.{s}` {c['files']:,} files, {_b(c['allocated'])} allocated, "
            f"{_b(c['apparent'])} apparent"
            for s, c in ours["by_suffix"].items()
        )
        + f". The `.log` files alone would be {r['ours_logs_only_allocated_ratio_to_peer']:.2f}x "
        "the peer's allocated bytes.",
        "",
        "Reopen + tail rounds (s): "
        + "; ".join(
            f"{labels[n]} " + ", ".join(f"{t:.2f}" for t in c["reopen_tail_rounds_s"])
            for n, c in f.items()
            if c["reopen_tail_rounds_s"]
        )
        + ". Tails checked against the corpus in round 1: "
        + ", ".join(
            f"{n} {c['tail_mismatches']} mismatches"
            for n, c in f.items()
            if c["tail_mismatches"] is not None
        )
        + ".",
        "",
        f"## Profile of our turns (cProfile, {r['profile_conversations']:,} conversations, "
        "fresh store)",
        "",
        "Times under cProfile are inflated by its per-call overhead; the call counts are exact.",
        "",
    ]
    for durability, phases in r["profile"].items():
        for phase, p in phases.items():
            sys_cells = ", ".join(
                f"{n} {c['per_turn']:.2g}x ({c['us_per_turn']:,.0f} µs)"
                for n, c in p["syscalls"].items()
            )
            lines += [
                f"### {durability}, {phase.replace('_', ' ')} ({p['turns']:,} turns, "
                f"{p['us_per_turn_profiled']:,.0f} µs per turn profiled)",
                "",
                f"System calls per turn: {sys_cells}.",
                "",
                "| function | calls/turn | own µs/turn | cumulative µs/turn |",
                "|---|---:|---:|---:|",
                *[
                    f"| `{t['where']}` | {t['calls_per_turn']:.3g} | "
                    f"{t['tottime_us_per_turn']:,.0f} | {t['cumtime_us_per_turn']:,.0f} |"
                    for t in p["top_tottime"][:10]
                ],
                "",
            ]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> Path:
    """Write three bar panels (du ÷ plaintext, write time, reopen + tail time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, labels = r["figures"], r["labels"]
    names = list(f)
    colours = ["tab:blue" if n.startswith("ours") else "tab:orange" for n in names]
    panels = (
        ("allocated_ratio", "allocated bytes (du) ÷ plaintext JSON"),
        ("write_s", f"{r['turns']:,} turns written, total (s)"),
        ("reopen_tail_s", f"reopen + tail({TAIL}) of each, total (s)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [f[n][key] or 0.0 for n in names]
        bars = ax.bar(range(len(names)), values, color=colours)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([labels[n].replace(", ", "\n") for n in names], fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"{r['conversations']:,} short conversations written a turn at a time "
        "(blue: conversation-codec, orange: EncryptedSession on one SQLite file)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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

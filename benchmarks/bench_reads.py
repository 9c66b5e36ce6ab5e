"""Reads, interleaved: issue 15's read targets measured round-robin against the floor.

The main suite (``python -m benchmarks``) measures each store's reads one store after the
other, so on a shared machine a burst of load can land on one of them. Here every round
times each contestant once, in turn, and a figure is the best round: ours, the floor (zstd
+ Fernet appended to a bare file) and openai-agents' ``EncryptedSession`` are built on the
same corpus messages (``extend`` of 2,000 at a time) and read in the same rounds.

* ``load()`` per message and ``tail(20)`` at 1,000 and 5,000 messages (targets: load
  <= 0.8x the floor, tail(20) <= 0.3x EncryptedSession);
* a keyword search (no keyword index) and ``verify()`` of 100,000 messages (targets:
  <= 0.4 s and <= 1 s); the floor's search in the same rounds;
* the cost of the primitives alone per record of the 5,000-message log (HMAC, AES, zstd,
  msgspec), the part of a read that Python code around them cannot remove.

    python -m benchmarks.bench_reads [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zstandard
from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._ours import Ours
from benchmarks._peers import AgentsEncrypted, Floor
from benchmarks._store import Store
from benchmarks._workload import DEFAULT_CORPUS, SEARCH_KEYWORD, load_corpus, timestamps

TAIL_N = 20


def _build(cls: type[Store], tmp: Path, messages: list[Any], key: bytes) -> Store:
    store = cls(tmp / f"{cls.name}-{len(messages)}", key)
    store.open("flush")
    for i in range(0, len(messages), 2_000):
        batch = messages[i : i + 2_000]
        store.extend(batch, timestamps(i, i + len(batch)))
    return store


def _rounds(
    stores: dict[str, Store], ops: dict[str, Callable[[Store], object]], rounds: int
) -> dict[str, dict[str, float]]:
    """Best time (s) of each op on each store; every round runs each store once, in turn."""
    best: dict[str, dict[str, float]] = {op: {} for op in ops}
    for _ in range(rounds):
        for op, fn in ops.items():
            for name, store in stores.items():
                t0 = time.perf_counter()
                fn(store)
                elapsed = time.perf_counter() - t0
                best[op][name] = min(best[op].get(name, elapsed), elapsed)
    return best


def _tail(store: Store) -> None:
    for _ in range(10):  # ten in a row: one sample is ~0.1 ms
        store.tail(TAIL_N)


def primitives(messages: list[Any], key: bytes) -> dict[str, float]:
    """Microseconds per record of each primitive alone, on these messages as the floor
    stores them: Fernet.decrypt of the token (the floor, with its base64), the HMAC check
    and one AES-CBC call as conversation-codec does them, zstd, msgspec."""
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = [msgspec.json.encode(m) for m in messages]
    frames = [zstandard.ZstdCompressor(level=3, write_content_size=True).compress(r) for r in raw]
    fernet = Fernet(key)
    tokens = [fernet.encrypt(f) for f in frames]
    bodies = [base64.urlsafe_b64decode(t)[1:] for t in tokens]
    secret = base64.urlsafe_b64decode(key)
    mac = hmac.HMAC(secret[:16], hashes.SHA256())
    mac.update(b"\x80")
    dctx = zstandard.ZstdDecompressor()
    decode = msgspec.json.Decoder().decode
    decryptor = Cipher(algorithms.AES(secret[16:]), modes.CBC(bytes(16))).decryptor()

    def hmacs() -> None:
        for body in bodies:
            m = mac.copy()
            m.update(body[:-32])
            m.verify(body[-32:])

    ops: dict[str, Callable[[], object]] = {
        "floor: base64 + Fernet.decrypt": lambda: [
            fernet.decrypt(base64.urlsafe_b64encode(b"\x80" + b)) for b in bodies
        ],
        "HMAC-SHA256 check (copy, update, verify)": hmacs,
        "AES-CBC, one call per 256 records": lambda: [
            decryptor.update(b"".join([b[8:-32] for b in bodies[i : i + 256]]))
            for i in range(0, len(bodies), 256)
        ],
        "zstd decompress": lambda: [dctx.decompress(f) for f in frames],
        "msgspec decode": lambda: [decode(r) for r in raw],
    }
    out = {}
    for name, fn in ops.items():
        best = min(_timed(fn) for _ in range(7))
        out[name] = best / len(messages) * 1e6
    return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and write ``reads.json`` and ``reads.md`` (``reads_quick.*``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds; 10,000 not 100,000")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    wl = load_corpus(args.corpus)
    key = Fernet.generate_key()
    rounds = 5 if args.quick else 15
    big = 10_000 if args.quick else 100_000
    result: dict[str, Any] = {"loadavg_start": _machine.loadavg(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["machine"] = _machine.describe(tmp)
        for n in (1_000, 5_000):
            msgs = wl.take(0, n)
            stores = {c.name: _build(c, tmp, msgs, key) for c in (Ours, Floor, AgentsEncrypted)}
            ops: dict[str, Callable[[Store], object]] = {"load": lambda s: s.load(), "tail": _tail}
            best = _rounds(stores, ops, rounds)
            result["sizes"][str(n)] = {
                "load_us_per_msg": {k: v / n * 1e6 for k, v in best["load"].items()},
                "tail_us": {k: v / 10 * 1e6 for k, v in best["tail"].items()},
            }
            for s in stores.values():
                s.close()
        result["primitives_us"] = primitives(wl.take(0, 5_000), key)
        msgs = wl.take(0, big)
        stores = {c.name: _build(c, tmp, msgs, key) for c in (Ours, Floor)}
        ours: Any = stores["ours"]
        ops = {
            "search": lambda s: s.search(SEARCH_KEYWORD),
            "verify": lambda s: ours._codec.verify() if s is ours else None,
        }
        best = _rounds(stores, ops, max(3, rounds // 3))
        result["big"] = {"messages": big, "search_s": best["search"], "verify_s": best["verify"]}
    result["loadavg_end"] = _machine.loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "reads_quick" if args.quick else "reads"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(_markdown(result, rounds))
    print(_markdown(result, rounds))


def _markdown(r: dict[str, Any], rounds: int) -> str:
    m = r["machine"]
    lines = [
        "# Reads, interleaved (issue 15)",
        "",
        f"- commit: `{m.get('commit')}`; {m.get('cpu')}; load average "
        f"{r['loadavg_start']} at start, {r['loadavg_end']} at end",
        f"- `python -m benchmarks.bench_reads`: best of {rounds} rounds, each timing every "
        "contestant once in turn (`tail`: 10 calls a sample)",
        "",
        "| messages | figure | conversation-codec | floor | EncryptedSession | "
        "ours ÷ floor | ours ÷ ES | target |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for n, cell in r["sizes"].items():
        for fig, key, unit, target in (
            ("load() per message", "load_us_per_msg", "µs", "≤ 0.8x the floor"),
            ("tail(20)", "tail_us", "µs", "≤ 0.3x ES"),
        ):
            v = cell[key]
            lines.append(
                f"| {int(n):,} | {fig} | {v['ours']:.2f} {unit} | {v['floor']:.2f} {unit} | "
                f"{v['agents-encrypted']:.2f} {unit} | {v['ours'] / v['floor']:.2f} | "
                f"{v['ours'] / v['agents-encrypted']:.2f} | {target} |"
            )
    big = r["big"]
    s = big["search_s"]
    lines += [
        f"| {big['messages']:,} | keyword search, no keyword index | {s['ours']:.3f} s | "
        f"{s['floor']:.3f} s | | {s['ours'] / s['floor']:.2f} | | ≤ 0.4 s |",
        f"| {big['messages']:,} | verify() | {big['verify_s']['ours']:.3f} s | | | | | ≤ 1 s |",
        "",
        "## The primitives alone, per record (5,000 corpus messages)",
        "",
        "| primitive | µs per record |",
        "|---|---:|",
        *(f"| {k} | {v:.2f} |" for k, v in r["primitives_us"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

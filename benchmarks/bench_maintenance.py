"""Maintenance: migration throughput from legacy files, and compaction of a large log.

Measures, on the Taskmaster-4 corpus replayed as one conversation:

* ``migrate()`` throughput in MB/s of legacy input for each legacy layout the library reads:
  a whole-file Fernet blob over JSONL (the original encrypted format), plaintext JSONL, and a
  JSON array with ISO timestamps. The whole conversion is timed: detection, decryption,
  writing the sealed log, reading it back to compare, and the atomic in-place replacement.
* ``compact()`` of a sealed 100,000-message log (re-seal, retrain the dictionary, rebuild the
  index), and what it does to the bytes on disk; and of a 20,000-message log written one
  append at a time (its dictionary trained on its first 512 messages), where compaction
  used to make logs bigger (issue 15).

No peer offers either operation; the numbers stand on their own.

    python -m benchmarks.bench_maintenance [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from benchmarks import _machine
from benchmarks._workload import BASE_TS, DEFAULT_CORPUS, load_corpus, plain_json
from conversation_codec import ConversationCodec, generate_key, migrate


def _legacy_files(folder: Path, messages: list[dict[str, Any]], key: str) -> dict[str, Path]:
    jsonl = b"".join(plain_json(m) + b"\n" for m in messages)
    start = datetime.fromtimestamp(BASE_TS, timezone.utc)
    stamped = [
        {**m, "timestamp": (start + timedelta(seconds=i)).isoformat()}
        for i, m in enumerate(messages)
    ]
    files = {
        "fernet-jsonl": Fernet(key).encrypt(jsonl),
        "jsonl": jsonl,
        "json-array": json.dumps(stamped).encode(),
    }
    out = {}
    for name, data in files.items():
        path = folder / f"{name}.legacy"
        path.write_bytes(data)
        out[name] = path
    return out


def migration(messages: list[dict[str, Any]], tmp: Path) -> dict[str, dict[str, float]]:
    """Return ``{layout: {"mb": input MB, "seconds": s, "mb_per_s": rate}}``."""
    legacy_key, key = generate_key(), generate_key()
    results = {}
    for name, path in _legacy_files(tmp, messages, legacy_key).items():
        size = path.stat().st_size
        t0 = time.perf_counter()
        report = migrate(path, encryption_key=key, legacy_key=legacy_key, backup=False)
        elapsed = time.perf_counter() - t0
        assert report.messages == len(messages), report
        results[name] = {"mb": size / 1e6, "seconds": elapsed, "mb_per_s": size / 1e6 / elapsed}
    return results


def compaction(
    messages: list[dict[str, Any]], tmp: Path, *, batch: int = 2_000
) -> dict[str, float]:
    """Build a sealed log of ``len(messages)`` (``extend`` of ``batch`` at a time; 1: single
    appends) and time ``compact()`` on it."""
    path = tmp / f"big-{batch}.log"
    key = generate_key()
    with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
        for start in range(0, len(messages), batch):
            if batch == 1:
                codec.append(messages[start])
            else:
                codec.extend(messages[start : start + batch])
    with ConversationCodec(path, encryption_key=key) as codec:
        t0 = time.perf_counter()
        report = codec.compact()
        elapsed = time.perf_counter() - t0
        assert report.messages == len(messages)
    return {
        "messages": float(len(messages)),
        "seconds": elapsed,
        "bytes_before": float(report.bytes_before),
        "bytes_after": float(report.bytes_after),
    }


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and write ``maintenance.json`` and ``maintenance.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 messages instead of 100,000")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    wl = load_corpus(args.corpus)
    size = 10_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        machine = _machine.describe(tmp)
        mig = migration(wl.take(0, len(wl.base)), tmp)
        comp = compaction(wl.take(0, size), tmp)
        # Issue 15: compaction must never make a log bigger; one built by single appends
        # (its dictionary trained on its first 512 messages) is where it used to.
        singles = compaction(wl.take(0, size // 5), tmp, batch=1)
    result = {"machine": machine, "migration": mig, "compaction": comp, "singles": singles}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "maintenance_quick" if args.quick else "maintenance"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Maintenance benchmarks",
        "",
        f"- commit: `{machine.get('commit')}`; {machine.get('cpu')}; load {_machine.loadavg()}",
        "",
        f"## migrate(): {len(wl.base):,} corpus messages, in place, to a sealed log",
        "",
        "| legacy layout | input MB | seconds | MB/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {r['mb']:.2f} | {r['seconds']:.2f} | {r['mb_per_s']:.2f} |"
            for name, r in mig.items()
        ),
        "",
        f"## compact(): a sealed log of {int(comp['messages']):,} messages",
        "",
        f"- {comp['seconds']:.2f} s ({comp['messages'] / comp['seconds']:,.0f} messages/s)",
        f"- log + index: {comp['bytes_before'] / 1e6:.2f} MB before, "
        f"{comp['bytes_after'] / 1e6:.2f} MB after "
        f"({comp['bytes_after'] / comp['bytes_before']:.3f}x)",
        "",
        f"## compact(): a sealed log of {int(singles['messages']):,} single appends",
        "",
        f"- {singles['seconds']:.2f} s; log + index: {singles['bytes_before'] / 1e6:.2f} MB "
        f"before, {singles['bytes_after'] / 1e6:.2f} MB after "
        f"({singles['bytes_after'] / singles['bytes_before']:.3f}x)",
        "",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

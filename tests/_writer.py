"""Subprocess entry point for the real-process reliability tests.

Run as ``python tests/_writer.py MODE ...``; the tests in ``test_concurrency.py`` and
``test_crash.py`` start it with :data:`sys.executable` so that every writer and reader is
a separate OS process with its own file descriptors and locks, as in production. The key
travels in the ``CC_TEST_KEY`` environment variable (never argv, as STYLE.md §8 asks of
the CLI); without it the log is plaintext.

Modes:

``append``  print ``ready``, wait for ``go`` on stdin, then append ``--count`` messages
            (or ``extend`` them in ``--batch``-sized batches), printing each returned seq
            (or JSON list of seqs) on its own line, flushed once the call has returned.
``loop``    append :func:`crash_message` ``i`` for i = message_count(), ... forever,
            printing each acknowledged seq; the crash tests SIGKILL it.
``reader``  print ``ready``, wait for ``go``, then poll ``message_count``/``tail``/
            ``get``/``load`` until ``--total`` messages are visible, checking every message
            it sees; exit 0 with a JSON summary line, or 1 with a traceback.
``op``      one call in a process of its own: ``append`` the JSON ``--message`` (print
            its seq) or ``pop`` (print the popped message as JSON); the save() race tests
            run it between another process's ``load()`` and ``save()``.

Importing this module has no side effects; the tests import it for the message builders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

KEY_ENV = "CC_TEST_KEY"
SCRIPT = os.path.abspath(__file__)

# Source to put before a child script: ``refuse_unnamed_files()`` makes ``os.open`` refuse
# ``O_TMPFILE`` (EOPNOTSUPP), as a file system without unnamed files (NFS, FAT) does.
NO_UNNAMED_FILES = """
def refuse_unnamed_files():
    import errno, os
    real_open = os.open
    def refusing(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *args, **kwargs)
    os.open = refusing
"""


def subprocess_env(key: str | None) -> dict[str, str]:
    """Return the environment for a child: the key (or none), and a PYTHONPATH that makes
    the child import the very ``conversation_codec`` the calling test imported.

    That holds whether the package comes from ``src/`` on PYTHONPATH or from an (editable
    or regular) install.
    """
    import conversation_codec

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(conversation_codec.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.pop(KEY_ENV, None)
    if key is not None:
        env[KEY_ENV] = key
    return env


def writer_message(writer: int, i: int) -> dict[str, Any]:
    """Return message ``i`` of concurrent writer ``writer``; sizes vary to vary frame sizes."""
    return {
        "role": "user",
        "content": f"w{writer}-{i}",
        "meta": {"w": writer, "i": i, "pad": "x" * ((writer * 31 + i * 7) % 97)},
    }


def crash_message(i: int) -> dict[str, Any]:
    """Return message ``i`` of the crash-loop writer: 0.1-12 KB, partly incompressible."""
    digest = hashlib.sha256(str(i).encode()).hexdigest()
    noise = "".join(hashlib.sha256(f"{i}/{j}".encode()).hexdigest() for j in range((i * 13) % 48))
    return {
        "role": "assistant" if i % 2 else "user",
        "content": f"m{i} " + digest * ((i * 7919) % 97) + noise,
        "i": i,
        "tool_calls": [{"id": f"call_{i}", "args": {"n": i, "ok": i % 3 == 0}}],
    }


def _open(path: str, durability: str) -> Any:
    from conversation_codec import ConversationCodec

    return ConversationCodec(path, encryption_key=os.environ.get(KEY_ENV), durability=durability)


def _wait_for_go() -> None:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def _run_append(args: argparse.Namespace) -> int:
    codec = _open(args.path, args.durability)
    _wait_for_go()
    with codec:
        i = 0
        while i < args.count:
            if args.batch:
                size = min(args.batch, args.count - i)
                seqs = codec.extend([writer_message(args.writer, i + k) for k in range(size)])
                print(json.dumps(seqs), flush=True)
                i += size
            else:
                seq = codec.append(writer_message(args.writer, i))
                print(seq, flush=True)
                i += 1
    return 0


def _run_loop(args: argparse.Namespace) -> int:
    with _open(args.path, args.durability) as codec:
        i = codec.message_count()
        print(f"start {i}", flush=True)
        for _ in range(args.max):
            seq = codec.append(crash_message(i))
            if seq != i:
                print(f"append returned seq {seq}, expected {i}", file=sys.stderr, flush=True)
                return 3
            print(seq, flush=True)
            i += 1
    return 0


def _check_messages(messages: list[dict[str, Any]]) -> None:
    """Fail unless every message is an exact writer message, each writer in order."""
    last: dict[int, int] = {}
    for m in messages:
        w, i = m["meta"]["w"], m["meta"]["i"]
        if m != writer_message(w, i):
            raise AssertionError(f"torn or foreign message: {m!r}")
        if i <= last.get(w, -1):
            raise AssertionError(f"writer {w} out of order: {i} after {last[w]}")
        last[w] = i


def _run_reader(args: argparse.Namespace) -> int:
    _wait_for_go()
    deadline = time.monotonic() + args.timeout
    codec = _open(args.path, "fsync")
    iterations, prev_count, loads = 0, 0, 0
    try:
        while True:
            if iterations % 7 == 6:  # a fresh instance now and then: no stale caches
                codec.close()
                codec = _open(args.path, "fsync")
            count = codec.message_count()
            if count < prev_count:
                raise AssertionError(f"message_count went back: {prev_count} -> {count}")
            prev_count = count
            tail = codec.tail(5)
            if not min(5, count) <= len(tail) <= 5:
                raise AssertionError(f"tail(5) gave {len(tail)} messages with count {count}")
            _check_messages(tail)
            if count:
                _check_messages([codec.get(-1)])
                _check_messages([codec.get(count - 1)])
            if iterations % 20 == 0:
                everything = codec.load() or []
                if len(everything) < count:
                    raise AssertionError(f"load() gave {len(everything)} < count {count}")
                _check_messages(everything)
                for w in {m["meta"]["w"] for m in everything}:  # each writer: a prefix 0..k-1
                    mine = [m["meta"]["i"] for m in everything if m["meta"]["w"] == w]
                    if mine != list(range(len(mine))):
                        raise AssertionError(f"writer {w} has gaps: {mine[:20]}...")
                loads += 1
            iterations += 1
            if iterations == 1:
                print("polling", flush=True)  # writers may be released now (test_concurrency)
            if count >= args.total:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out at count {count} of {args.total}")
    finally:
        codec.close()
    print(json.dumps({"iterations": iterations, "loads": loads, "count": prev_count}), flush=True)
    return 0


def _run_op(args: argparse.Namespace) -> int:
    with _open(args.path, "fsync") as codec:
        if args.call == "append":
            print(codec.append(json.loads(args.message)), flush=True)
        else:
            print(json.dumps(codec.pop()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("append")
    p.add_argument("path")
    p.add_argument("--writer", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--durability", default="fsync")
    p = sub.add_parser("loop")
    p.add_argument("path")
    p.add_argument("--durability", default="fsync")
    p.add_argument("--max", type=int, default=1_000_000)
    p = sub.add_parser("reader")
    p.add_argument("path")
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("op")
    p.add_argument("call", choices=("append", "pop"))
    p.add_argument("path")
    p.add_argument("--message", default="{}")
    args = parser.parse_args(argv)
    run = {"append": _run_append, "loop": _run_loop, "reader": _run_reader, "op": _run_op}
    run = run[args.mode]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

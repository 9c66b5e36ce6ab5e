"""Coverage-guided fuzzing of the conversation-codec reader with atheris (run by hand).

    pip install atheris
    python tests/fuzz/fuzz_reader.py -timeout=10 -rss_limit_mb=1024 -max_total_time=600 [corpus/]

Each input picks a valid base log (sealed, sealed with a dictionary record, plain) or uses
its own bytes as the log (bare, or after a valid sealed or plain header), applies a few
structural mutations chosen by the input (bit flips, insertions, deletions, truncation,
zeroed ranges, splices from another log, a frame length prefix replaced by a hostile value
up to 4 GiB), picks an index sidecar (the right one, none, another log's, mutated, or the
input's bytes), and reads the result through every entry point: ``load``,
``message_count``, ``get``, ``tail``, ``timestamp``, iteration, ``search``, ``info``,
``verify``, then ``append``. Any exception but a ``ConversationCodecError`` is a crash;
libFuzzer's ``-timeout`` catches hangs and ``-rss_limit_mb``/``-malloc_limit_mb`` catch
allocations driven by hostile lengths. Sealed logs must never yield a message that was not
written.

Without atheris, ``python tests/fuzz/fuzz_reader.py --selftest N`` runs N random inputs
through the same target (a smoke test). pytest never collects it (``collect_ignore`` in
tests/conftest.py: not a test module, and a doctest run must not import it); it imports
atheris only when run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # a published test key (tests/conftest.py)
HOSTILE_LENGTHS = ((4 << 30) << 1, 67_108_936 << 1, (67_108_936 + 16) << 1, 72 << 1, 71 << 1,
                   (200 << 1) | 1, (1 << 35) - 1, 0)  # fmt: skip


class Source(Protocol):
    """What the target consumes: atheris.FuzzedDataProvider, or a random stand-in."""

    def ConsumeIntInRange(self, lo: int, hi: int) -> int: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def remaining_bytes(self) -> int: ...


class _RandomSource:
    """A Source drawn from ``random`` (for --selftest without atheris)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng, self._left = rng, rng.randint(0, 400)

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def ConsumeBytes(self, count: int) -> bytes:
        n = min(count, self._left)
        self._left -= n
        return self._rng.randbytes(n)

    def remaining_bytes(self) -> int:
        return self._left


class Target:
    """The fuzz target: base logs built once, then one damaged copy per input."""

    def __init__(self) -> None:
        from conversation_codec import ConversationCodec

        self.folder = Path(tempfile.mkdtemp(prefix="cc-atheris-"))
        self.bases: list[tuple[bytes, bytes, str | None, list[dict[str, Any]], list[int]]] = []
        for name, key, count in (("sealed", KEY, 6), ("dict", KEY, 515), ("plain", None, 6)):
            path = self.folder / f"{name}.log"
            messages = [
                {"role": "user", "content": f"{name} message {i} " + "ab" * (i % 40)}
                for i in range(count)
            ]
            with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
                codec.extend(messages)
                index = codec.storage.index  # where each record starts: frame boundaries
                frames = [index.span(seq)[0] for seq in range(len(index))]
            idx = Path(f"{path}.idx").read_bytes()
            self.bases.append((path.read_bytes(), idx, key, messages, frames))
        self.work = self.folder / "work"

    def __call__(self, src: Source) -> None:
        choice = src.ConsumeIntInRange(0, 4)
        if choice < 3:
            log, idx, key, _, frames = self.bases[choice]
        else:  # the input's own bytes, bare or after a valid header
            donor = self.bases[0 if choice == 3 else 2]
            header = donor[0][:80] if choice == 3 else donor[0][: donor[0].index(b"\n") + 1]
            log, idx, key, frames = header + src.ConsumeBytes(4096), donor[1], donor[2], []
        for _ in range(src.ConsumeIntInRange(0, 4)):
            log = _mutate(log, src, frames, self.bases[0][0])
        idx_choice = src.ConsumeIntInRange(0, 4)
        index = (idx, None, self.bases[1][1], _mutate(idx, src, [], b""), src.ConsumeBytes(256))
        self._run(log, index[idx_choice], key)

    def _run(self, log: bytes, idx: bytes | None, key: str | None) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir()
        path = self.work / "chat.log"
        path.write_bytes(log)
        if idx is not None:
            Path(f"{path}.idx").write_bytes(idx)
        loaded = _exercise(path, key)
        written = [m for _, _, k, m, _ in self.bases if k is not None]
        if key is not None and loaded and not any(m[: len(loaded)] == loaded for m in written):
            raise AssertionError(f"a sealed log yielded unwritten messages: {loaded[:2]}")


def _mutate(data: bytes, src: Source, frames: list[int], donor: bytes) -> bytes:
    buf = bytearray(data)
    kind = src.ConsumeIntInRange(0, 7)
    n = len(buf)
    pos = src.ConsumeIntInRange(0, n)
    arg = src.ConsumeIntInRange(0, 1 << 16)
    if kind == 0 and n:
        buf[pos % n] ^= 1 << (arg % 8)
    elif kind == 1:
        buf[pos:pos] = src.ConsumeBytes(1 + arg % 32)
    elif kind == 2:
        del buf[pos : pos + 1 + arg % 64]
    elif kind == 3:
        del buf[pos:]
    elif kind == 4:
        buf[pos : pos + 1 + arg % 256] = bytes(len(buf[pos : pos + 1 + arg % 256]))
    elif kind == 5 and donor:
        start = arg % len(donor)
        buf[pos:pos] = donor[start : start + 1 + arg % 300]
    elif kind == 6 and frames:
        from conversation_codec.format.varint import decode_varint, encode_varint

        at = frames[arg % len(frames)]
        with contextlib.suppress(ValueError, IndexError):
            _, body = decode_varint(bytes(buf[at : at + 5]))
            buf[at : at + body] = encode_varint(HOSTILE_LENGTHS[pos % len(HOSTILE_LENGTHS)])
    elif kind == 7 and n:
        start = arg % n
        buf[pos:pos] = buf[start : start + 1 + arg % 200]
    return bytes(buf)


def _exercise(path: Path, key: str | None) -> list[dict[str, Any]] | None:
    """Read through every entry point, then append; re-raise anything foreign."""
    from conversation_codec import ConversationCodec, ConversationCodecError

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ConversationCodecError:
            return None

    codec = call(lambda: ConversationCodec(path, encryption_key=key))
    if codec is None:
        return None
    loaded = None
    with codec:
        count = call(codec.message_count) or 0
        got = call(codec.load)
        loaded = got if isinstance(got, list) else None
        reads: list[Callable[[], Any]] = [
            lambda: codec.tail(3),
            lambda: list(codec),
            lambda: list(codec.search("message 3")),
            lambda: list(codec.search(None, since=1.7e9, until=1.8e9, limit=5)),
            codec.info,
            codec.verify,
        ]
        for seq in (0, -1, count // 2) if count else ():
            reads += [lambda s=seq: codec.get(s), lambda s=seq: codec.timestamp(s)]  # type: ignore[misc]
        for read in reads:
            call(read)
    with ConversationCodec(path, encryption_key=key) as writer:
        call(lambda: writer.append({"role": "user", "content": "fuzz"}))
    return loaded


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--selftest":
        target = Target()
        rng = random.Random(int(os.environ.get("SEED", "0")))
        for _ in range(int(argv[2])):
            target(_RandomSource(rng))
        print(f"selftest: {argv[2]} random inputs, no foreign exception")
        shutil.rmtree(target.folder)
        return 0
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with atheris.instrument_imports():
        import conversation_codec  # noqa: F401  (instrumented for coverage feedback)
    target = Target()
    atheris.Setup(argv, lambda data: target(atheris.FuzzedDataProvider(data)))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

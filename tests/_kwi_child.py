"""Child processes of ``test_keyword_index_races.py`` (the keyword index's catch-up).

``python tests/_kwi_child.py race CFG``: one process of the race. It reads ``round SEED
OPS`` lines, runs OPS seeded operations (appends, checked and bare searches, reopening;
``who`` 2 also pops, compacts and reindexes) and answers ``done {stats}``. A checked
search holds a shared flock on ``cfg["lock"]`` around load/search/load, and pops hold it
exclusively: the log the search saw then lies between the two loads (appends only), so its
hits are the scan's over a prefix of the second load that holds the first. Catch-ups,
compactions and reindexes race freely.

``python tests/_kwi_child.py kill PATH POINT``: search once with a ``FileIO`` that counts
the calls writing the sidecar (its temp file too) and SIGKILLs the process at the one
POINT names (``[call, number, torn]``): before it or, ``torn``, after half its bytes.

The key comes in ``CC_TEST_KEY`` (``tests/_writer.py``'s ``subprocess_env``).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import sys
from typing import Any

from conversation_codec import ConversationCodec, FileIO, LogReplacedError

KEY = os.environ.get("CC_TEST_KEY", "")
SCRIPT = os.path.abspath(__file__)


class Racer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg, self.who, self.counter = cfg, cfg["who"], 0
        self.lock = os.open(cfg["lock"], os.O_RDWR)
        self.stats = {"checked": 0, "retried": 0, "appended": 0, "popped": 0, "rewrites": 0}

    def open(self, wanted: bool) -> ConversationCodec:
        path = self.cfg["path"]
        return ConversationCodec(path, encryption_key=KEY, search_index=wanted, durability="flush")

    def text(self, rng: random.Random) -> str:
        self.counter += 1
        words = rng.choices(self.cfg["words"], k=rng.randint(1, 4))
        return " ".join([*words, f"u{self.who}n{self.counter}"])

    def search(self, codec: ConversationCodec, word: str) -> list[dict[str, Any]]:
        while True:
            try:
                return [h.message for h in codec.search(word)]
            except LogReplacedError:  # a compaction while it streamed: allowed, try again
                self.stats["retried"] += 1

    def check(self, codec: ConversationCodec, word: str) -> None:
        fcntl.flock(self.lock, fcntl.LOCK_SH)
        try:
            before = codec.load() or []
            got = self.search(codec, word)
            after = codec.load() or []
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        assert after[: len(before)] == before, "the log lost messages under the ops lock"
        want = [m for m in after if word.casefold() in m["content"].casefold()]
        assert got == want[: len(got)], (word, len(got), len(want), len(after))
        old = [m for m in before if word.casefold() in m["content"].casefold()]
        assert len(got) >= len(old), (word, len(got), len(old))
        self.stats["checked"] += 1

    def step(self, codec: ConversationCodec, rng: random.Random, wanted: bool) -> Any:
        r, who, stats = rng.random(), self.who, self.stats
        if r < 0.35:
            n = rng.choice([0, 1, 1, 2, 3, 5, 8, 40 if who == 1 else 4])
            for _ in range(n):
                codec.append({"role": "user", "content": self.text(rng)})
            stats["appended"] += n
        elif r < 0.6:
            self.check(codec, rng.choice(self.cfg["queries"]))
        elif r < 0.75:
            self.search(codec, rng.choice(self.cfg["queries"]))
        elif who == 2 and r < 0.88:
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            try:
                for _ in range(rng.randint(1, 5)):
                    stats["popped"] += codec.pop() is not None
            finally:
                fcntl.flock(self.lock, fcntl.LOCK_UN)
        elif who == 2 and r < 0.94:
            codec.compact()
            stats["rewrites"] += 1
        elif who == 2:
            codec.reindex()
            stats["rewrites"] += 1
        else:
            codec.close()
            return self.open(wanted)
        return codec

    def run(self) -> None:
        for line in sys.stdin:
            _, seed, ops = line.split()
            rng = random.Random(int(seed) * 7 + self.who)
            wanted = self.who == 0 or (self.who == 2 and rng.random() < 0.5)
            codec = self.open(wanted)
            for _ in range(int(ops)):
                codec = self.step(codec, rng, wanted)
            codec.close()
            print("done", json.dumps(self.stats), flush=True)


class KillingIO(FileIO):
    def __init__(self, point: list[Any]) -> None:
        self.kind, self.at, self.torn = point
        self.calls = {"pwrite": 0, "rename": 0}

    def hit(self, what: str) -> bool:
        self.calls[what] += 1
        return what == self.kind and self.calls[what] == self.at

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        # The sidecar, its named temp, or the unnamed file (O_TMPFILE: "dir/#ino (deleted)")
        # a merge is written into before it is linked in: the only unnamed file a search
        # writes.
        target = os.readlink(f"/proc/self/fd/{fd}")
        if (".kwi" in target or "/#" in target) and self.hit("pwrite"):
            if self.torn:
                os.pwrite(fd, bytes(data)[: len(data) // 2], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().pwrite(fd, data, offset)

    def rename(self, src: Any, dst: Any, *, dir_fd: int | None = None) -> None:
        if str(dst).endswith(".kwi") and self.hit("rename"):
            os.kill(os.getpid(), signal.SIGKILL)
        super().rename(src, dst, dir_fd=dir_fd)


def kill(path: str, point: list[Any]) -> None:
    with ConversationCodec(path, encryption_key=KEY, io=KillingIO(point)) as codec:
        print("hits", len(list(codec.search("cinnamon"))), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "race":
        Racer(json.loads(sys.argv[2])).run()
    else:
        kill(sys.argv[2], json.loads(sys.argv[3]))

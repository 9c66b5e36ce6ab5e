"""Workloads: the Taskmaster-4 corpus as one long conversation, and synthetic long answers."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "taskmaster4-chat.jsonl.gz"
# Rare in both workloads (14 of 36,080 corpus messages; ~0.2% of synthetic answers), so the
# search figures measure the scan, not materialising a huge result.
SEARCH_KEYWORD = "cinnamon"
# Timestamps given to built histories: message i is at BASE_TS + i seconds (UTC epoch seconds).
BASE_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z
SYNTHETIC_SEED = 20241121


@dataclass
class Workload:
    """An endless conversation: ``take(start, stop)`` cycles the base messages."""

    name: str
    description: str
    base: list[Message]
    _plain_sizes: list[int] = field(default_factory=list, repr=False)

    def take(self, start: int, stop: int) -> list[Message]:
        """Return messages start..stop-1 of the (cycled) conversation."""
        n = len(self.base)
        return [self.base[i % n] for i in range(start, stop)]

    def plaintext_bytes(self, start: int, stop: int) -> int:
        """Return the bytes of compact UTF-8 message JSON for messages start..stop-1."""
        if not self._plain_sizes:
            self._plain_sizes = [len(plain_json(m)) for m in self.base]
        n = len(self.base)
        full, rest = divmod(stop - start, n)
        total = full * sum(self._plain_sizes)
        return total + sum(self._plain_sizes[(start + i) % n] for i in range(rest))


def plain_json(message: Message) -> bytes:
    """Return the compact UTF-8 JSON a store would have to keep at minimum."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def timestamps(start: int, stop: int) -> list[float]:
    """Return the synthetic epoch-second timestamps of messages start..stop-1."""
    return [BASE_TS + i for i in range(start, stop)]


def load_corpus(path: Path) -> Workload:
    """Read every conversation of the corpus and concatenate them into one conversation."""
    messages: list[Message] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            messages.extend(json.loads(line)["messages"])
    return Workload(
        "corpus",
        f"Taskmaster-4 ({path.name}): {len(messages):,} real chat/tool messages concatenated "
        "as one conversation, cycled when more are needed",
        messages,
    )


_WORDS_SEED = "the a of to and in is it that for on with as this be by are from or can we you"


def synthetic(count: int, seed: int = SYNTHETIC_SEED) -> Workload:
    """Build ``count`` messages alternating a short user question and a 1-20 KB answer.

    Answers mix prose from a 2,000-word pseudo-vocabulary with fenced Python code, so they
    compress about as well as real LLM answers (zstd ~2-3x) rather than absurdly well.
    """
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = _WORDS_SEED.split() * 20 + [
        "".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(2000)
    ]
    idents = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(300)]
    messages: list[Message] = []
    for i in range(count):
        if i % 2 == 0:
            text = " ".join(rng.choices(vocab, k=rng.randint(8, 40))) + "?"
            messages.append({"role": "user", "content": text})
            continue
        target = rng.randint(1024, 20 * 1024)
        parts: list[str] = []
        size = 0
        while size < target:
            if rng.random() < 0.4:
                lines = [
                    f"    {rng.choice(idents)} = {rng.choice(idents)}"
                    f"({rng.choice(idents)}, {rng.randint(0, 999)})"
                    for _ in range(rng.randint(3, 25))
                ]
                block = f"```python\ndef {rng.choice(idents)}():\n" + "\n".join(lines) + "\n```"
            else:
                block = " ".join(rng.choices(vocab, k=rng.randint(30, 120))) + "."
            parts.append(block)
            size += len(block) + 2
        if rng.random() < 0.004:
            parts.insert(rng.randrange(len(parts)), f"Add {SEARCH_KEYWORD} to taste.")
        messages.append({"role": "assistant", "content": "\n\n".join(parts)})
    return Workload(
        "synthetic-long",
        f"synthetic (seed {seed}): short user questions alternating with 1-20 KB assistant "
        "answers mixing prose and fenced Python code",
        messages,
    )


def corpus_stats(messages: Sequence[Message]) -> dict[str, int]:
    """Return count and median/max compact-JSON message size, for the report header."""
    sizes = sorted(len(plain_json(m)) for m in messages)
    return {"messages": len(sizes), "median_bytes": sizes[len(sizes) // 2], "max_bytes": sizes[-1]}

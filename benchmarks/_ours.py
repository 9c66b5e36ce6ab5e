"""conversation-codec itself behind the ``Store`` adapter (encrypted, and plaintext)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from benchmarks._measure import NotSupportedError, drain
from benchmarks._store import Store
from benchmarks._workload import Message


def codec_available() -> bool:
    """Return whether ``conversation_codec`` imports (the engine may not be installed yet)."""
    try:
        from conversation_codec import ConversationCodec  # noqa: F401
    except ImportError:
        return False
    return True


class Ours(Store):
    """``ConversationCodec`` with a Fernet key: the figures every ratio is taken against."""

    name = "ours"
    label = "conversation-codec (encrypted)"
    notes = (
        "ConversationCodec(path, encryption_key=key, durability=...); histories built with "
        "extend(batch, timestamps=...); between/search used when the codec has them."
    )
    _encrypted = True

    def open(self, durability: str) -> None:
        from conversation_codec import ConversationCodec

        self._codec: Any = ConversationCodec(
            self.directory / "conversation.log",
            encryption_key=self.key if self._encrypted else None,
            durability=durability,
        )

    def close(self) -> None:
        self._codec.close()

    def extend(self, messages: Sequence[Message], timestamps: Sequence[float]) -> None:
        self._codec.extend(list(messages), timestamps=list(timestamps))

    def append(self, message: Message) -> None:
        self._codec.append(message)

    def load(self) -> list[Any]:
        return self._codec.load() or []

    def tail(self, n: int) -> list[Any]:
        return list(self._codec.tail(n))

    def get(self, index: int, count: int) -> Any:
        return self._codec.get(index)

    def between(self, since: float, until: float) -> list[Any]:
        if not hasattr(self._codec, "between"):
            raise NotSupportedError("codec has no between() yet")
        return drain(
            self._codec.between(
                datetime.fromtimestamp(since, timezone.utc),
                datetime.fromtimestamp(until, timezone.utc),
            )
        )

    def search(self, keyword: str) -> list[Any]:
        if not hasattr(self._codec, "search"):
            raise NotSupportedError("codec has no search() yet")
        return drain(self._codec.search(keyword))

    def save(self, messages: list[Message]) -> None:
        """Call ``codec.save`` (used by the seed-pattern benchmark)."""
        self._codec.save(messages)


class OursPlain(Ours):
    """``ConversationCodec`` without a key (plaintext JSONL), as an extra row."""

    name = "ours-plain"
    label = "conversation-codec (plaintext)"
    notes = "Same, encryption_key=None (plaintext JSONL log)."
    _encrypted = False


OURS: tuple[type[Store], ...] = (Ours, OursPlain)

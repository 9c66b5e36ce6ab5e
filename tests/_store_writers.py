"""Targets for writer processes started with ``multiprocessing``'s "spawn": a child imports
the module of its target, so they live here rather than in a test module, whose imports
(pytest, the fixtures) cost each child ~0.4 s more."""

from __future__ import annotations

from conversation_codec import ConversationStore


def append_and_pop(url: str, key: str, cid: str, name: str, count: int) -> None:
    """Append ``count`` messages; every tenth, pop it and append it again in one hold."""
    store = ConversationStore(url, encryption_key=key, lock_timeout=60)
    with store.open(cid) as codec:
        for i in range(count):
            codec.append({"role": "user", "content": f"{name} {i}"})
            if i % 10 == 9:  # a pop of its own append, under the lock
                with codec.transaction():
                    if codec.get(-1)["content"] == f"{name} {i}":
                        codec.pop()
                        codec.append({"role": "user", "content": f"{name} {i}"})


def append_words(url: str, key: str, cid: str, name: str, count: int, indexed: bool) -> None:
    """Append ``count`` messages of searchable words, opened with ``search_index=indexed``."""
    store = ConversationStore(url, encryption_key=key, search_index=indexed, lock_timeout=60)
    with store.open(cid) as codec:
        for i in range(count):
            codec.append({"role": "user", "content": f"{name} zanzibar{i % 5} item{i}"})

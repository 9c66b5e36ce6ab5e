"""Writer processes on a store: ``python tests/_store_writers.py FUNCTION ARG...`` runs one
of the functions below (the tests start it through ``_children``), apart from any test
module and its imports (pytest, the fixtures)."""

from __future__ import annotations

import sys

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


if __name__ == "__main__":
    url, key, cid, name, count = sys.argv[2:7]
    if sys.argv[1] == "append_and_pop":
        append_and_pop(url, key, cid, name, int(count))
    else:
        append_words(url, key, cid, name, int(count), indexed=sys.argv[7] == "1")

"""IndexCache: a store's decrypted keyword indexes kept across the codecs it reopens.

A second ``ConversationStore.search`` must decrypt no sidecar of an unchanged conversation,
and a conversation that another process changed in between (appends, a pop and a new
message in its place, a key rotation, a compaction, a rebuilt index, a writer without the
option) must answer exactly as a scan of its messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests._writer import subprocess_env
from tests.conftest import KEY, OTHER_KEY

import _children
from conversation_codec import ConversationCodec, ConversationStore
from conversation_codec.index_cache import IndexCache

WORDS = ["alpha", "zanzibar", "quokka", "mango", "ferry"]

# One child process that runs the commands it reads on stdin (one JSON list per line)
# against a store over the same directory, and says "ok" after each.
CHILD = """
import json, os, sys
from conversation_codec import ConversationCodec, ConversationStore
keys = [os.environ["CC_TEST_KEY"], os.environ["CC_OTHER_KEY"]]
store = ConversationStore(sys.argv[1], encryption_key=keys, durability="flush")
for line in sys.stdin:
    cid, op, *args = json.loads(line)
    with store.open(cid) as c:
        if op == "append":
            c.extend([{"role": "user", "content": text} for text in args])
        elif op == "pop":
            c.pop()
        elif op == "rotate":
            c.rotate_key(keys[1])
        elif op == "compact":
            c.compact()
        elif op == "reindex":
            c.reindex()
    print("ok", flush=True)
"""


# Each step, and whether it changes the conversation's sidecar (then the next search finds
# the cached index stale: one miss). Appends leave the sidecar as it was (FORMAT.md §17.5):
# the cached index is used, and the search indexes the new records itself (41 here: it
# writes a segment) or scans them (fewer than 32).
STEPS: list[tuple[list[Any], int]] = [
    (["a", "append", "ferry zanzibar", *[f"mango {i}" for i in range(40)]], 0),
    (["b", "pop"], 1),
    (["b", "append", "quokka instead"], 0),  # as many records as before, a new last one
    (["c", "rotate"], 1),
    (["d", "compact"], 1),
    (["a", "pop"], 1),
    (["a", "append", "zanzibar last"], 0),
    (["b", "reindex"], 1),
    (["c", "append", "alpha zanzibar"], 0),
]


def _msg(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _expected(store: ConversationStore, *words: str) -> list[list[tuple[str, int]]]:
    """The hits a scan finds for each word: every message whose text holds it (folded)."""
    texts: list[tuple[str, int, str]] = []
    for cid in store.ids():
        with store.open(cid) as c:
            texts += [(cid, seq, m["content"].casefold()) for seq, m in enumerate(c.load())]
    return [sorted((cid, seq) for cid, seq, text in texts if word in text) for word in words]


def _check(store: ConversationStore, words: list[str], why: object = None) -> None:
    assert [_found(store, word) for word in words] == _expected(store, *words), why


def _found(store: ConversationStore, word: str) -> list[tuple[str, int]]:
    return sorted((cid, hit.seq) for cid, hit in store.search(word))


def _fill(store: ConversationStore, ids: list[str]) -> None:
    for n, cid in enumerate(ids):
        with store.open(cid) as c:
            c.extend([_msg(f"alpha {cid} mango {i} " + WORDS[i % 5]) for i in range(40 + 7 * n)])


def test_a_second_store_search_decrypts_no_unchanged_sidecar(tmp_path: Path) -> None:
    cache = IndexCache()
    store = ConversationStore(tmp_path, encryption_key=KEY, search_index=True, index_cache=cache)
    _fill(store, ["a", "b", "c"])
    first = _found(store, "zanzibar")
    assert first == _expected(store, "zanzibar")[0] and first
    hits, misses = cache.hits, cache.misses
    assert _found(store, "zanzibar") == first
    assert _found(store, "quokka") == _expected(store, "quokka")[0]
    assert (cache.hits - hits, cache.misses - misses) == (6, 0)  # 3 conversations x 2
    # A codec outside the store (no cache) appends and searches, which writes a segment:
    # b's cached index is stale.
    with ConversationCodec(store.path("b"), encryption_key=KEY, context="b") as c:
        c.extend([_msg("a new zanzibar")] + [_msg(f"more {i}") for i in range(40)])
        assert [h.seq for h in c.search("more 39")] == [len(c) - 1]
    misses = cache.misses
    assert _found(store, "zanzibar") == _expected(store, "zanzibar")[0]
    assert cache.misses - misses == 1
    # A turn through the store hands back what it leaves in the file: nothing is stale.
    with store.open("b") as c:
        c.extend([_msg("zanzibar again")] + [_msg(f"again {i}") for i in range(40)])
    misses = cache.misses
    assert _found(store, "zanzibar") == _expected(store, "zanzibar")[0]
    assert cache.misses == misses
    assert repr(cache).startswith("<IndexCache 3 indexes")


def test_changes_by_another_process_between_store_searches(tmp_path: Path) -> None:
    cache = IndexCache()
    keys = [KEY, OTHER_KEY]
    store = ConversationStore(
        tmp_path, encryption_key=keys, search_index=True, index_cache=cache, durability="flush"
    )
    ids = ["a", "b", "c", "d"]
    _fill(store, ids)
    env = subprocess_env(KEY)
    env["CC_OTHER_KEY"] = OTHER_KEY
    with _children.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        _check(store, WORDS)
        for step, stale in STEPS:
            child.stdin.write(json.dumps(step) + "\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ok", step
            misses = cache.misses
            _check(store, WORDS, step)
            assert cache.misses - misses == stale, step
        child.stdin.close()
        assert child.wait(timeout=60) == 0


@pytest.mark.parametrize("max_bytes", [0, 5_000, 10**9])
def test_the_cache_keeps_at_most_max_bytes(tmp_path: Path, max_bytes: int) -> None:
    cache = IndexCache(max_bytes=max_bytes)
    store = ConversationStore(tmp_path, encryption_key=KEY, search_index=True, index_cache=cache)
    ids = [f"c{i}" for i in range(6)]
    _fill(store, ids)
    assert _found(store, "ferry") == _expected(store, "ferry")[0]
    assert cache.nbytes <= max_bytes
    assert len(cache) == (0 if max_bytes == 0 else 6 if max_bytes > 10**6 else len(cache))
    if max_bytes == 5_000:
        assert 0 < len(cache) < 6  # the least recently used went first
        assert _found(store, "ferry") == _expected(store, "ferry")[0]
    with pytest.raises(ValueError, match="max_bytes"):
        IndexCache(max_bytes=-1)


def test_a_writer_turn_leaves_the_file_s_index_for_the_next(tmp_path: Path) -> None:
    """Open, append, close, as an agent's turn does: the turn reads and writes nothing of
    the index (FORMAT.md §17.5), so the cached index stays the file's, and every search
    takes it instead of decrypting the sidecar (indexing the turns once 32 wait); searches
    stay exact throughout."""
    cache = IndexCache()
    store = ConversationStore(tmp_path, encryption_key=KEY, search_index=True, index_cache=cache)
    _fill(store, ["a"])
    assert _found(store, "ferry") == _expected(store, "ferry")[0]
    for i in range(40):  # a search at 35 turns indexes them (32 or more waiting)
        hits, misses = cache.hits, cache.misses
        with store.open("a") as c:
            c.append(_msg(f"turn {i} " + ("zanzibar" if i % 3 else "ferry")))
        assert (cache.hits, cache.misses) == (hits, misses), i
        if i % 7 == 0:
            _check(store, ["zanzibar", "ferry", "turn"], i)
            assert cache.misses == misses, i

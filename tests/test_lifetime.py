"""A long-running process: what a codec leaves behind when it is dropped without close()."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore

from conftest import KEY, collecting

_FDS = Path("/proc/self/fd")


def _open_fds() -> int:
    return len(os.listdir(_FDS))


@pytest.mark.skipif(not _FDS.is_dir(), reason="counts /proc/self/fd")
@pytest.mark.parametrize("use", ["append", "tail", "search", "rewrite", "index"])
def test_a_used_codec_dropped_without_close_leaves_no_descriptor(tmp_path: Path, use: str) -> None:
    """A server that forgets close() (or raises before it) must not run out of files: the
    descriptors of a dropped codec close with it (8,000 such turns hit "Too many open
    files" before)."""
    with collecting():
        before = _open_fds()
        for i in range(20):
            codec = ConversationCodec(
                tmp_path / f"c{i}.log", encryption_key=KEY, search_index=use == "index"
            )
            codec.append({"role": "user", "content": f"hello {i}"})
            if use == "tail":
                codec.tail(3)
            elif use in ("search", "index"):
                list(codec.search("hello"))
            elif use == "rewrite":
                codec.replace([{"role": "user", "content": "again"}])
            del codec
        gc.collect()
        assert _open_fds() == before


@pytest.mark.skipif(not _FDS.is_dir(), reason="counts /proc/self/fd")
def test_codecs_of_a_store_dropped_without_close_leave_no_descriptor(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "store", encryption_key=KEY)
    with collecting():
        before = _open_fds()
        for i in range(20):
            codec = store.open(f"user-{i}")
            codec.append({"role": "user", "content": f"hello {i}"})
            codec.tail(2)
            del codec
        gc.collect()
        assert _open_fds() == before

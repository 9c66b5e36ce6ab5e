"""Regressions for defects found in review: each test failed before its fix."""

from __future__ import annotations

import base64
import errno
import os
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, FileIO
from conversation_codec.compression import TRAIN_AFTER

from conftest import KEY, OTHER_KEY, is_sidecar, messages

IMAGE_URL = "data:image/png;base64," + base64.b64encode(os.urandom(4096)).decode()


def chat(n: int) -> list[dict[str, object]]:
    words = ["order", "coffee", "refund", "latte", "shipping", "account", "password", "invoice"]
    return [
        {"role": "user", "content": " ".join(words[(i * 7 + j) % len(words)] for j in range(12))}
        for i in range(n)
    ]


def test_pop_below_the_dictionary_in_another_instance(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    msgs = chat(TRAIN_AFTER + 5)
    a = ConversationCodec(path, encryption_key=KEY, durability="flush")
    b = ConversationCodec(path, encryption_key=KEY, durability="flush")
    a.extend(msgs)
    assert b.tail(1) == msgs[-1:]  # b has loaded the dictionary
    for _ in range(10):
        a.pop()  # cuts the dictionary record away
    b.append({"role": "user", "content": "after the pop"})
    with ConversationCodec(path, encryption_key=KEY) as fresh:
        assert fresh.load() == [*msgs[:-10], {"role": "user", "content": "after the pop"}]
        assert fresh.verify().ok
    a.close()
    b.close()


def test_rotation_reseals_external_attachments(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]}
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.append(message)
        codec.rotate_key(OTHER_KEY)
        assert codec.load() == [message]
    with ConversationCodec(path, encryption_key=OTHER_KEY, attachments="external") as codec:
        assert codec.load() == [message]
    assert len(list((tmp_path / "c.log.blobs").iterdir())) == 1  # the old-key blob is gone


def test_a_failed_dictionary_write_does_not_fail_the_committed_append(tmp_path: Path) -> None:
    path = tmp_path / "c.log"

    class DictionaryWriteFails(FileIO):
        armed = False
        calls = 0

        def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
            if self.armed and not is_sidecar(fd):  # the log's own writes
                self.calls += 1
                if self.calls == 2:  # 1: the message frame, 2: the dictionary record
                    raise OSError(errno.ENOSPC, "No space left on device")
            return super().pwrite(fd, data, offset)

    io = DictionaryWriteFails()
    codec = ConversationCodec(path, encryption_key=KEY, durability="flush", io=io)
    codec.extend(chat(TRAIN_AFTER - 1))
    io.armed = True
    assert codec.append({"role": "user", "content": "the 512th"}) == TRAIN_AFTER - 1
    io.armed = False
    codec.append({"role": "user", "content": "the 513th"})
    codec.close()
    with ConversationCodec(path, encryption_key=KEY) as again:
        assert len(again) == TRAIN_AFTER + 1
        assert again.tail(2)[0] == {"role": "user", "content": "the 512th"}


def test_a_large_torn_tail_is_resolved_without_trying_every_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(5))
    with open(path, "ab") as f:
        f.write(os.urandom(2 * 1024 * 1024))  # a torn 2 MiB record, as from an attachment
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.message_count()
        cipher = codec.storage.fmt.records.cipher  # type: ignore[union-attr]
        codec.append({"role": "user", "content": "after"})
        # Random bytes almost never look like a frame with a plausible timestamp: the
        # resynchronisation authenticates (HMACs) a handful of candidates, not millions.
        assert cipher.unseal_count < 50
        assert len(codec) == 6


def test_merge_import_refuses_to_drop_records_max_messages_hides(tmp_path: Path) -> None:
    src = tmp_path / "old.jsonl"
    src.write_text('{"role": "user", "content": "old", "timestamp": "2020-01-01T00:00:00Z"}\n')
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(messages(5))
    before = path.read_bytes()
    with (
        ConversationCodec(path, encryption_key=KEY, max_messages=3) as codec,
        pytest.raises(ValueError, match="max_messages"),
    ):
        codec.import_(src, merge=True)
    assert path.read_bytes() == before


def test_clear_removes_blobs_while_still_holding_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]}
    blobs, lock = Path(str(path) + ".blobs"), Path(str(path) + ".lock")
    seen: list[bool] = []

    class Watch(FileIO):  # the blob store syncs the folder once its directory is gone
        def fsync_dir(self, folder: str | os.PathLike[str] | int) -> None:
            if not seen and not blobs.exists():
                seen.append(lock.exists())
            super().fsync_dir(folder)

    with ConversationCodec(path, encryption_key=KEY, attachments="external", io=Watch()) as codec:
        codec.append(message)
        assert blobs.is_dir()
        codec.clear()
    assert seen == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["c.log.blobs"])

"""The codec's thin wrappers: attachments=, chat formats through the index, export/import."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec

from conftest import KEY, messages

IMAGE = os.urandom(2 * 1024 * 1024)
DATA_URL = "data:image/png;base64," + base64.b64encode(IMAGE).decode()


def image_message(text: str = "what is in this picture?") -> dict[str, object]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": DATA_URL}},
        ],
    }


def files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_strip_keeps_the_log_small(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, attachments="strip") as c:
        c.append(image_message())
        [stored] = c.load() or []
    assert files_size(tmp_path) < 10_000
    assert DATA_URL not in str(stored)
    assert hashlib.sha256(IMAGE).hexdigest() in str(stored)


def test_external_restores_exact_bytes_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as c:
        c.append(image_message("first"))
        c.append(image_message("same picture again"))
        assert os.path.getsize(path) < 10_000
        blobs = list((tmp_path / "c.log.blobs").iterdir())
        assert len(blobs) == 1  # stored once
        assert c.load() == [image_message("first"), image_message("same picture again")]
        assert c.get(0) == image_message("first")
        history = c.load() or []
        inode = path.stat().st_ino
        history.append({"role": "assistant", "content": "a cat"})
        c.save(history)  # the restored history is a prefix: nothing is rewritten
        assert path.stat().st_ino == inode
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert IMAGE[:64] not in raw and DATA_URL[30:94].encode() not in raw
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as c:
        for _ in range(3):
            c.pop()
        c.compact()  # the blob is no longer referenced
        assert list((tmp_path / "c.log.blobs").iterdir()) == []
        c.append(image_message())
        c.clear()
    assert not (tmp_path / "c.log.blobs").exists() or not any((tmp_path / "c.log.blobs").iterdir())


def test_bad_attachment_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attachments"):
        ConversationCodec(tmp_path / "c.log", attachments="inline")
    with pytest.raises(ValueError, match="password"):
        ConversationCodec(tmp_path / "c.log", password="pw", attachments="external")


def test_chat_formats_read_only_the_newest_records(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, durability="flush") as c:
        c.extend(messages(400))
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY) as c:
        c.message_count()
        cipher = c.storage.fmt.records.cipher  # type: ignore[union-attr]
        before = cipher.unseal_count
        out = c.to_openai_messages(system_prompt="Be brief.", max_context=4)
        assert cipher.unseal_count - before == 4
        assert out[0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in out[1:]] == [m["role"] for m in messages(400)[-4:]]
        system, turns = c.to_anthropic_messages(max_context=4)
        assert system is None and turns
        assert any(m["role"] == "user" for m in c.to_ollama_messages(max_context=8))


def test_export_then_import_round_trips(tmp_path: Path) -> None:
    src = ConversationCodec(tmp_path / "a.log", encryption_key=KEY, durability="flush")
    src.extend(messages(10), timestamps=[1_000 + i for i in range(10)])
    assert src.export(tmp_path / "out.jsonl") == 10
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o600
    dst = ConversationCodec(tmp_path / "b.log", encryption_key=KEY, durability="flush")
    report = dst.import_(tmp_path / "out.jsonl")
    assert report.added == 10
    assert dst.load() == messages(10)
    assert [dst.timestamp(i) for i in range(10)] == [src.timestamp(i) for i in range(10)]
    again = dst.import_(tmp_path / "out.jsonl", merge=True)
    assert again.added == 0 and again.skipped_duplicate == 10
    src.close()
    dst.close()

"""max_messages (a visible window over an append-only log) and prune(before=...)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec

from conftest import KEY, messages


def test_max_messages_window(make_codec: Callable[..., ConversationCodec]) -> None:
    full = make_codec()
    full.extend(messages(50))
    codec = make_codec(max_messages=10)
    window = messages(50)[-10:]
    assert len(codec) == 10
    assert codec.load() == window
    assert list(codec) == window
    assert codec.tail(3) == window[-3:]
    assert codec.tail(100) == window
    assert codec.get(0) == window[0]
    assert codec.get(-1) == window[-1]
    with pytest.raises(IndexError):
        codec.get(10)
    with pytest.raises(IndexError):
        codec.get(-11)
    assert [h.seq for h in codec.search(None)] == list(range(10))
    assert [h.message for h in codec.search(None)] == window
    assert codec.timestamp(0) == full.timestamp(40)
    assert codec.info().message_count == 10
    assert codec.append({"new": 1}) == 9  # positions are within the window
    assert codec.load() == [*window[1:], {"new": 1}]
    assert codec.pop() == {"new": 1}
    assert codec.load() == window  # hidden records are not deleted: the window slides back
    assert len(full) == 50


def test_max_messages_seed_pattern_and_compaction(
    make_codec: Callable[..., ConversationCodec], log_path: Path
) -> None:
    codec = make_codec(max_messages=100)
    history = codec.load() or []
    for m in messages(10_000 // 50):
        history.append(m)
        codec.save(history)
        history = history[-100:]
    codec.extend(messages(9_800))
    assert len(codec) == 100
    size = log_path.stat().st_size
    report = codec.compact()
    assert report.messages == 100
    assert log_path.stat().st_size < size / 50
    assert codec.load() == messages(9_800)[-100:]
    other = make_codec()
    assert len(other) == 100  # compaction physically dropped the rest


def test_bad_max_messages() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_messages"):
            ConversationCodec("x.log", max_messages=bad)  # type: ignore[arg-type]


def test_prune_removes_old_messages_from_every_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    old = [{"role": "user", "content": f"ancient-secret-{i}"} for i in range(5)]
    new = [{"role": "user", "content": f"recent-{i}"} for i in range(5)]
    codec = ConversationCodec(path, encryption_key=KEY, durability="flush")
    codec.extend(old, timestamps=[1_000 + i for i in range(5)])
    codec.extend(new, timestamps=[2_000 + i for i in range(5)])
    assert codec.prune(before=1_500) == 5
    assert codec.load() == new
    assert [codec.timestamp(i).timestamp() for i in range(5)] == [2_000 + i for i in range(5)]
    assert codec.prune(before=1_500) == 0
    # The removed plaintext is gone: decrypt every byte range of every file with the key.
    from cryptography.fernet import Fernet, InvalidToken  # noqa: F401

    from conversation_codec.crypto import Keyring, LogCipher
    from conversation_codec.format.header import decode_sealed_header
    from conversation_codec.records import RecordRejected, SealedRecords

    header, covered, mac = decode_sealed_header(path.read_bytes())
    records = SealedRecords(LogCipher.open(Keyring.from_input(KEY), header, covered, mac))
    found = []
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        for start in range(len(data)):
            for end in range(start + 72, min(len(data), start + 400) + 1, 16):
                try:
                    text, _ = records.payload(data[start:end], None)  # type: ignore[arg-type]
                except (RecordRejected, ValueError):
                    continue
                found.append(text)
    assert len(found) == 5
    assert not any(b"ancient" in t for t in found)
    codec.close()


def test_prune_everything_and_time_formats(make_codec: Callable[..., ConversationCodec]) -> None:
    codec = make_codec()
    codec.extend(messages(3), timestamps=[10.0, 20.0, 30.0])
    assert codec.prune(before=codec.timestamp(1) + timedelta(microseconds=1)) == 2
    assert codec.load() == messages(3)[2:]
    assert codec.prune(before="2100-01-01T00:00:00Z") == 1
    assert codec.load() is None


def test_max_messages_rewriting_save_keeps_hidden_records_indexed(tmp_path: Path) -> None:
    # The rewrite reads the hidden records back (and samples them for its dictionary: more
    # than TRAIN_AFTER records) and keeps the keyword index exact over all of them.
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY, search_index=True) as full:
        full.extend(messages(1000))
    with ConversationCodec(path, encryption_key=KEY, max_messages=100) as codec:
        window = codec.load() or []
        window[0] = {"role": "user", "content": "edited zanzibar"}
        codec.save(window)
        assert codec.load() == window
    with ConversationCodec(path, encryption_key=KEY) as full:
        assert full.load() == messages(900) + window
        assert [h.seq for h in full.search("zanzibar")] == [900]
        assert full.verify().problems == ()
        assert full.verify().keyword_index == 1000

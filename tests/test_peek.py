"""``storage.file.peek`` and ``ConversationStore.infos(keyless=True)``: a log as seen without
its key, from its header and index, and honest about it (issue 17)."""

from __future__ import annotations

from pathlib import Path

from conversation_codec import ConversationCodec, ConversationStore
from conversation_codec.format.header import LogKind
from conversation_codec.paths import index_path
from conversation_codec.storage.file.peek import peek_log

from conftest import KEY, OTHER_KEY, messages

INDEX_HEADER = 48  # FORMAT.md §7
ENTRY = 16


def test_peek_counts_index_entries_without_the_key(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    with ConversationCodec(log, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(5))
        first, last = codec.timestamp(0), codec.timestamp(4)
    seen = peek_log(log)
    assert (seen.kind, seen.indexed, seen.unindexed_bytes) == (LogKind.SEALED, 5, 0)
    assert seen.log_bytes == log.stat().st_size
    assert seen.index_bytes == Path(index_path(log)).stat().st_size
    assert seen.first_ts_us == int(first.timestamp() * 1_000_000)
    assert seen.last_ts_us == int(last.timestamp() * 1_000_000)


def test_peek_says_when_the_index_lags_the_log(tmp_path: Path) -> None:
    log = tmp_path / "chat.log"
    with ConversationCodec(log, encryption_key=KEY, durability="flush") as codec:
        codec.extend(messages(5))
    idx = Path(index_path(log))
    idx.write_bytes(idx.read_bytes()[: INDEX_HEADER + 2 * ENTRY])  # as after a crash
    seen = peek_log(log)
    assert seen.indexed == 2 and seen.unindexed_bytes > 0  # not "2 messages", full stop
    idx.unlink()
    assert peek_log(log).indexed is None


def test_peek_a_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "notes.log"
    foreign.write_text("hello\n")
    seen = peek_log(foreign)
    assert (seen.kind, seen.indexed, seen.log_bytes) == (LogKind.FOREIGN, None, 6)


def test_keyless_infos_list_a_store_with_per_user_keys(tmp_path: Path) -> None:
    keys = {"alice": KEY, "bob": OTHER_KEY}
    store = ConversationStore(tmp_path, key_fn=keys.__getitem__, durability="flush")
    for n, (conversation_id, _) in enumerate(keys.items(), 1):
        with store.open(conversation_id) as codec:
            codec.extend(messages(n))
    keyless = ConversationStore(tmp_path)
    assert [i.status for i in keyless.infos()] == ["KeyRequiredError"] * 2  # unchanged
    listed = keyless.infos(keyless=True)
    assert [(i.conversation_id, i.message_count, i.status) for i in listed] == [
        ("alice", 1, "unverified"),
        ("bob", 2, "unverified"),
    ]
    verified = store.infos()
    for seen, known in zip(listed, verified, strict=True):
        assert (seen.first_timestamp, seen.last_timestamp) == (
            known.first_timestamp,
            known.last_timestamp,
        )
        assert seen.encrypted and seen.disk_bytes == known.disk_bytes and seen.error is None
    # A wrong key is not "no key": it stays a DecryptionError row.
    assert [
        i.status for i in ConversationStore(tmp_path, encryption_key=KEY).infos(keyless=True)
    ] == [
        "ok",
        "DecryptionError",
    ]

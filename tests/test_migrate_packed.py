"""Migrating into a store (``migrate_many(store=)``, ``migrate(dst=store path)``) never
replaces a conversation the store holds in a pack (FORMAT.md §18), as it never replaces a
loose one: found by review, the migrated file shadowed the packed history ("loose wins")
and the next append dropped it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conversation_codec import FormatError, StorageError
from conversation_codec.maintenance.migrate import migrate, migrate_many
from conversation_codec.store import ConversationStore

from conftest import KEY

EXISTING = [{"role": "user", "content": f"existing {i}"} for i in range(2)]
LEGACY = {"role": "user", "content": "legacy line"}


def setup(tmp_path: Path, where: str) -> tuple[Path, Path]:
    """A store holding "ana/chat" (``where``: loose or packed) and a legacy tree whose
    ``ana/chat.jsonl`` maps to that id; return (store root, legacy folder)."""
    root, legacy = tmp_path / "store", tmp_path / "legacy"
    (legacy / "ana").mkdir(parents=True)
    (legacy / "ana" / "chat.jsonl").write_text(json.dumps(LEGACY) + "\n")
    store = ConversationStore(root, encryption_key=KEY)
    with store.open("ana/chat") as codec:
        codec.extend(EXISTING)
    if where == "packed":
        assert store.pack().packed == ["ana/chat"]
        assert not store.path("ana/chat").exists()
    return root, legacy


def assert_kept(root: Path) -> None:
    """The existing history is intact and writable; the migration left no file behind."""
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    assert all(".migrating-" not in n and ".tmp-" not in n for n in names), names
    store = ConversationStore(root, encryption_key=KEY)
    with store.open("ana/chat") as codec:
        assert codec.load() == EXISTING
        codec.append({"role": "user", "content": "next"})  # unpacks: must keep the history
    with ConversationStore(root, encryption_key=KEY).open("ana/chat") as codec:
        assert codec.load() == [*EXISTING, {"role": "user", "content": "next"}]


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("where", ["loose", "packed"])
def test_migrate_many_into_a_store_never_replaces_a_conversation(
    tmp_path: Path, where: str, dry_run: bool
) -> None:
    root, legacy = setup(tmp_path, where)
    batch = migrate_many([legacy], store=root, encryption_key=KEY, dry_run=dry_run)
    assert [(i.path.name, i.status) for i in batch.items] == [("chat.jsonl", "failed")]
    assert "already exists" in batch.items[0].reason
    assert (root / "ana%2fchat.log").exists() is (where == "loose")
    assert_kept(root)


@pytest.mark.parametrize("where", ["loose", "packed"])
def test_migrate_to_a_store_path_never_replaces_a_conversation(tmp_path: Path, where: str) -> None:
    root, legacy = setup(tmp_path, where)
    target = ConversationStore(root, encryption_key=KEY).path("ana/chat")
    with pytest.raises(StorageError, match=re.escape(str(target)) + " already exists"):
        migrate(legacy / "ana" / "chat.jsonl", target, encryption_key=KEY, context="ana/chat")
    assert_kept(root)


def test_migrate_into_a_store_with_an_unreadable_pack_is_refused(tmp_path: Path) -> None:
    """A conversation found in no readable pack while one is unreadable may be in that
    one (FORMAT.md §18.2.3): it is not created over it."""
    root, legacy = setup(tmp_path, "packed")
    pack = next((root / ".packs").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[30] ^= 0xFF  # its table of contents
    pack.write_bytes(bytes(data))
    (legacy / "ana" / "chat.jsonl").rename(legacy / "ana" / "other.jsonl")
    batch = migrate_many([legacy], store=root, encryption_key=KEY)
    assert [i.status for i in batch.items] == ["failed"]
    assert pack.name in batch.items[0].reason
    assert not (root / "ana%2fother.log").exists()
    with pytest.raises(FormatError):
        ConversationStore(root, encryption_key=KEY).ids()


def test_migrate_many_into_a_store_beside_a_packed_conversation(tmp_path: Path) -> None:
    """Another id of a store with packs migrates as before."""
    root, legacy = setup(tmp_path, "packed")
    (legacy / "ana" / "chat.jsonl").rename(legacy / "ana" / "new.jsonl")
    batch = migrate_many([legacy], store=root, encryption_key=KEY)
    assert [i.status for i in batch.items] == ["converted"]
    store = ConversationStore(root, encryption_key=KEY)
    assert store.ids() == ["ana/chat", "ana/new"]
    with store.open("ana/new") as codec:
        assert codec.load() == [LEGACY]
    assert_kept(root)

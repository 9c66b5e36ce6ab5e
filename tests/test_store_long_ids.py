"""A directory store's conversations with long ids (review r2, defect 3).

An id whose encoding is over ``MAX_ENCODED_ID`` bytes is stored under a hashed name that does
not give the id back (``storage.file.store``). Before the fix, ``ids()``, ``infos()``,
``search()`` and ``prune()`` left such a conversation out without a word, so retention kept
it forever, while a PostgreSQL store listed, searched and pruned it. Now ``prune()`` applies
retention to it (opened by the id digest its name carries, listed by its path) and the
listings report it as ``HashedIdError`` (through ``on_error``, or raised).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import conversation_codec.errors as errors
from _postgres import Cluster
from conversation_codec import ConversationCodecError, ConversationStore
from conversation_codec.cli import main
from conversation_codec.store import MAX_ENCODED_ID, encode_id

from conftest import KEY, OTHER_KEY

LONG = "山田太郎のサポート会話/2024年3月の注文についての質問"  # 29 characters, hashed
UPPER = "A" * 67  # 201 encoded bytes: the shortest all-uppercase id with a hashed name
OLD = datetime(2026, 1, 1, tzinfo=timezone.utc)
CUTOFF = datetime(2030, 1, 1, tzinfo=timezone.utc)
FRESH = datetime(2031, 1, 1, tzinfo=timezone.utc)


def _write(store: ConversationStore, cid: str, when: datetime, text: str = "my refund") -> None:
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": text}, timestamp=when)


def _errors() -> tuple[list[tuple[str, Exception]], Callable[[str, Exception], None]]:
    seen: list[tuple[str, Exception]] = []
    return seen, lambda where, exc: seen.append((where, exc))


def test_the_ids_have_hashed_names() -> None:
    for cid in (LONG, UPPER):
        assert len(encode_id(cid)) == 128 + 1 + 64 and "~" in encode_id(cid)
    assert len(encode_id("A" * 66)) == MAX_ENCODED_ID - 2  # one letter less: not hashed


@pytest.mark.postgres
def test_file_store_against_postgres_same_public_calls(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    """The reviewer's scenario: both stores prune the conversation; the database lists and
    searches it by id, the directory reports it (it cannot name it) instead of dropping it."""
    answers = {}
    for name, root in (("file", str(tmp_path / "s")), ("pg", postgres_cluster.create_database())):
        store = ConversationStore(root, encryption_key=KEY)
        _write(store, LONG, OLD)
        seen, on_error = _errors()
        listed = store.ids(on_error=on_error)
        infos = [i.conversation_id for i in store.infos(on_error=on_error)]
        hits = [cid for cid, _ in store.search("refund", on_error=on_error)]
        by_id = [cid for cid, _ in store.search("refund", conversation_ids=[LONG])]
        reported = [(where, type(exc)) for where, exc in seen]
        seen.clear()
        pruned = store.prune(older_than=CUTOFF, on_error=on_error)
        answers[name] = (listed, infos, hits, by_id, reported, pruned, seen, LONG in store)
    path = str(tmp_path / "s" / (encode_id(LONG) + ".log"))
    assert answers["pg"] == ([LONG], [LONG], [LONG], [LONG], [], [LONG], [], False)
    three = [(path, errors.HashedIdError)] * 3  # ids, infos, search: each reports it
    assert answers["file"] == ([], [], [], [LONG], three, [path], [], False)
    assert os.listdir(tmp_path / "s") == []  # every file of it is gone


@pytest.mark.parametrize("packed", [False, True], ids=["loose", "with-packs"])
def test_prune_deletes_stale_long_id_conversations_and_keeps_fresh_ones(
    tmp_path: Path, packed: bool
) -> None:
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    _write(store, LONG, OLD)
    _write(store, UPPER, FRESH)
    _write(store, "short-old", OLD)
    _write(store, "short-new", FRESH)
    with store.open("x" * 300):  # opened, never written: no log, nothing to prune
        pass
    if packed:  # the short ones go into a pack; hashed logs stay loose (no id to pack by)
        assert sorted(store.pack().packed) == ["short-new", "short-old"]
        assert store.path(LONG).exists() and not store.path("short-old").exists()
    seen, on_error = _errors()
    deleted = store.prune(older_than=CUTOFF, on_error=on_error)
    assert sorted(deleted) == sorted([str(store.path(LONG)), "short-old"]) and seen == []
    assert LONG not in store and "short-old" not in store
    assert UPPER in store and "short-new" in store
    with store.open(UPPER) as codec:  # untouched
        assert codec.load() == [{"role": "user", "content": "my refund"}]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(encode_id(LONG))]
    # A second prune with a later cutoff deletes the fresh one too, by timedelta as well.
    later = ConversationStore(tmp_path, encryption_key=KEY, clock=lambda: 2**62 // 1000)
    assert sorted(later.prune(older_than=timedelta(0))) == [str(store.path(UPPER)), "short-new"]


def test_listings_raise_hashed_id_error_without_on_error(tmp_path: Path) -> None:
    """Never a partial list handed out as the whole (as for an unreadable pack)."""
    store = ConversationStore(tmp_path, encryption_key=KEY)
    _write(store, "alice", OLD)
    _write(store, UPPER, OLD)
    path = str(store.path(UPPER))
    with pytest.raises(errors.HashedIdError, match="too long to recover") as info:
        store.ids()
    assert str(info.value).startswith(path) and isinstance(info.value, LookupError)
    with pytest.raises(errors.HashedIdError):
        store.infos()
    with pytest.raises(errors.HashedIdError):  # before any read
        store.search("refund")
    seen, on_error = _errors()
    assert [i.conversation_id for i in store.infos(on_error=on_error)] == ["alice"]
    assert [(w, type(e)) for w, e in seen] == [(path, errors.HashedIdError)]
    with store.open(UPPER) as codec:  # by its id, as ever
        assert len(codec) == 1


def test_prune_checks_the_binding_of_a_log_under_a_hashed_name(tmp_path: Path) -> None:
    """The name's digest authenticates the log: another conversation's log copied over
    it is refused (BindingError, to on_error with the path) and kept, never deleted."""
    store = ConversationStore(tmp_path, encryption_key=KEY)
    _write(store, UPPER, OLD)
    _write(store, "B" * 67, OLD)
    shutil.copyfile(store.path("B" * 67), store.path(UPPER))  # a swapped-in log
    seen, on_error = _errors()
    assert store.prune(older_than=CUTOFF, on_error=on_error) == [str(store.path("B" * 67))]
    assert [(w, type(e)) for w, e in seen] == [(str(store.path(UPPER)), errors.BindingError)]
    assert store.path(UPPER).exists()


def test_prune_reports_a_long_id_conversation_it_cannot_open(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, encryption_key=KEY)
    _write(store, UPPER, OLD)
    seen, on_error = _errors()
    wrong = ConversationStore(tmp_path, encryption_key=OTHER_KEY)
    assert wrong.prune(older_than=CUTOFF, on_error=on_error) == []
    assert [(w, type(e)) for w, e in seen] == [(str(store.path(UPPER)), errors.DecryptionError)]
    assert UPPER in store


def test_prune_with_key_fn_keeps_and_reports_what_it_cannot_key(tmp_path: Path) -> None:
    """key_fn gives a key per id; a hashed name gives no id: the log is kept, and said so."""
    store = ConversationStore(tmp_path, key_fn=lambda cid: KEY)
    _write(store, UPPER, OLD)
    _write(store, "short", OLD)
    seen, on_error = _errors()
    assert store.prune(older_than=CUTOFF, on_error=on_error) == ["short"]
    assert [(w, type(e)) for w, e in seen] == [(str(store.path(UPPER)), errors.HashedIdError)]
    assert "key_fn" in str(seen[0][1])
    _write(store, "short", OLD)
    with pytest.raises(errors.HashedIdError):  # without on_error: raised, after the rest
        store.prune(older_than=CUTOFF)
    assert "short" not in store and UPPER in store


@pytest.mark.parametrize("secret", ["plain", "password"])
def test_prune_of_long_ids_in_plain_and_password_stores(tmp_path: Path, secret: str) -> None:
    options = {"password": "correct horse battery"} if secret == "password" else {}
    store = ConversationStore(tmp_path, **options)  # type: ignore[arg-type]
    _write(store, LONG, OLD)
    _write(store, UPPER, FRESH)
    assert store.prune(older_than=CUTOFF) == [str(store.path(LONG))]
    assert LONG not in store and UPPER in store


def test_cli_ls_search_and_prune_of_a_store_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    store = ConversationStore(root, encryption_key=KEY)
    _write(store, "alice", OLD)
    _write(store, LONG, OLD)
    path = str(store.path(LONG))
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    for argv in (["ls", str(root)], ["search", str(root), "refund"]):
        code = main(argv)
        out, err = capsys.readouterr()  # the rest listed; the long one named, once, exit 1
        assert code == 1 and "alice" in out and encode_id(LONG) not in out
        assert err.count("error: ") == 1 and f"error: {path}: " in err and "too long" in err
    code = main(["prune", str(root), "--before", "2030-01-01T00:00Z", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and '"deleted":["alice",' in out and encode_id(LONG) in out
    assert os.listdir(root) == []


def test_errors_are_library_errors() -> None:
    assert issubclass(errors.HashedIdError, ConversationCodecError)

"""A ``ConversationStore`` whose root is a ``postgresql://`` URL (issue 14), used as users do.

The storage itself is tested in ``test_postgres.py`` and the shared conformance suites;
here: the store's API over a database, the copy round trip file -> PostgreSQL -> file, the
command line with a URL root, and real processes writing one conversation through codecs.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import _children
import _store_writers
from _postgres import Cluster
from conversation_codec import ConversationStore, generate_key
from conversation_codec.errors import DecryptionError, KeyRequiredError, StorageError
from conversation_codec.maintenance.copy import copy_conversations
from conversation_codec.storage.postgres import PostgresStore

from conftest import CommandLine

pytestmark = pytest.mark.postgres

KEY = generate_key()
T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)


def _prefix(request: pytest.FixtureRequest) -> str:
    return hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10] + "-"


def _dump(store: ConversationStore, ids: list[str]) -> dict[str, list[tuple[object, datetime]]]:
    out = {}
    for cid in ids:
        with store.open(cid) as codec:
            out[cid] = [(h.message, h.timestamp) for h in codec.search(None)]
    return out


def test_a_url_root_keeps_conversations_in_the_database(
    postgres_url: str, request: pytest.FixtureRequest
) -> None:
    p = _prefix(request)
    store = ConversationStore(postgres_url, encryption_key=KEY)
    assert isinstance(store.backend, PostgresStore) and store.root == store.backend.name
    with pytest.raises(StorageError, match="database"):
        store.path(p + "a")
    with store.open(p + "a") as codec:
        codec.append({"role": "user", "content": "where is my refund?"}, timestamp=T0)
        codec.append({"role": "assistant", "content": "on its way"}, timestamp=T0)
    with store.open(p + "b") as codec:
        codec.append({"role": "user", "content": "old news"}, timestamp=T0 - timedelta(days=90))
    assert p + "a" in store and p + "zzz" not in store
    mine = [i for i in store.infos() if i.conversation_id.startswith(p)]
    assert [(i.conversation_id, i.message_count, i.encrypted) for i in mine] == [
        (p + "a", 2, True),
        (p + "b", 1, True),
    ]
    hits = [(cid, h.seq) for cid, h in store.search("refund") if cid.startswith(p)]
    assert hits == [(p + "a", 0)]
    pruned = store.prune(T0 - timedelta(days=30), on_error=lambda *_: None)
    assert p + "b" in pruned and p + "a" not in pruned
    assert store.delete(p + "a") and p + "a" not in store
    with store.open(p + "a") as codec:  # a deleted conversation starts afresh
        assert codec.load() is None


def test_keys_and_bindings_hold_in_the_database(
    postgres_url: str, request: pytest.FixtureRequest
) -> None:
    p = _prefix(request)
    with ConversationStore(postgres_url, encryption_key=KEY).open(p + "a") as codec:
        codec.append({"role": "user", "content": "secret"})
    with pytest.raises(DecryptionError):
        ConversationStore(postgres_url, encryption_key=generate_key()).open(p + "a")
    with pytest.raises(KeyRequiredError):
        ConversationStore(postgres_url).open(p + "a")
    status = {
        i.conversation_id: i.status for i in ConversationStore(postgres_url).infos()
    }  # listed with its status, not hidden, without the key
    assert status[p + "a"] == "KeyRequiredError"


def test_copy_file_store_to_postgres_and_back_is_identical(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    p = _prefix(request)
    ids = [p + "alice", p + "bob/1", p + "Carol"]
    files = ConversationStore(tmp_path / "a", encryption_key=KEY)
    for k, cid in enumerate(ids):
        with files.open(cid) as codec:
            codec.extend(
                [{"role": "user", "content": f"{cid} {i}", "n": i} for i in range(20 + k)],
                timestamps=[T0 + timedelta(seconds=i // 3) for i in range(20 + k)],
            )
    database = ConversationStore(postgres_url, encryption_key=KEY)
    there = copy_conversations(files, database, ids)
    assert sorted(there.copied) == sorted(ids) and not there.failed
    back = ConversationStore(tmp_path / "b", encryption_key=KEY)
    assert sorted(copy_conversations(database, back, ids).copied) == sorted(ids)
    assert _dump(back, ids) == _dump(database, ids) == _dump(files, ids)
    assert copy_conversations(files, database, ids).unchanged == sorted(ids)  # resumable
    with files.open(p + "big") as codec:  # past the 512 messages that train a dictionary
        codec.extend([{"role": "user", "content": f"turn {i} of a long chat"} for i in range(600)])
    copy_conversations(files, database, [p + "big"])
    copy_conversations(database, back, [p + "big"])
    bodies = []
    for store in (files, database, back):  # the same key: the record bytes moved as they are
        with store.open(p + "big") as codec, codec.storage.transaction(write=False):
            log = codec.storage
            bodies.append([body for _, body in log.read_bodies(0, len(log.index))])
    assert bodies[0] == bodies[1] == bodies[2] and len(bodies[0]) == 600


def test_copy_of_attachment_blobs_to_postgres_puts_them_inline(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Outside review (bad inputs) 3: a database keeps no files beside its logs, so the
    attachments of a file log's blob store arrive restored, in the messages."""
    p = _prefix(request)
    picture = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "QUJD" * 500}}
        ],
    }
    files = ConversationStore(tmp_path / "a", encryption_key=KEY, attachments="external")
    with files.open(p + "u") as codec:
        codec.append(picture)
    database = ConversationStore(postgres_url, encryption_key=KEY)
    assert copy_conversations(files, database, [p + "u"]).copied == [p + "u"]
    with database.open(p + "u") as codec:
        assert codec.load() == [picture]
    back = ConversationStore(tmp_path / "b", encryption_key=KEY)
    assert copy_conversations(database, back, [p + "u"]).copied == [p + "u"]
    assert _dump(back, [p + "u"]) == _dump(files, [p + "u"])


def test_the_command_line_takes_a_url_root(
    postgres_cluster: Cluster,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    command_line: CommandLine,
) -> None:
    def _cli(*args: str, key: str) -> subprocess.CompletedProcess[str]:
        return command_line(*args, env={"PATH": "/usr/bin:/bin", "CONVERSATION_KEY": key})

    postgres_url = postgres_cluster.create_database()  # its own: ls lists every conversation
    p = _prefix(request)
    files = ConversationStore(tmp_path / "a", encryption_key=KEY)
    with files.open(p + "x") as codec:
        codec.append({"role": "user", "content": "the parcel is delayed"})
    copied = _cli("copy", str(tmp_path / "a"), postgres_url, key=KEY)
    assert copied.returncode == 0, copied.stderr
    listed = _cli("ls", postgres_url, "--json", key=KEY)
    assert listed.returncode == 0, listed.stderr
    assert f'"conversation_id": "{p}x"' in listed.stdout.replace('":"', '": "')
    found = _cli("search", postgres_url, "parcel", "--json", key=KEY)
    assert found.returncode == 0 and p + "x" in found.stdout
    checked = _cli("verify", postgres_url, "--json", key=KEY)  # every conversation, read back
    assert checked.returncode == 0, checked.stderr
    assert '"ok": true' in checked.stdout.replace('":true', '": true') and p + "x" in checked.stdout
    password = postgres_url.replace("postgresql://", "postgresql://u:hunter22@").replace(
        "/cc", "/nowhere_cc"
    )  # no such database
    failed = _cli("ls", password, key=KEY)
    assert failed.returncode == 1 and "hunter22" not in failed.stderr + failed.stdout


def _concurrent(url: str, cid: str, writers: int, count: int) -> None:
    procs = [
        _children.Popen(
            [
                sys.executable,
                _store_writers.__file__,
                "append_and_pop",
                url,
                KEY,
                cid,
                f"w{w}",
                str(count),
            ],
            stderr=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with ConversationStore(url, encryption_key=KEY).open(cid) as codec:
        hits = list(codec.search(None))
    assert [h.seq for h in hits] == list(range(writers * count))  # contiguous
    contents = [h.message["content"] for h in hits]
    assert sorted(contents) == sorted(f"w{w} {i}" for w in range(writers) for i in range(count))
    for w in range(writers):  # each writer's order kept
        own = [int(c.split()[1]) for c in contents if c.startswith(f"w{w} ")]
        assert own == list(range(count))
    stamps = [h.timestamp for h in hits]
    assert stamps == sorted(stamps)  # time never goes back along seq


def test_processes_write_one_conversation_through_codecs(
    postgres_url: str, request: pytest.FixtureRequest
) -> None:
    _concurrent(postgres_url, _prefix(request) + "busy", writers=4, count=30)


@pytest.mark.slow
def test_eight_processes_times_250_appends_through_codecs(
    postgres_url: str, request: pytest.FixtureRequest
) -> None:
    _concurrent(postgres_url, _prefix(request) + "busy", writers=8, count=250)


def test_async_store_and_sessions_on_a_url(
    postgres_url: str, request: pytest.FixtureRequest
) -> None:
    import asyncio

    from conversation_codec.aio import AsyncConversationStore
    from conversation_codec.integrations.langchain import CodecChatMessageHistory
    from conversation_codec.integrations.openai_agents import CodecSession

    p = _prefix(request)

    async def run() -> list[object]:
        store = AsyncConversationStore(postgres_url, encryption_key=KEY)
        async with await store.open(p + "a") as codec:
            await codec.append({"role": "user", "content": "hello"})
            await codec.append({"role": "assistant", "content": "hi"})
            return await codec.tail(2)

    assert [m["content"] for m in asyncio.run(run())] == ["hello", "hi"]  # type: ignore[index]
    store = ConversationStore(postgres_url, encryption_key=KEY)
    session = CodecSession(p + "agents", store)
    asyncio.run(session.add_items([{"role": "user", "content": "from an agent"}]))
    assert asyncio.run(session.get_items()) == [{"role": "user", "content": "from an agent"}]
    history = CodecChatMessageHistory(p + "lc", postgres_url, encryption_key=KEY)  # a URL
    history.add_user_message("from LangChain")
    assert [m.content for m in history.messages] == ["from LangChain"]


def test_a_rotation_whose_commit_fails_keeps_the_old_key(
    postgres_cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    """The database commits at the end of the transaction, after the rewrite returned: a
    COMMIT that fails must leave the codec on the old key, which still opens the log."""
    import psycopg

    url = postgres_cluster.create_database()  # its own: the trigger below refuses commits
    store = ConversationStore(url, encryption_key=KEY)
    with store.open("a") as codec:
        codec.extend([{"role": "user", "content": f"m{i}"} for i in range(5)])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE refuse (id text PRIMARY KEY);"
            "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF OLD.header IS DISTINCT FROM NEW.header "  # a rewrite, not an append
            "AND EXISTS (SELECT 1 FROM refuse WHERE id = NEW.id) THEN "
            "RAISE EXCEPTION 'commit refused by the test'; END IF; RETURN NEW; END $$;"
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE ON cc_conversations "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit();"
            "INSERT INTO refuse VALUES ('a');"
        )
    new_key, password = generate_key(), "a new password"
    with store.open("a") as codec:
        with pytest.raises(StorageError, match="refused"):
            codec.rotate_key(new_key)
        assert len(codec.load() or []) == 5  # still the old key: it opens the log
        with pytest.raises(StorageError, match="refused"), codec.transaction():
            codec.rotate_key(new_key)  # the COMMIT comes at the caller's transaction's end
        assert len(codec.load() or []) == 5
        codec.append({"role": "user", "content": "after the failed rotation"})
    with pytest.raises(DecryptionError):
        ConversationStore(url, encryption_key=new_key).open("a")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM refuse")
    protected = ConversationStore(url, password="old password")
    with protected.open("p") as codec:
        codec.append({"role": "user", "content": "x"})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO refuse VALUES ('p')")
    with protected.open("p") as codec:
        with pytest.raises(StorageError, match="refused"):
            codec.change_password("old password", password)
        assert codec.tail(1) == [{"role": "user", "content": "x"}]
    assert [m["content"] for m in store.open("a").load() or []][-1] == "after the failed rotation"


def test_a_database_store_is_listed_without_its_keys(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    """Per-user keys: the lister holds none, yet counts and times come from the rows."""
    url = postgres_cluster.create_database()
    for cid, key in (("alice", KEY), ("bob", generate_key())):
        with ConversationStore(url, encryption_key=key).open(cid) as codec:
            codec.extend(
                [{"role": "user", "content": "x"}] * 3, timestamps=[T0, T0, T0 + timedelta(1)]
            )
    listed = {i.conversation_id: i for i in ConversationStore(url).infos(keyless=True)}
    assert {cid: (i.status, i.message_count) for cid, i in listed.items()} == {
        "alice": ("unverified", 3),
        "bob": ("unverified", 3),
    }
    assert listed["alice"].first_timestamp == T0
    assert listed["alice"].last_timestamp == T0 + timedelta(1)
    assert listed["alice"].encrypted and listed["alice"].disk_bytes > 0
    shown = subprocess.run(
        [sys.executable, "-m", "conversation_codec", "ls", url],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert "alice" in shown.stdout and "bob" in shown.stdout, shown.stderr

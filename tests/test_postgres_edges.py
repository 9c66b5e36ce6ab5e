"""The PostgreSQL store at its edges: server errors, dead connections, ids, hand-edited rows.

Every call of the public API reports a server's refusal as the library's ``DatabaseError``
(never a psycopg exception, never a password); a pooled connection the server ended while
it sat idle is replaced, not reported. Ids follow one rule in every method (README, "On
PostgreSQL"). A row whose header was set to NULL by hand while records remain is damage,
not the deletion marker: reads and writes refuse it and nothing changes.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from _postgres import Cluster
from conversation_codec import ConversationCodec, ConversationStore
from conversation_codec.errors import ConversationCodecError, CorruptRecordError, DatabaseError
from conversation_codec.storage.postgres import PostgresBackend, PostgresLog, PostgresStore

from conftest import KEY

pytestmark = pytest.mark.postgres

PASSWORD = "pw-not-to-show"


def _id() -> str:
    return f"e-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def own_url(postgres_url: str) -> Iterator[str]:
    """The worker's database under a URL of its own: its own shared pool, whose server
    processes are found by ``application_name`` and closed at the end."""
    url = f"{postgres_url}&application_name={_id()}"
    yield url
    PostgresBackend.shared(url).close()


def _terminate(url: str) -> None:
    """End every server process of ``url``'s pool, waiting until they are gone (as
    ``pg_terminate_backend(pid, timeout)``, which polls only every 100 ms)."""
    name = url.rpartition("application_name=")[2]
    with psycopg.connect(url.replace(name, "killer"), autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
        assert ended, "no server process to terminate"
        for (pid,) in ended:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 60
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([p for (p,) in ended],)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the server processes did not end"
            time.sleep(0.005)


def _calls(store: ConversationStore, cid: str) -> dict[str, Callable[[], object]]:
    def open_and_count() -> int:
        with store.open(cid) as codec:
            return len(codec)

    return {
        "open": open_and_count,
        "in": lambda: cid in store,
        "ids": store.ids,
        "infos": lambda: store.infos(keyless=True),
        "delete": lambda: store.delete(cid),
    }


# -- errors ----------------------------------------------------------------------------------


def test_a_role_without_privileges_gets_database_errors_from_every_call(
    postgres_url: str,
) -> None:
    cid, role = _id(), f"weak_{uuid.uuid4().hex[:8]}"
    store = ConversationStore(postgres_url, encryption_key=KEY)
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": "hi"})
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")  # type: ignore[arg-type]
        conn.execute(f"GRANT SELECT ON cc_schema_version TO {role}")  # type: ignore[arg-type]
    weak_url = postgres_url.replace("user=postgres", f"user={role}&password={PASSWORD}")
    weak = ConversationStore(weak_url, encryption_key=KEY)
    try:
        for name, call in _calls(weak, cid).items():
            with pytest.raises(DatabaseError, match="permission denied") as caught:
                call()
            assert PASSWORD not in str(caught.value), name
    finally:
        PostgresBackend.shared(weak_url).close()
    with store.open(cid) as codec:
        assert len(codec) == 1


def test_connections_the_server_ended_while_idle_are_replaced(own_url: str) -> None:
    cid = _id()
    store = ConversationStore(own_url, encryption_key=KEY)
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": "hi"})
    for name, call in _calls(store, cid).items():
        if name == "delete":
            continue
        call()  # the pool's connection came back just now: it is lent without a round trip
        _terminate(own_url)
        try:
            call()
        except ConversationCodecError as exc:  # pragma: no cover  # the failure shown
            pytest.fail(f"{name} after the connection was terminated: {exc!r}")
    store.ids()
    _terminate(own_url)
    assert store.delete(cid) and cid not in store


def test_a_stopped_server_is_a_database_error(
    postgres_cluster: Cluster, postgres_url: str, own_url: str
) -> None:
    PostgresBackend.shared(own_url, timeout=0.3)  # the store's pool: gives up after 0.3 s
    store = ConversationStore(own_url, encryption_key=KEY)
    cid = _id()
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": "hi"})
    store.ids()
    postgres_cluster.stop_server("immediate")
    try:
        for call in (store.ids, lambda: cid in store):
            with pytest.raises(DatabaseError):
                call()
    finally:
        postgres_cluster.start_server()
    # Kept (asked through the worker's shared pool: this one, after failing to connect,
    # waits its back-off, longer than its 0.3 s).
    assert cid in ConversationStore(postgres_url, encryption_key=KEY)


# -- ids ---------------------------------------------------------------------------------------

REFUSED = {
    "nul": "a\0b",
    "1025-chars": "x" * 1025,
    "2049-bytes": "\u20ac" * 683,
    "4-byte-chars": "\U0001f600" * 513,
}
LONGEST = {"1024-chars": "y" * 1024, "2048-bytes": "\U0001f601" * 512}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_id_the_database_cannot_hold_is_refused_alike_by_every_method(
    postgres_url: str, name: str
) -> None:
    cid = REFUSED[name]
    store = ConversationStore(postgres_url, encryption_key=KEY)
    with pytest.raises(ValueError, match="PostgreSQL"):
        store.open(cid)
    assert cid not in store
    assert store.delete(cid) is False
    backend = store.backend
    assert isinstance(backend, PostgresStore)
    with pytest.raises(ValueError, match="PostgreSQL"):
        backend.locate(cid)
    assert not backend.exists(cid) and not backend.has_files(cid)
    assert backend.footprint(cid) == (0, b"")
    with pytest.raises(FileNotFoundError):
        backend.peek(cid)
    assert backend.backend.delete(cid) is False


@pytest.mark.parametrize("name", sorted(LONGEST))
def test_the_longest_ids_are_stored(postgres_url: str, name: str) -> None:
    cid = LONGEST[name]
    store = ConversationStore(postgres_url, encryption_key=KEY)
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": "hi"})
    assert cid in store and cid in store.ids()
    assert store.delete(cid) and cid not in store


# -- a header set to NULL by hand ------------------------------------------------------------


def _state(url: str, cid: str) -> tuple[object, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT * FROM cc_conversations WHERE id = %s", (cid,)).fetchone()
        records = conn.execute(
            "SELECT seq, ts, record FROM cc_records WHERE conversation_id = %s ORDER BY seq",
            (cid,),
        ).fetchall()
    return row, records


@pytest.mark.parametrize("edit", ["header", "header-and-counters"])
def test_a_header_nulled_by_hand_is_damage_not_a_deletion(postgres_url: str, edit: str) -> None:
    cid = _id()
    store = ConversationStore(postgres_url, encryption_key=KEY)
    with store.open(cid) as codec:
        codec.extend([{"role": "user", "content": f"m{i}"} for i in range(5)])
    columns = "header = NULL" + (", next_seq = 0, body_bytes = 0" if "counters" in edit else "")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE cc_conversations SET {columns} WHERE id = %s",  # type: ignore[arg-type]
            (cid,),
        )
    before = _state(postgres_url, cid)
    with store.open(cid) as codec:
        for call in (codec.load, lambda: len(codec), lambda: codec.tail(2)):
            with pytest.raises(CorruptRecordError):
                call()
        with pytest.raises(CorruptRecordError):
            codec.append({"role": "user", "content": "new"})
    with pytest.raises(CorruptRecordError):
        store.delete(cid)
    assert _state(postgres_url, cid) == before


def test_records_put_under_a_deleted_conversation_by_hand_are_not_replaced(
    postgres_url: str,
) -> None:
    cid = _id()
    store = ConversationStore(postgres_url, encryption_key=KEY)
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": "gone"})
    assert store.delete(cid)
    with store.open(cid) as codec:
        assert codec.load() is None  # the deletion marker, seen and cached by this handle
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO cc_records (conversation_id, seq, ts, record) "
                "VALUES (%s, 0, 1, 'kept')",
                (cid,),
            )
        before = _state(postgres_url, cid)
        with pytest.raises(CorruptRecordError):
            codec.append({"role": "user", "content": "new"})
    assert _state(postgres_url, cid) == before


@pytest.mark.parametrize("edit", ["header", "header-and-counters"])
def test_a_handle_that_cached_the_log_reads_a_header_nulled_by_hand_as_damage(
    postgres_url: str, edit: str
) -> None:
    cid = _id()
    store = ConversationStore(postgres_url, encryption_key=KEY)
    with store.open(cid) as cached:
        cached.extend([{"role": "user", "content": f"m{i}"} for i in range(3)])
        assert len(cached.load() or []) == 3 and len(cached.tail(2)) == 2  # the view cached
        columns = "header = NULL" + (", next_seq = 0, body_bytes = 0" if "counters" in edit else "")
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # no generation bump
            conn.execute(
                f"UPDATE cc_conversations SET {columns} WHERE id = %s",  # type: ignore[arg-type]
                (cid,),
            )
        before = _state(postgres_url, cid)
        for _ in range(2):  # every read, not only the first after the edit
            for call in (lambda: cached.tail(2), cached.message_count, cached.load, cached.info):
                with pytest.raises(CorruptRecordError):
                    call()
        with pytest.raises(CorruptRecordError):
            cached.append({"role": "user", "content": "new"})
    assert _state(postgres_url, cid) == before


@pytest.mark.parametrize("edit", ["header", "header-and-counters"])
def test_a_row_damaged_by_hand_is_listed_and_reported(postgres_cluster: Cluster, edit: str) -> None:
    url = postgres_cluster.create_database()  # prune() sees every conversation: its own
    try:
        store = ConversationStore(url, encryption_key=KEY)
        with store.open("c") as codec:
            codec.extend([{"role": "user", "content": f"m{i}"} for i in range(3)])
        columns = "header = NULL" + (", next_seq = 0, body_bytes = 0" if "counters" in edit else "")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"UPDATE cc_conversations SET {columns} WHERE id = 'c'")  # type: ignore[arg-type]
        before = _state(url, "c")
        backend = store.backend
        assert isinstance(backend, PostgresStore)
        assert backend.has_files("c") and backend.exists("c")
        assert "c" in store and store.ids() == ["c"]
        assert [(i.conversation_id, i.status) for i in store.infos()] == [
            ("c", "CorruptRecordError")
        ]
        failed: list[tuple[str, str]] = []
        pruned = store.prune(
            timedelta(0), on_error=lambda c, e: failed.append((c, type(e).__name__))
        )
        assert pruned == [] and failed == [("c", "CorruptRecordError")]
        assert _state(url, "c") == before
    finally:
        PostgresBackend.shared(url).close()


# -- ids stored under the previous rule (1-1024 characters, any size) ---------------------------


def _deleted(url: str, cid: str) -> None:
    """Leave the row of a deleted conversation (``remove_rows``'s marker) under ``cid``: a
    database of the release before the byte limit may hold one under any id of up to 1024
    characters, and the store creates its log there as that release did (the header binds
    the log to its id, so a log cannot be moved to another id by hand)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO cc_conversations (id, epoch, generation) VALUES (%s, 1, 1)", (cid,)
        )


T_OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)


def _cjk(n: int, seed: int) -> str:
    """``n`` CJK characters (3 bytes each in UTF-8) that compress poorly, from a fixed seed."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(n))


def test_a_conversation_stored_under_an_id_over_the_byte_limit_stays_reachable(
    postgres_cluster: Cluster,
) -> None:
    url = postgres_cluster.create_database()  # prune() sees every conversation: its own
    legacy, other = _cjk(700, 1), _cjk(700, 2)  # 2100 bytes each: over 2048, within 1024 chars
    try:
        store = ConversationStore(url, encryption_key=KEY)
        for cid, when in ((legacy, T_OLD), (other, T_OLD + timedelta(seconds=1))):
            _deleted(url, cid)
            with store.open(cid) as codec:
                codec.append({"role": "user", "content": "kept"}, timestamp=when)
        assert legacy in store and store.ids() == sorted([legacy, other])
        assert [(i.message_count, i.status) for i in store.infos()] == [(1, "ok")] * 2
        with store.open(legacy) as codec:
            codec.append({"role": "assistant", "content": "still writable"})
            assert [m["content"] for m in codec.load() or []] == ["kept", "still writable"]
        assert store.delete(legacy) and legacy not in store and store.delete(legacy) is False
        assert store.prune(timedelta(0)) == [other] and store.ids() == []
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM cc_records").fetchone() == (0,)
        with pytest.raises(ValueError, match="PostgreSQL"):  # a new one over the limit: refused
            store.open(_cjk(700, 3))
    finally:
        PostgresBackend.shared(url).close()


def test_a_new_conversation_over_the_byte_limit_is_refused_at_its_first_write(
    postgres_backend: PostgresBackend, postgres_url: str
) -> None:
    cid = _cjk(700, 4)  # a log of the storage layer (no store to refuse it at open)
    codec = ConversationCodec(
        "new",
        storage=lambda attach: PostgresLog(postgres_backend, cid, attach=attach),
        encryption_key=KEY,
        context=cid,
    )
    with codec:
        assert codec.load() is None
        with pytest.raises(ValueError, match=r"new conversation.*PostgreSQL"):
            codec.append({"role": "user", "content": "hi"})
    assert _state(postgres_url, cid) == (None, [])

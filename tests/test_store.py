"""ConversationStore: id encoding, list/search/delete/prune over many real logs."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conversation_codec import (
    BindingError,
    ConversationCodec,
    ConversationCodecError,
    DecryptionError,
    KeyRequiredError,
    StorageError,
)
from conversation_codec.store import (
    MAX_ENCODED_ID,
    ConversationStore,
    decode_id,
    encode_id,
)

from conftest import KEY, OTHER_KEY, T0, Clock, in_threads

ONE_MICROSECOND = timedelta(microseconds=1)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
N_CONV, N_MSG = 50, 100
WORDS = ["refund", "shipping", "latte", "Straße", "invoice"]


def at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def ts_of(c: int, i: int) -> int:
    # Interleaved across conversations (a merge has real work to do); conversation c's
    # last message is at T0 + 99 min + 7c s, so a cutoff splits the store by c.
    return T0 + i * 60_000_000 + c * 7_000_000


def cid_of(c: int) -> str:
    return ["user-", "User/", "../", "ü "][c % 4] + str(c)  # hostile and Unicode ids too


def message(c: int, i: int) -> dict[str, Any]:
    role = ("user", "assistant")[i % 2]
    return {"role": role, "content": f"{WORDS[(c + i) % len(WORDS)]} #{c}.{i}", "n": [c, i]}


def key_for(cid: str) -> str | None:
    """Per-user keys: odd conversations under one key, even under another, a few plaintext."""
    c = int(re.search(r"\d+$", cid).group())  # type: ignore[union-attr]
    return None if c % 10 == 9 else (KEY if c % 2 else OTHER_KEY)


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big") / "store"
    store = ConversationStore(root, key_fn=key_for, durability="flush")
    for c in range(N_CONV):
        with store.open(cid_of(c)) as codec:
            codec.extend(
                [message(c, i) for i in range(N_MSG)],
                timestamps=[at(ts_of(c, i)) for i in range(N_MSG)],
            )
    return root


@pytest.fixture
def big(big_root: Path, tmp_path: Path) -> ConversationStore:
    """A private copy of the 50 x 100 store, for tests that change it."""
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    for p in big_root.iterdir():
        (root / p.name).write_bytes(p.read_bytes())
    return ConversationStore(root, key_fn=key_for, durability="flush")


def brute(pred: Any = lambda c, i, m: True) -> list[tuple[int, str, int]]:
    out = [
        (ts_of(c, i), cid_of(c), i)
        for c in range(N_CONV)
        for i in range(N_MSG)
        if pred(c, i, message(c, i))
    ]
    return sorted(out)


def got(pairs: Iterator[tuple[str, Any]]) -> list[tuple[int, str, int]]:
    return [((h.timestamp - EPOCH) // timedelta(microseconds=1), cid, h.seq) for cid, h in pairs]


# -- ids -> file names -------------------------------------------------------------------

HOSTILE = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b/../../c",
    "..",
    ".",
    ".hidden",
    "a\x00b",
    "\x00",
    "C:\\Windows\\x",
    "con",
    "%41",
    "%",
    "a.log",
    "a.log.idx",
    "a.log.lock",
    "a.log.tmp-0123456789abcdef",
    "Alice",
    "alice",
    "ü",
    "日本語",
    "🙂",
    " ",
    "\n",
    "x" * MAX_ENCODED_ID,
]


@pytest.mark.parametrize("cid", HOSTILE)
def test_hostile_ids_stay_inside_root_and_round_trip(tmp_path: Path, cid: str) -> None:
    root = tmp_path / "root"
    store = ConversationStore(root, encryption_key=KEY, durability="flush")
    path = store.path(cid)
    assert path.parent == root
    assert "/" not in path.name and "\x00" not in path.name and not path.name.startswith(".")
    assert path.name == path.name.lower()  # distinct on case-insensitive file systems too
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": cid})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing escaped
    assert {p.parent for p in root.rglob("*")} == {root}
    assert decode_id(path.name[: -len(".log")]) == cid
    [info] = store.infos()
    assert (info.conversation_id, info.message_count) == (cid, 1)
    with store.open(cid) as codec:
        assert codec.load() == [{"role": "user", "content": cid}]
    assert store.delete(cid) is True
    assert list(root.iterdir()) == []


def test_root_is_created_private_by_the_first_write(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = ConversationStore(root)
    assert store.infos() == [] and not root.exists()  # building and listing create nothing
    with store.open("x") as codec:
        codec.append({"role": "user", "content": "hi"})
    assert (root.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize(
    ("cid", "error"),
    [
        ("", ValueError),
        ("\ud800", ValueError),  # lone surrogate
        (None, TypeError),
        (b"bytes", TypeError),
        (Path("x"), TypeError),
    ],
)
def test_bad_ids_are_refused(tmp_path: Path, cid: Any, error: type[Exception]) -> None:
    store = ConversationStore(tmp_path)
    with pytest.raises(error):
        store.open(cid)
    with pytest.raises(error):
        store.delete(cid)
    assert list(tmp_path.iterdir()) == []


def test_long_id_boundary() -> None:
    assert len(encode_id("x" * MAX_ENCODED_ID)) == MAX_ENCODED_ID
    assert len(encode_id("/" * (MAX_ENCODED_ID // 3))) == MAX_ENCODED_ID // 3 * 3
    # Over the limit (issue 17: any string is an id): a hashed name, never a refusal.
    hashed = encode_id("x" * (MAX_ENCODED_ID + 1))
    assert hashed.startswith("x" * 128 + "~") and len(hashed) == 128 + 1 + 64
    assert encode_id("x" * (MAX_ENCODED_ID + 2)) != hashed
    assert decode_id(hashed) is None  # no canonical encoding holds "~"


@pytest.mark.parametrize(
    "cid",
    [
        "A" * 67,  # 201 encoded bytes
        "日" * 23,  # 207
        "/" * (MAX_ENCODED_ID // 3 + 1),  # a short id with a long encoding
        "x" * 5000,
    ],
)
def test_long_ids_map_to_a_bound_hashed_file(tmp_path: Path, cid: str) -> None:
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    path = store.path(cid)
    assert path.parent == tmp_path and len(path.name) <= MAX_ENCODED_ID + len(".log")
    with store.open(cid) as codec:
        codec.append({"role": "user", "content": "long"})
    with store.open(cid) as codec:
        assert codec.load() == [{"role": "user", "content": "long"}]
    other = cid + "!"  # another long id: another file; its log refuses this one's file
    assert store.path(other) != path
    os.replace(path, store.path(other))
    with pytest.raises(BindingError), store.open(other) as codec:
        codec.load()
    os.replace(store.path(other), path)
    assert store.delete(cid) is True
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("cid", "stem"),
    [
        ("dlg-881444f3-24fc", "dlg-881444f3-24fc"),  # kept characters: the id itself
        ("a..", "a.."),
        ("-_0", "-_0"),
        (".x", "%2ex"),  # a leading dot, a newline, uppercase, non-ASCII: escaped
        ("a\n", "a%0a"),
        ("aB", "a%42"),
        ("a\u00e9", "a%c3%a9"),
    ],
)
def test_ids_encode_to_their_stems(cid: str, stem: str) -> None:
    assert encode_id(cid) == stem
    assert decode_id(stem) == cid


@given(st.text(min_size=1, max_size=16))  # 16 chars x 4 bytes x 3 < 200
def test_encoding_is_reversible_and_safe(cid: str) -> None:
    try:
        stem = encode_id(cid)
    except ValueError:  # lone surrogates only, at this size
        assert any(0xD800 <= ord(ch) <= 0xDFFF for ch in cid)
        return
    assert decode_id(stem) == cid
    assert set(stem) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-%")
    assert not stem.startswith(".")


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_distinct_ids_never_share_a_file_even_case_folded(a: str, b: str) -> None:
    try:
        ea, eb = encode_id(a), encode_id(b)
    except ValueError:
        return
    assert (ea.casefold() == eb.casefold()) == (a == b)


@pytest.mark.parametrize(
    "stem", ["Abc", "%61", ".x", "%2E", "%zz", "%c3", "a/b", "", "%4", "a%", "a\x00"]
)
def test_only_canonical_file_names_decode(stem: str) -> None:
    assert decode_id(stem) is None


def test_foreign_files_are_ignored(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, durability="flush")
    with store.open("real") as codec:
        codec.append({"role": "user", "content": "x"})
    for name in ["notes.txt", "Upper.log", ".hidden.log", "%zz.log", "real.log.bak"]:
        (tmp_path / name).write_text("not ours")
    (tmp_path / "sub.log").mkdir()  # a directory named like a log is skipped by list()
    assert store.ids() == ["real"]
    assert [i.conversation_id for i in store.infos()] == ["real"]


# -- list / search / delete / prune over 50 x 100 ---------------------------------------


def test_list_reports_every_conversation_from_the_index(big: ConversationStore) -> None:
    infos = big.infos()
    assert [i.conversation_id for i in infos] == sorted(cid_of(c) for c in range(N_CONV))
    by_id = {i.conversation_id: i for i in infos}
    for c in range(N_CONV):
        info = by_id[cid_of(c)]
        assert info.message_count == N_MSG
        assert info.first_timestamp == at(ts_of(c, 0))
        assert info.last_timestamp == at(ts_of(c, N_MSG - 1))
        assert info.encrypted == (key_for(cid_of(c)) is not None)
        assert info.disk_bytes > 0
    # Not one message is decrypted: damage a record in the middle of a log and list again.
    victim = big.path(cid_of(3))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert big.infos() == infos
    with big.open(cid_of(3)) as codec, pytest.raises(ConversationCodecError):
        codec.load()


def test_list_needs_each_conversations_key(big_root: Path) -> None:
    """Without its key a conversation is listed with the error, not left out or fatal."""
    keyless = {i.conversation_id: i for i in ConversationStore(big_root).infos()}
    assert len(keyless) == N_CONV
    for c in range(N_CONV):
        info = keyless[cid_of(c)]
        if key_for(cid_of(c)) is None:
            assert (info.status, info.message_count) == ("ok", N_MSG)
        else:
            assert (info.status, info.message_count) == (KeyRequiredError.__name__, 0)
            assert info.encrypted and info.error and "key" in info.error
    wrong = ConversationStore(big_root, key_fn=lambda cid: OTHER_KEY)
    statuses = {i.conversation_id: i.status for i in wrong.infos()}
    for c in range(N_CONV):
        expected = {None: "NotEncryptedError", KEY: "DecryptionError", OTHER_KEY: "ok"}
        assert statuses[cid_of(c)] == expected[key_for(cid_of(c))]


def test_per_user_keys_really_differ(big: ConversationStore) -> None:
    odd, even = cid_of(1), cid_of(2)
    with pytest.raises(DecryptionError):
        ConversationCodec(big.path(odd), encryption_key=OTHER_KEY)
    with pytest.raises(DecryptionError):
        ConversationCodec(big.path(even), encryption_key=KEY)


def test_a_key_list_is_read_once_when_the_store_is_made(tmp_path: Path) -> None:
    """The store keeps the keys it was given: a list the caller changes afterwards (emptied,
    or a key swapped for garbage) changes nothing, and no open fails on it."""
    keys = [OTHER_KEY, KEY]
    store = ConversationStore(tmp_path, encryption_key=keys)
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "sealed under OTHER_KEY"})
    keys[:] = ["not a key"]
    with store.open("a") as codec:
        codec.append({"role": "assistant", "content": "still"})
    keys.clear()
    with store.open("a") as codec:
        assert [m["content"] for m in codec.load() or []] == ["sealed under OTHER_KEY", "still"]
    with pytest.raises(DecryptionError):
        ConversationCodec(store.path("a"), encryption_key=KEY, context="a")
    assert ConversationCodec(store.path("a"), encryption_key=OTHER_KEY, context="a").tail(1)


def test_search_merges_conversations_in_time_order(big: ConversationStore) -> None:
    assert got(big.search("refund")) == brute(lambda c, i, m: "refund" in m["content"])
    everything = brute()
    assert got(big.search()) == everything
    assert got(big.search(newest_first=True)) == everything[::-1]
    assert got(big.search(limit=7)) == everything[:7]
    assert got(big.search(limit=7, newest_first=True)) == everything[::-1][:7]
    assert got(big.search(limit=0)) == []
    # A limit past what islice takes (sys.maxsize) is no limit, as for one conversation's
    # search (it raised a builtin ValueError, on every backend).
    assert got(big.search(limit=2**64)) == everything
    assert got(big.search(limit=2**64, newest_first=True)) == everything[::-1]


def test_search_filters(big: ConversationStore) -> None:
    since, until = ts_of(0, 40), ts_of(0, 45)
    want = brute(lambda c, i, m: since <= ts_of(c, i) < until and m["role"] == "user")
    assert got(big.search(since=at(since), until=at(until), role="user")) == want
    some = [cid_of(5), cid_of(17), "never-written"]
    want = brute(lambda c, i, m: cid_of(c) in some[:2] and "strasse" in m["content"].casefold())
    assert got(big.search("STRASSE", conversation_ids=some)) == want
    want = brute(lambda c, i, m: m["content"].endswith(".7"))
    assert got(big.search(r"\.7$", regex=True, newest_first=True)) == want[::-1]


def test_search_checks_arguments_before_reading(big: ConversationStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        big.search(limit=-1)
    with pytest.raises(ValueError):
        big.search("(", regex=True)
    with pytest.raises(ValueError, match="after"):
        big.search(since=at(T0 + 1), until=at(T0))
    with pytest.raises(ValueError):
        big.search(conversation_ids=[""])
    with pytest.raises(TypeError):
        big.search(role=3)  # type: ignore[arg-type]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize(
    ("since", "until", "hits"),
    [(1e300, None, 0), (None, 1e300, 1), (-1e300, None, 1), (None, -1e300, 0), (10**30, None, 0)],
)
def test_search_takes_times_beyond_what_a_datetime_holds(
    tmp_path: Path, since: float | None, until: float | None, hits: int
) -> None:
    # The store hands each conversation's search a datetime: 1e300 seconds raised a raw
    # OverflowError there, where a single log's search answered.
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "hi"})
    assert len(list(store.search("hi", since=since, until=until))) == hits


def test_search_does_not_hold_a_log_open_per_conversation(big: ConversationStore) -> None:
    before = len(os.listdir("/proc/self/fd"))
    hits = big.search()
    for _ in range(10):
        next(hits)
    assert len(os.listdir("/proc/self/fd")) - before < 10  # not 2 per conversation
    assert len(list(hits)) == N_CONV * N_MSG - 10


@pytest.mark.parametrize("newest_first", [False, True])
def test_search_resumes_across_chunks_with_equal_timestamps(
    tmp_path: Path, newest_first: bool
) -> None:
    store = ConversationStore(tmp_path, durability="flush", clock=lambda: T0)
    with store.open("same") as codec:  # 1000 records, one timestamp: chunk resumes by seq
        codec.extend([{"role": "user", "content": f"m{i}"} for i in range(1000)])
    with store.open("other") as codec:
        codec.extend([{"role": "user", "content": "o"}] * 3, timestamps=[T0 / 1e6] * 3)
    got_pairs = [(cid, h.seq) for cid, h in store.search(newest_first=newest_first)]
    want = [("other", i) for i in range(3)] + [("same", i) for i in range(1000)]
    assert got_pairs == (want[::-1] if newest_first else want)


def test_delete_removes_every_file_and_only_those(big: ConversationStore) -> None:
    root = big.root
    victims = [cid_of(c) for c in range(0, N_CONV, 10)]
    stale = big.path(victims[0]).name + ".tmp-0123456789abcdef"
    (root / stale).write_bytes(b"left by a crash")
    before = set(os.listdir(root))
    for cid in victims:
        assert big.delete(cid) is True
        assert big.delete(cid) is False
    gone = before - set(os.listdir(root))
    names = {big.path(cid).name for cid in victims}
    assert gone == {n + s for n in names for s in ("", ".idx", ".lock")} | {stale}
    assert len(big.infos()) == N_CONV - len(victims)
    assert big.delete("never-existed") is False
    assert not big.path("never-existed").exists()


def test_delete_spares_lookalike_names(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, durability="flush")
    ids = ["a", "a.log", "a.log.idx", "a.log.tmp-0123456789abcdef"]
    for cid in ids:
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": cid})
    assert store.delete("a") is True
    assert store.ids() == sorted(ids[1:])
    for cid in ids[1:]:
        with store.open(cid) as codec:
            assert codec.load() == [{"role": "user", "content": cid}]


def test_prune_deletes_whole_conversations_older_than_a_cutoff(big: ConversationStore) -> None:
    cutoff = at(ts_of(20, N_MSG - 1))  # conversations 0..19 ended before it
    assert sorted(big.prune(older_than=cutoff)) == sorted(cid_of(c) for c in range(20))
    assert sorted(i.conversation_id for i in big.infos()) == sorted(
        cid_of(c) for c in range(20, N_CONV)
    )
    assert big.prune(older_than=cutoff) == []
    with pytest.raises(ValueError, match="naive"):
        big.prune(older_than=datetime(2030, 1, 1))
    with pytest.raises(TypeError):
        big.prune(older_than=5)  # type: ignore[arg-type]


def test_prune_with_a_timedelta_uses_the_store_clock(big_root: Path, tmp_path: Path) -> None:
    clock = Clock(ts_of(30, N_MSG - 1) + 3_600_000_000)  # an hour after conversation 30 ended
    root = tmp_path / "s"
    root.mkdir()
    for p in big_root.iterdir():
        (root / p.name).write_bytes(p.read_bytes())
    store = ConversationStore(root, key_fn=key_for, clock=clock, durability="flush")
    deleted = store.prune(older_than=timedelta(hours=1))
    assert sorted(deleted) == sorted(cid_of(c) for c in range(31))


def test_prune_refuses_a_negative_age_and_takes_a_huge_one_as_nothing_that_old(
    tmp_path: Path,
) -> None:
    # A negative age puts the cutoff in the future: it deleted every conversation, even one
    # written a moment ago. Zero is "older than now" (as the CLI's --older-than 0d).
    store = ConversationStore(tmp_path, encryption_key=KEY, clock=Clock(T0), durability="flush")
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "hi"}, timestamp=at(T0 - 1))
    for age in (timedelta(days=-1), -ONE_MICROSECOND):
        with pytest.raises(ValueError, match="older_than must not be negative"):
            store.prune(older_than=age)
        with pytest.raises(ValueError, match="older_than must not be negative"):
            store.pack(older_than=age)
    for age in (timedelta.max, timedelta(days=800_000)):  # before year 1: nothing is older
        assert store.prune(older_than=age) == []
        assert store.pack(older_than=age).packed == []
    assert store.ids() == ["a"]
    assert store.prune(older_than=timedelta(0)) == ["a"]


@pytest.mark.parametrize("number", [5, 5e8])
def test_prune_and_pack_refuse_a_number_and_say_why(tmp_path: Path, number: float) -> None:
    """A number in ``older_than`` may mean an age or epoch seconds: refused, and said so
    (the README used to list the store's prune among the calls that take epoch seconds)."""
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "hi"}, timestamp=1e9)
    for call in (store.prune, store.pack):
        with pytest.raises(TypeError, match=r"an age or epoch seconds.*fromtimestamp"):
            call(older_than=number)  # type: ignore[operator]
    assert store.ids() == ["a"] and store.path("a").exists()


def test_prune_keeps_a_conversation_written_to_after_listing(tmp_path: Path) -> None:
    """The age is checked again under the writer lock, just before the delete."""
    calls: dict[str, int] = {}

    def key_fn(cid: str) -> str:
        calls[cid] = calls.get(cid, 0) + 1
        if cid == "busy" and calls[cid] == 2:  # prune's second open: the delete
            with ConversationCodec(store.path(cid), encryption_key=KEY, context=cid) as other:
                other.append({"role": "user", "content": "still here"}, timestamp=at(T0 * 2))
        return KEY

    store = ConversationStore(tmp_path, key_fn=key_fn, durability="flush")
    for cid in ("busy", "idle"):
        with store.open(cid) as codec:
            codec.append({"role": "user", "content": "old"}, timestamp=at(T0))
    calls.clear()
    assert store.prune(older_than=at(T0 + 1)) == ["idle"]
    with store.open("busy") as codec:
        assert len(codec) == 2


def test_store_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        ConversationStore(tmp_path, encryption_key=KEY, key_fn=lambda c: KEY)
    with pytest.raises(ValueError, match="durability"):
        ConversationStore(tmp_path, durability="sometimes")
    store = ConversationStore(tmp_path, encryption_key=KEY)
    assert "x" not in store and 3 not in store and "" not in store
    with store.open("x") as codec:
        codec.append({"role": "user", "content": "x"})
    assert "x" in store


def test_a_root_too_long_for_the_file_system_raises_storage_error(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / ("r" * 300), encryption_key=KEY)
    for call in (store.infos, store.ids, lambda: list(store.search("x"))):
        with pytest.raises(StorageError, match="store root") as info:
            call()
        assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(StorageError, match="300-byte directory name"):
        store.open("alice")
    assert list(tmp_path.iterdir()) == []


def append_to(store: ConversationStore, conversation_id: str) -> None:
    with store.open(conversation_id) as codec:
        codec.append({"role": "user", "content": "x"})


def test_a_root_that_is_a_regular_file_raises_storage_error_everywhere(tmp_path: Path) -> None:
    """Defect: pack() and delete() raised a raw NotADirectoryError, past ``except
    ConversationCodecError``; the other calls already raised StorageError."""
    (tmp_path / "f").write_bytes(b"not a directory")
    store = ConversationStore(tmp_path / "f", encryption_key=KEY)
    calls = {
        "ids": store.ids,
        "infos": store.infos,
        "search": lambda: list(store.search("x")),
        "prune": lambda: store.prune(older_than=timedelta(0)),
        "pack": store.pack,
        "delete": lambda: store.delete("a"),
        "append": lambda: append_to(store, "a"),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.errno == errno.ENOTDIR, name
    assert (tmp_path / "f").read_bytes() == b"not a directory"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def empty_transaction(codec: ConversationCodec) -> None:
    with codec.transaction():
        pass


GHOST_WRITES: dict[str, Any] = {
    "pop": lambda c: c.pop(),
    "prune": lambda c: c.prune(before=2e9),
    "save([])": lambda c: c.save([]),
    "compact": lambda c: c.compact(),
    "transaction": empty_transaction,
}


@pytest.mark.parametrize("call", GHOST_WRITES.values(), ids=GHOST_WRITES.keys())
def test_a_write_that_writes_nothing_leaves_no_file(tmp_path: Path, call: Any) -> None:
    """Defect: pop()/prune()/save([])/compact() of a conversation that does not exist left
    ``<id>.log.lock``, and then ``delete()`` said True (it had files)."""
    store = ConversationStore(tmp_path / "root", encryption_key=KEY)
    codec = store.open("nobody")
    call(codec)
    codec.close()
    assert list((tmp_path / "root").iterdir()) == []
    assert store.ids() == [] and "nobody" not in store
    assert store.delete("nobody") is False


# -- one bad log does not break the store (issue 11 §7) -----------------------------------

GOOD = {"alice": ["refund please", "refund sent"], "bob": ["where is my refund"]}
BAD = {
    "notes": "FormatError",  # a foreign file named like a log
    "plain": "NotEncryptedError",  # a plaintext log in an encrypted store
    "other": "DecryptionError",  # a log under another key
    "cut": "FormatError",  # a sealed log truncated inside its header
}


@pytest.fixture
def mixed(tmp_path: Path) -> ConversationStore:
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    for n, (cid, texts) in enumerate(GOOD.items()):
        with store.open(cid) as codec:
            codec.extend(
                [{"role": "user", "content": t} for t in texts],
                timestamps=[at(T0 + n * 1000 + i) for i in range(len(texts))],
            )
    (tmp_path / "notes.log").write_text("my notes: refund\n")
    with ConversationCodec(tmp_path / "plain.log", durability="flush") as codec:
        codec.append({"role": "user", "content": "refund in plaintext"})
    with ConversationCodec(tmp_path / "other.log", OTHER_KEY, durability="flush") as codec:
        codec.append({"role": "user", "content": "refund under another key"})
    (tmp_path / "cut.log").write_bytes(store.path("alice").read_bytes()[:30])
    return store


def test_list_reports_unreadable_logs_and_carries_on(mixed: ConversationStore) -> None:
    listed = {i.conversation_id: i for i in mixed.infos()}
    assert sorted(listed) == sorted([*GOOD, *BAD])
    for cid, texts in GOOD.items():
        assert (listed[cid].status, listed[cid].error) == ("ok", None)
        assert listed[cid].message_count == len(texts)
    for cid, status in BAD.items():
        info = listed[cid]
        assert info.status == status, info
        assert info.error and info.message_count == 0 and info.last_timestamp is None
        files = [mixed.path(cid), Path(f"{mixed.path(cid)}.idx")]
        assert info.disk_bytes == sum(p.stat().st_size for p in files if p.exists())
        assert KEY not in info.error and OTHER_KEY not in info.error
    assert listed["other"].encrypted and not listed["plain"].encrypted


def test_search_skips_unreadable_logs_and_reports_them(mixed: ConversationStore) -> None:
    errors: dict[str, ConversationCodecError] = {}
    hits = [(cid, h.message["content"]) for cid, h in mixed.search("refund")]
    assert hits == [("alice", "refund please"), ("alice", "refund sent"), ("bob", GOOD["bob"][0])]
    again = mixed.search("refund", on_error=lambda cid, exc: errors.setdefault(cid, exc))
    assert [cid for cid, _ in again] == ["alice", "alice", "bob"]
    assert {cid: type(exc).__name__ for cid, exc in errors.items()} == BAD


def test_prune_skips_unreadable_logs_and_reports_them(mixed: ConversationStore) -> None:
    errors: list[str] = []
    deleted = mixed.prune(older_than=at(T0 * 2), on_error=lambda cid, exc: errors.append(cid))
    assert sorted(deleted) == sorted(GOOD) and sorted(errors) == sorted(BAD)
    assert mixed.ids() == sorted(BAD)  # kept, every byte: nothing unreadable is deleted
    assert mixed.prune(older_than=at(T0 * 2)) == []


def test_list_is_a_deprecated_alias_of_infos(tmp_path: Path) -> None:
    """``list()`` shadowed the builtin inside the class; ``infos()`` replaces it (issue 13)."""
    store = ConversationStore(tmp_path, encryption_key=KEY)
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "hi"})
    with pytest.warns(DeprecationWarning, match="infos"):
        assert store.list() == store.infos()


def test_every_codec_option_is_accepted_by_the_store_the_async_api_and_the_sessions() -> None:
    """The options of ConversationCodec are accepted by each way of opening a conversation
    (issue 13: the store, the async API and the sessions used to drop password,
    max_messages and attachments). ``context``, ``storage`` and ``index_cache`` are the
    store's: the conversation id, the backend its root names, and the cache it shares
    among the codecs it opens."""
    import inspect

    from conversation_codec.aio import AsyncConversationCodec, AsyncConversationStore
    from conversation_codec.integrations.langchain import CodecChatMessageHistory
    from conversation_codec.integrations.openai_agents import CodecSession

    def names(fn: object) -> set[str]:
        return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]

    options = names(ConversationCodec.__init__) - {"self", "path"}
    assert {"password", "max_messages", "attachments", "io"} <= options
    for opener, own_context in [
        (ConversationStore.__init__, True),
        (AsyncConversationStore.__init__, True),
        (AsyncConversationCodec.open, False),
        (CodecSession.__init__, True),
        (CodecChatMessageHistory.__init__, True),
    ]:
        owned = {"context", "storage", "index_cache"} if own_context else set()
        missing = options - names(opener) - owned
        assert not missing, f"{opener.__qualname__} lacks {sorted(missing)}"


def test_store_options_reach_every_conversation(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path, password="correct horse", max_messages=2)
    with store.open("a") as codec:
        codec.extend([{"role": "user", "content": str(i)} for i in range(4)])
        assert [m["content"] for m in codec.load() or []] == ["2", "3"]  # max_messages
    with pytest.raises(KeyRequiredError):
        ConversationCodec(store.path("a"), context="a").load()  # password-protected
    with pytest.raises(ValueError, match="not both"):
        ConversationStore(tmp_path, password="p", encryption_key=KEY)


@pytest.mark.parametrize(
    "root", ["ftp://host/agents", "s3://bucket/agents", "sqlite:///agents.db", "HTTPS://x/y"]
)
def test_a_url_root_is_never_taken_as_a_directory(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: a URL used to become a relative directory named ``scheme:``."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="URL"):
        ConversationStore(root)
    assert list(tmp_path.iterdir()) == []


def test_a_url_collapsed_by_path_is_still_a_url(tmp_path: Path) -> None:
    """``Path("ftp://h/x")`` is ``ftp:/h/x``: still refused, not a directory ``ftp:``."""
    with pytest.raises(ValueError, match="URL"):
        ConversationStore(Path("ftp://host/agents"))


_NO_PSYCOPG = """
import importlib.abc, sys

class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("psycopg", "psycopg_pool"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def without_psycopg(tmp_path: Path) -> dict[str, str]:
    """The environment of a core install: ``import psycopg`` fails, as without the extra."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_NO_PSYCOPG)
    env = {k: v for k, v in os.environ.items() if k != "CONVERSATION_KEY"}
    return {**env, "PYTHONPATH": str(tmp_path / "site"), "CONVERSATION_KEY": KEY}


def test_a_postgres_url_without_the_extra_is_backend_unavailable(tmp_path: Path) -> None:
    """Defect: a bare ImportError (a traceback in the CLI) instead of BackendUnavailableError."""
    env = without_psycopg(tmp_path)
    api = subprocess.run(
        [sys.executable, "-c", "import conversation_codec as cc\n"
         "try: cc.ConversationStore('postgresql://u@h/db')\n"
         "except cc.BackendUnavailableError as e: print('unavailable', e)"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert api.stdout.startswith("unavailable") and "conversation-codec[postgres]" in api.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "conversation_codec", "ls", "postgresql://u@h/db"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert (cli.returncode, cli.stdout) == (1, "")  # 1: as any other library error
    assert cli.stderr.count("\n") == 1 and cli.stderr.startswith("error: "), cli.stderr
    assert "pip install 'conversation-codec[postgres]'" in cli.stderr


def test_a_directory_root_keeps_files(tmp_path: Path) -> None:
    from conversation_codec.storage.file.store import FileStore

    store = ConversationStore(tmp_path / "c:d")  # a colon inside a name is no URL
    assert isinstance(store.backend, FileStore) and store.root == tmp_path / "c:d"
    with store.open("a") as codec:
        codec.append({"role": "user", "content": "hi"})
    assert store.ids() == ["a"] and "a" in store and "b" not in store


def test_threads_reopening_conversations_read_their_own_messages(tmp_path: Path) -> None:
    # Codecs in one thread share its dictionary-less zstd context (issue 15); threads
    # never share one, and no codec reads another's messages.
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    ids = [f"c{i}" for i in range(8)]
    for cid in ids:
        with store.open(cid) as codec:
            codec.extend(
                [{"role": "user", "content": f"{cid} says {'hello ' * k}"} for k in range(12)]
            )

    def reader(offset: int) -> None:
        for r in range(40):
            cid = ids[(offset + r) % len(ids)]
            with store.open(cid) as codec:
                got = codec.tail(5)
            assert got == [
                {"role": "user", "content": f"{cid} says {'hello ' * k}"} for k in range(7, 12)
            ]

    assert in_threads(reader, 4) == []


@pytest.mark.parametrize("first", [True, False], ids=["first-open", "later-open"])
def test_a_directory_at_a_conversations_path_is_a_storage_error(
    tmp_path: Path, first: bool
) -> None:
    # The store checks its root's path once; each log's own path is refused by the open.
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    if not first:
        with store.open("bob") as codec:
            codec.append({"role": "user", "content": "hi"})
    store.path("alice").mkdir()
    with pytest.raises(StorageError, match="is a directory") as info:
        store.open("alice")
    assert info.value.errno == errno.EISDIR
    assert store.path("alice").is_dir()


def test_a_store_wrapper_does_not_vouch_for_another_path(tmp_path: Path) -> None:
    # locate() checks the path it hands out; given with any other path, its wrapper leaves
    # the codec's own check in place (a name too long for the rewrite's temp file).
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    _, wrapper = store.backend.locate("x")  # type: ignore[attr-defined]
    with pytest.raises(StorageError) as info:
        ConversationCodec(tmp_path / ("y" * 240 + ".log"), encryption_key=KEY, storage=wrapper)
    assert info.value.errno == errno.ENAMETOOLONG
    assert list(tmp_path.iterdir()) == []


def test_a_reopen_and_tail_looks_up_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path lookups are what a reopen pays most for in a store of thousands of files (issue
    # 15): the log is opened once, by the probe, with no lstat before (O_NOFOLLOW refuses
    # links), and under the lock an lstat checks that its path still names that file; the
    # lock file once plus the check that its path still names it, the index once. Counted
    # on the real system calls, through os.
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    with store.open("alice") as codec:
        codec.extend([{"role": "user", "content": f"hello {i}"} for i in range(12)])
    looked: list[tuple[str, str]] = []
    real_open, real_lstat, real_stat = os.open, os.lstat, os.stat

    def spy(call: str, real: Any) -> Any:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, os.PathLike)) and str(tmp_path) in str(path):
                looked.append((call, os.path.basename(path).rsplit(".", 1)[-1]))
            return real(path, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "open", spy("open", real_open))
    monkeypatch.setattr(os, "lstat", spy("lstat", real_lstat))
    monkeypatch.setattr(os, "stat", spy("stat", real_stat))
    with store.open("alice") as codec:
        got = codec.tail(20)
    monkeypatch.undo()
    assert got == [{"role": "user", "content": f"hello {i}"} for i in range(12)]
    assert sorted(looked) == [
        ("lstat", "lock"),
        ("lstat", "log"),
        ("open", "idx"),
        ("open", "lock"),
        ("open", "log"),
    ]


def test_a_reader_of_a_lock_file_without_its_log_reads_nothing_and_creates_nothing(
    tmp_path: Path,
) -> None:
    # A reader now opens an existing lock file without looking for the log first; with
    # the log gone by hand (or a clear() cut short before its last step), it reads an
    # empty history, and neither recreates the log nor leaves any other file.
    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    with store.open("alice") as codec:
        codec.append({"role": "user", "content": "hi"})
    path = store.path("alice")
    path.unlink()
    Path(f"{path}.idx").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert before == [f"{path.name}.lock"]
    with store.open("alice") as codec:
        assert codec.load() is None  # no history
        assert len(codec) == 0
    with ConversationCodec(path, encryption_key=KEY) as codec:
        assert codec.tail(3) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_store_conversation_names_its_path_as_the_store_does(tmp_path: Path) -> None:
    # locate() hands the codec a str (no Path per open); the codec's path is still the
    # store's Path for the id, in errors too.
    store = ConversationStore(tmp_path / "root", encryption_key=KEY, durability="flush")
    with store.open("Alice/../x") as codec:
        codec.extend([{"role": "user", "content": f"hi {i}"} for i in range(3)])
        assert isinstance(codec.path, Path)
        assert codec.path == store.path("Alice/../x")
        assert codec.path.parent == tmp_path / "root"
    with store.open("Alice/../x") as codec:
        assert codec.path == store.path("Alice/../x")
    with open(store.path("Alice/../x"), "r+b") as f:  # damage a record before the last
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 150)
        f.write(b"\x00" * 5)
    with store.open("Alice/../x") as codec, pytest.raises(ConversationCodecError) as info:
        codec.load()
    assert str(store.path("Alice/../x")) in str(info.value)


def test_a_store_rooted_at_the_working_directory_names_its_logs_bare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # locate() joins strings; "." joined would name every log "./x.log" in errors and
    # reprs, where the Path it replaced says "x.log".
    monkeypatch.chdir(tmp_path)
    store = ConversationStore(".", encryption_key=KEY, durability="flush")
    with store.open("alice") as codec:
        codec.append({"role": "user", "content": "hi"})
        assert repr(codec).startswith("<ConversationCodec 'alice.log'")
        assert codec.path == Path("alice.log")

"""AsyncConversationCodec / AsyncConversationStore: same results, and the loop never blocks."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conversation_codec import ConversationCodec, Hit
from conversation_codec.aio import AsyncConversationCodec, AsyncConversationStore
from conversation_codec.store import ConversationStore

from conftest import KEY, OTHER_KEY, T0, Clock, messages

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
HOLD = 1.0  # seconds another process holds the writer lock
TICK = 0.05  # seconds between ticks of the loop-liveness probe

# Another process takes the exclusive flock on <log>.lock (FORMAT.md §8.1), says so, holds it.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
print("releasing", flush=True)
"""


def at(i: int) -> datetime:
    return EPOCH + timedelta(microseconds=T0 + i * 1_000_000)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock")
def test_loop_stays_responsive_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"

    async def main() -> tuple[int, float, list[dict[str, Any]] | None]:
        codec = await AsyncConversationCodec.open(path, KEY, durability="flush")
        await codec.append({"role": "user", "content": "first"})  # the lock file now exists
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLDER,
            str(path) + ".lock",
            str(HOLD),
            stdout=asyncio.subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(TICK)
                ticks += 1

        task = asyncio.create_task(ticker())
        start = time.monotonic()
        await codec.append({"role": "user", "content": "second"})  # waits for the lock
        waited = time.monotonic() - start
        assert await holder.stdout.readline() == b"releasing\n"  # it was released first
        stop.set()
        await task
        await holder.wait()
        loaded = await codec.load()
        await codec.close()
        return ticks, waited, loaded

    ticks, waited, loaded = run(main())
    assert waited >= HOLD * 0.7  # the append really waited for the other process
    assert ticks >= 15  # ...while the loop kept running (20 ticks fit in 1 s)
    assert loaded == [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]


def test_every_method_matches_the_sync_codec(tmp_path: Path) -> None:
    path = tmp_path / "chat.log"
    msgs = messages(12)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with await AsyncConversationCodec.open(path, KEY, clock=Clock()) as codec:
            out["empty"] = (await codec.load(), await codec.message_count(), await codec.pop())
            out["append"] = await codec.append(msgs[0], timestamp=at(0))
            out["extend"] = await codec.extend(
                iter(msgs[1:8]), timestamps=[at(i) for i in range(1, 8)]
            )
            await codec.save(msgs[:10])
            out["get"] = (await codec.get(3), await codec.get(-1))
            out["tail"] = await codec.tail(2)
            out["ts"] = await codec.timestamp(2)
            out["between"] = await codec.between(at(2), at(4))
            out["search"] = [h async for h in codec.search("order", newest_first=True, limit=2)]
            out["pop"] = await codec.pop()
            out["count"] = await codec.message_count()
            out["iter"] = [m async for m in codec]
            out["info"] = (await codec.info()).message_count
            out["compact"] = (await codec.compact()).messages
            out["rotate"] = (await codec.rotate_key(OTHER_KEY)).messages
            assert codec.encrypted and codec.path == path and "chat.log" in repr(codec)
            out["after_rotate"] = await codec.load()
            await codec.clear()
            out["cleared"] = await codec.load()
        return out

    out = run(main())
    assert out["empty"] == (None, 0, None)
    assert out["append"] == 0 and out["extend"] == list(range(1, 8))
    assert out["get"] == (msgs[3], msgs[9])
    assert out["tail"] == msgs[8:10]
    assert out["ts"] == at(2)
    assert [h.seq for h in out["between"]] == [2, 3]
    with ConversationCodec(tmp_path / "ref.log") as ref:
        ref.extend(msgs[:10], timestamps=[at(i) for i in range(10)])
        want = ref.search("order", newest_first=True, limit=2)
        assert [(h.seq, h.message) for h in out["search"]] == [(h.seq, h.message) for h in want]
        assert all(isinstance(h, Hit) for h in out["search"])
    assert out["pop"] == msgs[9] and out["count"] == 9
    assert out["iter"] == msgs[:9] == out["after_rotate"]
    assert out["info"] == out["compact"] == out["rotate"] == 9
    assert out["cleared"] is None and not path.exists()


def test_blocking_work_runs_off_the_loop_thread(tmp_path: Path) -> None:
    threads: set[int] = set()

    def redact(message: dict[str, Any]) -> dict[str, Any]:
        threads.add(threading.get_ident())
        return message

    async def main() -> int:
        loop_thread = threading.get_ident()
        codec = await AsyncConversationCodec.open(tmp_path / "c.log", redact_fn=redact)
        await codec.append({"role": "user", "content": "x"})
        await codec.extend([{"role": "user", "content": "y"}])
        await codec.load()  # a divergent save() rewrites a history read in full (issue 11)
        await codec.save([{"role": "user", "content": "z"}])
        await codec.close()
        return loop_thread

    loop_thread = run(main())
    assert threads and loop_thread not in threads


def test_a_given_executor_is_used(tmp_path: Path) -> None:
    names: list[str] = []

    def redact(message: dict[str, Any]) -> dict[str, Any]:
        names.append(threading.current_thread().name)
        return message

    async def main() -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="codec-io") as pool:
            codec = await AsyncConversationCodec.open(
                tmp_path / "c.log", redact_fn=redact, executor=pool
            )
            await codec.append({"role": "user", "content": "x"})
            await codec.close()

    run(main())
    assert names and all(n.startswith("codec-io") for n in names)


def test_async_iteration_streams_in_batches(tmp_path: Path) -> None:
    msgs = messages(700)  # more than two batches
    with ConversationCodec(tmp_path / "c.log", durability="flush") as sync:
        sync.extend(msgs)

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        codec = AsyncConversationCodec(ConversationCodec(tmp_path / "c.log"))
        everything = [m async for m in codec]
        first: list[Any] = []
        async for m in codec:  # leaving early closes the stream
            first.append(m)
            if len(first) == 3:
                break
        hits = [h.seq async for h in codec.search(role="user")]
        await codec.close()
        return everything, first, hits

    everything, first, hits = run(main())
    assert everything == msgs and first == msgs[:3]
    assert hits == [i for i, m in enumerate(msgs) if m["role"] == "user"]


def test_search_arguments_are_checked_at_the_call(tmp_path: Path) -> None:
    async def main() -> None:
        codec = await AsyncConversationCodec.open(tmp_path / "c.log")
        with pytest.raises(ValueError):
            codec.search("(", regex=True)
        await codec.close()

    run(main())


def test_async_store(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> dict[str, Any]:
        store = AsyncConversationStore(
            tmp_path / "s", key_fn=lambda cid: KEY, durability="flush", clock=clock
        )
        for c in range(5):
            async with await store.open(f"../user {c}") as codec:
                await codec.extend(
                    [{"role": "user", "content": f"refund {c}.{i}"} for i in range(3)],
                    timestamps=[at(10 * c + i) for i in range(3)],
                )
        out: dict[str, Any] = {"ids": await store.ids(), "list": await store.infos()}
        out["search"] = [(cid, h.seq) async for cid, h in store.search("refund", limit=4)]
        out["newest"] = [(cid, h.seq) async for cid, h in store.search(newest_first=True, limit=2)]
        with pytest.raises(ValueError, match="limit"):
            [x async for x in store.search(limit=-1)]
        out["delete"] = (await store.delete("../user 0"), await store.delete("../user 0"))
        out["prune"] = await store.prune(older_than=at(21))
        out["left"] = await store.ids()
        wrapped = AsyncConversationStore.wrap(ConversationStore(tmp_path / "s", encryption_key=KEY))
        out["wrapped"] = [i.conversation_id for i in await wrapped.infos()]
        assert wrapped.root == store.root == tmp_path / "s" and wrapped.sync.root == store.root
        return out

    out = run(main())
    ids = [f"../user {c}" for c in range(5)]
    assert out["ids"] == ids and [i.message_count for i in out["list"]] == [3] * 5
    assert out["search"] == [(ids[0], 0), (ids[0], 1), (ids[0], 2), (ids[1], 0)]
    assert out["newest"] == [(ids[4], 2), (ids[4], 1)]
    assert out["delete"] == (True, False)
    assert out["prune"] == [ids[1]]  # user 2's last message is at 22: not older than 21
    assert out["left"] == out["wrapped"] == ids[2:]


# Sync methods with no async twin, and why: a transaction holds the writer lock across
# calls on one thread, while the async wrapper runs each call in a worker thread.
# transaction(): a lock held across awaits would block other threads' writers; and
# copy_records_to(other): plumbing of maintenance.copy, between two blocking codecs.
SYNC_ONLY = {"transaction", "copy_records_to"}


@pytest.mark.parametrize(
    ("sync", "async_"),
    [(ConversationCodec, AsyncConversationCodec), (ConversationStore, AsyncConversationStore)],
    ids=["codec", "store"],
)
def test_the_async_api_has_every_public_method_of_the_sync_one(sync: type, async_: type) -> None:
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    missing = public(sync) - public(async_) - SYNC_ONLY
    assert not missing, f"{async_.__name__} lacks {sorted(missing)}"


@pytest.mark.parametrize(
    ("sync", "async_"),
    [(ConversationCodec, AsyncConversationCodec), (ConversationStore, AsyncConversationStore)],
    ids=["codec", "store"],
)
def test_every_async_method_takes_the_sync_ones_parameters(sync: type, async_: type) -> None:
    import inspect

    for name in dir(sync):
        if name.startswith("_") or name in SYNC_ONLY or not callable(getattr(sync, name)):
            continue
        want = set(inspect.signature(getattr(sync, name)).parameters)
        have = set(inspect.signature(getattr(async_, name)).parameters)
        assert want <= have, f"{async_.__name__}.{name} lacks {sorted(want - have)}"


def test_async_progress_is_reported_on_the_event_loop(tmp_path: Path) -> None:
    """A progress callback runs on the loop's thread (it may touch asyncio objects), once
    per step the sync method reports, in order, before the call returns."""

    async def run() -> dict[str, list[tuple[int, int]]]:
        loop_thread = threading.get_ident()
        seen: dict[str, list[tuple[int, int]]] = {}

        def recorder(name: str) -> Any:
            def progress(done: int, total: int) -> None:
                assert threading.get_ident() == loop_thread, f"{name} off the loop"
                seen.setdefault(name, []).append((done, total))

            return progress

        path = tmp_path / "a.log"
        async with await AsyncConversationCodec.open(path, encryption_key=KEY) as codec:
            await codec.extend(messages(5))
            await codec.export(tmp_path / "out.jsonl", progress=recorder("export"))
            await codec.reindex(progress=recorder("reindex"))
            await codec.compact(progress=recorder("compact"))
        return seen

    seen = asyncio.run(run())
    for name in ("export", "reindex", "compact"):
        assert seen[name], name
        assert seen[name][-1][0] == seen[name][-1][1] == 5, (name, seen[name])
        assert [d for d, _ in seen[name]] == sorted(d for d, _ in seen[name]), name


def test_the_added_async_methods_work(tmp_path: Path) -> None:
    async def run() -> None:
        path = tmp_path / "a.log"
        async with await AsyncConversationCodec.open(path, encryption_key=KEY) as codec:
            await codec.replace(
                [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]
            )
            assert (await codec.verify()).ok
            assert len(await codec.to_openai_messages("be brief")) == 3
            assert await codec.export(tmp_path / "out.jsonl") == 2
            assert await codec.prune(datetime(2000, 1, 1, tzinfo=timezone.utc)) == 0
            assert codec.options.durability == "fsync"

    asyncio.run(run())


def test_wait_lets_the_loop_run_while_it_polls(tmp_path: Path) -> None:
    async def run() -> tuple[bool, bool, list[str]]:
        codec = await AsyncConversationCodec.open(tmp_path / "c.log", encryption_key=KEY)
        ticks: list[str] = []

        async def write_later() -> None:
            ticks.append("loop ran")  # the wait below did not block the event loop
            await asyncio.sleep(0.1)
            await codec.append({"role": "user", "content": "hi"})

        early = await codec.wait(-1, timeout=0.02)
        task = asyncio.create_task(write_later())
        seen = await codec.wait(-1, timeout=30)
        await task
        await codec.close()
        return early, seen, ticks

    assert asyncio.run(run()) == (False, True, ["loop ran"])


@pytest.mark.parametrize(
    ("after", "timeout", "error"),
    [
        (None, None, TypeError),
        ("0", None, TypeError),
        (0, "1", TypeError),
        (0, float("nan"), ValueError),
    ],
    ids=["after-None", "after-str", "timeout-str", "timeout-nan"],
)
def test_async_wait_checks_its_arguments_as_the_sync_one(
    tmp_path: Path, after: object, timeout: object, error: type[Exception]
) -> None:
    async def main() -> None:
        codec = await AsyncConversationCodec.open(tmp_path / "c.log", encryption_key=KEY)
        async with codec:
            await codec.append({"role": "user", "content": "hi"})
            with pytest.raises(error, match=r"after must be an int|timeout must be a number"):
                await codec.wait(after, timeout)  # type: ignore[arg-type]

    asyncio.run(main())


def test_a_stream_cancelled_while_a_worker_reads_a_batch_is_cancelled() -> None:
    """Cancelled while a worker thread is inside the blocking iterator, the task ends with
    CancelledError (it raised ValueError, "generator already executing", from closing the
    iterator on the loop: review); the iterator is closed once the batch is done."""
    from conversation_codec.aio_threads import stream_in_threads

    inside, release, closed = threading.Event(), threading.Event(), threading.Event()

    def slow() -> Any:
        try:
            inside.set()
            release.wait(10)
            yield from range(1000)
        finally:
            closed.set()

    async def consume() -> None:
        async for _ in stream_in_threads(None, slow()):
            pass

    async def main() -> None:
        task = asyncio.ensure_future(consume())
        while not inside.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and not closed.is_set()
        release.set()
        for _ in range(2000):
            if closed.is_set():
                break
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert closed.is_set()

"""Session options of both adapters (issue 17): keys checked at construction, password,
max_messages, max_age, in-memory mode, repr, settings, final close, long ids, cancellation."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conversation_codec import (
    ClosedError,
    ConversationStore,
    DecryptionError,
    InvalidKeyError,
    KeyTypeError,
)
from conversation_codec.integrations import SessionClosedError
from test_integrations import require

from conftest import KEY, Clock

HOUR = 3_600_000_000  # microseconds


@pytest.fixture
def agents() -> ModuleType:
    return require("agents")


@pytest.fixture
def lc() -> ModuleType:
    return require("langchain_core")


def items(*texts: str) -> list[Any]:
    return [{"role": "user", "content": t} for t in texts]


def test_keys_and_passwords_are_checked_at_construction(
    agents: ModuleType, lc: ModuleType, tmp_path: Path
) -> None:
    from conversation_codec.integrations.langchain import CodecChatMessageHistory
    from conversation_codec.integrations.openai_agents import CodecSession

    for make in (CodecSession, CodecChatMessageHistory):
        with pytest.raises(InvalidKeyError) as caught:
            make("s", tmp_path, encryption_key="my passphrase")
        assert "my passphrase" not in str(caught.value)
        with pytest.raises(InvalidKeyError):
            make("s", tmp_path, password="")
        with pytest.raises(KeyTypeError):
            make("s", tmp_path, password=b"bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not both"):
            make("s", tmp_path, password="pw", encryption_key=KEY)
        with pytest.raises(ValueError, match="directory"):
            make("s", ConversationStore(tmp_path), password="pw")
        with pytest.raises(ValueError):
            make("s", tmp_path, max_messages=0)
        with pytest.raises(ValueError):
            make("s", tmp_path, max_age=3600)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_password_sessions_are_sealed(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    async def main() -> None:
        session = CodecSession("s", tmp_path, password="correct horse", durability="flush")
        await session.add_items(items("secret plans"))
        assert await session.get_items() == items("secret plans")
        session.close()
        assert b"secret plans" not in ConversationStore(tmp_path).path("s").read_bytes()
        wrong = CodecSession("s", tmp_path, password="wrong horse")
        with pytest.raises(DecryptionError):
            await wrong.get_items()

    asyncio.run(main())


def test_max_messages_hides_and_prune_deletes(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    async def main() -> None:
        options: dict[str, Any] = {"durability": "flush", "clock": Clock()}
        session = CodecSession("s", tmp_path, max_messages=3, **options)
        for text in "abcde":  # one batch each: five record times
            await session.add_items(items(text))
        assert await session.get_items() == items("c", "d", "e")
        assert await session.get_items(limit=2) == items("d", "e")
        session.session_settings = {"limit": 10}  # type: ignore[assignment]  # a dict too
        assert await session.get_items() == items("c", "d", "e")
        assert await session.pop_item() == items("e")[0]
        assert await session.get_items() == items("b", "c", "d")
        assert await session.prune() == 1
        everything = CodecSession("s", tmp_path, **options)
        assert await everything.get_items() == items("b", "c", "d")  # "a" is gone from disk

    asyncio.run(main())


def test_max_age_hides_and_prune_deletes(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    clock = Clock()
    path = ConversationStore(tmp_path).path("s")

    async def main() -> None:
        session = CodecSession(
            "s", tmp_path, max_age=timedelta(hours=2), clock=clock, durability="flush"
        )
        await session.add_items(items("old one", "old two"))
        clock.now += HOUR
        await session.add_items(items("new"))
        assert await session.get_items() == items("old one", "old two", "new")
        clock.now += HOUR  # the old ones are now 2 h + a few ms old
        assert await session.get_items() == items("new")
        assert await session.get_items(limit=5) == items("new")
        assert await session.get_items(limit=0) == []
        assert b"old one" in path.read_bytes()  # hidden, still stored
        assert await session.prune() == 2
        assert b"old one" not in path.read_bytes()  # deleted from the file
        clock.now += 3 * HOUR
        assert await session.get_items() == []
        assert await session.pop_item() is None  # a hidden item is not popped
        assert await CodecSession("s", tmp_path).get_items() == items("new")

    asyncio.run(main())


def test_history_options(lc: ModuleType, tmp_path: Path) -> None:
    from langchain_core.messages import HumanMessage

    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    clock = Clock()
    history = CodecChatMessageHistory(
        "h", tmp_path, max_messages=2, max_age=timedelta(hours=1), clock=clock, durability="flush"
    )
    history.add_messages([HumanMessage("a")])
    clock.now += 2 * HOUR
    history.add_messages([HumanMessage("b"), HumanMessage("c"), HumanMessage("d")])
    assert [m.content for m in history.messages] == ["c", "d"]
    assert [m.content for m in asyncio.run(history.aget_messages())] == ["c", "d"]
    assert history.prune() == 1  # "a" by age; b, c, d share one record time
    assert "'h'" in repr(history) and "max_messages=2" in repr(history)
    history.close()
    with pytest.raises(SessionClosedError):
        history.add_messages([HumanMessage("e")])
    memory = CodecChatMessageHistory.in_memory()
    memory.add_messages([HumanMessage("x")])
    assert [m.content for m in memory.messages] == ["x"]
    memory.close()


def test_in_memory_session_is_private_and_removed_on_close(
    agents: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts its folder

    async def main() -> None:
        session = CodecSession.in_memory("t", session_settings={"limit": 2})
        [scratch] = tmp_path.iterdir()
        assert (scratch.stat().st_mode & 0o777) == 0o700
        await session.add_items(items("a", "b", "c"))
        assert await session.get_items() == items("b", "c")
        assert "in memory" in repr(session) and "limit=2" in repr(session)
        assert all(b'"a"' not in p.read_bytes() for p in scratch.iterdir())  # sealed
        other = CodecSession.in_memory("t")  # each in-memory session is its own
        assert await other.get_items() == []
        other.close()
        session.close()
        assert list(tmp_path.iterdir()) == []  # close() removed the folder
        with pytest.raises(SessionClosedError):
            await session.get_items()

    asyncio.run(main())


def test_repr_is_readable_and_never_shows_the_key(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    session = CodecSession(
        "user-1",
        tmp_path,
        encryption_key=KEY,
        session_settings={"limit": 20},
        max_messages=100,
        max_age=timedelta(days=30),
    )
    text = repr(session)
    assert text.startswith("<CodecSession 'user-1' root=")
    assert str(tmp_path) in text and "limit=20" in text and "max_messages=100" in text
    assert "max_age=30 days" in text and KEY not in text and KEY[:8] not in text
    session.close()
    assert "closed" in repr(session)


def test_settings_are_normalized_like_the_sdks(agents: ModuleType, tmp_path: Path) -> None:
    from agents.memory import SessionSettings

    from conversation_codec.integrations.openai_agents import CodecSession

    session = CodecSession("s", tmp_path, session_settings={"limit": 20})
    assert session.session_settings == SessionSettings(limit=20)
    with pytest.raises(TypeError, match="limitt"):
        CodecSession("s", tmp_path, session_settings={"limitt": 1})
    with pytest.raises(TypeError):
        CodecSession("s", tmp_path, session_settings=[("limit", 1)])  # type: ignore[arg-type]


def test_close_is_final(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    async def main() -> None:
        session = CodecSession("s", tmp_path, durability="flush")
        await session.add_items(items("a"))
        session.close()
        session.close()  # twice is fine
        calls = [
            session.get_items(),
            session.add_items(items("b")),
            session.add_items([]),
            session.pop_item(),
            session.clear_session(),
            session.prune(),
        ]
        for call in calls:
            with pytest.raises(SessionClosedError, match="CodecSession is closed") as caught:
                await call
            assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, ClosedError)
        assert await CodecSession("s", tmp_path).get_items() == items("a")  # nothing changed

    asyncio.run(main())


@pytest.mark.parametrize("session_id", ["A" * 67, "日" * 23, "ünïcode/" * 40])
def test_any_string_is_a_session_id(agents: ModuleType, tmp_path: Path, session_id: str) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    async def main() -> None:
        session = CodecSession(session_id, tmp_path, encryption_key=KEY, durability="flush")
        await session.add_items(items("kept"))
        session.close()
        again = CodecSession(session_id, tmp_path, encryption_key=KEY)
        assert await again.get_items() == items("kept")
        assert await CodecSession(session_id[:-1], tmp_path, encryption_key=KEY).get_items() == []

    asyncio.run(main())


def test_a_cancelled_add_items_settles_before_raising(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    entered, released = threading.Event(), threading.Event()

    def slow(message: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        released.wait(10)
        return message

    store = ConversationStore(tmp_path, redact_fn=slow, durability="flush")

    async def main() -> None:
        session = CodecSession("s", store)
        task = asyncio.ensure_future(session.add_items(items("landed")))
        await asyncio.to_thread(entered.wait, 10)  # the write is running in its thread
        task.cancel()
        threading.Timer(0.2, released.set).start()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert released.is_set()  # CancelledError came only after the write could finish
        assert await session.get_items() == items("landed")  # and it had committed

    asyncio.run(main())

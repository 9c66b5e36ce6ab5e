"""The openai-agents Session protocol, as the SDK's own sessions behave, checked against
``CodecSession`` and, as a control that keeps these tests honest, the SDK's ``SQLiteSession``
(the same assertions must hold for both): settings normalization, ``limit`` semantics,
ordering, ``pop_item``/``clear_session``, concurrent and cancelled ``add_items``, and a real
``Runner`` driving ``run``, ``run_sync`` and ``run_streamed`` with a scripted model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from test_integrations import require

from conftest import KEY

Factory = Callable[..., Any]


@pytest.fixture
def agents() -> ModuleType:
    return require("agents")


@pytest.fixture(params=["CodecSession", "SQLiteSession"])
def make_session(agents: ModuleType, tmp_path: Path, request: Any) -> Iterator[Factory]:
    """``make_session(session_id, **options)``: sessions that share one backing store."""
    from agents.memory import SQLiteSession

    from conversation_codec.integrations.openai_agents import CodecSession

    opened: list[Any] = []

    def make(session_id: str = "conv", **options: Any) -> Any:
        if request.param == "SQLiteSession":
            session = SQLiteSession(session_id, tmp_path / "sessions.db", **options)
        else:
            session = CodecSession(
                session_id, tmp_path, encryption_key=KEY, durability="flush", **options
            )
        opened.append(session)
        return session

    yield make
    for session in reversed(opened):
        session.close()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call_items(n: int) -> list[Any]:
    """A tool exchange as the Runner stores it: a call, its output, the answer."""
    return [
        {
            "type": "function_call",
            "call_id": f"call_{n}",
            "name": "lookup",
            "arguments": json.dumps({"n": n, "deep": {"list": [1, None, 2.5]}}),
        },
        {"type": "function_call_output", "call_id": f"call_{n}", "output": "ünïcode ✓"},
        {
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": f"answer {n}", "annotations": []}],
        },
    ]


# -- the protocol ----------------------------------------------------------------------------


def test_settings_are_normalized(agents: ModuleType, make_session: Factory) -> None:
    from agents.memory import Session, SessionSettings

    async def main() -> None:
        plain = make_session("plain")
        assert isinstance(plain, Session)
        assert plain.session_settings == SessionSettings()
        limited = make_session("dict", session_settings={"limit": 2})
        assert isinstance(limited.session_settings, SessionSettings)
        assert limited.session_settings.limit == 2
        typed = make_session("typed", session_settings=SessionSettings(limit=1))
        assert typed.session_settings == SessionSettings(limit=1)
        await limited.add_items([user(t) for t in "abc"])
        assert await limited.get_items() == [user("b"), user("c")]
        with pytest.raises(TypeError, match="limitt"):
            make_session("typo", session_settings={"limitt": 1})

    asyncio.run(main())


def test_limit_semantics(agents: ModuleType, make_session: Factory) -> None:
    from agents.memory import SessionSettings

    async def main() -> None:
        session = make_session()
        assert await session.get_items() == [] and await session.get_items(limit=3) == []
        stored = [user(f"m{i}") for i in range(5)]
        await session.add_items(stored)
        assert await session.get_items() == stored
        assert await session.get_items(limit=None) == stored
        assert await session.get_items(limit=0) == []
        assert await session.get_items(limit=1) == stored[-1:]
        assert await session.get_items(limit=3) == stored[-3:]  # the newest, oldest first
        assert await session.get_items(limit=5) == stored
        assert await session.get_items(limit=50) == stored
        session.session_settings = SessionSettings(limit=2)
        assert await session.get_items() == stored[-2:]  # the settings' limit by default
        assert await session.get_items(limit=4) == stored[-4:]  # an explicit one wins
        assert await session.get_items(limit=0) == []

    asyncio.run(main())


def test_order_is_kept_across_batches_sessions_and_shapes(
    agents: ModuleType, make_session: Factory
) -> None:
    async def main() -> None:
        first = make_session()
        expected: list[Any] = []
        for n in range(4):
            batch = [user(f"q{n}"), *call_items(n)]
            await first.add_items(batch)
            expected += batch
        await first.add_items([])  # a no-op
        assert await first.get_items() == expected
        second = make_session()  # the same id: the same history
        assert await second.get_items() == expected
        await second.add_items([user("from the second")])
        assert (await first.get_items())[-1] == user("from the second")
        assert await make_session("other id").get_items() == []

    asyncio.run(main())


def test_pop_item_and_clear_session(agents: ModuleType, make_session: Factory) -> None:
    async def main() -> None:
        session, neighbour = make_session(), make_session("neighbour")
        assert await session.pop_item() is None
        stored = [user("a"), *call_items(1)]
        await session.add_items(stored)
        await neighbour.add_items([user("stays")])
        assert await session.pop_item() == stored[-1]
        assert await session.get_items() == stored[:-1]
        assert await session.pop_item() == stored[-2]
        await session.add_items([user("b")])
        assert await session.get_items() == [*stored[:2], user("b")]
        await session.clear_session()
        assert await session.get_items() == [] and await session.pop_item() is None
        await session.clear_session()  # clearing an empty session is fine
        await session.add_items([user("again")])
        assert await session.get_items() == [user("again")]
        assert await neighbour.get_items() == [user("stays")]

    asyncio.run(main())


def test_concurrent_add_items_keep_every_batch_whole(
    agents: ModuleType, make_session: Factory
) -> None:
    async def main() -> list[Any]:
        sessions = [make_session() for _ in range(3)]
        await asyncio.gather(
            *(
                s.add_items([user(f"{n}.{k}.{i}") for i in range(4)])
                for n, s in enumerate(sessions)
                for k in range(3)
            )
        )
        return list(await sessions[0].get_items())

    got = [item["content"] for item in asyncio.run(main())]
    assert len(got) == 3 * 3 * 4 and len(set(got)) == len(got)
    for start in range(0, len(got), 4):  # batches land whole, never interleaved
        prefix = got[start].rsplit(".", 1)[0]
        assert got[start : start + 4] == [f"{prefix}.{i}" for i in range(4)]


def test_a_cancelled_add_items_is_settled_when_it_raises(
    agents: ModuleType, make_session: Factory
) -> None:
    async def main() -> None:
        session = make_session()
        task = asyncio.ensure_future(session.add_items([user("a"), user("b")]))
        await asyncio.sleep(0)  # the write has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await session.get_items() == [user("a"), user("b")]  # settled: committed

    asyncio.run(main())


# -- a Runner with a scripted model ----------------------------------------------------------


def scripted_model() -> Any:
    """A Model that answers from a script (a tool call, then texts), in both the plain and
    the streamed protocol, and records the input of every call."""
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        Response,
        ResponseCompletedEvent,
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    def text(n: int, words: str) -> Any:
        return ResponseOutputMessage(
            id=f"msg_{n}",
            type="message",
            role="assistant",
            status="completed",
            content=[ResponseOutputText(type="output_text", text=words, annotations=[])],
        )

    class Scripted(Model):
        def __init__(self) -> None:
            self.inputs: list[Any] = []
            self.script = [
                ResponseFunctionToolCall(
                    type="function_call",
                    call_id="call_weather",
                    name="weather",
                    arguments='{"city": "Oslo"}',
                    id="fc_1",
                    status="completed",
                ),
                text(1, "Rain in Oslo."),
            ] + [text(n, f"Turn {n}.") for n in range(2, 10)]

        def _next(self, input: Any) -> Any:
            self.inputs.append(json.loads(json.dumps(input)))
            return self.script.pop(0)

        async def get_response(
            self, system_instructions: Any, input: Any, *a: Any, **k: Any
        ) -> Any:  # type: ignore[override]
            return ModelResponse(output=[self._next(input)], usage=Usage(), response_id=None)

        async def stream_response(  # type: ignore[override]
            self, system_instructions: Any, input: Any, *a: Any, **k: Any
        ) -> AsyncIterator[Any]:
            response = Response(
                id=f"resp_{len(self.inputs)}",
                created_at=0.0,
                model="scripted",
                object="response",
                output=[self._next(input)],
                parallel_tool_calls=False,
                tool_choice="auto",
                tools=[],
            )
            yield ResponseCompletedEvent(
                type="response.completed", response=response, sequence_number=0
            )

    return Scripted()


def kinds(items: list[Any]) -> list[str]:
    return [str(i.get("type", i.get("role"))) for i in items]


def test_runner_run_run_sync_and_run_streamed(agents: ModuleType, make_session: Factory) -> None:
    from agents import Agent, RunConfig, Runner, function_tool

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"rain in {city}"

    model = scripted_model()
    agent = Agent(name="helper", instructions="Help.", model=model, tools=[weather])
    config = RunConfig(tracing_disabled=True)
    session = make_session("runner")

    async def run() -> Any:
        return await Runner.run(agent, "Weather in Oslo?", session=session, run_config=config)

    first = asyncio.run(run())
    assert first.final_output == "Rain in Oslo."
    turn_one = ["user", "function_call", "function_call_output", "message"]
    assert kinds(asyncio.run(session.get_items())) == turn_one

    # run_sync drives the thread's default loop and leaves it open on purpose: give it one
    # of ours, and close it after.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        second = Runner.run_sync(agent, "And tomorrow?", session=session, run_config=config)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)
    assert second.final_output == "Turn 2."
    assert kinds(model.inputs[-1]) == [*turn_one, "user"]  # the model saw the history

    async def streamed() -> Any:
        result = Runner.run_streamed(agent, "Thanks!", session=session, run_config=config)
        async for _ in result.stream_events():
            pass
        return result

    third = asyncio.run(streamed())
    assert third.final_output == "Turn 3."
    items = asyncio.run(session.get_items())
    assert kinds(items) == [*turn_one, "user", "message", "user", "message"]
    assert model.inputs[-1] == items[:-1]  # each turn was sent exactly what was stored
    assert items[-2] == {"content": "Thanks!", "role": "user"}
    again = make_session("runner")  # another session on the id reads the same history
    assert asyncio.run(again.get_items()) == items


def test_an_in_memory_session_runs_a_runner(agents: ModuleType) -> None:
    from agents import Agent, RunConfig, Runner, function_tool

    from conversation_codec.integrations.openai_agents import CodecSession

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"rain in {city}"

    agent = Agent(name="helper", model=scripted_model(), tools=[weather])
    session = CodecSession.in_memory(session_settings={"limit": 3})

    async def main() -> list[Any]:
        await Runner.run(
            agent, "Weather?", session=session, run_config=RunConfig(tracing_disabled=True)
        )
        return await session.get_items()

    assert kinds(asyncio.run(main())) == ["function_call", "function_call_output", "message"]
    session.close()


@pytest.mark.parametrize("items", [None, 5, "a string", {"role": "user"}], ids=repr)
def test_add_items_refuses_what_is_not_a_list_of_items(
    agents: ModuleType, tmp_path: Path, items: Any
) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    session = CodecSession("conv", tmp_path, encryption_key=KEY, durability="flush")
    with pytest.raises(TypeError, match="items must be a list of items"):
        asyncio.run(session.add_items(items))
    assert asyncio.run(session.get_items()) == []
    session.close()


def test_bad_options_fail_at_construction(agents: ModuleType, tmp_path: Path) -> None:
    """Defect: a negative settings limit and a bad ``attachments=`` were accepted and only
    failed at the first read or write; ``password=`` beside a store named the wrong cause."""
    from agents.memory import SessionSettings

    from conversation_codec import ConversationStore
    from conversation_codec.integrations.openai_agents import CodecSession

    for settings in ({"limit": -1}, SessionSettings(limit=-1)):
        with pytest.raises(ValueError, match="limit must be >= 0"):
            CodecSession("s", tmp_path, encryption_key=KEY, session_settings=settings)
    with pytest.raises(ValueError, match="attachments must be"):
        CodecSession("s", tmp_path, encryption_key=KEY, attachments="bad")
    with pytest.raises(ValueError, match="attachments must be"):
        ConversationStore(tmp_path, encryption_key=KEY, attachments="bad")
    store = ConversationStore(tmp_path / "pw", password="p")
    with pytest.raises(ValueError, match=r"ConversationStore\(root, password="):
        CodecSession("s", store, password="p")
    assert list(tmp_path.iterdir()) == []

"""The openai-agents Session and the LangChain chat history, against the real packages.

CI installs the extras and sets CI=true, so there a missing package fails the run; on a
developer machine without an extra its tests are skipped.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conversation_codec import ConversationCodec, CorruptRecordError, NotSerializableError
from conversation_codec.aio import AsyncConversationStore
from conversation_codec.format.header import SEALED_HEADER_BYTES
from conversation_codec.maintenance.migrate import migrate
from conversation_codec.store import ConversationStore

from conftest import KEY, OTHER_KEY, Clock


def require(module: str) -> ModuleType:
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def damage_first_record(path: Path) -> None:
    """Flip a byte inside record 0 of a sealed log (record 0 must be a large one)."""
    data = bytearray(path.read_bytes())
    data[SEALED_HEADER_BYTES + 500] ^= 0x01
    path.write_bytes(bytes(data))


BIG = secrets.token_hex(4000)  # incompressible: record 0 spans thousands of bytes


# -- openai-agents ---------------------------------------------------------------------


@pytest.fixture
def agents() -> ModuleType:
    return require("agents")


def _stub_model(agents: ModuleType) -> Any:
    """A Model that replays fixed responses and records what it was sent (no network)."""
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    def say(text: str, n: int) -> Any:
        part = ResponseOutputText(type="output_text", text=text, annotations=[])
        return ResponseOutputMessage(
            id=f"msg_{n}", type="message", role="assistant", status="completed", content=[part]
        )

    call = ResponseFunctionToolCall(
        type="function_call",
        call_id="call_1",
        name="lookup_order",
        arguments='{"order_id": 7}',
        id="fc_1",
        status="completed",
    )

    class StubModel(Model):
        def __init__(self) -> None:
            self.outputs = [call, say("Order 7 shipped.", 1), say("You asked about order 7.", 2)]
            self.inputs: list[Any] = []

        async def get_response(  # type: ignore[override]
            self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
        ) -> Any:
            self.inputs.append(json.loads(json.dumps(input)))
            return ModelResponse(output=[self.outputs.pop(0)], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    return StubModel()


def test_codec_session_is_a_session(agents: ModuleType, tmp_path: Path) -> None:
    from agents.memory import Session, SessionSettings

    from conversation_codec.integrations.openai_agents import CodecSession

    session = CodecSession("user-1", tmp_path)
    assert isinstance(session, Session)
    assert session.session_id == "user-1"
    assert isinstance(session.session_settings, SessionSettings)
    assert "user-1" in repr(session)


def test_two_runner_turns_share_history(agents: ModuleType, tmp_path: Path) -> None:
    from agents import Agent, RunConfig, Runner, function_tool

    from conversation_codec.integrations.openai_agents import CodecSession

    @function_tool
    def lookup_order(order_id: int) -> str:
        """Look up an order by id."""
        return json.dumps({"status": "shipped", "id": order_id})

    model = _stub_model(agents)
    agent = Agent(name="support", instructions="Help.", model=model, tools=[lookup_order])
    store = ConversationStore(tmp_path, key_fn=lambda user: KEY, durability="flush")
    config = RunConfig(tracing_disabled=True)

    async def main() -> tuple[Any, Any, list[Any]]:
        session = CodecSession("../user 1", store)
        first = await Runner.run(agent, "Where is order 7?", session=session, run_config=config)
        second = await Runner.run(agent, "What did I ask?", session=session, run_config=config)
        session.close()
        again = CodecSession("../user 1", store)  # a new process would see the same
        return first, second, await again.get_items()

    first, second, stored = asyncio.run(main())
    assert first.final_output == "Order 7 shipped."
    assert second.final_output == "You asked about order 7."
    turn_one = model.inputs[1] + [model.inputs[2][3]]  # user, call, output + the answer
    assert [i.get("type", i.get("role")) for i in turn_one] == [
        "user",
        "function_call",
        "function_call_output",
        "message",
    ]
    assert model.inputs[2] == [*turn_one, {"content": "What did I ask?", "role": "user"}]
    assert stored == model.inputs[2] + [
        json.loads(json.dumps(second.new_items[-1].raw_item.model_dump(exclude_unset=True)))
    ]
    # A store's log is bound to its conversation id (FORMAT.md §4.2): open it with that id.
    with ConversationCodec(store.path("../user 1"), encryption_key=KEY, context="../user 1") as c:
        assert c.load() == stored  # one record per item, stored encrypted
    assert b"order 7" not in store.path("../user 1").read_bytes()


def test_session_item_operations(agents: ModuleType, tmp_path: Path) -> None:
    from agents.memory import SessionSettings

    from conversation_codec.integrations.openai_agents import CodecSession

    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    items.append({"type": "function_call_output", "call_id": "c", "output": None})

    async def main() -> None:
        session = CodecSession("s", tmp_path, encryption_key=KEY, durability="flush")
        assert await session.get_items() == [] and await session.pop_item() is None
        await session.add_items([])
        await session.add_items(items)  # type: ignore[arg-type]
        assert await session.get_items() == items
        assert await session.get_items(limit=2) == items[-2:]
        assert await session.get_items(limit=0) == []
        assert await session.get_items(limit=100) == items
        with pytest.raises(ValueError):
            await session.get_items(limit=-1)
        session.session_settings = SessionSettings(limit=3)
        assert await session.get_items() == items[-3:]
        assert await session.get_items(limit=1) == items[-1:]
        assert await session.pop_item() == items[-1]
        session.session_settings = None
        assert await session.get_items() == items[:-1]
        with pytest.raises(NotSerializableError):
            await session.add_items([{"role": "user", "content": ("a", "tuple")}])  # type: ignore[list-item]
        await session.clear_session()
        assert list(tmp_path.iterdir()) == []  # every file of the session is gone
        assert await session.get_items() == []
        await session.add_items(items[:1])  # type: ignore[arg-type]
        assert await session.get_items() == items[:1]
        limited = CodecSession(
            "s", tmp_path, encryption_key=KEY, session_settings=SessionSettings(limit=1)
        )
        assert await limited.get_items() == items[:1]

    asyncio.run(main())


def test_pop_item_and_limited_reads_touch_only_the_tail(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    items = [{"role": "user", "content": BIG}] + [
        {"role": "user", "content": f"m{i}"} for i in range(200)
    ]

    async def main() -> None:
        session = CodecSession("long", AsyncConversationStore.wrap(store))
        await session.add_items(items)  # type: ignore[arg-type]
        session.close()  # final: a new session reads the damaged file
        damage_first_record(store.path("long"))
        session = CodecSession("long", AsyncConversationStore.wrap(store))
        assert await session.get_items(limit=3) == items[-3:]  # record 0 is never read
        for i in range(199, 189, -1):
            assert await session.pop_item() == items[i + 1]
        with pytest.raises(CorruptRecordError):
            await session.get_items()  # the damage is real

    asyncio.run(main())


def test_session_arguments(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    store = ConversationStore(tmp_path)
    with pytest.raises(ValueError, match="encryption_key"):
        CodecSession("s", store, encryption_key=KEY)
    with pytest.raises(TypeError):
        CodecSession("s", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CodecSession("", store)
    CodecSession("x" * 500, tmp_path)  # any string is an id (issue 17): a hashed file name


def test_concurrent_sessions_on_one_id_lose_nothing(agents: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.openai_agents import CodecSession

    async def main() -> list[Any]:
        sessions = [CodecSession("shared", tmp_path, durability="flush") for _ in range(4)]
        await asyncio.gather(
            *(
                s.add_items([{"role": "user", "content": f"{n}.{i}"} for i in range(5)])  # type: ignore[misc]
                for n, s in enumerate(sessions)
                for _ in range(3)
            )
        )
        return await sessions[0].get_items()

    items = asyncio.run(main())
    assert len(items) == 4 * 3 * 5
    for n in range(4):  # each batch stays whole and in order
        mine = [i["content"] for i in items if i["content"].startswith(f"{n}.")]
        assert mine == [f"{n}.{i}" for i in range(5)] * 3


# -- LangChain -------------------------------------------------------------------------


@pytest.fixture
def lc() -> ModuleType:
    return require("langchain_core")


def _zoo() -> list[Any]:
    """One of every LangChain message shape, with the fields that are easy to lose."""
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )

    return [
        SystemMessage("Be brief.", additional_kwargs={"__openai_role__": "developer"}),
        HumanMessage("Where is my refund?", id="h1", name="alice"),
        HumanMessage(
            [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
        ),
        AIMessage(
            "",
            id="a1",
            tool_calls=[
                {"name": "lookup", "args": {"order": 7, "deep": {"x": [1, None]}}, "id": "c1"}
            ],
            invalid_tool_calls=[{"name": "bad", "args": "{not json", "id": "c2", "error": "parse"}],
            additional_kwargs={"refusal": None, "function_call": None, "extra": [1.5, True]},
            response_metadata={"model_name": "m", "finish_reason": "tool_calls"},
            usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        ),
        ToolMessage("shipped", tool_call_id="c1", artifact={"rows": [1, 2]}, status="error"),
        FunctionMessage("42", name="legacy_fn"),
        ChatMessage("custom role", role="critic"),
        AIMessageChunk("partial", id="chunk-1"),
        AIMessage("Your refund is on its way. ünïcode ✓"),
    ]


def test_messages_round_trip_losslessly(lc: ModuleType, tmp_path: Path) -> None:
    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    zoo = _zoo()
    history = CodecChatMessageHistory("c", tmp_path, encryption_key=KEY)
    history.add_messages(zoo)
    history.close()
    again = CodecChatMessageHistory("c", tmp_path, encryption_key=KEY).messages
    assert again == zoo
    assert [type(m) for m in again] == [type(m) for m in zoo]
    assert again[3].additional_kwargs == {
        "refusal": None,
        "function_call": None,
        "extra": [1.5, True],
    }


def test_records_are_searchable_with_role_and_content_on_top(
    lc: ModuleType, tmp_path: Path
) -> None:
    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    store = ConversationStore(tmp_path, durability="flush")
    CodecChatMessageHistory("c", store).add_messages(_zoo())
    with store.open("c") as codec:
        roles = [m["role"] for m in codec.load() or []]
    assert roles == [
        "system",
        "user",
        "user",
        "assistant",
        "tool",
        "function",
        "critic",
        "assistant",
        "assistant",
    ]
    hits = [(cid, h.seq) for cid, h in store.search("refund")]
    assert hits == [("c", 1), ("c", 8)]
    assert [h.seq for _, h in store.search("refund", role="user")] == [1]


def test_add_messages_is_one_batch(lc: ModuleType, tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    store = ConversationStore(tmp_path, clock=Clock(), durability="flush")
    history = CodecChatMessageHistory("c", store)
    history.add_messages([HumanMessage("a"), AIMessage("b"), HumanMessage("c")])
    history.add_messages([])
    history.add_user_message("d")  # the base class's helpers go through add_messages
    history.add_ai_message("e")
    with store.open("c") as codec:
        stamps = [codec.timestamp(i) for i in range(len(codec))]
    assert len(stamps) == 5
    assert stamps[0] == stamps[1] == stamps[2] < stamps[3] < stamps[4]  # one clock read per batch
    assert [m.content for m in history.messages] == ["a", "b", "c", "d", "e"]
    assert "Human: a" in str(history)
    history.clear()
    assert list(tmp_path.iterdir()) == []
    assert history.messages == []


def test_async_variants_run_off_the_loop(lc: ModuleType, tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    threads: set[int] = set()

    def redact(message: dict[str, Any]) -> dict[str, Any]:
        threads.add(threading.get_ident())
        return message

    store = ConversationStore(tmp_path, redact_fn=redact, durability="flush")

    async def main() -> tuple[int, list[Any], list[Any]]:
        history = CodecChatMessageHistory("c", store)
        await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
        await history.aadd_messages([])
        got = await history.aget_messages()
        await history.aclear()
        return threading.get_ident(), got, await history.aget_messages()

    loop_thread, got, after = asyncio.run(main())
    assert [m.content for m in got] == ["hi", "hello"] and after == []
    assert threads and loop_thread not in threads


def test_reads_langchain_histories_converted_by_migrate(lc: ModuleType, tmp_path: Path) -> None:
    from langchain_core.messages import (
        AIMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        messages_to_dict,
    )

    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    original = [
        SystemMessage("be nice"),
        HumanMessage("hi", id="h1"),
        AIMessage(
            "",
            id="a1",
            tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c1"}],
            response_metadata={"model_name": "m"},
            usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        ),
        ToolMessage("res", tool_call_id="c1", artifact={"k": 1}),
        AIMessage("done", additional_kwargs={"refusal": "no"}),
    ]
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(messages_to_dict(original)))
    store = ConversationStore(tmp_path / "store", encryption_key=OTHER_KEY)
    migrate(legacy, store.path("old"), encryption_key=OTHER_KEY)
    history = CodecChatMessageHistory("old", store)
    assert history.messages == original
    history.add_messages([HumanMessage("and now?")])  # the adapter's own records follow
    assert history.messages == [*original, HumanMessage("and now?")]


@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
def test_runnable_with_message_history(lc: ModuleType, tmp_path: Path) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
    from langchain_core.runnables.history import RunnableWithMessageHistory

    from conversation_codec.integrations.langchain import CodecChatMessageHistory

    store = ConversationStore(tmp_path, encryption_key=KEY, durability="flush")
    prompt = ChatPromptTemplate.from_messages(
        [("system", "sys"), MessagesPlaceholder("history"), ("human", "{input}")]
    )
    seen: list[int] = []

    def model_input(value: Any) -> Any:
        seen.append(len(value.to_messages()))
        return value

    chain = RunnableWithMessageHistory(
        prompt | model_input | FakeListChatModel(responses=["one", "two"]),
        lambda session_id: CodecChatMessageHistory(session_id, store),
        input_messages_key="input",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "user/1"}}
    assert chain.invoke({"input": "first"}, config).content == "one"
    assert chain.invoke({"input": "second"}, config).content == "two"
    assert seen == [2, 4]  # the second call saw the first exchange
    texts = [m.content for m in CodecChatMessageHistory("user/1", store).messages]
    assert texts == ["first", "one", "second", "two"]


def test_history_arguments(lc: ModuleType, tmp_path: Path) -> None:
    from langchain_core.messages import HumanMessage

    from conversation_codec.integrations.langchain import (
        CodecChatMessageHistory,
        message_from_record,
    )

    with pytest.raises(ValueError, match="key_fn"):
        CodecChatMessageHistory("c", ConversationStore(tmp_path), key_fn=lambda c: KEY)
    with pytest.raises(ValueError):
        CodecChatMessageHistory("", tmp_path)
    with pytest.raises(ValueError):
        message_from_record({"content": "no role or type"})
    assert message_from_record({"role": "user", "content": None}) == HumanMessage("")


SECRET = "078-05-1120"  # stands for any decrypted content: it must appear in no error


@pytest.mark.parametrize(
    "record",
    [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": SECRET},
        {"content": SECRET},  # neither a role nor a LangChain type
        {"role": SECRET, "content": SECRET},  # a role LangChain does not know
        {"role": "tool", "content": SECRET},  # a tool message without its tool_call_id
        {"type": "human", "content": {"x": SECRET}},  # a LangChain type, a bad field
    ],
    ids=["agents-item", "no-role", "unknown-role", "tool-without-id", "bad-field"],
)
def test_a_record_langchain_cannot_read_raises_a_library_error_without_its_content(
    lc: ModuleType, agents: ModuleType, tmp_path: Path, record: dict[str, Any]
) -> None:
    # Found by review: LangChain's own ValueError held the whole decrypted message, e.g. an
    # item the openai-agents session wrote under the same id.
    from conversation_codec import ConversationCodecError
    from conversation_codec.errors import ConversionError
    from conversation_codec.integrations.langchain import (
        CodecChatMessageHistory,
        message_from_record,
    )
    from conversation_codec.integrations.openai_agents import CodecSession

    session = CodecSession("u42", tmp_path, encryption_key=KEY)
    asyncio.run(session.add_items([record]))  # type: ignore[list-item]
    session.close()
    history = CodecChatMessageHistory("u42", tmp_path, encryption_key=KEY)
    failures: list[BaseException] = []
    for read in (
        lambda: history.messages,
        lambda: asyncio.run(history.aget_messages()),
        lambda: message_from_record(record),
    ):
        with pytest.raises(ConversionError) as info:
            read()
        failures.append(info.value)
    history.close()
    for error in failures:
        assert isinstance(error, ConversationCodecError) and isinstance(error, ValueError)
        chain: BaseException | None = error
        while chain is not None:  # nothing we raise carries it, nor anything chained to it
            assert SECRET not in str(chain) and SECRET not in repr(chain)
            chain = chain.__cause__ or chain.__context__
    # The openai-agents session reads the same items as stored: no conversion, no error.
    session = CodecSession("u42", tmp_path, encryption_key=KEY)
    assert asyncio.run(session.get_items()) == [record]
    session.close()


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [("openai_agents", "agents", "openai-agents"), ("langchain", "langchain_core", "langchain")],
)
def test_an_integration_without_its_extra_names_the_pip_install(
    module: str, missing: str, extra: str
) -> None:
    """Defect: a bare ``No module named 'agents'``; as the postgres and regex extras, say
    what to install. Run in a process whose import of the SDK fails, as in a core install."""
    code = (
        "import importlib.abc, sys\n"
        "class Missing(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] == {missing!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Missing())\n"
        "try:\n"
        f"    import conversation_codec.integrations.{module}\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith(f"{missing} ")
    assert f'pip install "conversation-codec[{extra}]"' in done.stdout

"""Tests for what ``migrate`` takes for a history, and how a batch reruns.

What a file must hold to be migrated (an object that looks like a chat message), which
folders a batch walks, the order and times of a conversation whose clocks were skewed, the
per-message checks a dry run makes, a file name that names no conversation, and a batch
killed after a commit and run again. Every fixture is a real file; kills are real
processes killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import _children
from conversation_codec import ConversationCodec, NotAHistoryError
from conversation_codec.errors import (
    FormatError,
    NotSerializableError,
    RecordTooLargeError,
    StorageError,
)
from conversation_codec.format.record import MAX_MESSAGE_BYTES
from conversation_codec.maintenance.migrate import migrate, migrate_many
from conversation_codec.store import ConversationStore

from conftest import CommandLine

KEY = "Qa3EwCEJr-ZK8_Wj1Z7pHqHDe7Ubwf2PY1M1hF_zqLk="  # tests only
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SRC = str(Path(__file__).resolve().parents[1] / "src")
CHILD_ENV = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
)
TIMEOUT = 120.0  # seconds for a child process


def us(text: str) -> int:
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(
        microseconds=1
    )


def jsonl(messages: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(m) + "\n" for m in messages).encode()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def load(path: Path, key: str | None = KEY) -> list[dict[str, Any]]:
    with ConversationCodec(path, encryption_key=key) as codec:
        return codec.load() or []


def times(path: Path, key: str | None = KEY) -> list[int]:
    with ConversationCodec(path, encryption_key=key) as codec:
        return [
            (codec.timestamp(i) - EPOCH) // timedelta(microseconds=1) for i in range(len(codec))
        ]


HI = {"role": "user", "content": "hi"}


# --- defect 4: what is a history ------------------------------------------------------------

NOT_HISTORIES = {  # what an app keeps beside its histories, as json.dump writes it
    "settings.json": b'{"model": "gpt-4o", "temperature": 0.2}',
    "sessions.json": b'{"ana": "histories/ana.jsonl"}\n',
    "list.json": b'[{"id": 1, "name": "ana"}, {"id": 2, "name": "bob"}]',
    "events.jsonl": b'{"event": "open"}\n{"event": "close"}\n',
}


@pytest.mark.parametrize("name", NOT_HISTORIES)
def test_a_file_of_objects_that_are_no_messages_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(NOT_HISTORIES[name])
    before = snapshot(tmp_path)
    for dry_run in (True, False):
        with pytest.raises(NotAHistoryError, match=r"not a history: no object in .* has a role"):
            migrate(path, encryption_key=KEY, dry_run=dry_run)
    assert snapshot(tmp_path) == before


def test_a_batch_skips_what_is_not_a_history_and_converts_the_rest(tmp_path: Path) -> None:
    for name, raw in NOT_HISTORIES.items():
        (tmp_path / name).write_bytes(raw)
    (tmp_path / "ana.jsonl").write_bytes(jsonl([HI]))
    (tmp_path / "mixed.jsonl").write_bytes(b'{"session": 7}\n' + jsonl([HI]))  # one is enough
    batch = migrate_many([tmp_path], encryption_key=KEY)
    status = {i.path.name: (i.status, i.reason) for i in batch.items}
    assert status["ana.jsonl"][0] == status["mixed.jsonl"][0] == "converted"
    for name in NOT_HISTORIES:
        assert status[name][0] == "skipped" and status[name][1].startswith("not a history: ")
        assert (tmp_path / name).read_bytes() == NOT_HISTORIES[name]
        assert not (tmp_path / f"{name}.bak").exists()
    assert batch.ok
    assert load(tmp_path / "mixed.jsonl") == [{"session": 7}, HI]


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "indented"])
def test_a_messages_wrapper_is_refused_never_stored_as_one_message(
    tmp_path: Path, indent: int | None
) -> None:
    path = tmp_path / "bob.json"
    path.write_text(
        json.dumps({"messages": [HI, {"role": "assistant", "content": "yo"}]}, indent=indent)
    )
    before = snapshot(tmp_path)
    with pytest.raises(FormatError, match='one JSON object holding a "messages" list'):
        migrate(path, encryption_key=KEY)
    log = tmp_path / "t.log"
    with (
        ConversationCodec(log, encryption_key=KEY) as codec,
        pytest.raises(FormatError, match='"messages" list'),
    ):
        codec.import_(path)
    assert {k: v for k, v in snapshot(tmp_path).items() if k == "bob.json"} == before


def test_import_still_takes_any_json_objects(tmp_path: Path) -> None:
    """An export of a log holding non-chat objects reads back: import takes any object."""
    src = tmp_path / "events.jsonl"
    src.write_bytes(NOT_HISTORIES["events.jsonl"])
    with ConversationCodec(tmp_path / "t.log", encryption_key=KEY) as codec:
        assert codec.import_(src).added == 2
        assert codec.load() == [{"event": "open"}, {"event": "close"}]


def test_the_walk_skips_hidden_folders_and_the_librarys_side_folders(tmp_path: Path) -> None:
    history = jsonl([HI])  # what a walk into these folders would convert
    for folder in (".git", ".vscode", "ana.log.blobs", ".packs", "sub/.cache"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.jsonl").write_bytes(history)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "sub" / "a.jsonl").write_bytes(history)
    (tmp_path / "b.jsonl").write_bytes(history)
    before = snapshot(tmp_path)
    batch = migrate_many([tmp_path], encryption_key=KEY)
    assert sorted(str(i.path.relative_to(tmp_path)) for i in batch.items) == [
        "b.jsonl",
        "sub/a.jsonl",
    ]
    assert batch.ok
    after = snapshot(tmp_path)
    for name, raw in before.items():
        if name not in ("b.jsonl", "sub/a.jsonl"):
            assert after[name] == raw, name
    # Named on its own, a hidden folder is walked (it was asked for).
    assert [i.status for i in migrate_many([tmp_path / ".vscode"], encryption_key=KEY).items] == [
        "converted"
    ]


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike"])
def test_one_path_given_alone_is_one_path_not_its_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Review r2a defect 2: migrate_many("chats") walked "c", "h", "a", "t", "s" (and "/..."
    # walked the whole filesystem). Only dry runs, in a temp folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chats").mkdir()
    (tmp_path / "s").mkdir()  # one of the characters of "chats": never named
    (tmp_path / "chats" / "h.jsonl").write_bytes(jsonl([HI]))
    (tmp_path / "s" / "other.jsonl").write_bytes(jsonl([HI]))
    given: Any = {"str": "chats", "bytes": b"chats", "pathlike": Path("chats")}[kind]
    batch = migrate_many(given, encryption_key=KEY, dry_run=True)
    assert [(str(i.path), i.status) for i in batch.items] == [
        (os.path.join("chats", "h.jsonl"), "converted")
    ]


# --- defect 3: skewed clocks keep the file's order ------------------------------------------

SKEWED = [
    {"role": "user", "content": "weather?", "timestamp": "2024-05-01T12:00:05Z"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
        ],
        "timestamp": "2024-05-01T12:00:03Z",
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny", "timestamp": "2024-05-01T12:00:04Z"},
    {"role": "assistant", "content": "It is sunny.", "timestamp": "2024-05-01T12:00:06Z"},
]
SKEWED_ROLES = ["user", "assistant", "tool", "assistant"]
SKEWED_TIMES = [us("2024-05-01T12:00:05Z")] * 3 + [us("2024-05-01T12:00:06Z")]


def test_migrate_keeps_the_file_order_and_clamps_earlier_times(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(SKEWED))
    report = migrate(path, encryption_key=KEY)
    assert [m["role"] for m in load(path)] == SKEWED_ROLES
    assert times(path) == SKEWED_TIMES
    assert any(n.startswith("2 timestamp(s) earlier than the message before") for n in report.notes)


def test_import_keeps_the_file_order_and_merges_by_time(tmp_path: Path) -> None:
    src = tmp_path / "h.json"
    src.write_text(json.dumps(SKEWED))
    with ConversationCodec(tmp_path / "new.log", encryption_key=KEY) as codec:
        report = codec.import_(src)
        assert [m["role"] for m in codec.load() or []] == SKEWED_ROLES
    assert times(tmp_path / "new.log") == SKEWED_TIMES
    assert any(n.startswith("2 timestamp(s) earlier than the message before") for n in report.notes)
    # Merged with what a log holds: in time order, the file's own order kept among its messages.
    log = tmp_path / "old.log"
    with ConversationCodec(log, encryption_key=KEY) as codec:
        early = datetime(2024, 5, 1, 12, 0, 4, tzinfo=timezone.utc)
        late = datetime(2024, 5, 1, 12, 0, 5, 500000, tzinfo=timezone.utc)
        codec.extend(
            [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}],
            timestamps=[early, late],
        )
        codec.import_(src)
        got = [
            m["role"] + (m["content"] if m["role"] == "system" else "") for m in codec.load() or []
        ]
    assert got == ["systema", "user", "assistant", "tool", "systemb", "assistant"]
    assert times(log) == sorted(times(log))


def test_the_cli_prints_the_clamp_note(tmp_path: Path, command_line: CommandLine) -> None:
    src = tmp_path / "h.json"
    src.write_text(json.dumps(SKEWED))
    env = {**CHILD_ENV, "CONVERSATION_KEY": KEY}
    out = command_line("import", str(tmp_path / "a.log"), str(src), env=env)
    assert out.returncode == 0, out.stderr
    assert "2 timestamp(s) earlier than the message before" in out.stdout
    out = command_line("migrate", str(src), env=env)
    assert out.returncode == 0, out.stderr
    assert "2 timestamp(s) earlier than the message before" in out.stdout


# --- defect 6: a file name that names no conversation ---------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names not UTF-8")
def test_a_store_batch_fails_only_the_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in (b"a.jsonl", b"caf\xe9.jsonl", b"z.jsonl"):
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(jsonl([HI]))
    batch = migrate_many([src], store=tmp_path / "store", encryption_key=KEY)
    status = {i.path.name: (i.status, i.reason) for i in batch.items}
    bad = os.fsdecode(b"caf\xe9.jsonl")
    assert status[bad][0] == "failed" and "not UTF-8" in status[bad][1]
    assert status["a.jsonl"][0] == status["z.jsonl"][0] == "converted"
    assert sorted(ConversationStore(tmp_path / "store", encryption_key=KEY).ids()) == ["a", "z"]


# --- defect 7: a dry run checks every message -----------------------------------------------


def _deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


UNSTORABLE = {  # file lines, the error, what it must say
    "deep": (
        [HI, HI, {"role": "user", "content": _deep(70)}, HI],
        NotSerializableError,
        r"message 3 \(line 3\).*deeper than 64",
    ),
    "too-large": (
        [HI, {"role": "user", "content": "x" * MAX_MESSAGE_BYTES}],
        RecordTooLargeError,
        r"message 2 \(line 2\).*larger than",
    ),
}


@pytest.mark.parametrize(
    "case",
    ["deep", pytest.param("too-large", marks=pytest.mark.slow)],  # 64 MiB: ~5 s
)
def test_a_dry_run_refuses_what_the_real_run_refuses_and_names_the_message(
    tmp_path: Path, case: str
) -> None:
    lines, error, match = UNSTORABLE[case]
    path = tmp_path / "h.jsonl"
    path.write_bytes(jsonl(lines))
    before = snapshot(tmp_path)
    for dry_run in (True, False):
        with pytest.raises(error, match=match):
            migrate(path, encryption_key=KEY, dry_run=dry_run)
        assert snapshot(tmp_path) == before
    batch = migrate_many([tmp_path], encryption_key=KEY, dry_run=True)
    assert [i.status for i in batch.items] == ["failed"]


def test_the_line_is_the_files_line_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(jsonl([HI]) + b"\n\n" + jsonl([{"role": "user", "content": _deep(70)}]))
    with pytest.raises(NotSerializableError, match=r"message 2 \(line 4\)"):
        migrate(path, dry_run=True)


# --- defect 10: a batch killed after a commit, run again ------------------------------------

_KILL_CHILD = r"""
import json, os, signal, sys
from conversation_codec import FileIO
from conversation_codec.maintenance.migrate import migrate, migrate_many
mode, src, out, step = sys.argv[1:5]
class Kill(FileIO):
    def step(self, name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
if mode == "one":
    migrate(src, out, encryption_key=sys.argv[5], io=Kill())
else:
    where = {"out_dir": out} if mode == "tree" else {"store": out}
    migrate_many([src], encryption_key=sys.argv[5], io=Kill(), **where)
sys.exit(3)  # the step was never reached
"""

# The link is made (temp link, index and lock left) / the index moved (temp lock left).
AFTER_COMMIT = ["migrate:renamed", pytest.param("migrate:index-moved", marks=pytest.mark.slow)]


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".migrating-" in p.name)


@pytest.mark.parametrize("mode", ["one", "store", "tree"])
@pytest.mark.parametrize("step", AFTER_COMMIT)
def test_a_rerun_after_a_kill_past_the_commit_sweeps_and_skips(
    tmp_path: Path, mode: str, step: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    histories = {"a": [HI, {"role": "assistant", "content": "a"}], "b": [HI]}
    for name, messages in histories.items():
        (src / f"{name}.jsonl").write_bytes(jsonl(messages))
    out = tmp_path / "out"
    target = out / "a.log" if mode == "store" else out / "a.jsonl"
    if mode == "one":
        out.mkdir()
    child = [
        sys.executable,
        "-c",
        _KILL_CHILD,
        mode,
        str(src if mode != "one" else src / "a.jsonl"),
    ]
    child += [str(target if mode == "one" else out), step, KEY]
    proc = _children.run(child, env=CHILD_ENV, capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert _temp_files(out), "the kill came too late to leave temp files"
    if mode == "one":
        report = migrate(src / "a.jsonl", target, encryption_key=KEY)
        assert not report.converted
        assert any(n.startswith("already migrated") for n in report.notes), report.notes
    else:
        where: dict[str, Any] = {"out_dir": out} if mode == "tree" else {"store": out}
        batch = migrate_many([src], encryption_key=KEY, **where)
        status = {i.path.name: (i.status, i.reason) for i in batch.items}
        assert status["a.jsonl"][0] == "skipped" and "already migrated" in status["a.jsonl"][1]
        assert status["b.jsonl"][0] == "converted"
        assert batch.ok
    assert _temp_files(out) == []
    context = "a" if mode == "store" else None  # a store's log is bound to its id
    with ConversationCodec(target, encryption_key=KEY, context=context) as codec:
        assert codec.load() == histories["a"]


def test_an_existing_destination_with_other_messages_still_fails(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_bytes(jsonl([HI]))
    dst = tmp_path / "a.log"
    with ConversationCodec(dst, encryption_key=KEY) as codec:
        codec.append({"role": "user", "content": "other"})
    before = snapshot(tmp_path)
    with pytest.raises(StorageError, match="already exists"):
        migrate(src, dst, encryption_key=KEY)
    with pytest.raises(StorageError, match="already exists"):  # another key: not ours to read
        migrate(src, dst, encryption_key="VTc7qcgxoeOXhVHyAWpFQkDKN0zUX9vD6bu13m5E24I=")
    assert snapshot(tmp_path) == before

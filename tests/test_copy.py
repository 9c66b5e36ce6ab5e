"""``copy_conversations`` and ``conversation-codec copy``: between any two stores (issue 14).

File stores here; ``tests/test_postgres_store.py`` runs the same round trip through
PostgreSQL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conversation_codec import ConversationStore, generate_key
from conversation_codec.errors import DecryptionError
from conversation_codec.maintenance.copy import copy_conversations

from conftest import CommandLine

KEY, OTHER = generate_key(), generate_key()
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _fill(store: ConversationStore, ids: list[str], n: int = 5) -> None:
    for k, cid in enumerate(ids):
        with store.open(cid) as codec:
            codec.extend(
                [{"role": "user", "content": f"{cid} says {i}"} for i in range(n + k)],
                timestamps=[T0 + timedelta(seconds=i) for i in range(n + k)],
            )


def _dump(store: ConversationStore) -> dict[str, list[tuple[object, datetime]]]:
    out = {}
    for cid in store.ids():
        with store.open(cid) as codec:
            out[cid] = [(h.message, h.timestamp) for h in codec.search(None)]
    return out


def test_copy_keeps_messages_times_and_order_under_a_new_key(tmp_path: Path) -> None:
    src = ConversationStore(tmp_path / "a", encryption_key=KEY)
    _fill(src, ["alice", "bob/1", "Carol"])
    dst = ConversationStore(tmp_path / "b", encryption_key=OTHER)
    report = copy_conversations(src, dst)
    assert sorted(report.copied) == ["Carol", "alice", "bob/1"] and not report.failed
    assert report.messages == 5 + 6 + 7
    assert _dump(dst) == _dump(src)
    with pytest.raises(DecryptionError):  # sealed under the destination's key, not the source's
        ConversationStore(tmp_path / "b", encryption_key=KEY).open("alice").load()


def test_copy_resumes_and_never_overwrites_by_default(tmp_path: Path) -> None:
    src = ConversationStore(tmp_path / "a", encryption_key=KEY)
    _fill(src, ["a", "b", "c"])
    dst = ConversationStore(tmp_path / "b", encryption_key=KEY)
    copy_conversations(src, dst, ["a"])  # an interrupted run got this far
    with dst.open("c") as codec:
        codec.append({"role": "user", "content": "already there"})
    seen: list[tuple[int, int, str]] = []
    report = copy_conversations(src, dst, progress=lambda *p: seen.append(p))
    assert report.unchanged == ["a"] and report.copied == ["b"]
    assert list(report.failed) == ["c"] and "overwrite" in report.failed["c"]
    assert [s[0] for s in seen] == [1, 2, 3] and all(s[1] == 3 for s in seen)
    with dst.open("c") as codec:
        assert [m["content"] for m in codec.load() or []] == ["already there"]
    assert copy_conversations(src, dst, ["c"], overwrite=True).copied == ["c"]
    assert _dump(dst) == _dump(src)


def test_a_missing_or_unreadable_source_is_reported(tmp_path: Path) -> None:
    src = ConversationStore(tmp_path / "a", encryption_key=KEY)
    _fill(src, ["a"])
    dst = ConversationStore(tmp_path / "b", encryption_key=KEY)
    wrong = ConversationStore(tmp_path / "a", encryption_key=OTHER)
    report = copy_conversations(wrong, dst, ["a", "nobody"])
    assert sorted(report.failed) == ["a", "nobody"]
    assert "DecryptionError" in report.failed["a"] and KEY not in str(report.failed)
    assert dst.ids() == []


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(command_line: CommandLine) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args, env=)``: the command line with nothing but ``env`` and a PATH."""

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return command_line(*args, env={"PATH": "/usr/bin:/bin", **env})

    return run


def test_the_copy_command(tmp_path: Path, cli: Cli) -> None:
    src = ConversationStore(tmp_path / "a", encryption_key=KEY)
    _fill(src, ["x", "y"])
    (tmp_path / "b").mkdir()
    env = {"CONVERSATION_KEY": KEY, "NEW_KEY": OTHER}
    args = ["copy", str(tmp_path / "a"), str(tmp_path / "b"), "--to-key-env", "NEW_KEY"]
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert "copied 2 conversations (11 messages)" in done.stdout
    again = cli(*args, "--json", env=env)
    assert again.returncode == 0 and '"unchanged":["x","y"]' in again.stdout.replace(" ", "")
    dst = ConversationStore(tmp_path / "b", encryption_key=OTHER)
    assert _dump(dst) == _dump(src)
    plain = cli("copy", str(tmp_path / "a"), str(tmp_path / "c"), env={})
    assert plain.returncode == 2 and "UNENCRYPTED" in plain.stderr
    missing = cli("copy", str(tmp_path / "nope"), str(tmp_path / "c"), env=env)
    assert missing.returncode == 1 and "no such directory" in missing.stderr


def _bodies(store: ConversationStore, cid: str) -> list[bytes]:
    with store.open(cid) as codec:
        log = codec.storage
        with log.transaction(write=False):
            return [body for _, body in log.read_bodies(0, len(log.index))]


def test_under_the_same_key_the_record_bytes_move_as_they_are(tmp_path: Path) -> None:
    """Issue 14: re-sealed only where they must be. 600 messages: past the 512 that train
    the log's zstd dictionary, which moves with them."""
    src = ConversationStore(tmp_path / "a", encryption_key=KEY)
    _fill(src, ["alice"], n=600)
    same = ConversationStore(tmp_path / "b", encryption_key=KEY)
    assert copy_conversations(src, same).copied == ["alice"]
    assert _bodies(same, "alice") == _bodies(src, "alice")  # byte for byte
    assert _dump(same) == _dump(src)
    with same.open("alice") as codec:
        codec.append({"role": "user", "content": "after the copy"})  # a normal log after it
        assert codec.verify().ok and len(codec) == 601
    other = ConversationStore(tmp_path / "c", encryption_key=OTHER)
    assert copy_conversations(src, other).copied == ["alice"]
    assert _dump(other) == _dump(src)
    assert not set(_bodies(other, "alice")) & set(_bodies(src, "alice"))  # re-sealed


def test_a_destination_with_a_keyword_index_keeps_it_exact(tmp_path: Path) -> None:
    src = ConversationStore(tmp_path / "a", encryption_key=KEY)
    _fill(src, ["alice"], n=40)
    indexed = ConversationStore(tmp_path / "b", encryption_key=KEY, search_index=True)
    assert copy_conversations(src, indexed).copied == ["alice"]
    assert (tmp_path / "b" / "alice.log.kwi").is_file()
    with indexed.open("alice") as codec:
        assert [h.seq for h in codec.search("says 39")] == [39]
        assert codec.verify().ok


def test_a_refused_byte_copy_leaves_the_destinations_password_cost_its_own(
    tmp_path: Path,
) -> None:
    """A source under another password cannot be copied byte for byte; trying must not
    leave the destination re-sealing with the source's salt and scrypt cost (review)."""
    from conversation_codec.format.header import decode_sealed_header

    src = ConversationStore(tmp_path / "a", password="the source's")
    _fill(src, ["alice"], n=3)
    dst = ConversationStore(tmp_path / "b", password="the destination's")
    assert copy_conversations(src, dst).copied == ["alice"]

    def salt(store: ConversationStore) -> bytes:
        with store.open("alice") as codec, codec.storage.transaction(write=False):
            stored = codec.storage.stored()
            assert stored is not None
            return decode_sealed_header(stored[0])[0].kdf_salt

    assert salt(dst) != salt(src)
    assert _dump(dst) == _dump(src)


IMAGE = "data:image/png;base64,iVBORw0KGgo" + "B" * 3000 + "="
PICTURE = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}


@pytest.mark.parametrize("to_key", ["same", "other", "plaintext"])
def test_copy_carries_the_attachment_blobs(tmp_path: Path, to_key: str) -> None:
    """Outside review (bad inputs) 3: the records were copied, the blobs were not."""
    src = ConversationStore(tmp_path / "a", encryption_key=KEY, attachments="external")
    with src.open("u") as codec:
        codec.extend([{"role": "user", "content": "look"}, PICTURE])
    key = {"same": KEY, "other": OTHER, "plaintext": None}[to_key]
    dst = ConversationStore(tmp_path / "b", encryption_key=key)  # without the option
    report = copy_conversations(src, dst)
    assert report.copied == ["u"] and not report.failed
    assert _dump(dst) == _dump(src)
    assert _dump(dst)["u"][1][0] == PICTURE
    blobs = tmp_path / "b" / (dst.path("u").name + ".blobs")
    assert len(list(blobs.iterdir())) == 1  # the attachment stays out of the log
    assert dst.path("u").stat().st_size < 2000
    assert copy_conversations(src, dst).unchanged == ["u"]  # a second run finds it identical


def test_the_copy_command_carries_the_attachment_blobs(tmp_path: Path, cli: Cli) -> None:
    src = ConversationStore(tmp_path / "a", encryption_key=KEY, attachments="external")
    with src.open("u") as codec:
        codec.append(PICTURE)
    env = {"CONVERSATION_KEY": KEY, "NEW_KEY": OTHER}
    done = cli("copy", str(tmp_path / "a"), str(tmp_path / "b"), "--to-key-env", "NEW_KEY", env=env)
    assert done.returncode == 0, done.stderr
    with ConversationStore(tmp_path / "b", encryption_key=OTHER).open("u") as codec:
        assert codec.load() == [PICTURE]

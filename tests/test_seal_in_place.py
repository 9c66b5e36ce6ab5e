"""Sealing plaintext history in place leaves no plaintext copy: outside review r1.

Defect 2: ``migrate_many(ROOT, encryption_key=K)`` (the CLI's ``migrate ROOT``) of a
plaintext store left its packed conversations (``ROOT/.packs/*.pack``, FORMAT.md §18) in
plaintext, listed nothing and reported success; the keyed store then raised
``NotEncryptedError``, whose advice, ``migrate(path, ..., context=id)``, failed ("does not
exist": the log was in a pack).

Defect 3: ``migrate(P, encryption_key=K)`` of a plaintext log with external attachments,
killed after its commit and before its blob sweep, left the plaintext blobs beside the
sealed log; a rerun said "already a log" and removed nothing, and ``verify()`` was silent.

Kills are real processes killed with SIGKILL at a seam of the ``FileIO`` given as ``io=``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import _children
from _writer import subprocess_env
from conversation_codec import (
    ConversationCodec,
    ConversationStore,
    NotEncryptedError,
    migrate,
    migrate_many,
)
from conversation_codec.attachments import BlobStore
from conversation_codec.cli import main

from conftest import KEY

SECRET = "marmot-quartz-7719"  # in every message: must not stay on disk in plaintext
PIXELS = f"a picture of {SECRET} ".encode() * 20


def said(cid: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"{cid}: my card {SECRET}"},
        {"role": "assistant", "content": f"{cid}: noted"},
    ]


def plaintext_left(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden ones included) that holds a secret in clear."""
    return [
        str(p.relative_to(folder))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (SECRET.encode() in p.read_bytes() or PIXELS[:40] in p.read_bytes())
    ]


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``, hidden ones included: to prove nothing changed."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def packs(root: Path) -> list[Path]:
    return sorted((root / ".packs").glob("*.pack"))


def plain_store(root: Path, packed: Sequence[str], loose: Sequence[str] = ()) -> None:
    """A plaintext store: ``packed`` conversations in a pack, ``loose`` ones in files."""
    store = ConversationStore(root)
    for cid in packed:
        with store.open(cid) as codec:
            codec.extend(said(cid))
    assert sorted(store.pack().packed) == sorted(packed)
    for cid in loose:
        with store.open(cid) as codec:
            codec.extend(said(cid))


def load_sealed(root: Path, ids: list[str]) -> dict[str, Any]:
    store = ConversationStore(root, encryption_key=KEY)
    out = {}
    for cid in ids:
        with store.open(cid) as codec:
            out[cid] = codec.load()
    return out


def load_any(root: Path, cid: str) -> Any:
    """The conversation's messages, whether it is sealed yet or still plaintext."""
    try:
        with ConversationStore(root, encryption_key=KEY).open(cid) as codec:
            return codec.load()
    except NotEncryptedError:
        with ConversationStore(root).open(cid) as codec:
            return codec.load()


def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setenv("CONVERSATION_KEY", KEY)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


# --- defect 2: a store's packed conversations ------------------------------------------------

IDS = ["ana", "bob"]


def test_migrate_many_of_a_store_root_seals_its_packed_conversations(tmp_path: Path) -> None:
    plain_store(tmp_path, IDS, ["carl"])
    old_packs = packs(tmp_path)
    assert plaintext_left(tmp_path) == [str(p.relative_to(tmp_path)) for p in old_packs] + [
        "carl.log"
    ]
    batch = migrate_many(tmp_path, encryption_key=KEY)
    assert [(i.path.name, i.status, i.reason) for i in batch.items] == [
        ("carl.log", "converted", "encrypted the plaintext log in place (2 messages)"),
        ("ana.log", "converted", "encrypted the packed plaintext log in place (2 messages)"),
        ("bob.log", "converted", "encrypted the packed plaintext log in place (2 messages)"),
    ]
    assert batch.ok
    assert load_sealed(tmp_path, [*IDS, "carl"]) == {c: said(c) for c in [*IDS, "carl"]}
    assert plaintext_left(tmp_path) == []
    assert [p for p in old_packs if p.exists()] == []  # the pack itself went, not just its entry
    assert packs(tmp_path) == []
    again = migrate_many(tmp_path, encryption_key=KEY)  # nothing left to do
    assert [i.status for i in again.items] == ["skipped"] * 3


def test_the_cli_seals_a_store_root_and_counts_its_packed_conversations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_store(tmp_path, IDS, ["carl"])
    code, out = cli(monkeypatch, capsys, "migrate", str(tmp_path))
    assert code == 0, out
    assert "3 converted, 0 skipped, 0 failed" in out
    assert "encrypted the packed plaintext log in place" in out
    assert plaintext_left(tmp_path) == []
    assert load_sealed(tmp_path, IDS) == {c: said(c) for c in IDS}


def test_a_dry_run_lists_packed_conversations_and_writes_nothing(tmp_path: Path) -> None:
    plain_store(tmp_path, IDS)
    before = tree(tmp_path)
    batch = migrate_many(tmp_path, encryption_key=KEY, dry_run=True)
    assert [(i.path.name, i.status, i.reason) for i in batch.items] == [
        (f"{c}.log", "converted", "would encrypt the packed plaintext log in place (2 messages)")
        for c in IDS
    ]
    assert not migrate(tmp_path / "ana.log", encryption_key=KEY, dry_run=True).converted
    assert tree(tmp_path) == before


def test_the_advice_of_not_encrypted_error_works_for_a_packed_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_store(tmp_path, [*IDS, "cleo"])
    with pytest.raises(NotEncryptedError) as caught:
        load_sealed(tmp_path, ["ana"])
    assert "migrate(path, encryption_key=..., context='ana')" in str(caught.value)
    assert "ConversationCodec(path, context='ana').compact(encryption_key=" in str(caught.value)
    report = migrate(tmp_path / "ana.log", encryption_key=KEY, context="ana")  # as advised
    assert report.converted and report.messages == 2
    assert load_sealed(tmp_path, ["ana"]) == {"ana": said("ana")}
    with ConversationCodec(tmp_path / "cleo.log", context="cleo") as codec:  # the other route
        codec.compact(encryption_key=KEY)
    assert load_sealed(tmp_path, ["cleo"]) == {"cleo": said("cleo")}
    # The CLI's advice for it: `conversation-codec migrate <its path>`
    code, out = cli(monkeypatch, capsys, "ls", str(tmp_path))
    assert code == 1 and "bob" in out, out
    code, out = cli(monkeypatch, capsys, "migrate", str(tmp_path / "bob.log"))
    assert code == 0 and "1 converted" in out, out
    assert load_sealed(tmp_path, IDS) == {c: said(c) for c in IDS}
    assert plaintext_left(tmp_path) == [] and packs(tmp_path) == []


def test_a_password_seals_packed_conversations_too(tmp_path: Path) -> None:
    plain_store(tmp_path, IDS)
    batch = migrate_many(tmp_path, log_password="pw", backup=False)
    assert [i.status for i in batch.items] == ["converted", "converted"], batch.items
    store = ConversationStore(tmp_path, password="pw")
    for cid in IDS:
        with store.open(cid) as codec:
            assert codec.load() == said(cid)
    assert plaintext_left(tmp_path) == []
    assert packs(tmp_path) == []


def test_sealed_packed_conversations_are_skipped_and_plaintext_ones_sealed(
    tmp_path: Path,
) -> None:
    keyed = ConversationStore(tmp_path, encryption_key=KEY)
    with keyed.open("sealed") as codec:
        codec.extend(said("sealed"))
    assert keyed.pack().packed == ["sealed"]
    plain_store(tmp_path, ["plain"])
    batch = migrate_many(tmp_path, encryption_key=KEY)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("plain.log", "converted"),
        ("sealed.log", "skipped"),
    ]
    assert re.match(
        r"already a conversation-codec log \(packed in .*\.pack\)", batch.items[1].reason
    )
    assert load_sealed(tmp_path, ["plain", "sealed"]) == {c: said(c) for c in ["plain", "sealed"]}
    assert plaintext_left(tmp_path) == []


def test_without_a_key_packed_conversations_are_listed_and_left(tmp_path: Path) -> None:
    plain_store(tmp_path, IDS)
    before = tree(tmp_path)
    batch = migrate_many(tmp_path)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("ana.log", "skipped"),
        ("bob.log", "skipped"),
    ]
    assert tree(tmp_path) == before


def test_an_unreadable_pack_fails_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_store(tmp_path, IDS, ["carl"])
    (pack,) = packs(tmp_path)
    data = bytearray(pack.read_bytes())
    data[30] ^= 0xFF  # its table of contents
    pack.write_bytes(bytes(data))
    batch = migrate_many(tmp_path, encryption_key=KEY)
    assert [(i.path.name, i.status) for i in batch.items] == [
        ("carl.log", "converted"),
        (pack.name, "failed"),
    ]
    assert "not migrated" in batch.items[1].reason and not batch.ok
    code, out = cli(monkeypatch, capsys, "migrate", str(tmp_path))
    assert code == 1 and "1 failed" in out, out


_SEAL_CHILD = r"""
import os, signal, sys
from conversation_codec import FileIO, migrate_many
root, kind, name, occurrence = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = [0]
def at(call, target):
    if call == kind or kind == "any":
        if kind == "any" or os.path.basename(str(target)).endswith(name):
            seen[0] += 1
            if seen[0] == occurrence:
                os.kill(os.getpid(), signal.SIGKILL)
class KillAt(FileIO):  # killed before the call named (a step: at it)
    def rename(self, src, dst, *, dir_fd=None):
        at("rename", dst); super().rename(src, dst, dir_fd=dir_fd)
    def link(self, src, dst, *, dir_fd=None):
        at("link", dst); super().link(src, dst, dir_fd=dir_fd)
    def unlink(self, path, *, dir_fd=None):
        at("unlink", path); super().unlink(path, dir_fd=dir_fd)
    def fsync_dir(self, folder):
        at("fsync_dir", "" if isinstance(folder, int) else folder); super().fsync_dir(folder)
    def step(self, step_name):
        at("step", step_name)
migrate_many(root, encryption_key=os.environ["CC_TEST_KEY"], io=KillAt())
sys.exit(3)  # never killed
"""

SEAMS = [  # in a batch sealing carl (loose), then ana and bob (packed together)
    ("link", "ana.log", 1),  # unpacking ana: before P is written
    ("step", "unpack:loose-written", 1),  # ana both loose and packed (plaintext)
    ("rename", ".pack", 1),  # the pack without ana written (a temp holding bob), not renamed
    ("step", "unpack:dropped", 1),  # ana loose, in plaintext, and in no pack
    ("rename", "ana.log", 1),  # ana's sealed copy written, not committed
    ("step", "rewrite:renamed", 2),  # ana sealed
    ("unlink", ".pack", 1),  # bob loose; its pack, now holding only bob, not deleted yet
]


def _kill_child(root: Path, kind: str, name: str, occurrence: int) -> int:
    done = _children.run(
        [sys.executable, "-c", _SEAL_CHILD, str(root), kind, name, str(occurrence)],
        env=subprocess_env(KEY),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode in (3, -signal.SIGKILL), done.stderr.decode()
    return done.returncode


def _killed_then_rerun(root: Path, kind: str, name: str, occurrence: int) -> int:
    ids = ["carl", *IDS]
    plain_store(root, IDS, ["carl"])
    code = _kill_child(root, kind, name, occurrence)
    for cid in ids:  # every conversation readable, sealed or still in plaintext
        assert load_any(root, cid) == said(cid), (cid, sorted(tree(root)))
    batch = migrate_many(root, encryption_key=KEY)  # the rerun finishes the job
    assert batch.ok, batch.items
    assert load_sealed(root, ids) == {c: said(c) for c in ids}
    assert plaintext_left(root) == []
    assert sorted(os.listdir(root / ".packs")) == ["pack.lock", "packer.lock"]  # no temp
    return code


@pytest.mark.parametrize(("kind", "name", "occurrence"), SEAMS)
def test_a_sealing_of_packed_conversations_killed_at_a_seam_reruns_to_completion(
    tmp_path: Path, kind: str, name: str, occurrence: int
) -> None:
    assert _killed_then_rerun(tmp_path, kind, name, occurrence) == -signal.SIGKILL


@pytest.mark.slow
def test_a_sealing_of_a_store_killed_at_every_seam_reruns_to_completion(tmp_path: Path) -> None:
    for n in range(1, 200):
        if _killed_then_rerun(tmp_path / str(n), "any", "", n) == 3:
            break  # past the last seam call: the child finished
    else:
        pytest.fail("the child was killed at each of 199 seam calls: more than expected")


# --- defect 3: plaintext blobs beside a sealed log ---------------------------------------------


def attachments_log(path: Path) -> Path:
    with ConversationCodec(path, attachments="external") as codec:
        for i in range(3):
            data = base64.b64encode(PIXELS + bytes([i])).decode()
            codec.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
                    ],
                }
            )
    return path


_BLOB_CHILD = r"""
import os, signal, sys
from conversation_codec import FileIO, migrate
log, n = sys.argv[1], int(sys.argv[2])
calls = [0]
class DieAtCommit(FileIO):
    def rename(self, src, dst, *, dir_fd=None):
        super().rename(src, dst, dir_fd=dir_fd)
        if n == 0 and str(dst) == log:
            os.kill(os.getpid(), signal.SIGKILL)  # just after the log's commit
        self.count()
    def link(self, src, dst, *, dir_fd=None):
        self.count(); super().link(src, dst, dir_fd=dir_fd)
    def unlink(self, path, *, dir_fd=None):
        self.count(); super().unlink(path, dir_fd=dir_fd)
    def fsync_dir(self, folder):
        self.count(); super().fsync_dir(folder)
    def step(self, name):
        self.count()
    def count(self):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
migrate(log, encryption_key=os.environ["CC_TEST_KEY"], io=DieAtCommit())
sys.exit(3)  # never killed
"""


def _seal_killed(log: Path, n: int) -> int:
    done = _children.run(
        [sys.executable, "-c", _BLOB_CHILD, str(log), str(n)],
        env=subprocess_env(KEY),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode in (3, -signal.SIGKILL), done.stderr.decode()
    return done.returncode


def test_a_rerun_removes_plaintext_blobs_a_sealing_killed_after_its_commit_left(
    tmp_path: Path,
) -> None:
    log = attachments_log(tmp_path / "a.log")
    assert _seal_killed(log, 0) == -signal.SIGKILL
    assert len(plaintext_left(tmp_path)) == 3  # the blobs: the log itself is sealed
    with ConversationCodec(log, KEY) as codec:
        assert len(codec.load() or []) == 3
        found = [p for p in codec.verify().problems if p.kind.startswith("blob")]
    assert [p.kind for p in found] == ["blob-plaintext"] * 3
    assert all("migrate() removes it" in p.detail for p in found)
    dry = migrate(log, encryption_key=KEY, dry_run=True)
    assert any("would remove 3 plaintext attachment blob(s)" in n for n in dry.notes)
    assert len(plaintext_left(tmp_path)) == 3
    report = migrate(log, encryption_key=KEY)  # the documented recovery: run it again
    assert not report.converted
    assert any("removed 3 plaintext attachment blob(s)" in n for n in report.notes)
    assert plaintext_left(tmp_path) == []
    with ConversationCodec(log, KEY) as codec:
        assert len(codec.load() or []) == 3
        assert [p for p in codec.verify().problems if p.kind.startswith("blob")] == []


def test_a_batch_rerun_without_a_key_removes_them_too(tmp_path: Path) -> None:
    log = attachments_log(tmp_path / "a.log")
    assert _seal_killed(log, 0) == -signal.SIGKILL
    batch = migrate_many(tmp_path)  # a sealed log's plaintext blobs are found without its key
    assert [i.status for i in batch.items] == ["skipped"]
    assert "removed 3 plaintext attachment blob(s)" in batch.items[0].reason
    assert plaintext_left(tmp_path) == []


def test_verify_reports_a_sealed_blob_no_record_refers_to(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    with ConversationCodec(log, KEY, attachments="external") as codec:
        codec.append({"role": "user", "content": "hi"})
        stray = BlobStore.for_key(f"{log}.blobs", KEY).put(b"\x01left by a crash")
        found = [(p.kind, p.is_damage) for p in codec.verify().problems]
        assert found == [("blob-unreferenced", False)]
        assert codec.verify().ok
        codec.compact()  # the next rewrite deletes it
        assert codec.verify().problems == ()
    assert not (tmp_path / "a.log.blobs" / stray).exists()


@pytest.mark.slow
def test_a_sealing_with_attachments_killed_at_every_seam_leaves_no_plaintext_after_a_rerun(
    tmp_path: Path,
) -> None:
    for n in range(1, 200):
        folder = tmp_path / str(n)
        folder.mkdir()
        log = attachments_log(folder / "a.log")
        code = _seal_killed(log, n)
        migrate(log, encryption_key=KEY)
        with ConversationCodec(log, KEY) as codec:
            assert len(codec.load() or []) == 3
        assert plaintext_left(folder) == [], n
        if code == 3:
            break
    else:
        pytest.fail("the child was killed at each of 199 seam calls: more than expected")

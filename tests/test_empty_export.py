"""What ``export`` writes, ``import_`` reads: the JSONL export of an empty log is an empty
file (JSONL with no line), which reads as an empty history, as the JSON export's ``[]``
does (outside review, mig.md defect 11). ``migrate`` leaves it as it is ("holds no
messages"), as it leaves ``[]``; ``migrate_many`` reports it skipped, not failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, migrate, migrate_many
from conversation_codec.maintenance.legacy import LegacyFormat

from conftest import KEY, snapshot


def empty_export(folder: Path, fmt: str) -> Path:
    with ConversationCodec(folder / "a.log", KEY) as codec:
        codec.append({"role": "user", "content": "gone"})
        codec.pop()
        out = folder / f"e.{fmt}"
        assert codec.export(out, format=fmt) == 0
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_import_of_an_empty_export_is_a_no_op(tmp_path: Path, fmt: str) -> None:
    src = empty_export(tmp_path, fmt)
    with ConversationCodec(tmp_path / "t.log", KEY) as target:
        target.append({"role": "user", "content": "kept"})
        report = target.import_(src)
        assert (report.read, report.added) == (0, 0)
        assert target.import_(src, merge=True).added == 0
        assert target.load() == [{"role": "user", "content": "kept"}]
        target.import_(src, replace=True)  # the file's history: none
        assert target.load() is None


@pytest.mark.parametrize("data", [b"", b"  \n\r\n", b"\xef\xbb\xbf"], ids=["0", "ws", "bom"])
def test_migrate_leaves_an_empty_file_as_it_is(tmp_path: Path, data: bytes) -> None:
    src = tmp_path / "e.jsonl"
    src.write_bytes(data)
    before = snapshot(tmp_path)
    report = migrate(src, encryption_key=KEY)
    assert (report.converted, report.messages, report.format) == (False, 0, LegacyFormat.JSONL)
    assert "holds no messages" in report.notes[-1]
    batch = migrate_many([tmp_path], encryption_key=KEY)
    assert [i.status for i in batch.items] == ["skipped"]
    assert snapshot(tmp_path) == before

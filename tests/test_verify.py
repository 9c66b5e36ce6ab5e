"""verify() and salvage(): each kind of damage is found at its offset; salvage copies the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, CorruptRecordError, StorageError
from conversation_codec.maintenance.verify import salvage

from conftest import KEY, OTHER_KEY, messages, snapshot


def spans_of(path: Path, key: str | None = KEY) -> list[tuple[int, int]]:
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.message_count()
        index = codec.storage.index
        return [index.span(i) for i in range(len(index))]


def kinds(path: Path, key: str | None = KEY) -> list[str]:
    with ConversationCodec(path, encryption_key=key) as codec:
        return [p.kind for p in codec.verify().problems]


@pytest.fixture(params=[KEY, None], ids=["encrypted", "plaintext"])
def key(request: pytest.FixtureRequest) -> str | None:
    return request.param  # type: ignore[no-any-return]


def write_log(tmp_path: Path, n: int, key: str | None) -> Path:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key, durability="flush") as codec:
        codec.extend(messages(n))
    return path


def test_healthy_log_verifies(tmp_path: Path, key: str | None) -> None:
    path = write_log(tmp_path, 10, key)
    before = snapshot(tmp_path)
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert report.ok and report.records == 10 and report.problems == ()
    assert snapshot(tmp_path) == before
    assert report.as_dict()["ok"] is True


def test_torn_tail(tmp_path: Path, key: str | None) -> None:
    path = write_log(tmp_path, 5, key)
    spans = spans_of(path, key)
    with open(path, "r+b") as f:
        f.truncate(spans[-1][1] - 3)
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert [p.kind for p in report.problems][:1] == ["torn-tail"]
    assert report.problems[0].offset == spans[-1][0]
    assert not report.ok


def test_bit_rot_in_the_middle(tmp_path: Path) -> None:
    path = write_log(tmp_path, 6, KEY)
    spans = spans_of(path)
    data = bytearray(path.read_bytes())
    data[spans[2][0] + 30] ^= 0x40
    path.write_bytes(bytes(data))
    with ConversationCodec(path, encryption_key=KEY) as codec:
        report = codec.verify()
        assert report.problems[0].kind == "unauthenticated"
        assert report.problems[0].offset == spans[2][0]
        assert report.records == 5
        with pytest.raises(CorruptRecordError):
            codec.load()


def test_missing_reordered_and_duplicated_records(tmp_path: Path, key: str | None) -> None:
    path = write_log(tmp_path, 6, key)
    spans = spans_of(path, key)
    data = path.read_bytes()
    rec = [data[a:b] for a, b in spans]
    head = data[: spans[0][0]]
    cases = {
        "missing-records": head + b"".join(rec[:2] + rec[3:]),
        "reordered-records": head + b"".join([rec[0], rec[2], rec[1], *rec[3:]]),
        "duplicate": head + b"".join([*rec[:3], rec[2], *rec[3:]]),
    }
    for name, content in cases.items():
        path.write_bytes(content)
        Path(str(path) + ".idx").unlink(missing_ok=True)
        found = kinds(path, key)
        expected = "reordered-records" if name == "duplicate" else name
        assert expected in found, (name, found)


def test_record_spliced_from_another_log_under_the_same_key(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = write_log(tmp_path / "a", 4, KEY), write_log(tmp_path / "b", 4, KEY)
    sa, sb = spans_of(a), spans_of(b)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_a[: sa[2][0]] + data_b[sb[2][0] : sb[2][1]] + data_a[sa[2][1] :])
    assert "unauthenticated" in kinds(a)


def test_rollback_is_seen_through_the_index(tmp_path: Path, key: str | None) -> None:
    path = write_log(tmp_path, 3, key)
    old_copy = path.read_bytes()
    with ConversationCodec(path, encryption_key=key) as codec:
        codec.extend(messages(2, start=3))
    path.write_bytes(old_copy)  # roll the log back; the index still knows 5 records
    assert "index-ahead" in kinds(path, key)


def test_stale_index_is_not_damage(tmp_path: Path, key: str | None) -> None:
    path = write_log(tmp_path, 3, key)
    Path(str(path) + ".idx").unlink()
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert [p.kind for p in report.problems] == ["index-stale"]
    assert report.ok


def test_salvage_copies_every_intact_record(tmp_path: Path, key: str | None) -> None:
    path = write_log(tmp_path, 8, key)
    spans = spans_of(path, key)
    data = bytearray(path.read_bytes())
    for i in (2, 5):  # damage two records in the middle
        data[spans[i][0] + 5 : spans[i][0] + 9] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))
    Path(str(path) + ".idx").unlink()
    before = snapshot(tmp_path)
    report = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before  # src untouched
    assert report.recovered == 6 and report.lost_seqs == (2, 5)
    expected = [m for i, m in enumerate(messages(8)) if i not in (2, 5)]
    with ConversationCodec(tmp_path / "rescued.log", encryption_key=key) as codec:
        assert codec.load() == expected
        assert codec.verify().ok
    with pytest.raises(StorageError, match="already exists"):
        salvage(path, tmp_path / "rescued.log", encryption_key=key)


def test_damaged_log_still_opens_for_verify(tmp_path: Path) -> None:
    path = write_log(tmp_path, 4, KEY)
    spans = spans_of(path)
    data = bytearray(path.read_bytes())
    data[spans[1][0] + 20] ^= 1
    path.write_bytes(bytes(data))
    Path(str(path) + ".idx").unlink()  # the catch-up scan meets the damage
    codec = ConversationCodec(path, encryption_key=KEY)  # opening does not read records
    with pytest.raises(CorruptRecordError):
        codec.load()
    assert not codec.verify().ok
    with pytest.raises(Exception, match="wrong key"):
        ConversationCodec(path, encryption_key=OTHER_KEY).verify()


def test_a_plausible_length_in_damaged_bytes_does_not_hide_later_records(tmp_path: Path) -> None:
    # Regression: damage whose bytes read as a well-formed length spanning the records after
    # it must not make those records look like part of a torn tail (a writer would cut them).
    from conversation_codec.format.varint import encode_varint

    path = write_log(tmp_path, 4, KEY)
    spans = spans_of(path)
    data = bytearray(path.read_bytes())
    start = spans[1][0]
    body_len = (len(data) - start - 2 - 56) // 16 * 16 + 56
    data[start : start + 2] = encode_varint(body_len << 1)
    path.write_bytes(bytes(data))
    Path(str(path) + ".idx").unlink()
    before = path.read_bytes()
    with ConversationCodec(path, encryption_key=KEY) as codec:
        with pytest.raises(CorruptRecordError):
            codec.append({"must": "not truncate"})
        with pytest.raises(CorruptRecordError):
            codec.load()
    assert path.read_bytes() == before


# --- each problem once, with the right kind (issue 11 §7) ------------------------------


def test_one_flipped_byte_is_one_problem(tmp_path: Path) -> None:
    """A bit flipped inside record 2 of 5 is one "unauthenticated" record: not also seqs
    missing, a stale index and an index ahead of the log."""
    path = write_log(tmp_path, 5, KEY)
    start, end = spans_of(path)[2]
    data = bytearray(path.read_bytes())
    data[(start + end) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with ConversationCodec(path, encryption_key=KEY) as codec:
        problems = codec.verify().problems
    assert [(p.kind, p.offset) for p in problems] == [("unauthenticated", start)]


def test_empty_log_with_a_full_index_is_not_ok(tmp_path: Path, key: str | None) -> None:
    """A log truncated to zero bytes beside an index naming 5 records lost them all."""
    path = write_log(tmp_path, 5, key)
    path.write_bytes(b"")
    with ConversationCodec(path, encryption_key=key) as codec:
        report = codec.verify()
    assert not report.ok
    assert [p.kind for p in report.problems] == ["index-ahead"]


def test_removed_dictionary_record_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    """Cutting the dictionary record out leaves authentic records nobody can decompress:
    one "damaged" problem at the first of them, not a torn tail."""
    from conversation_codec.compression import TRAIN_AFTER

    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.extend(messages(TRAIN_AFTER))
        codec.extend(messages(40, start=TRAIN_AFTER))
        d0, d1 = codec.storage.index.dict_span
    assert (d0, d1) != (0, 0)
    data = path.read_bytes()
    path.write_bytes(data[:d0] + data[d1:])
    Path(f"{path}.idx").unlink()
    with ConversationCodec(path, encryption_key=KEY) as codec:
        problems = codec.verify().problems
    damage = [p for p in problems if p.is_damage]
    assert [p.kind for p in damage] == ["damaged"], problems
    assert damage[0].offset == d0


def _damage_record(path: Path, span: tuple[int, int]) -> None:
    data = bytearray(path.read_bytes())
    data[span[0] + 5 : span[0] + 9] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))


def test_salvage_reports_a_lost_last_record(tmp_path: Path, key: str | None) -> None:
    """The index counts the records past the last one recovered: a damaged last record of
    five is seq 4 lost, not "nothing lost"; a one-record log with nothing recovered is seq
    0 lost."""
    path = write_log(tmp_path, 5, key)
    _damage_record(path, spans_of(path, key)[-1])
    report = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert (report.recovered, report.lost_seqs, report.more_lost) == (4, (4,), False)
    one = write_log(tmp_path / "one", 1, key) if (tmp_path / "one").mkdir() is None else None
    assert one is not None
    _damage_record(one, spans_of(one, key)[0])
    report = salvage(one, tmp_path / "one" / "rescued.log", encryption_key=key)
    assert (report.recovered, report.lost_seqs, report.more_lost) == (0, (0,), False)


def test_salvage_says_when_it_cannot_count_the_lost(tmp_path: Path, key: str | None) -> None:
    """Damage at the end and no index to count what it held: salvage claims no number."""
    path = write_log(tmp_path, 5, key)
    spans = spans_of(path, key)
    _damage_record(path, spans[-1])
    _damage_record(path, spans[-2])
    Path(f"{path}.idx").unlink()
    report = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert (report.recovered, report.lost_seqs, report.more_lost) == (3, (), True)
    # The gaps below the last record recovered are still counted exactly.
    path = write_log(tmp_path / "mid", 5, key) if (tmp_path / "mid").mkdir() is None else None
    assert path is not None
    _damage_record(path, spans_of(path, key)[2])
    Path(f"{path}.idx").unlink()
    report = salvage(path, tmp_path / "mid" / "rescued.log", encryption_key=key)
    assert (report.recovered, report.lost_seqs, report.more_lost) == (4, (2,), False)


def test_an_authentic_but_unreadable_message_is_damage(tmp_path: Path) -> None:
    """A plain record line whose message nests past the limit (FORMAT.md §5.2) is in place
    but unreadable: verify() reports it once as damage, salvage() copies the others and
    raises nothing."""
    path = write_log(tmp_path, 3, None)
    deep = "[" * 100 + "]" * 100
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"message":{', b'"message":{"deep":' + deep.encode() + b",", 1)
    path.write_bytes(b"".join(lines))
    Path(f"{path}.idx").unlink()
    with ConversationCodec(path) as codec:
        report = codec.verify()
    assert [p.kind for p in report.problems if p.is_damage] == ["damaged"], report.problems
    rescued = salvage(path, tmp_path / "rescued.log")
    assert rescued.recovered == 2 and rescued.lost_seqs == (1,)


IMAGE = "data:image/png;base64,iVBORw0KGgo" + "A" * 3000 + "="
PICTURE = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}


def write_with_blob(tmp_path: Path, key: str | None) -> tuple[Path, Path]:
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key, attachments="external") as codec:
        codec.extend([*messages(2), PICTURE])
    [blob] = Path(str(path) + ".blobs").iterdir()
    return path, blob


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
@pytest.mark.parametrize("attachments", ["keep", "external"])
def test_verify_checks_the_blobs_the_log_refers_to(
    tmp_path: Path, key: str | None, damage: str, attachments: str
) -> None:
    """Outside review (bad inputs) 9: verify() said ok while load() failed."""
    path, blob = write_with_blob(tmp_path, key)
    with ConversationCodec(path, encryption_key=key, attachments=attachments) as codec:
        assert codec.verify().ok and codec.verify().problems == ()
    if damage == "missing":
        blob.unlink()
    else:
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with ConversationCodec(path, encryption_key=key, attachments=attachments) as codec:
        report = codec.verify()
    assert snapshot(tmp_path) == before
    assert not report.ok and report.records == 3
    [problem] = report.problems
    assert problem.kind == ("blob-missing" if damage == "missing" else "blob-damaged")
    assert blob.name in problem.detail
    assert "record 2" in problem.detail


def test_salvage_carries_the_blobs(tmp_path: Path, key: str | None) -> None:
    """Outside review (bad inputs) 3: the rescued log referred to blobs it did not have."""
    path, blob = write_with_blob(tmp_path, key)
    report = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert report.recovered == 3 and report.problems == ()
    assert [p.name for p in Path(str(tmp_path / "rescued.log.blobs")).iterdir()] == [blob.name]
    assert (
        oct(Path(str(tmp_path / "rescued.log.blobs"), blob.name).stat().st_mode & 0o777) == "0o600"
    )
    with ConversationCodec(tmp_path / "rescued.log", encryption_key=key) as codec:
        assert codec.load() == [*messages(2), PICTURE]
        assert codec.verify().ok


def test_salvage_reports_a_blob_it_cannot_rescue(tmp_path: Path, key: str | None) -> None:
    path, blob = write_with_blob(tmp_path, key)
    blob.unlink()
    report = salvage(path, tmp_path / "rescued.log", encryption_key=key)
    assert report.recovered == 3  # the record is intact; its attachment is reported lost
    [problem] = report.problems
    assert problem.kind == "blob-missing" and blob.name in problem.detail
    with ConversationCodec(tmp_path / "rescued.log", encryption_key=key) as codec:
        assert codec.get(0) == messages(2)[0]
        assert [p.kind for p in codec.verify().problems] == ["blob-missing"]


def test_reads_after_verify_still_refuse_damage_it_stopped_at(
    tmp_path: Path, key: str | None
) -> None:
    """verify() reads up to the damage and stops there; the same codec's later reads must
    not take that partial view for the log (the counters did not move): a damaged last
    record, committed under "fsync", raised for a fresh codec but read as a shorter
    history after verify() (found while fixing plain-log recovery)."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, encryption_key=key) as codec:  # "fsync": committed
        codec.extend(messages(5))
    start, end = spans_of(path, key)[-1]
    with open(path, "r+b") as f:  # inside the last record: its JSON, or its sealed bytes
        f.seek((start + end) // 2)
        f.write(b"\x00")
    with ConversationCodec(path, encryption_key=key) as codec:
        assert not codec.verify().ok
        with pytest.raises(CorruptRecordError):
            codec.load()
        with pytest.raises(CorruptRecordError):
            codec.tail(2)

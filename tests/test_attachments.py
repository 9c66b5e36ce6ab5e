"""Attachments: strip to placeholders, or move into a sealed, deduplicated blob store and
restore the exact original bytes; the plaintext of a sealed blob never reaches the disk."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

import _spec_blobs as spec_blobs
from _spec_reader import read as spec_read
from conversation_codec import ConversationCodec, DecryptionError, FileIO, salvage
from conversation_codec.attachments import (
    ATTACHMENTS_KEY,
    BlobStore,
    MissingBlobError,
    apply_mode,
    externalize,
    references,
    restore,
    strip_attachments,
)

from conftest import KEY, OTHER_KEY

_RAW = random.Random(7).randbytes(2 * 1024 * 1024)  # a 2 MB "image": incompressible
_B64 = base64.b64encode(_RAW).decode("ascii")


def _image_message(b64: str = _B64, text: str = "What is in this picture?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {
                "type": "image_url",
                "image_url": {"url": f"data:image/png;base64,{b64}", "detail": "high"},
            },
        ],
    }


def _size(message: dict[str, Any]) -> int:
    import json

    return len(json.dumps(message))


@pytest.fixture(params=["sealed", "plaintext"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return BlobStore.for_key(
        tmp_path / "chat.log.blobs", KEY if request.param == "sealed" else None
    )


# -- strip -----------------------------------------------------------------------------


def test_strip_replaces_a_2mb_image_with_a_small_placeholder() -> None:
    message = _image_message()
    stripped = strip_attachments(message)
    assert _size(stripped) < 400 < 2 * 1024 * 1024 < _size(message)
    url = stripped["content"][1]["image_url"]["url"]
    assert (
        url == f"cc-stripped:image/png;bytes={len(_RAW)};sha256={hashlib.sha256(_RAW).hexdigest()}"
    )
    assert stripped["content"][1]["image_url"]["detail"] == "high"
    assert stripped["content"][0] == message["content"][0]
    assert stripped[ATTACHMENTS_KEY] == {"stripped": 1}
    assert message == _image_message()  # the input is not modified
    assert strip_attachments(stripped) == stripped  # idempotent
    assert apply_mode(message, "strip") == stripped
    assert apply_mode(message, "keep") is message


PDF = base64.b64encode(b"%PDF-1.4 tiny").decode()
WAV = base64.b64encode(b"RIFF....WAVE").decode()


@pytest.mark.parametrize(
    ("part", "path", "media"),
    [
        (
            {"type": "image_url", "image_url": f"data:image/jpeg;base64,{PDF}"},
            ("image_url",),
            "image/jpeg",
        ),
        (
            {"type": "input_image", "image_url": f"data:image/webp;base64,{PDF}"},
            ("image_url",),
            "image/webp",
        ),
        (
            {"type": "input_file", "file_data": f"data:application/pdf;base64,{PDF}"},
            ("file_data",),
            "application/pdf",
        ),
        (
            {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}"}},
            ("file", "file_data"),
            "application/pdf",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}},
            ("input_audio", "data"),
            "audio/wav",
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": PDF}},
            ("source", "data"),
            "image/gif",
        ),
        (
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            },
            ("source", "data"),
            "application/pdf",
        ),
    ],
)
def test_every_attachment_slot_is_found(
    part: dict[str, Any], path: tuple[str, ...], media: str, tmp_path: Path
) -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "see"}, part]}
    value: Any = strip_attachments(message)["content"][1]
    for key in path:
        value = value[key]
    assert value.startswith(f"cc-stripped:{media};bytes=")
    store = BlobStore.for_key(tmp_path / "blobs", KEY)
    assert restore(externalize(message, store), store) == message


def test_nested_attachments_in_tool_results_are_found() -> None:
    message = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "t",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PDF},
                    }
                ],
            }
        ],
    }
    stripped = strip_attachments(message)
    assert stripped["content"][0]["content"][0]["source"]["data"].startswith("cc-stripped:")


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "data:image/png;base64,AAAA is just text here"},
        {"role": "user", "content": [{"type": "text", "text": "data:image/png;base64,AAAA"}]},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
        },
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "url", "url": "https://x/a"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": '{"data": "AAAA"}'},
        {"role": "user", "content": None, "meta": {"data": "AAAA", "file": "x"}},
    ],
)
def test_text_and_remote_urls_are_left_alone(message: dict[str, Any], tmp_path: Path) -> None:
    assert strip_attachments(message) == message
    store = BlobStore.for_key(tmp_path / "blobs", KEY)
    assert externalize(message, store) == message
    assert not (tmp_path / "blobs").exists()


# -- external --------------------------------------------------------------------------


def test_external_moves_a_2mb_image_out_and_restores_exact_bytes(store: BlobStore) -> None:
    message = _image_message()
    external = externalize(message, store)
    assert _size(external) < 400
    assert external[ATTACHMENTS_KEY] == {"external": 1}
    (name,) = references(external)
    assert external["content"][1]["image_url"]["url"] == f"cc-blob:{name}data:image/png;base64,"
    assert store.names() == {name}
    # Stored as the decoded bytes (+1 tag byte, + Fernet overhead when sealed), not base64.
    blob = store.directory / name
    assert len(_RAW) < blob.stat().st_size < len(_RAW) + 200
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    restored = restore(external, store)
    assert restored == message
    assert (
        restored["content"][1]["image_url"]["url"].encode()
        == f"data:image/png;base64,{_B64}".encode()
    )
    assert ATTACHMENTS_KEY not in restored
    assert apply_mode(message, "external", store) == external


def test_identical_images_are_stored_once(store: BlobStore) -> None:
    first = externalize(_image_message(text="one"), store)
    second = externalize(_image_message(text="two"), store)
    both = {"role": "user", "content": [*_image_message()["content"], *_image_message()["content"]]}
    third = externalize(both, store)
    assert references(first) == references(second) == references(third)
    assert len(store.names()) == 1
    assert third[ATTACHMENTS_KEY] == {"external": 2}
    assert restore(third, store) == both
    other = externalize(_image_message(_B64[:-8] + "AAAAAAAA"), store)
    assert len(store.names()) == 2 and references(other) != references(first)


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,aGVsbG8",  # missing padding: not canonical
        "data:image/png;base64,aGVs\nbG8=",  # a line break inside
        "data:image/png;base64,aGVsbG8-_w==",  # urlsafe alphabet
        "data:text/plain,hello%20world",  # not base64 at all
        "data:image/png;base64,",  # empty
    ],
)
def test_non_canonical_data_is_restored_verbatim(store: BlobStore, url: str) -> None:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    external = externalize(message, store)
    assert external["content"][0]["image_url"]["url"].startswith("cc-blob:")
    assert restore(external, store) == message


def test_sealed_blob_plaintext_never_reaches_the_disk(tmp_path: Path) -> None:
    store = BlobStore.for_key(tmp_path / "chat.log.blobs", KEY)
    with ConversationCodec(tmp_path / "chat.log", encryption_key=KEY) as codec:
        codec.append(externalize(_image_message(), store))
        stored = codec.get(0)
    assert restore(stored, store) == _image_message()
    probes = [
        _RAW[1000:1032],
        _RAW[-32:],
        _B64[5000:5040].encode(),
        base64.urlsafe_b64encode(_RAW[999:1032]),
    ]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4  # log, index, lock, blob
    for path in files:
        data = path.read_bytes()
        assert not any(probe in data for probe in probes), path


def test_plaintext_store_keeps_plaintext(tmp_path: Path) -> None:
    store = BlobStore.for_key(tmp_path / "blobs", None)
    externalize(_image_message(), store)
    (blob,) = (tmp_path / "blobs").iterdir()
    assert _RAW[1000:1032] in blob.read_bytes()  # as documented: a plaintext log's blobs


def test_blob_names_are_keyed_not_plain_hashes(tmp_path: Path) -> None:
    a = BlobStore.for_key(tmp_path / "a", KEY)
    b = BlobStore.for_key(tmp_path / "b", OTHER_KEY)
    name = a.put(b"same picture")
    assert name != b.put(b"same picture")
    assert name != hashlib.sha256(b"same picture").hexdigest()
    assert name != hashlib.sha256(b"\x01same picture").hexdigest()
    assert a.get(name) == b"same picture"


def test_a_wrong_key_or_a_swapped_blob_fails_opaquely(tmp_path: Path) -> None:
    store = BlobStore.for_key(tmp_path / "blobs", KEY)
    one, two = store.put(b"one"), store.put(b"two")
    with pytest.raises(DecryptionError, match="does not open"):
        BlobStore.for_key(tmp_path / "blobs", OTHER_KEY).get(one)
    assert BlobStore.for_key(tmp_path / "blobs", [OTHER_KEY, KEY]).get(one) == b"one"  # rotation
    (tmp_path / "blobs" / one).write_bytes((tmp_path / "blobs" / two).read_bytes())
    with pytest.raises(DecryptionError, match="does not hold the data"):
        store.get(one)
    data = bytearray((tmp_path / "blobs" / two).read_bytes())
    data[40] ^= 1
    (tmp_path / "blobs" / two).write_bytes(bytes(data))
    with pytest.raises(DecryptionError):
        store.get(two)


def test_missing_blobs_and_bad_names(store: BlobStore) -> None:
    external = externalize(_image_message(), store)
    store.clear()
    assert not store.directory.exists()
    with pytest.raises(MissingBlobError, match="missing"):
        restore(external, store)
    with pytest.raises(ValueError, match="not a blob name"):
        store.get("../chat.log")
    assert "../chat.log" not in store


def test_delete_unreferenced_keeps_only_what_messages_use(store: BlobStore) -> None:
    kept = externalize(_image_message(_B64[:4000]), store)
    dropped = externalize(_image_message(_B64[4000:8000]), store)
    (store.directory / ".tmp-0123456789abcdef").write_bytes(b"leftover")
    os.utime(store.directory / ".tmp-0123456789abcdef", (1, 1))
    (store.directory / ".tmp-fresh").write_bytes(b"in flight")
    assert store.delete_unreferenced(references(kept)) == 1
    assert store.names() == references(kept)
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [*references(kept), ".tmp-fresh"]
    )
    assert restore(kept, store) == _image_message(_B64[:4000])
    with pytest.raises(MissingBlobError):
        restore(dropped, store)


def test_restore_leaves_other_flags_and_plain_messages_alone(store: BlobStore) -> None:
    plain = {"role": "user", "content": "hi"}
    assert restore(plain, store) is plain
    mixed = externalize(_image_message(), store)
    mixed["content"].append(_image_message(PDF)["content"][1])
    mixed = strip_attachments(mixed)
    assert mixed[ATTACHMENTS_KEY] == {"external": 1, "stripped": 1}
    restored = restore(mixed, store)
    assert restored[ATTACHMENTS_KEY] == {"stripped": 1}
    assert restored["content"][1] == _image_message()["content"][1]
    assert restored["content"][2]["image_url"]["url"].startswith("cc-stripped:image/png;bytes=")


def test_modes_are_checked(store: BlobStore) -> None:
    with pytest.raises(ValueError, match='"keep", "strip" or "external"'):
        apply_mode({}, "drop")
    with pytest.raises(ValueError, match="needs a BlobStore"):
        apply_mode({}, "external")
    with pytest.raises(ValueError, match="both seal and unseal"):
        BlobStore(store.directory, lambda b: b, None, b"")
    assert "KEY" not in repr(store) and KEY not in repr(store)


# --- through the codec: ConversationCodec(attachments=...) ------------------------------

IMAGE = os.urandom(2 * 1024 * 1024)


DATA_URL = "data:image/png;base64," + base64.b64encode(IMAGE).decode()


def image_message(text: str = "what is in this picture?") -> dict[str, object]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": DATA_URL}},
        ],
    }


def files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_strip_keeps_the_log_small(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "c.log", encryption_key=KEY, attachments="strip") as c:
        c.append(image_message())
        [stored] = c.load() or []
    assert files_size(tmp_path) < 10_000
    assert DATA_URL not in str(stored)
    assert hashlib.sha256(IMAGE).hexdigest() in str(stored)


def test_external_restores_exact_bytes_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as c:
        c.append(image_message("first"))
        c.append(image_message("same picture again"))
        assert os.path.getsize(path) < 10_000
        blobs = list((tmp_path / "c.log.blobs").iterdir())
        assert len(blobs) == 1  # stored once
        assert c.load() == [image_message("first"), image_message("same picture again")]
        assert c.get(0) == image_message("first")
        history = c.load() or []
        inode = path.stat().st_ino
        history.append({"role": "assistant", "content": "a cat"})
        c.save(history)  # the restored history is a prefix: nothing is rewritten
        assert path.stat().st_ino == inode
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert IMAGE[:64] not in raw and DATA_URL[30:94].encode() not in raw
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as c:
        for _ in range(3):
            c.pop()
        c.compact()  # the blob is no longer referenced
        assert list((tmp_path / "c.log.blobs").iterdir()) == []
        c.append(image_message())
        c.clear()
    assert not (tmp_path / "c.log.blobs").exists() or not any((tmp_path / "c.log.blobs").iterdir())


def test_bad_attachment_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attachments"):
        ConversationCodec(tmp_path / "c.log", attachments="inline")
    with pytest.raises(ValueError, match="password"):
        ConversationCodec(tmp_path / "c.log", password="pw", attachments="external")


IMAGE_URL = "data:image/png;base64," + base64.b64encode(os.urandom(4096)).decode()


def test_rotation_reseals_external_attachments(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]}
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.append(message)
        codec.rotate_key(OTHER_KEY)
        assert codec.load() == [message]
    with ConversationCodec(path, encryption_key=OTHER_KEY, attachments="external") as codec:
        assert codec.load() == [message]
    assert len(list((tmp_path / "c.log.blobs").iterdir())) == 1  # the old-key blob is gone


def test_clear_removes_blobs_while_still_holding_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]}
    blobs, lock = Path(str(path) + ".blobs"), Path(str(path) + ".lock")
    seen: list[bool] = []

    class Watch(FileIO):  # the blob store syncs the folder once its directory is gone
        def fsync_dir(self, folder: str | os.PathLike[str] | int) -> None:
            if not seen and not blobs.exists():
                seen.append(lock.exists())
            super().fsync_dir(folder)

    with ConversationCodec(path, encryption_key=KEY, attachments="external", io=Watch()) as codec:
        codec.append(message)
        assert blobs.is_dir()
        codec.clear()
    assert seen == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["c.log.blobs"])


# --- a log that has a blob store, opened without attachments="external" -------------------


def _with_blob(path: Path, key: str | None = KEY) -> dict[str, object]:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]}
    with ConversationCodec(path, encryption_key=key, attachments="external") as codec:
        codec.append(message)
    return message


@pytest.mark.parametrize("attachments", ["keep", "strip", "external"])
def test_rotation_reseals_the_blobs_whatever_the_option(tmp_path: Path, attachments: str) -> None:
    """Outside review (bad inputs) 1: the blobs moved to the new key only with "external"."""
    path = tmp_path / "c.log"
    message = _with_blob(path)
    with ConversationCodec(path, encryption_key=KEY, attachments=attachments) as codec:
        codec.rotate_key(OTHER_KEY)
        assert codec.load() == [message]
    with ConversationCodec(path, encryption_key=OTHER_KEY) as codec:  # the new key alone
        assert codec.load() == [message]
        assert codec.verify().ok
    assert len(list((tmp_path / "c.log.blobs").iterdir())) == 1  # the old-key blob is gone


@pytest.mark.parametrize("key", [KEY, None], ids=["sealed", "plaintext"])
def test_a_log_with_a_blob_store_keeps_using_it_without_the_option(
    tmp_path: Path, key: str | None
) -> None:
    """Its attachments are restored on read, and new ones go to the store too: a save() of
    the restored history appends, never rewrites the images inline."""
    path = tmp_path / "c.log"
    message = _with_blob(path, key)
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.get(0) == message and codec.tail(1) == [message]
        history = codec.load() or []
        assert history == [message]
        inode = path.stat().st_ino
        codec.save([*history, image_message("again")])
        assert path.stat().st_ino == inode  # appended
        assert codec.load() == [message, image_message("again")]
    assert os.path.getsize(path) < 10_000  # the 2 MB image went to the blob store
    assert len(list((tmp_path / "c.log.blobs").iterdir())) == 2


def test_a_rotation_that_cannot_open_a_blob_changes_nothing(tmp_path: Path) -> None:
    """Never a state where the new key alone cannot read everything: refused, not half done."""
    path = tmp_path / "c.log"
    first = _with_blob(path)
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        codec.append(image_message())
    blobs = Path(str(path) + ".blobs")
    lost = max(blobs.iterdir(), key=lambda p: p.stat().st_size)  # the 2 MB image's blob
    saved = lost.read_bytes()
    lost.unlink()
    log_bytes = path.read_bytes()
    with ConversationCodec(path, encryption_key=KEY) as codec:
        with pytest.raises(MissingBlobError, match=lost.name):
            codec.rotate_key(OTHER_KEY)
        assert codec.get(0) == first  # still under the old key
    assert path.read_bytes() == log_bytes
    lost.write_bytes(saved)  # put back from a backup: now it goes through
    with ConversationCodec(path, encryption_key=KEY) as codec:
        codec.rotate_key(OTHER_KEY)
    with ConversationCodec(path, encryption_key=OTHER_KEY) as codec:
        assert codec.load() == [first, image_message()]
    assert len(list(blobs.iterdir())) == 2


@pytest.mark.parametrize("op", ["rotate_key", "prune"])
def test_a_codec_opened_before_the_blob_store_existed_moves_its_blobs(
    tmp_path: Path, op: str
) -> None:
    """A long-lived codec ("keep") opened before another writer gave the log its blob store
    uses that store in a rewrite: a rotation re-seals the blobs under the new key, a prune
    keeps those still referred to (review of the blob-store detection)."""
    path = tmp_path / "chat.log"
    early = ConversationCodec(path, encryption_key=KEY)
    early.append({"role": "system", "content": "hi"}, timestamp=1)
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as other:
        other.append(_image_message(), timestamp=2)
    if op == "rotate_key":
        early.rotate_key(OTHER_KEY)
    else:
        assert early.prune(before=1.5) == 1
    early.close()
    key = OTHER_KEY if op == "rotate_key" else KEY
    with ConversationCodec(path, encryption_key=key) as codec:
        assert codec.load()[-1] == _image_message()
        assert codec.verify().ok


def test_a_codec_opened_before_the_blob_store_existed_reads_the_attachments(
    tmp_path: Path,
) -> None:
    """Once another writer created the blob store, an earlier codec's reads restore the
    attachments (load, tail, get, iteration, export), not the ``cc-blob:`` reference."""
    path = tmp_path / "chat.log"
    early = ConversationCodec(path, encryption_key=KEY)
    early.append({"role": "system", "content": "hi"})
    assert early.load() == [{"role": "system", "content": "hi"}]
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as other:
        other.append(_image_message())
    assert early.load()[-1] == _image_message()
    assert early.tail(1) == [_image_message()] and early.get(-1) == _image_message()
    assert list(early)[-1] == _image_message()
    early.export(tmp_path / "out.jsonl")
    assert "cc-blob:" not in (tmp_path / "out.jsonl").read_text()
    early.close()


# --- FORMAT.md §15, read back by an independent reader (tests/_spec_blobs.py) -------------

_PNG = random.Random(15).randbytes(3000)
_PDF = b"%PDF-1.4 " + random.Random(16).randbytes(500)


def _every_slot_message(note: str) -> dict[str, Any]:
    """One of each §15.3 slot, tag 0x01 (canonical base64) and tag 0x00 (anything else)."""
    png = base64.b64encode(_PNG).decode()
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": note},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            {"type": "image_url", "image_url": "https://example.com/cat.png"},  # left alone
            {"type": "input_image", "image_url": f"data:image/png;base64,{png}"},  # same blob
            {"type": "file", "file": {"file_data": "data:text/plain,hello%20world"}},
            {"type": "input_file", "file_data": base64.b64encode(_PDF).decode()},  # bare
            {"type": "input_audio", "input_audio": {"data": "UklGRg", "format": "wav"}},
            {
                "type": "tool_result",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": png},
                    }
                ],
            },
        ],
    }


@pytest.mark.parametrize("keys", ["sealed", "plain", "rotated"])
def test_an_independent_reader_restores_attachments_from_format_md_15(
    tmp_path: Path, keys: str
) -> None:
    """FORMAT.md §15 suffices: a reader built from it alone (stdlib HMAC, cryptography's
    HKDF and Fernet; tests/_spec_blobs.py) reads the library's blob store back, recovers
    every attachment's exact original value and checks every blob's name."""
    path = tmp_path / "chat.log"
    folder = tmp_path / "chat.log.blobs"
    key = None if keys == "plain" else KEY
    messages = [_every_slot_message("first"), _every_slot_message("again")]
    with ConversationCodec(path, encryption_key=key, attachments="external") as codec:
        codec.extend(messages)
        if keys == "rotated":
            codec.rotate_key(OTHER_KEY)
            messages.append(_every_slot_message("after the rotation"))
            codec.append(messages[-1])
    log_key = OTHER_KEY if keys == "rotated" else key
    stored = spec_read(path.read_bytes(), key=log_key).messages
    spec_keys = {"sealed": [KEY], "plain": [], "rotated": [KEY, OTHER_KEY]}[keys]

    restored = [spec_blobs.restore(m, folder, spec_keys) for m in stored]
    assert restored == messages
    assert all(m["_cc_attachments"] == {"external": 6} for m in stored)
    url = stored[0]["content"][1]["image_url"]["url"]
    assert url.startswith("cc-blob:") and url.endswith("data:image/png;base64,")
    assert len(url) == len("cc-blob:") + 64 + len("data:image/png;base64,")
    assert stored[0]["content"][2] == messages[0]["content"][2]  # an http URL stays

    # Every file is a blob a message refers to, named by the HMAC of its plaintext under
    # name_key; sealed ones are whole Fernet tokens (0x80 first); 4 distinct attachments.
    names = {n for m in stored for n in spec_blobs.references(m)}
    assert {p.name for p in folder.iterdir()} == names and len(names) == 4
    name_key = spec_blobs.blob_keys([log_key])[0][1] if log_key else b""
    plaintexts = {}
    for name in names:
        plaintext = spec_blobs.open_blob(folder, name, spec_keys)
        assert spec_blobs.blob_name(name_key, plaintext) == name
        assert ((folder / name).read_bytes()[:1] == b"\x80") == (key is not None)
        plaintexts[plaintext[:1]] = plaintexts.get(plaintext[:1], 0) + 1
    assert plaintexts == {b"\x01": 2, b"\x00": 2}  # PNG, PDF; the text, unpadded audio
    assert b"\x00data:text/plain,hello%20world" in {
        spec_blobs.open_blob(folder, n, spec_keys) for n in names
    }
    if keys == "rotated":  # the old key's blob_key opens none of them
        with pytest.raises(spec_blobs.BlobRefused, match="DecryptionError"):
            spec_blobs.open_blob(folder, sorted(names)[0], [KEY])


def _plain_log_referring_to(tmp_path: Path, reference: str) -> Path:
    """A plain log (anyone can edit one) whose only attachment slot holds ``reference``."""
    path = tmp_path / "chat.log"
    with ConversationCodec(path, attachments="external") as codec:
        codec.append(
            _every_slot_message("x") | {"content": [_every_slot_message("x")["content"][1]]}
        )
    text = path.read_text()
    [name] = spec_blobs.references(spec_read(text.encode()).messages[0])
    path.write_text(text.replace(f"cc-blob:{name}", reference))
    Path(f"{path}.idx").unlink()
    return path


def test_a_reference_that_names_no_blob_is_a_missing_blob(tmp_path: Path) -> None:
    """FORMAT.md §15.4: ``cc-blob:`` not followed by a blob name is refused with the library's
    MissingBlobError, and reported as blob-missing by verify() and salvage() (was a bare
    ValueError from each)."""
    path = _plain_log_referring_to(tmp_path, "cc-blob:../chat.logdata:image/png;base64,")
    before = path.read_bytes()
    with ConversationCodec(path) as codec:
        with pytest.raises(MissingBlobError, match="not a blob name"):
            codec.load()
        kinds = [p.kind for p in codec.verify().problems]
    # (the blob the edited reference named before is one no record refers to now)
    assert [k for k in kinds if k.startswith("blob")] == ["blob-missing", "blob-unreferenced"]
    report = salvage(path, tmp_path / "rescued.log")
    kinds = [p.kind for p in report.problems]
    assert report.recovered == 1 and [k for k in kinds if k.startswith("blob")] == ["blob-missing"]
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "plaintext", [b"\x02tag 2", b"\x00\xff not UTF-8", b""], ids=["tag-2", "not-utf8", "empty"]
)
def test_a_blob_that_holds_no_attachment_is_refused(tmp_path: Path, plaintext: bytes) -> None:
    """FORMAT.md §15.4: a correctly named blob whose tag is neither 0x01 nor 0x00, or whose
    0x00 text is not UTF-8, gives DecryptionError (was a UnicodeDecodeError, or a guess)."""
    name = spec_blobs.blob_name(b"", plaintext)  # a plain log's name key is empty
    path = _plain_log_referring_to(tmp_path, f"cc-blob:{name}")
    (tmp_path / "chat.log.blobs" / name).write_bytes(plaintext)
    with ConversationCodec(path) as codec, pytest.raises(DecryptionError, match="holds no"):
        codec.load()

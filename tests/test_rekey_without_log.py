"""A key rotation or password change of a conversation with no log yet (new, or cleared).

There is nothing to re-seal: the change is the codec's alone, and its next write creates the
log under the new secrets, as a codec opened with them would. On files every part of the
codec that is keyed moves with it, the blob store of ``attachments="external"`` included
(review r2, defect 1 asked whether the file storages share the database's no-log hole: the
keyring did not, the blob store did). The database's side, a rollback, is in
``test_postgres_rollback.py``.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec
from conversation_codec.errors import DecryptionError

from conftest import KEY, OTHER_KEY

LATER = {"role": "user", "content": "after the change"}


def _image_message() -> dict[str, object]:
    data = base64.b64encode(random.Random(7).randbytes(40_000)).decode()
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        ],
    }


def _without_log(codec: ConversationCodec, history: str, message: dict[str, object]) -> None:
    if history == "cleared":
        codec.append(message)
        codec.clear()


@pytest.mark.parametrize("history", ["new", "cleared"])
def test_a_rotation_with_no_log_yet_moves_the_blob_store_to_the_new_key(
    tmp_path: Path, history: str
) -> None:
    """The attachments written after it are sealed with the new key, as the log is: a codec
    opened with the new key reads them back (before: the log under the new key, its blobs
    under the old one, and no key opened both)."""
    path, image = tmp_path / "c.log", _image_message()
    with ConversationCodec(path, encryption_key=KEY, attachments="external") as codec:
        _without_log(codec, history, image)
        codec.rotate_key(OTHER_KEY)
        codec.append(image)
        assert codec.load() == [image]
    with ConversationCodec(path, encryption_key=OTHER_KEY, attachments="external") as again:
        assert again.load() == [image]
        assert again.verify().ok
    with pytest.raises(DecryptionError):
        ConversationCodec(path, encryption_key=KEY)


@pytest.mark.parametrize("history", ["new", "cleared"])
@pytest.mark.parametrize("change", ["rotate_key", "change_password"])
def test_a_change_of_secrets_with_no_log_yet_holds_for_the_log_written_next(
    tmp_path: Path, change: str, history: str
) -> None:
    """As a codec opened with the new secrets would: the log written next opens with them,
    not with the old ones (on files every write commits when it returns, so a caller's
    transaction left by an exception keeps the change too, as it keeps the rest: README)."""
    old, new = (
        ({"password": "old pw"}, {"password": "new pw"})
        if change == "change_password"
        else ({"encryption_key": KEY}, {"encryption_key": OTHER_KEY})
    )
    path = tmp_path / "c.log"
    with ConversationCodec(path, **old) as codec:  # type: ignore[arg-type]
        _without_log(codec, history, {"role": "user", "content": "before"})
        if change == "change_password":
            codec.change_password("old pw", "new pw")
        else:
            codec.rotate_key(OTHER_KEY)
        codec.append(LATER)
        assert codec.load() == [LATER]
    with ConversationCodec(path, **new) as again:  # type: ignore[arg-type]
        assert again.load() == [LATER]
    with pytest.raises(DecryptionError):
        ConversationCodec(path, **old)  # type: ignore[arg-type]

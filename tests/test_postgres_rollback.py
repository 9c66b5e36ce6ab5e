"""A PostgreSQL transaction left by an exception restores the codec's secrets, whatever it wrote.

``rotate_key()`` and ``change_password()`` swap the codec's key or password before they
rewrite the log; on a database the rewrite commits when the caller's outermost
``transaction()`` ends, and a rollback must put the old secrets back. A conversation with no
log yet (new, or cleared) has nothing to rewrite: the swap is all there is, the transaction
writes nothing, and it must be undone all the same, or the codec's next write would create
the log under the key the caller was told never took effect (outside review r2, defect 1).
"""

from __future__ import annotations

import uuid

import pytest

from conversation_codec import ConversationCodec, ConversationStore
from conversation_codec.errors import DecryptionError

from conftest import KEY, OTHER_KEY

pytestmark = pytest.mark.postgres

FIRST = {"role": "user", "content": "before the clear"}
LATER = {"role": "user", "content": "after the rolled-back change"}


class Rollback(Exception):
    """What the caller's transaction fails with."""


def _stores(url: str, secrets: str) -> tuple[ConversationStore, ConversationStore]:
    """A store with the conversation's current secrets, and one with the changed ones."""
    if secrets == "password":
        return ConversationStore(url, password="old pw"), ConversationStore(url, password="new pw")
    index = secrets == "key+search_index"
    return (
        ConversationStore(url, encryption_key=KEY, search_index=index),
        ConversationStore(url, encryption_key=OTHER_KEY, search_index=index),
    )


def _change(codec: ConversationCodec, secrets: str) -> None:
    if secrets == "password":
        codec.change_password("old pw", "new pw")
    else:
        codec.rotate_key(OTHER_KEY)


def _without_log(store: ConversationStore, cid: str, history: str) -> ConversationCodec:
    """A codec on a conversation with no log: never written, or cleared."""
    codec = store.open(cid)
    if history == "cleared":
        codec.append(FIRST)
        codec.clear()
    return codec


@pytest.mark.parametrize("history", ["new", "cleared"])
@pytest.mark.parametrize("secrets", ["key", "key+search_index", "password"])
def test_a_rolled_back_change_of_secrets_with_no_log_yet_keeps_the_old_ones(
    postgres_url: str, secrets: str, history: str
) -> None:
    """Nothing of the change is in the database, so nothing of it stays in the codec: its
    next write creates the log under the old secrets, which open it; the new ones do not."""
    old, new = _stores(postgres_url, secrets)
    cid = f"rb-{uuid.uuid4().hex[:12]}"
    codec = _without_log(old, cid, history)
    with pytest.raises(Rollback), codec.transaction():
        _change(codec, secrets)
        raise Rollback
    codec.append(LATER)
    assert codec.load() == [LATER]
    codec.close()
    with old.open(cid) as again:
        assert again.load() == [LATER]
        assert [hit.message for hit in again.search("rolled")] == [LATER]
    with pytest.raises(DecryptionError):
        new.open(cid)


@pytest.mark.parametrize("history", ["new", "cleared"])
@pytest.mark.parametrize("secrets", ["key", "password"])
def test_a_committed_change_of_secrets_with_no_log_yet_takes_effect(
    postgres_url: str, secrets: str, history: str
) -> None:
    """The counterpart: committed, the change holds for the log the next write creates, as
    it would for a codec opened with the new secrets (and as on files)."""
    old, new = _stores(postgres_url, secrets)
    cid = f"rb-{uuid.uuid4().hex[:12]}"
    codec = _without_log(old, cid, history)
    with codec.transaction():
        _change(codec, secrets)
    codec.append(LATER)
    codec.close()
    with new.open(cid) as again:
        assert again.load() == [LATER]
    with pytest.raises(DecryptionError):
        old.open(cid)

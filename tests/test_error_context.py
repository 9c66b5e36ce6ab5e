"""No secret stays reachable from an error through ``__context__`` or ``__cause__``.

``raise ... from None`` only hides the chain when printed: the exception being handled stays
on ``__context__``, where error reporters, ``repr`` and pickled or queued exceptions find
it (outside review, sec.md defect 6). A password with a lone surrogate, a message text that
cannot be encoded and the bytes of a non-UTF-8 import source were all held there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conversation_codec import ConversationCodec, ConversationStore, migrate
from conversation_codec.errors import (
    ConversationCodecError,
    FormatError,
    InvalidKeyError,
    NotSerializableError,
)

from conftest import KEY

SECRET = "Passphrase777secret"
BAD = SECRET + "\ud800"  # a lone surrogate: no UTF-8 form


def caught(error: type[Exception], call: Callable[[], object]) -> BaseException:
    with pytest.raises(error) as info:
        call()
    return info.value


def assert_no_chain(exc: BaseException, secret: str = SECRET) -> None:
    assert exc.__context__ is None and exc.__cause__ is None, repr(exc.__context__)
    assert secret not in str(exc) and secret not in repr(exc.args)


def test_password_with_a_lone_surrogate(tmp_path: Path) -> None:
    exc = caught(InvalidKeyError, lambda: ConversationCodec(tmp_path / "a.log", password=BAD))
    assert_no_chain(exc)
    exc = caught(InvalidKeyError, lambda: ConversationStore(tmp_path / "s", password=BAD))
    assert_no_chain(exc)


def test_change_password_to_one_with_a_lone_surrogate(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "a.log", password="old") as codec:
        codec.append({"role": "user", "content": "hi"})
        exc = caught(InvalidKeyError, lambda: codec.change_password("old", BAD))
    assert_no_chain(exc)


def test_migrate_passwords_with_a_lone_surrogate(tmp_path: Path) -> None:
    src = tmp_path / "h.jsonl"
    src.write_text('{"role": "user", "content": "hi"}\n')
    exc = caught(InvalidKeyError, lambda: migrate(src, log_password=BAD))
    assert_no_chain(exc)
    exc = caught(InvalidKeyError, lambda: migrate(src, encryption_key=KEY, password=BAD))
    assert_no_chain(exc)


def test_message_text_that_cannot_be_encoded(tmp_path: Path) -> None:
    with ConversationCodec(tmp_path / "a.log") as codec:
        exc = caught(NotSerializableError, lambda: codec.append({"role": "user", "content": BAD}))
    assert_no_chain(exc)


def test_import_of_a_source_that_is_not_utf8(tmp_path: Path) -> None:
    src = tmp_path / "h.jsonl"
    src.write_bytes(b'{"role": "user", "content": "' + SECRET.encode() + b'\xff"}\n')
    with ConversationCodec(tmp_path / "a.log") as codec:
        exc = caught(FormatError, lambda: codec.import_(src))
    assert_no_chain(exc)
    assert isinstance(exc, ConversationCodecError)

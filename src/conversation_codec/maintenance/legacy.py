"""Detect and read the legacy history files that ``migrate`` converts into a log.

Pure: this module reads the source file (and, for a password, its ``.salt`` file)
and returns messages; it never writes. Layouts understood, sniffed from the bytes:

====================  ===============================================================
``JSONL``             one JSON object per line; blank lines skipped
``JSON_ARRAY``        ``[{"role", "content", "timestamp", ...}, ...]``
``LANGCHAIN_JSON``    LangChain ``FileChatMessageHistory``: ``[{"type", "data"}, ...]``
``FERNET_JSONL``      the whole file is one Fernet token over JSONL
``FERNET_JSON_ARRAY`` the whole file is one Fernet token over a JSON array
``CODEC_LOG``         already a conversation-codec log; nothing is read (a no-op)
====================  ===============================================================

Timestamps: a message's ``"timestamp"`` that is an ISO-8601 string (naive means UTC)
is removed from the message and becomes the record timestamp, so migrated messages look
like the rest; a missing or unparseable one stays as it was and the record timestamp is
``None``. Messages are then sorted stably by timestamp; an untimed message travels with
the timed message before it. Epoch numbers are not taken as timestamps: their unit
(s, ms, us) would be a guess.

A UTF-8 byte-order mark is skipped; input over :data:`MAX_LEGACY_BYTES` is refused.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .._time import EPOCH, ONE_US
from ..chat_formats import LANGCHAIN_CHUNK_TYPES
from ..crypto import KeyInput, Keyring
from ..errors import DecryptionError, FormatError, KeyRequiredError, StorageError
from ..format.header import LogKind, sniff_log

__all__ = [
    "MAX_LEGACY_BYTES",
    "PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "LegacyFormat",
    "LegacyHistory",
    "detect_format",
    "parse_legacy",
    "read_legacy",
]

MAX_LEGACY_BYTES = 1024**3  # bytes; a larger history must be split before migrating
PBKDF2_ITERATIONS = 480_000  # the legacy app's PBKDF2-HMAC-SHA256 cost for password files
SALT_BYTES = 16  # length of the legacy ``.salt`` file
_FERNET_MIN_BYTES = 73  # version 1 + timestamp 8 + IV 16 + one AES block 16 + HMAC 32
_FERNET_OVERHEAD = 57  # every Fernet token is 57 bytes plus whole 16-byte AES blocks
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF8_CHUNK = 1 << 20  # bytes validated per step, so a 1 GiB file is never copied whole
_SKIP_WS = re.compile(rb"[ \t\r\n]*")
_FERNET_TOKEN = re.compile(rb"[ \t\r\n]*(gA[A-Za-z0-9_-]*={0,2})[ \t\r\n]*")  # 0x80 = "gA.."
_ISO_8601 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,  # int() would accept other scripts' digits too
)
_JSON_TYPE = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


class LegacyFormat(enum.Enum):
    """A history layout that :func:`read_legacy` understands."""

    JSONL = "jsonl"
    JSON_ARRAY = "json-array"
    LANGCHAIN_JSON = "langchain-json"
    FERNET_JSONL = "fernet-jsonl"
    FERNET_JSON_ARRAY = "fernet-json-array"
    CODEC_LOG = "codec-log"
    #: Returned by :func:`detect_format` only: a whole-file Fernet token, whose inner
    #: layout (JSONL or array) is known once decrypted. ``read_legacy`` never returns it.
    FERNET = "fernet"


@dataclass(frozen=True, slots=True)
class LegacyHistory:
    """Messages read from a legacy file, ready for ``ConversationCodec.extend``.

    ``timestamps[i]`` is message ``i``'s time in microseconds since the epoch (UTC),
    or ``None`` when the file did not say. Empty for ``CODEC_LOG``, which is not read.
    """

    format: LegacyFormat
    messages: list[dict[str, Any]]
    timestamps: list[int | None]


def detect_format(data: bytes) -> LegacyFormat:
    """Say which layout ``data`` (a whole file) is in, without decrypting it.

    A JSON array is parsed to tell LangChain files from plain arrays.

    >>> detect_format(b'{"role": "user", "content": "hi"}\\n')
    <LegacyFormat.JSONL: 'jsonl'>

    :raises FormatError: empty, not UTF-8, too large, or not a known layout.
    """
    return _sniff(data, "input")[0]


def parse_legacy(
    data: bytes,
    *,
    legacy_key: KeyInput | None = None,
    password: str | bytes | None = None,
    salt: bytes | None = None,
) -> LegacyHistory:
    """Read a legacy history from the bytes of a whole file (see :func:`read_legacy`).

    ``salt`` is the content of the ``.salt`` file, needed only with ``password``.

    >>> h = parse_legacy(b'[{"role": "user", "content": "hi", "timestamp": "2024-05-01T12:00Z"}]')
    >>> h.format, h.messages
    (<LegacyFormat.JSON_ARRAY: 'json-array'>, [{'role': 'user', 'content': 'hi'}])
    >>> h.timestamps  # microseconds since the epoch, UTC
    [1714564800000000]
    """
    return _parse(data, legacy_key, password, salt, where="input", salt_where="salt")


def read_legacy(
    path: str | os.PathLike[str],
    *,
    legacy_key: KeyInput | None = None,
    password: str | bytes | None = None,
) -> LegacyHistory:
    """Read the legacy history file at ``path``.

    A Fernet-encrypted file is opened with ``legacy_key`` (a Fernet key, or a list of
    keys tried in turn) or with ``password`` and the 16-byte salt in the file beside it
    with the same stem and suffix ``.salt`` (``history.enc`` -> ``history.salt``).
    Keys are ignored for plaintext files.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp, "history.jsonl")
    ...     _ = path.write_text('{"role": "user", "content": "hi"}\\n')
    ...     read_legacy(path).messages
    [{'role': 'user', 'content': 'hi'}]

    :raises FormatError: unrecognised or malformed content, or the salt file is missing.
    :raises KeyRequiredError: the file is encrypted and neither key nor password was given.
    :raises DecryptionError: no key or password given opens it (or it was modified).
    :raises StorageError: the path is missing, a directory, or unreadable.
    """
    path = Path(path)
    data = _read_bounded(path)
    salt_path = path.with_suffix(".salt")
    salt = _read_salt(salt_path) if password is not None else None
    return _parse(data, legacy_key, password, salt, where=str(path), salt_where=str(salt_path))


def _read_bounded(path: Path) -> bytes:
    # fstat first, so an oversized (or sparse) file is refused before any allocation.
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_LEGACY_BYTES + 1) if size <= MAX_LEGACY_BYTES else b""
    except IsADirectoryError:
        raise StorageError(f"{path} is a directory; pass the history file itself") from None
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size > MAX_LEGACY_BYTES or len(data) > MAX_LEGACY_BYTES:
        raise FormatError(_too_large(str(path)))
    return data


def _read_salt(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(SALT_BYTES + 1)  # one more, to notice a file that is not a salt
    except FileNotFoundError:
        return None  # reported only if the password is actually needed
    except OSError as exc:
        raise StorageError(f"cannot read salt file {path}: {exc.strerror or exc}") from exc


def _too_large(where: str) -> str:
    return f"{where} is larger than {MAX_LEGACY_BYTES} bytes (1 GiB); split it before migrating"


def _parse(
    data: bytes,
    legacy_key: KeyInput | None,
    password: str | bytes | None,
    salt: bytes | None,
    *,
    where: str,
    salt_where: str,
) -> LegacyHistory:
    fmt, payload = _sniff(data, where)
    if fmt is LegacyFormat.CODEC_LOG:
        return LegacyHistory(fmt, [], [])
    if fmt is LegacyFormat.FERNET:
        plain = _decrypt(payload, legacy_key, password, salt, where, salt_where)
        where = f"{where} (decrypted)"
        inner, payload = _sniff_text(plain, where, codec_header=False)
        fmt = LegacyFormat.FERNET_JSON_ARRAY
        if inner is LegacyFormat.JSONL:
            fmt = LegacyFormat.FERNET_JSONL
    if fmt is LegacyFormat.LANGCHAIN_JSON or (
        fmt is LegacyFormat.FERNET_JSON_ARRAY and _is_langchain(payload)
    ):
        messages = [_from_langchain(item, i, where) for i, item in enumerate(payload)]
        return LegacyHistory(fmt, messages, [None] * len(messages))
    if fmt in (LegacyFormat.JSONL, LegacyFormat.FERNET_JSONL):
        messages = _parse_jsonl(payload, where)
    else:
        messages = _check_objects(payload, where)
    return _timed(fmt, messages)


def _sniff(data: bytes, where: str) -> tuple[LegacyFormat, Any]:
    """Return the layout and what parsing it needs next (token, text or array)."""
    if len(data) > MAX_LEGACY_BYTES:
        raise FormatError(_too_large(where))
    if sniff_log(data[:64]) in (LogKind.SEALED, LogKind.PLAIN):
        return LegacyFormat.CODEC_LOG, None
    token = _FERNET_TOKEN.fullmatch(data, 3 if data.startswith(_UTF8_BOM) else 0)
    if token is not None:
        return LegacyFormat.FERNET, token.group(1)
    return _sniff_text(data, where, codec_header=True)


def _sniff_text(data: bytes, where: str, *, codec_header: bool) -> tuple[LegacyFormat, Any]:
    body = data[3:] if data.startswith(_UTF8_BOM) else data
    blank = _SKIP_WS.match(body)
    start = blank.end() if blank else 0
    if start == len(body):
        raise FormatError(f"{where} is empty; there is no history to migrate")
    _check_utf8(data, where)  # with the BOM, so offsets count from the start of the file
    if body[start : start + 1] == b"[":
        array = _decode(body, f"{where} is not a valid JSON array")
        return (
            LegacyFormat.LANGCHAIN_JSON if _is_langchain(array) else LegacyFormat.JSON_ARRAY
        ), array
    if body[start : start + 1] == b"{":
        if codec_header and _is_codec_header(body, start):
            return LegacyFormat.CODEC_LOG, None
        return LegacyFormat.JSONL, body
    raise FormatError(
        f"{where} is not a history layout this library reads (JSONL, a JSON array of "
        "messages, a LangChain FileChatMessageHistory file, a whole-file Fernet token, "
        "or a conversation-codec log); convert it to JSONL, one message object per line"
    )


def _check_utf8(data: bytes, where: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for pos in range(0, len(data), _UTF8_CHUNK):
        try:
            decoder.decode(view[pos : pos + _UTF8_CHUNK], final=pos + _UTF8_CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            raise FormatError(
                f"{where} is not UTF-8 text (bad byte near offset {pos + exc.start}); "
                "re-encode it as UTF-8"
            ) from None


def _decode(data: bytes | memoryview, what: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except (ValueError, RecursionError) as exc:  # msgspec.DecodeError is a ValueError
        raise FormatError(f"{what} ({exc}); fix or remove it and retry") from None


def _is_codec_header(body: bytes, start: int) -> bool:
    end = body.find(b"\n", start)
    try:
        first = msgspec.json.decode(body[start:] if end < 0 else body[start:end])
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict) and "conversation_codec" in first


def _parse_jsonl(body: bytes, where: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    view, pos, line_no = memoryview(body), 0, 0
    while pos < len(body):
        end = body.find(b"\n", pos)
        end = len(body) if end < 0 else end
        line, pos, line_no = view[pos:end], end + 1, line_no + 1
        if not _SKIP_WS.fullmatch(line):
            value = _decode(line, f"{where} line {line_no} is not valid JSON")
            if not isinstance(value, dict):
                raise FormatError(
                    f"{where} line {line_no} is {_JSON_TYPE[type(value)]}, not a message "
                    "object; fix or remove that line and retry"
                )
            messages.append(value)
    return messages


def _check_objects(array: list[Any], where: str) -> list[dict[str, Any]]:
    for i, item in enumerate(array):
        if not isinstance(item, dict):
            raise FormatError(
                f"{where}: element {i} of the JSON array is {_JSON_TYPE[type(item)]}, "
                "not a message object; remove it and retry"
            )
    return array


def _decrypt(
    token: bytes,
    legacy_key: KeyInput | None,
    password: str | bytes | None,
    salt: bytes | None,
    where: str,
    salt_where: str,
) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < _FERNET_MIN_BYTES or (len(raw) - _FERNET_OVERHEAD) % 16:
        raise FormatError(
            f"{where} looks like a Fernet token but is truncated or damaged "
            f"({len(token)} base64 characters); restore the complete file"
        )
    if legacy_key is None and password is None:
        raise KeyRequiredError(
            f"{where} is Fernet-encrypted; pass legacy_key= (its Fernet key) or password= "
            "(with its .salt file beside it)"
        )
    # Try the keys before deriving from the password: PBKDF2 costs ~0.3 s, and a
    # missing salt should not fail a file that the key already opens.
    if legacy_key is not None:
        try:
            masters = Keyring.from_input(legacy_key).masters
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"legacy_key: {exc}") from None
        try:
            return MultiFernet([Fernet(base64.urlsafe_b64encode(m)) for m in masters]).decrypt(
                token
            )
        except InvalidToken:
            pass
    if password is not None:
        try:
            return _password_fernet(password, salt, salt_where).decrypt(token)
        except InvalidToken:
            pass
    raise DecryptionError(f"cannot decrypt {where}: wrong key or password, or it was modified")


def _password_fernet(password: str | bytes, salt: bytes | None, salt_where: str) -> Fernet:
    if not isinstance(password, (str, bytes)):
        raise TypeError(f"password must be str or bytes, not {type(password).__name__}")
    if salt is None:
        raise FormatError(
            f"a password needs the salt file {salt_where}, which is missing; put the "
            f"{SALT_BYTES}-byte salt beside the encrypted file, or pass legacy_key="
        )
    if len(salt) != SALT_BYTES:
        raise FormatError(f"{salt_where} is not a {SALT_BYTES}-byte salt; restore the right file")
    secret = password.encode("utf-8") if isinstance(password, str) else password
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=PBKDF2_ITERATIONS)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(secret)))


def _parse_iso(value: str) -> int | None:
    """Return an ISO-8601 time as microseconds since the epoch; naive means UTC."""
    match = _ISO_8601.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    # Written out rather than datetime.fromisoformat: 3.10's rejects "Z" and
    # fractions other than 3 or 6 digits, and we support 3.10.
    try:
        offset = timedelta(0)
        if zone and zone not in ("Z", "z"):
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
            offset = -offset if zone[0] == "-" else offset
        when = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            timezone(offset),
        )
    except ValueError:  # month 13, second 60, offset >= 24 h, ...
        return None
    return (when - EPOCH) // ONE_US


def _timed(fmt: LegacyFormat, messages: list[dict[str, Any]]) -> LegacyHistory:
    stamps: list[int | None] = []
    for message in messages:
        value = message.get("timestamp")
        ts = _parse_iso(value) if isinstance(value, str) else None
        if ts is not None:
            del message["timestamp"]
        stamps.append(ts)
    # Sort key: the latest timestamp at or before each message, so an untimed
    # message keeps its place after the timed one it followed.
    keys: list[tuple[int, int]] = []
    last: int | None = None
    for ts in stamps:
        last = ts if ts is not None else last
        keys.append((0, 0) if last is None else (1, last))
    order = sorted(range(len(messages)), key=keys.__getitem__)
    return LegacyHistory(fmt, [messages[i] for i in order], [stamps[i] for i in order])


# LangChain message "type" -> OpenAI role; "chat" carries its own role.
_LANGCHAIN_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "chat": "",
}


def _is_langchain(array: list[Any]) -> bool:
    """Judge by the first element: messages_to_dict emits exactly {"type", "data"}."""
    first = array[0] if array else None
    return isinstance(first, dict) and first.keys() == {"type", "data"}


def _from_langchain(item: Any, index: int, where: str) -> dict[str, Any]:
    """Map one messages_to_dict entry to an OpenAI-style message.

    Mapped: type -> role, content, name, tool_call_id, tool_calls (OpenAI shape, args as
    a JSON string, as langchain_openai sends them), additional_kwargs' function_call and
    __openai_role__. Everything else that is not a default (id, response_metadata,
    usage_metadata, invalid_tool_calls, leftover additional_kwargs, ...) is kept under
    one ``"langchain"`` key rather than dropped or mixed into the OpenAI keys.
    """
    item = item if isinstance(item, dict) else {}
    kind = item.get("type") if isinstance(item.get("type"), str) else ""
    kind = LANGCHAIN_CHUNK_TYPES.get(kind, kind)
    data = dict(item["data"]) if isinstance(item.get("data"), dict) else {}
    role = data.pop("role", None) if kind == "chat" else _LANGCHAIN_ROLES.get(kind)
    if not isinstance(role, str) or "content" not in data:
        raise FormatError(
            f"{where}: element {index} is not a LangChain message with content and a known "
            f"type ({', '.join(_LANGCHAIN_ROLES)}); remove it and retry"
        )
    data.pop("type", None)
    kwargs = data.pop("additional_kwargs", None)
    if kwargs and not isinstance(kwargs, dict):
        data["additional_kwargs"] = kwargs  # not LangChain's shape: keep it as it is
    extras = {k: v for k, v in kwargs.items() if v is not None} if isinstance(kwargs, dict) else {}
    if kind == "system" and extras.get("__openai_role__") == "developer":
        role = extras.pop("__openai_role__")
    message: dict[str, Any] = {"role": role, "content": data.pop("content")}
    for key in ("name", "tool_call_id"):
        if data.get(key) is not None:
            message[key] = data.pop(key)
    calls = data.pop("tool_calls", None) if kind == "ai" else None
    if calls and not isinstance(calls, list):
        raise FormatError(f"{where}: element {index} has tool_calls that are not a list")
    raw_calls = extras.pop("tool_calls", None)  # the raw OpenAI form; a duplicate when both
    if calls:
        message["tool_calls"] = [_openai_tool_call(call, index, where) for call in calls]
    elif raw_calls:
        message["tool_calls"] = raw_calls
    if "function_call" in extras:
        message["function_call"] = extras.pop("function_call")
    if extras:
        data["additional_kwargs"] = extras
    defaults = (("status", "success"), ("example", False))
    kept = {k: v for k, v in data.items() if v not in (None, {}, []) and (k, v) not in defaults}
    if kept:
        message["langchain"] = kept
    return message


def _openai_tool_call(call: Any, index: int, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or "name" not in call:
        raise FormatError(f"{where}: element {index} has a tool call without a name")
    args = call.get("args", {})
    try:
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    except RecursionError:
        raise FormatError(f"{where}: element {index} has tool call args nested too deep") from None
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }

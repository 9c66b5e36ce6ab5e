"""Detect and read the legacy history files that ``migrate`` converts into a log.

Pure: this module reads the source file (and, for a password, its ``.salt`` file)
and returns messages; it never writes. Layouts understood, sniffed from the bytes:

====================  ===============================================================
``JSONL``             one JSON object per line; blank lines skipped (an empty or
                      blank file is an empty history: the JSONL export of an empty log)
``JSON_ARRAY``        ``[{"role", "content", "timestamp", ...}, ...]``
``LANGCHAIN_JSON``    LangChain ``FileChatMessageHistory``: ``[{"type", "data"}, ...]``
``FERNET_JSONL``      the whole file is one Fernet token over JSONL
``FERNET_JSON_ARRAY`` the whole file is one Fernet token over a JSON array
``CODEC_LOG``         already a conversation-codec log; nothing is read (a no-op)
====================  ===============================================================

Timestamps: a message's ``"timestamp"`` that is an ISO-8601 string (naive means UTC)
is removed from the message and becomes the record timestamp, so migrated messages look
like the rest; a missing or unparseable one stays as it was and the record timestamp is
``None``. Messages keep the file's order, whatever their times say (for a chat the order
is the meaning: clocks out of step must not put a tool result before its call); writers
store a time earlier than the one before it as that one (``legacy_messages.clamp_times``)
and say how many. Epoch numbers are not taken as timestamps: their unit (s, ms, us) would
be a guess. An export (``transfer.py``) writes a message's own
``"timestamp"`` key as ``"conversation_codec:timestamp"`` (and that one with one more
prefix, and so on): when no ``"timestamp"`` is left in a message, each such key loses one
prefix again (:func:`unescape_time_keys`).

A UTF-8 byte-order mark is skipped; input over :data:`MAX_LEGACY_BYTES` is refused.

This module sniffs the layout and parses it; two neighbours do the rest: ``legacy_fernet``
opens the Fernet layouts (key, or password and salt), ``legacy_langchain`` maps LangChain
messages to OpenAI-style ones. A file that is one JSON object holding a ``"messages"``
list (a wrapper) is refused, never read as one message: see ``_wrapper``.
"""

from __future__ import annotations

import codecs
import enum
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec

from .._fsio import open_source
from .._time import EPOCH, ONE_US
from ..crypto import KeyInput
from ..errors import FormatError, StorageError
from ..format.header import LogKind, sniff_log
from .legacy_fernet import PBKDF2_ITERATIONS, SALT_BYTES, decrypt_token
from .legacy_langchain import from_langchain, is_langchain
from .legacy_messages import looks_like_message

__all__ = [
    "MAX_LEGACY_BYTES",
    "PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "LegacyFormat",
    "LegacyHistory",
    "detect_format",
    "escape_time_keys",
    "parse_legacy",
    "read_legacy",
    "unescape_time_keys",
]

MAX_LEGACY_BYTES = 1024**3  # bytes; a larger history must be split before migrating
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
    Messages are in the file's order. ``lines[i]``: the line (from 1) message ``i`` is on,
    for the JSONL layouts (None for the others), so that errors can point at it.
    """

    format: LegacyFormat
    messages: list[dict[str, Any]]
    timestamps: list[int | None]
    lines: list[int] | None = field(default=None, compare=False)  # where, not what


def detect_format(data: bytes) -> LegacyFormat:
    """Say which layout ``data`` (a whole file) is in, without decrypting it.

    A JSON array is parsed to tell LangChain files from plain arrays.

    >>> detect_format(b'{"role": "user", "content": "hi"}\\n')
    <LegacyFormat.JSONL: 'jsonl'>

    :raises FormatError: not UTF-8, too large, or not a known layout.
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
    # fstat first, so an oversized (or sparse) file is refused before any allocation; a
    # FIFO or device is refused without blocking (open_source).
    try:
        fd, st = open_source(path)
        with open(fd, "rb") as f:
            size = st.st_size
            data = f.read(MAX_LEGACY_BYTES + 1) if size <= MAX_LEGACY_BYTES else b""
    except IsADirectoryError:
        raise StorageError(f"{path} is a directory; pass the history file itself") from None
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist; check the path") from None
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size > MAX_LEGACY_BYTES or len(data) > MAX_LEGACY_BYTES:
        raise FormatError(_too_large(str(path)))
    return data


def _read_salt(path: Path) -> bytes | None:
    try:
        with open(open_source(path)[0], "rb") as f:  # a FIFO there must not block
            return f.read(SALT_BYTES + 1)  # one more, to notice a file that is not a salt
    except FileNotFoundError:
        return None  # reported only if the password is actually needed
    except StorageError:
        raise
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
        plain = decrypt_token(
            payload, legacy_key, password, salt, where=where, salt_where=salt_where
        )
        where = f"{where} (decrypted)"
        inner, payload = _sniff_text(plain, where, codec_header=False)
        fmt = LegacyFormat.FERNET_JSON_ARRAY
        if inner is LegacyFormat.JSONL:
            fmt = LegacyFormat.FERNET_JSONL
    if fmt is LegacyFormat.LANGCHAIN_JSON or (
        fmt is LegacyFormat.FERNET_JSON_ARRAY and is_langchain(payload)
    ):
        messages = [from_langchain(item, i, where) for i, item in enumerate(payload)]
        return LegacyHistory(fmt, messages, [None] * len(messages))
    lines = None
    if fmt in (LegacyFormat.JSONL, LegacyFormat.FERNET_JSONL):
        messages, lines = _parse_jsonl(payload, where)
    else:
        messages = _check_objects(payload, where)
    return _timed(fmt, messages, lines)


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
        # JSONL with no line: an empty history, what export() writes for an empty log (an
        # import of it adds nothing; migrate leaves it as it leaves "[]": mig.md defect 11).
        return LegacyFormat.JSONL, b""
    _check_utf8(data, where)  # with the BOM, so offsets count from the start of the file
    if body[start : start + 1] == b"[":
        array = _decode(body, f"{where} is not a valid JSON array")
        return (
            LegacyFormat.LANGCHAIN_JSON if is_langchain(array) else LegacyFormat.JSON_ARRAY
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
        bad = None
        try:
            decoder.decode(view[pos : pos + _UTF8_CHUNK], final=pos + _UTF8_CHUNK >= len(data))
        except UnicodeDecodeError as exc:
            bad = pos + exc.start
        if bad is not None:  # raised outside the except: its __context__ holds the bytes
            raise FormatError(
                f"{where} is not UTF-8 text (bad byte near offset {bad}); re-encode it as UTF-8"
            )


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


def _parse_jsonl(body: bytes, where: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Return the objects of a JSONL body and the (1-based) line each was on."""
    messages: list[dict[str, Any]] = []
    lines: list[int] = []
    view, pos, line_no = memoryview(body), 0, 0
    while pos < len(body):
        end = body.find(b"\n", pos)
        end = len(body) if end < 0 else end
        line, pos, line_no = view[pos:end], end + 1, line_no + 1
        if not _SKIP_WS.fullmatch(line):
            try:
                value = msgspec.json.decode(line)
            except (ValueError, RecursionError) as exc:
                if not messages:
                    _refuse_one_object(body, where)
                raise FormatError(
                    f"{where} line {line_no} is not valid JSON ({exc}); fix or remove it and retry"
                ) from None
            if not isinstance(value, dict):
                raise FormatError(
                    f"{where} line {line_no} is {_JSON_TYPE[type(value)]}, not a message "
                    "object; fix or remove that line and retry"
                )
            messages.append(value)
            lines.append(line_no)
    if len(messages) == 1 and _is_wrapper(messages[0]):
        raise FormatError(_wrapper(where))
    return messages, lines


def _refuse_one_object(body: bytes, where: str) -> None:
    """Refuse a file that is one JSON object over several lines (``json.dump(indent=2)``),
    which JSONL's "line 1 is not valid JSON" would misdescribe. Only tried when the first
    line is no whole JSON value, so a JSONL file is never parsed twice."""
    try:
        value = msgspec.json.decode(body)
    except (ValueError, RecursionError):
        return  # not one object either: the line's own error says more
    if isinstance(value, dict):
        if _is_wrapper(value):
            raise FormatError(_wrapper(where))
        raise FormatError(
            f"{where} is one JSON object over several lines, not JSONL (one message object "
            "per line) nor a JSON array of messages; convert it to one of those and retry"
        )


def _is_wrapper(value: dict[str, Any]) -> bool:
    return isinstance(value.get("messages"), list) and not looks_like_message(value)


def _wrapper(where: str) -> str:
    # Rejected alternative: read the list. The object's other keys (a model, an id, a
    # title) would be dropped, and what a wrapper holds varies by app: its owner knows.
    return (
        f'{where} is one JSON object holding a "messages" list (a wrapper, not one message '
        "per line); save that list on its own as a JSON array of messages and retry"
    )


def _check_objects(array: list[Any], where: str) -> list[dict[str, Any]]:
    for i, item in enumerate(array):
        if not isinstance(item, dict):
            raise FormatError(
                f"{where}: element {i} of the JSON array is {_JSON_TYPE[type(item)]}, "
                "not a message object; remove it and retry"
            )
    return array


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


_TIME_KEY_PREFIX = "conversation_codec:"


def _time_key(key: str) -> bool:
    """Whether ``key`` is ``"timestamp"`` behind zero or more ``_TIME_KEY_PREFIX``."""
    while key.startswith(_TIME_KEY_PREFIX):
        key = key[len(_TIME_KEY_PREFIX) :]
    return key == "timestamp"


def escape_time_keys(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its own ``"timestamp"`` key (and every escaped one) one prefix
    deeper, keys in their order: an export's ``"timestamp"`` is then the record time alone."""
    if not any(_time_key(k) for k in message):
        return message
    return {(_TIME_KEY_PREFIX + k if _time_key(k) else k): v for k, v in message.items()}


def unescape_time_keys(message: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`escape_time_keys` once the record time was taken out of ``message``
    (a message that still has a ``"timestamp"`` was not escaped: it is left alone)."""
    if "timestamp" in message or not any(_time_key(k) for k in message):
        return message
    cut = len(_TIME_KEY_PREFIX)
    return {(k[cut:] if _time_key(k) else k): v for k, v in message.items()}


def _timed(
    fmt: LegacyFormat, messages: list[dict[str, Any]], lines: list[int] | None
) -> LegacyHistory:
    stamps: list[int | None] = []
    for i, message in enumerate(messages):
        value = message.get("timestamp")
        ts = _parse_iso(value) if isinstance(value, str) else None
        if ts is not None:
            del message["timestamp"]
        messages[i] = unescape_time_keys(message)
        stamps.append(ts)
    # The file's order, never sorted by time: for a chat the order is the meaning (a tool
    # result follows its call), and skewed clocks must not reorder it. Writers keep the
    # record times non-decreasing (see clamp_times).
    return LegacyHistory(fmt, messages, stamps, lines)

"""Record framing and the record envelope (FORMAT.md §5 sealed, §6 plain).

Sealed logs frame each record as ``varint(body_len) || body`` where ``body`` is a
Fernet token without its constant version byte. The token's plaintext is the
*envelope*: ``envelope_flags || varint(seq) || varint(ts_rem_us) || payload``.
Plain logs hold one JSON line per record. Pure bytes <-> values: no I/O, no crypto.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Callable
from datetime import datetime
from itertools import accumulate
from typing import Any, NamedTuple

import msgspec

from .._time import EPOCH, ONE_US, to_datetime
from .varint import decode_varint, encode_varint

__all__ = [
    "ENVELOPE_COMPRESSED",
    "ENVELOPE_DICTIONARY",
    "FERNET_OVERHEAD_BYTES",
    "KIND_DICTIONARY",
    "KIND_MESSAGE",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MIN_BODY_BYTES",
    "Envelope",
    "SuffixDepths",
    "decode_envelope",
    "decode_frame_header",
    "decode_plain_head",
    "decode_plain_line",
    "encode_envelope",
    "encode_frame",
    "encode_plain_line",
    "format_ts",
    "may_be_plain_line",
    "nests_deeper_than",
    "parse_ts",
]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # bytes of message JSON in one record (FORMAT.md §5)
# FORMAT.md §5.2: levels of JSON objects and arrays in one message, the message itself counted.
# Chat formats nest about 6 deep (a tool-call argument object inside a content part inside a
# message), JSON-schema tool definitions rarely 20; serde_json's default limit is 128. It
# stays far below Python's recursion limit (1,000 frames), which msgspec's decoder, dict
# comparison and copy.deepcopy all count against: reading a 64-deep message costs the caller
# at most ~200 frames, wherever in a deep stack it runs.
MAX_DEPTH = 64
# FORMAT.md §5: body = timestamp(8) | iv(16) | ciphertext(16*k, k >= 1) | hmac(32)
FERNET_OVERHEAD_BYTES = 8 + 16 + 32
MIN_BODY_BYTES = FERNET_OVERHEAD_BYTES + 16
_MAX_ENVELOPE_HEAD = 1 + 5 + 5
MAX_BODY_BYTES = FERNET_OVERHEAD_BYTES + (MAX_MESSAGE_BYTES + _MAX_ENVELOPE_HEAD) // 16 * 16 + 16
ENVELOPE_COMPRESSED = 0x01  # FORMAT.md §5.2: payload is a zstd frame
ENVELOPE_DICTIONARY = 0x02  # FORMAT.md §5.2: compressed with dictionary `dict_id`
ENVELOPE_KIND_MASK = 0x0C  # FORMAT.md §5.3: 0 = message, 1 = dictionary (control records)
KIND_MESSAGE, KIND_DICTIONARY = 0, 1
_ENVELOPE_KNOWN_FLAGS = ENVELOPE_COMPRESSED | ENVELOPE_DICTIONARY | (KIND_DICTIONARY << 2)
_US_PER_S = 1_000_000


def encode_frame(body: bytes, *, control: bool = False) -> bytes:
    """Prefix a sealed record body with ``varint(body_len << 1 | control)``."""
    prefix = len(body) << 1 | control
    if 0x80 <= prefix < 0x4000:  # bodies of 64..8191 bytes, most records: the varint inline
        return bytes((prefix & 0x7F | 0x80, prefix >> 7)) + body  # (a call less: issue 15)
    return encode_varint(prefix) + body


def decode_frame_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int, bool]:
    """Read a frame's prefix at ``pos``; return ``(body_start, body_end, control)``.

    The length is bounded and checked against the Fernet token shape *before* anything
    is allocated; ``body_end`` may lie beyond ``buf`` (the caller checks the file size).
    ``control`` marks a record that is not a message (a dictionary, FORMAT.md §5.3).

    :raises ValueError: the prefix is malformed or the length impossible.
    """
    prefix, start = decode_varint(buf, pos)
    body_len, control = prefix >> 1, bool(prefix & 1)
    if (
        body_len < MIN_BODY_BYTES
        or body_len > MAX_BODY_BYTES
        or (body_len - FERNET_OVERHEAD_BYTES) % 16
    ):
        raise ValueError(f"impossible record length {body_len}")
    return start, start + body_len, control


class Envelope(NamedTuple):
    """A decoded envelope (FORMAT.md §5.2); ``seq`` is the dictionary id for kind 1.

    A NamedTuple rather than a frozen dataclass: one is built per record read, and a frozen
    dataclass's ``__init__`` costs ~0.5 us more (0.74 against 0.26, measured).
    """

    seq: int
    ts_us: int
    kind: int
    compressed: bool
    dict_id: int
    payload: memoryview


def encode_envelope(
    seq: int,
    ts_us: int,
    payload: bytes,
    *,
    compressed: bool,
    dict_id: int = 0,
    kind: int = KIND_MESSAGE,
) -> bytes:
    """Build the plaintext that one record seals (its Fernet timestamp is ``ts_us // 10**6``)."""
    flags = (ENVELOPE_COMPRESSED if compressed else 0) | kind << 2
    rem_us = ts_us % _US_PER_S
    if 0x80 <= seq < 0x4000 and rem_us >= 0x4000 and 0 <= dict_id < 0x80:
        # The usual record (two bytes of seq, three of ts_rem_us: 98% of the microseconds)
        # with its varints inline: an append's calls cost several times their warm cost
        # with the caches cold after a sync (issue 15).
        head = bytes(
            (
                flags | (ENVELOPE_DICTIONARY if dict_id else 0),
                seq & 0x7F | 0x80,
                seq >> 7,
                rem_us & 0x7F | 0x80,
                rem_us >> 7 & 0x7F | 0x80,
                rem_us >> 14,
            )
        )
        return head + bytes((dict_id,)) + payload if dict_id else head + payload
    rem = encode_varint(rem_us)
    if dict_id:  # one join, not three concatenations (every append builds one: issue 15)
        flags |= ENVELOPE_DICTIONARY
        return b"".join((bytes((flags,)), encode_varint(seq), rem, encode_varint(dict_id), payload))
    return b"".join((bytes((flags,)), encode_varint(seq), rem, payload))


def decode_envelope(plain: bytes, token_seconds: int) -> Envelope:
    """Parse an unsealed envelope.

    :raises ValueError: the envelope is malformed.
    :raises NotImplementedError: it uses flags this version does not know (a newer writer).
    """
    if not plain:
        raise ValueError("empty envelope")
    flags = plain[0]
    if flags & ~_ENVELOPE_KNOWN_FLAGS:
        raise NotImplementedError(f"unknown envelope flags 0x{flags:02x}")
    seq, pos = decode_varint(plain, 1)
    rem, pos = decode_varint(plain, pos)
    if rem >= _US_PER_S:
        raise ValueError("timestamp remainder out of range")
    dict_id = 0
    if flags & ENVELOPE_DICTIONARY:
        dict_id, pos = decode_varint(plain, pos)
        if not dict_id or not flags & ENVELOPE_COMPRESSED:
            raise ValueError("dictionary flag without a compressed payload or an id")
    return Envelope(
        seq,
        token_seconds * _US_PER_S + rem,
        (flags & ENVELOPE_KIND_MASK) >> 2,
        bool(flags & ENVELOPE_COMPRESSED),
        dict_id,
        memoryview(plain)[pos:],
    )


def format_ts(ts_us: int) -> str:
    """Render microseconds since the epoch as RFC 3339 UTC with six fraction digits.

    >>> format_ts(1_763_700_000_123_456)
    '2025-11-21T04:40:00.123456Z'
    """
    return to_datetime(ts_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_plain_line(seq: int, ts_us: int, message_json: bytes) -> bytes:
    r"""Build one plain-log record line from already-encoded message JSON.

    >>> encode_plain_line(0, 0, b'{"role":"user"}')
    b'{"seq":0,"ts":"1970-01-01T00:00:00.000000Z","message":{"role":"user"}}\n'
    """
    return b'{"seq":%d,"ts":"%s","message":%s}\n' % (seq, format_ts(ts_us).encode(), message_json)


class _PlainLine(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    ts: msgspec.Raw  # checked for its one allowed form before it is parsed
    message: dict[str, Any]


_plain_line_decoder = msgspec.json.Decoder(_PlainLine)
_ts_decoder = msgspec.json.Decoder(datetime)
_PLAIN_TS_BYTES = 29  # FORMAT.md §6: '"YYYY-MM-DDTHH:MM:SS.ffffffZ"', quotes included


def parse_ts(raw: bytes | memoryview) -> int:
    """Parse a plain log's ``ts`` as JSON (quotes included) into microseconds since the epoch.

    FORMAT.md §6: exactly ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"`` without escapes, a real UTC
    time from 1970 on: no other offset, fraction length, separator or case, no leap second.

    >>> parse_ts(b'"1970-01-01T00:00:01.000002Z"')
    1000002

    :raises ValueError: any other text.
    """
    # Fixed positions first (cheap); msgspec's RFC 3339 parser then checks the digits and
    # ranges, and takes only "T"/"Z" where these checks already demand them.
    text = bytes(raw)
    if (
        len(text) != _PLAIN_TS_BYTES
        or text[11] != 0x54  # T
        or text[20] != 0x2E  # .
        or text[27] != 0x5A  # Z
        or b"\\" in text
    ):
        raise ValueError(f"ts {text[:40]!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    try:
        us = (_ts_decoder.decode(text) - EPOCH) // ONE_US
    except msgspec.DecodeError:
        raise ValueError(f"ts {text!r} is not a valid time") from None
    if us < 0:
        raise ValueError(f"ts {text!r} is before 1970")
    return us


def decode_plain_line(line: bytes | memoryview) -> tuple[int, int, dict[str, Any]]:
    """Parse one plain-log record line; return ``(seq, ts_us, message)``.

    Strict (FORMAT.md §6): RFC 8259 JSON (no NaN, no out-of-range number) holding exactly
    ``seq`` (an integer >= 0), ``ts`` (see ``parse_ts``) and ``message`` (an object);
    a member named twice counts once, its last value.

    :raises ValueError: the line is not a valid record line.
    """
    try:
        rec = _plain_line_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid record line: {exc}") from None
    if rec.seq < 0:
        raise ValueError("invalid record line: seq must be >= 0")
    try:
        return rec.seq, parse_ts(rec.ts), rec.message
    except ValueError as exc:
        raise ValueError(f"invalid record line: {exc}") from None


# A JSON string, escapes included, matched without backtracking (Friedl's unrolled loop): the
# brackets inside strings do not nest.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def nests_deeper_than(text: bytes | memoryview, limit: int) -> bool:
    """Return True when the JSON ``text`` nests objects and arrays more than ``limit`` deep.

    Counted without recursion, so no text can exhaust the stack (a recursive decoder such
    as msgspec raises ``RecursionError`` near 1,000 levels, fewer in a deep call stack).
    Cheap first: valid JSON needs two bytes per level, so short text (most chat messages)
    is answered by its length; text with at most ``limit`` opening brackets by two byte
    counts; only the rest has its strings removed and its brackets summed. (Invalid JSON
    as short may nest deeper, but no deeper than its length: harmless to a decoder.)

    >>> nests_deeper_than(b'{"a":[{"b":"[[[["}]}', 3), nests_deeper_than(b'[[[[]]]]', 3)
    (False, True)
    """
    if len(text) <= 2 * limit + 1:
        return False
    data = bytes(text)
    if data.count(b"{") + data.count(b"[") <= limit:
        return False
    steps = array("b", _JSON_STRING.sub(b"", data).translate(_BRACKET_STEP, _NOT_A_BRACKET))
    return max(accumulate(steps), default=0) > limit


# The start of a record line as encode_plain_line writes it (FORMAT.md §6).
_PLAIN_HEAD = re.compile(rb'\{"seq":(0|[1-9][0-9]{0,18}),"ts":"([0-9T:.Z+-]{20,32})","message":\{')


def decode_plain_head(line: bytes | memoryview) -> tuple[int, int]:
    """Return ``(seq, ts_us)`` of a record line without parsing its message.

    For a line whose message is too deep to parse (``MAX_DEPTH``): its place in the log
    can still be checked, so it is reported as a damaged record, never cut as a torn tail.
    Only the layout ``encode_plain_line`` writes is recognised.

    :raises ValueError: the line does not start like a record line.
    """
    head = _PLAIN_HEAD.match(bytes(line[:80]))
    if head is None or not bytes(line[-2:]) == b"}\n":
        raise ValueError("invalid record line: not laid out as FORMAT.md §6 shows")
    seq, ts_us, _ = decode_plain_line(b'{"seq":%s,"ts":"%s","message":{}}' % (head[1], head[2]))
    return seq, ts_us


def may_be_plain_line(line: bytes | memoryview, too_deep: Callable[[], bool]) -> bool:
    """Return False only when ``line`` (up to its newline) is neither a record line that
    ``decode_plain_line`` reads nor one ``decode_plain_head`` reads (FORMAT.md §10.1), as
    a plain log's reader judges it: ``too_deep()`` is ``nests_deeper_than(line, MAX_DEPTH +
    1)``, asked only of a line of a record's head that the decoder refuses.

    Costs what the decoder reads up to its first error (a text too deep for it raises
    RecursionError): a candidate that opens a nested object inside a long line,
    ``{"seq":0,"type":...},...``, is refused after a few bytes.
    """
    try:
        _plain_line_decoder.decode(line)
    except (msgspec.DecodeError, RecursionError):
        head = _PLAIN_HEAD.match(bytes(line[:80]))
        return head is not None and bytes(line[-2:]) == b"}\n" and too_deep()
    return True


def is_json_object(line: bytes) -> bool:
    """Does ``line`` hold one JSON object (a line a person typed: FORMAT.md §10.1)? Random
    bytes almost never do; one too deep to parse counts, as it opens like one."""
    if not line.lstrip(b" \t\r").startswith(b"{"):
        return False
    if nests_deeper_than(line, MAX_DEPTH + 1):
        return True
    try:
        return isinstance(msgspec.json.decode(line), dict)
    except (msgspec.DecodeError, RecursionError):
        return False


# A JSON string (as _JSON_STRING) or a bracket: the tokens nests_deeper_than counts with.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class SuffixDepths:
    """``nests_deeper_than(text[at:], limit)`` for many ``at`` in one ``text``: it is
    tokenized once, from the first ``at`` asked, and again only from an ``at`` which that
    tokenization puts inside a string (where the suffix's strings pair up otherwise)."""

    __slots__ = ("_brackets", "_from", "_limit", "_peaks", "_starts", "_stops", "_sums", "_text")

    def __init__(self, text: bytes, limit: int) -> None:
        self._text, self._limit, self._from = text, limit, -1
        self._starts: list[int] = []  # the strings' spans, [start, stop)
        self._stops: list[int] = []
        self._brackets: list[int] = []  # where each bracket outside strings is
        self._sums: list[int] = []  # the depth after each, counted from ``_from``
        self._peaks: list[int] = []  # the greatest of ``_sums`` from each on

    def deeper(self, at: int) -> bool:
        if len(self._text) - at <= 2 * self._limit + 1:  # short: nests_deeper_than's answer
            return nests_deeper_than(self._text[at:], self._limit)
        k = bisect.bisect_right(self._starts, at) - 1
        if self._from < 0 or at < self._from or (k >= 0 and at < self._stops[k]):
            self._tokenize(at)
        i = bisect.bisect_left(self._brackets, at)
        if i == len(self._brackets):
            return False
        return self._peaks[i] - (self._sums[i - 1] if i else 0) > self._limit

    def _tokenize(self, at: int) -> None:
        self._from, text = at, self._text
        self._starts, self._stops, self._brackets, steps = [], [], [], []
        for token in _TOKEN.finditer(text, at):
            start = token.start()
            if text[start] == 0x22:  # "
                self._starts.append(start)
                self._stops.append(token.end())
            else:
                self._brackets.append(start)
                steps.append(1 if text[start] in b"[{" else -1)
        self._sums = list(accumulate(steps))
        self._peaks = list(accumulate(reversed(self._sums), max))[::-1]

"""Record bodies: the bytes one message becomes, shared by every storage backend.

A backend stores *bodies* with their seq and timestamp; how it frames them (a length
prefix in a file, a row in a database) is its own business. This module turns encoded
message JSON into a body and back, enforcing the record rules of FORMAT.md §5 and §6:
authenticate before decompressing or parsing, and the seq inside must be the position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec
import zstandard

from .compression import Compressor
from .crypto import InvalidToken, LogCipher
from .errors import UnsupportedVersionError
from .format.index import MAX_TS_US
from .format.record import (
    KIND_DICTIONARY,
    KIND_MESSAGE,
    MAX_DEPTH,
    Envelope,
    decode_envelope,
    decode_plain_head,
    decode_plain_line,
    encode_envelope,
    encode_plain_line,
    nests_deeper_than,
)
from .format.varint import decode_varint
from .usual import read_usual

__all__ = [
    "DictionaryMissing",
    "PlainRecords",
    "RecordCodec",
    "RecordDamaged",
    "RecordRejected",
    "SealedRecords",
]

_US_PER_S = 1_000_000
_decode_message = msgspec.json.Decoder(dict[str, Any]).decode
_SHALLOW_BYTES = 2 * MAX_DEPTH + 1  # no JSON text this long nests deeper than MAX_DEPTH
_TOO_DEEP = f"record message nests deeper than {MAX_DEPTH} levels (FORMAT.md §5.2)"


class RecordRejected(ValueError):
    """A body failed authentication or a record rule; the caller adds path and offset."""


class RecordDamaged(RecordRejected):
    """A body that *authenticates* (or, in a plain log, parses) yet breaks a record rule:
    a malformed envelope or payload, the wrong kind for its frame's control bit, another
    seq, or an earlier time. No crash writes such a record, so wherever it stands it is
    damage, never a torn tail (FORMAT.md §10.1)."""


class DictionaryMissing(Exception):
    """A record needs a dictionary this codec has not loaded: the backend must find it."""

    def __init__(self, dict_id: int) -> None:
        super().__init__(dict_id)
        self.dict_id = dict_id


class RecordCodec(Protocol):
    """Turns (seq, ts_us, message JSON) into a stored body and back."""

    def encode(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        """Return the body that stores one message."""
        ...

    def payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        """Return ``(text, ts_us)``: authenticated JSON text holding the message, unparsed."""
        ...

    def payloads(self, records: Sequence[tuple[int, bytes]]) -> Iterator[tuple[int, bytes, int]]:
        """Yield ``(seq, text, ts_us)`` of each ``(seq, body)`` in order, as ``payload`` would.

        At the first record that ``payload`` refuses, raise exactly what it raises, after
        yielding the records before it.
        """
        ...

    def parse(self, text: bytes) -> dict[str, Any]:
        """Parse what ``payload`` returned into the message."""
        ...

    def read_usual(
        self, records: Sequence[tuple[int, bytes]], tss: Sequence[int], parse: bool = True
    ) -> tuple[list[bytes], list[dict[str, Any]]] | None:
        """Return ``(texts, messages)`` of ``(seq, body)`` records whose times the index
        holds in ``tss`` (by seq), as ``payloads`` then ``parse_many`` give them; or None,
        having changed nothing, when one is not the usual case (``usual.py``): the caller
        then reads them that way, which reports what is wrong. Not ``parse``: the texts
        alone, as ``payloads`` gives them (``(texts, [])``)."""
        ...

    def parse_many(self, texts: Sequence[bytes]) -> list[dict[str, Any]]:
        """Parse many texts, or raise what ``parse`` raises for one of them."""
        ...

    def inspect(self, body: bytes) -> tuple[int, int, bytes]:
        """Return ``(seq, ts_us, text)`` of an authenticated body, whatever its seq."""
        ...

    def check(self, body: bytes, expected_seq: int | None) -> int:
        """Authenticate a body and return its ts_us, without parsing the message.

        ``expected_seq=None`` accepts any seq (used when searching past damage).
        """
        ...


class SealedRecords:
    """Bodies of a sealed log: zstd (with the log's dictionary once it has one, and only
    when that makes it smaller), then one Fernet token each (FORMAT.md §5)."""

    __slots__ = ("_cipher", "_dict", "_dict_bytes", "_dict_id", "_frames", "_unusable", "_zstd")

    def __init__(self, cipher: LogCipher, compressor: Compressor | None = None) -> None:
        self._cipher = cipher
        self._zstd = compressor or Compressor()
        self._dict: Compressor | None = None
        self._dict_bytes: bytes | None = None
        self._dict_id = 0
        self._unusable: str | None = None  # why zstd refuses the log's dictionary, if it does
        # While a rewrite keeps this log's dictionary: the zstd frame each text that
        # ``payloads`` inflated with it came from, by id() and checked by identity (as
        # PlainRecords keeps its parses), for the batch last read.
        self._frames: dict[int, tuple[bytes, bytes]] | None = None

    @property
    def cipher(self) -> LogCipher:
        """The log's cipher (its ``unseal_count`` counts decryptions)."""
        return self._cipher

    @property
    def dict_id(self) -> int:
        """The id of the dictionary in use (0: none)."""
        return self._dict_id

    @property
    def dictionary(self) -> bytes | None:
        """The dictionary in use (None: none, or one zstd refuses), e.g. for a rewrite to keep."""
        return None if self._dict is None else self._dict_bytes

    @property
    def unusable(self) -> str | None:
        """Why zstd refuses the log's dictionary (FORMAT.md §5.3); None when it loads."""
        return self._unusable

    def use_dictionary(self, dict_id: int, dictionary: bytes) -> None:
        """Compress new records with this dictionary, and open records that name it; one zstd
        refuses, ``unusable``, damages those records alone (FORMAT.md §5.3)."""
        self._dict_id, self._dict_bytes, self._unusable = dict_id, dictionary, None
        try:
            self._dict = Compressor(dictionary=dictionary)
        except zstandard.ZstdError as exc:
            self._dict, self._unusable = None, f"zstd refuses it as a dictionary ({exc})"

    def drop_dictionary(self) -> None:
        """Stop using the dictionary (its record was cut off the log)."""
        self._dict, self._dict_id, self._dict_bytes, self._unusable = None, 0, None, None

    def encode(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        # envelope() inline: a frame less on every append (issue 15).
        if self._dict is not None:
            payload, compressed = self._dict.compress(message_json)
            dict_id = self._dict_id if compressed else 0
        else:
            payload, compressed = self._zstd.compress(message_json)
            dict_id = 0
        envelope = encode_envelope(seq, ts_us, payload, compressed=compressed, dict_id=dict_id)
        return self._cipher.seal(envelope, ts_us // _US_PER_S)

    def keep_frames(self, keep: bool) -> None:
        """Start (or stop) remembering, for the batch ``payloads`` last read, the frame
        behind each text it inflated with the dictionary (``stored_frame``)."""
        self._frames = {} if keep else None

    def stored_frame(self, text: bytes) -> bytes | None:
        """The stored payload ``text`` was inflated from with the log's dictionary (the
        batch last read, while ``keep_frames``); None for any other text."""
        found = None if self._frames is None else self._frames.pop(id(text), None)
        return found[1] if found is not None and found[0] is text else None

    def frame_envelope(self, seq: int, ts_us: int, frame: bytes) -> bytes:
        """The envelope of a payload already compressed with this codec's dictionary
        (``stored_frame`` of a log with the same dictionary), as it is: no smaller and no
        larger than it was, without a compression. Sealed by ``seal_many``."""
        assert self._dict is not None
        return encode_envelope(seq, ts_us, frame, compressed=True, dict_id=self._dict_id)

    def smallest_envelope(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        """The envelope ``encode`` seals, except that with a dictionary zstd without it is
        tried too and the smaller kept: a rewrite then stores no record larger than an
        appender could have (records before the dictionary were compressed without one).
        Costs a second compression, so only rewrites use it. Sealed by ``seal_many``."""
        if self._dict is None:
            payload, compressed = self._zstd.compress(message_json)
            return encode_envelope(seq, ts_us, payload, compressed=compressed)
        payload, compressed = self._dict.compress(message_json)
        dict_id = self._dict_id if compressed else 0
        plain, plain_compressed = self._zstd.compress(message_json)
        if len(plain) < len(payload):
            payload, compressed, dict_id = plain, plain_compressed, 0
        return encode_envelope(seq, ts_us, payload, compressed=compressed, dict_id=dict_id)

    def envelope(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        """The envelope ``encode`` seals. Sealed by ``seal_many``."""
        if self._dict is not None:
            payload, compressed = self._dict.compress(message_json)
            dict_id = self._dict_id if compressed else 0
        else:
            payload, compressed = self._zstd.compress(message_json)
            dict_id = 0
        return encode_envelope(seq, ts_us, payload, compressed=compressed, dict_id=dict_id)

    def seal_many(self, envelopes: Sequence[bytes], tss_us: Sequence[int]) -> list[bytes]:
        """Seal message envelopes stamped ``tss_us`` into bodies, in one AES-CBC call."""
        return self._cipher.seal_many(envelopes, [ts // _US_PER_S for ts in tss_us])

    def encode_dictionary(self, dict_id: int, ts_us: int, dictionary: bytes) -> bytes:
        """Return the body of a control record holding a dictionary (FORMAT.md §5.3)."""
        envelope = encode_envelope(
            dict_id, ts_us, dictionary, compressed=False, kind=KIND_DICTIONARY
        )
        return self._cipher.seal(envelope, ts_us // _US_PER_S)

    def decode_dictionary(self, body: bytes, dict_id: int) -> bytes:
        """Authenticate a dictionary control record and return the dictionary."""
        env = self._unseal(body)
        if env.kind != KIND_DICTIONARY:
            raise RecordDamaged("a message record stands in a control frame")
        if env.seq != dict_id:
            raise RecordDamaged(f"dictionary record carries id {env.seq}, not {dict_id}")
        if env.compressed:  # FORMAT.md §5.3: a dictionary is stored as it is
            raise RecordDamaged("dictionary record sets the compressed flag")
        return bytes(env.payload)

    def _unseal(self, body: bytes) -> Envelope:
        try:
            plain, seconds = self._cipher.unseal(body)
        except InvalidToken:
            raise RecordRejected("record failed authentication") from None
        return self._envelope(plain, seconds)

    def _envelope(self, plain: bytes, seconds: int) -> Envelope:
        try:
            return decode_envelope(plain, seconds)
        except NotImplementedError as exc:
            raise UnsupportedVersionError(
                f"record uses a newer format feature ({exc}); upgrade conversation-codec"
            ) from None
        except ValueError as exc:
            raise RecordDamaged(f"record envelope is malformed: {exc}") from None

    def _open(self, body: bytes, expected_seq: int | None) -> Envelope:
        env = self._message(self._unseal(body), expected_seq)
        if env.ts_us < MAX_TS_US:  # FORMAT.md §9.2: no writer stamps later, no index holds it
            return env
        raise RecordDamaged(f"record time {env.ts_us} us is at or after 10000-01-01")

    def _message(self, env: Envelope, expected_seq: int | None) -> Envelope:
        """Check that an unsealed envelope is a message record at ``expected_seq``."""
        if env.kind != KIND_MESSAGE:
            raise RecordDamaged("a control record stands in a message frame")
        if expected_seq is not None and env.seq != expected_seq:
            raise RecordDamaged(
                f"record carries seq {env.seq} where seq {expected_seq} belongs "
                "(moved, duplicated or reordered)"
            )
        return env

    def check(self, body: bytes, expected_seq: int | None) -> int:
        return self._open(body, expected_seq).ts_us

    def locate(self, body: bytes) -> tuple[int, int]:
        """Return ``(seq, ts_us)`` of an authentic message body (any time), not decompressed."""
        env = self._message(self._unseal(body), None)
        return env.seq, env.ts_us

    def payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        env = self._open(body, expected_seq)
        return self._inflate(env), env.ts_us

    def payloads(self, records: Sequence[tuple[int, bytes]]) -> Iterator[tuple[int, bytes, int]]:
        # Authenticate the whole batch, then decrypt it in one AES-CBC call per key
        # (LogCipher.unseal_many). The envelope of a message record as writers write it is
        # read inline (decode_envelope's NamedTuple and memoryview cost ~1 us a record);
        # any other record, or one the batch cannot open, goes through payload() alone, so
        # that it fails with exactly the error a record-by-record read gives.
        opened = self._cipher.unseal_many([body for _, body in records])
        if self._frames is not None:
            self._frames.clear()
        for (seq, body), unsealed in zip(records, opened, strict=True):
            if unsealed is not None:
                head = self._usual(*unsealed)
                if head is not None and head[0] == seq:
                    yield seq, head[2], head[1]
                    continue
            text, ts_us = self.payload(body, seq)
            yield seq, text, ts_us

    def read_usual(
        self, records: Sequence[tuple[int, bytes]], tss: Sequence[int], parse: bool = True
    ) -> tuple[list[bytes], list[dict[str, Any]]] | None:
        if self._frames is not None:  # a rewrite reads through payloads
            return None
        plains = self._cipher.open_batch([body for _, body in records])
        if plains is None:
            return None
        with_dict = None
        if self._dict is not None and self._dict_id < 0x80:  # a one-byte varint
            with_dict = (self._dict_id, self._dict.raw_decompress)
        got = read_usual(records, plains, tss, self._zstd.raw_decompress, with_dict, parse)
        if got is not None:
            self._cipher.unseal_count += len(records)
        return got

    def inspect_many(self, bodies: Sequence[bytes]) -> list[tuple[int, int, bytes] | None]:
        """``inspect`` many bodies, authenticated and decrypted as a batch; None for a body
        that ``inspect`` may refuse or read another way (the caller reads it alone)."""
        found: list[tuple[int, int, bytes] | None] = []
        for unsealed in self._cipher.unseal_many(bodies):
            found.append(None if unsealed is None else self._usual(*unsealed))
        return found

    def _usual(self, plain: bytes, seconds: int) -> tuple[int, int, bytes] | None:
        """Return ``(seq, ts_us, text)`` of a message record as writers write it (FORMAT.md
        §5.2: flags 0, 1 or 1|2 with dictionary 1..127, canonical varints, a time before 10000);
        None for anything else, which ``payload`` and ``inspect`` read (and refuse) alone."""
        try:
            flags = plain[0]
            seq, pos = decode_varint(plain, 1)
            rem, pos = decode_varint(plain, pos)
            ts_us = seconds * _US_PER_S + rem
            if rem >= _US_PER_S or ts_us >= MAX_TS_US:
                return None
            if flags == 1:
                return seq, ts_us, self._zstd.decompress(plain[pos:])
            if flags == 0:
                return seq, ts_us, plain[pos:]
            if flags == 3 and self._dict is not None and plain[pos] == self._dict_id < 0x80:
                frame = plain[pos + 1 :]
                text = self._dict.decompress(frame)
                # Kept only with its content size (Frame_Header_Descriptor, RFC 8878
                # §3.1.1.1.1: a size flag or a single segment), which early versions of
                # this library left out: those are compressed again (compression.py).
                if self._frames is not None and frame[4] & 0xE0:
                    self._frames[id(text)] = (text, frame)
                return seq, ts_us, text
        except (IndexError, ValueError, zstandard.ZstdError):
            pass
        return None

    def inspect(self, body: bytes) -> tuple[int, int, bytes]:
        env = self._open(body, None)
        return env.seq, env.ts_us, self._inflate(env)

    def _inflate(self, env: Envelope) -> bytes:
        if not env.compressed:
            return bytes(env.payload)
        if env.dict_id:
            if env.dict_id != self._dict_id or self._dict_bytes is None:
                raise DictionaryMissing(env.dict_id)
            if self._dict is None:
                raise RecordDamaged(f"record needs the log's dictionary record: {self._unusable}")
            zstd = self._dict
        else:
            zstd = self._zstd
        try:
            return zstd.decompress(env.payload)
        except zstandard.ZstdError as exc:
            # Authenticated yet unreadable: written by a buggy or hostile key holder.
            raise RecordDamaged(f"record payload is malformed: {exc}") from None

    def parse(self, text: bytes) -> dict[str, Any]:
        if nests_deeper_than(text, MAX_DEPTH):  # before a recursive decoder meets it
            raise RecordDamaged(_TOO_DEEP)
        try:
            return _decode_message(text)
        except msgspec.DecodeError as exc:
            raise RecordDamaged(f"record payload is malformed: {exc}") from None

    def parse_many(self, texts: Sequence[bytes]) -> list[dict[str, Any]]:
        # Text this short, or with this few brackets, cannot nest too deep: the two cheap
        # answers of nests_deeper_than, without its call and copy. One msgspec call on the
        # texts joined into an array was measured too: 0.45 against 0.51 us a record, not
        # worth proving that the array's elements are the records.
        try:
            return [
                _decode_message(t)
                if len(t) <= _SHALLOW_BYTES or t.count(b"{") + t.count(b"[") <= MAX_DEPTH
                else self.parse(t)
                for t in texts
            ]
        except msgspec.DecodeError:
            return [self.parse(t) for t in texts]  # raises the first failing text's error


class PlainRecords:
    """Bodies of a plain log: one JSON line each (FORMAT.md §6). No integrity."""

    __slots__ = ("_parsed",)

    def __init__(self) -> None:
        # payload() must parse a line to check its seq; parse() of that same line (the next
        # call on every read path, for each record of a batch) reuses the result instead of
        # decoding the JSON twice. Keyed by id() and checked by identity; cleared per batch.
        self._parsed: dict[int, tuple[bytes, dict[str, Any]]] = {}

    def encode(self, seq: int, ts_us: int, message_json: bytes) -> bytes:
        return encode_plain_line(seq, ts_us, message_json)

    def decode(self, body: bytes, expected_seq: int | None) -> tuple[dict[str, Any], int]:
        if _too_deep_line(body):  # the line's own object is one level
            raise RecordDamaged(_TOO_DEEP)
        seq, ts_us, message = _plain_line(body)
        _check_seq(seq, expected_seq)
        return message, ts_us

    def check(self, body: bytes, expected_seq: int | None) -> int:
        if _too_deep_line(body):
            # Whole, in place, but unreadable: recovery must see a record (damage that
            # readers report), not a torn tail that a writer would cut.
            seq, ts_us = _plain_head(body)
        else:
            seq, ts_us, _ = _plain_line(body)
        _check_seq(seq, expected_seq)
        return ts_us

    def payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        self._parsed.clear()
        return self._payload(body, expected_seq)

    def _payload(self, body: bytes, expected_seq: int) -> tuple[bytes, int]:
        # The whole line is the text: parsing it is what checks the record.
        message, ts_us = self.decode(body, expected_seq)
        self._parsed[id(body)] = (body, message)
        return body, ts_us

    def parse(self, text: bytes) -> dict[str, Any]:
        parsed = self._parsed.pop(id(text), None)
        if parsed is not None and parsed[0] is text:
            return parsed[1]
        return self.decode(text, None)[0]

    def read_usual(
        self, records: Sequence[tuple[int, bytes]], tss: Sequence[int], parse: bool = True
    ) -> tuple[list[bytes], list[dict[str, Any]]] | None:
        return None  # a line is parsed to be checked: payloads and parse share the parse

    def parse_many(self, texts: Sequence[bytes]) -> list[dict[str, Any]]:
        return [self.parse(t) for t in texts]

    def payloads(self, records: Sequence[tuple[int, bytes]]) -> Iterator[tuple[int, bytes, int]]:
        self._parsed.clear()
        for seq, body in records:
            text, ts_us = self._payload(body, seq)
            yield seq, text, ts_us

    def inspect(self, body: bytes) -> tuple[int, int, bytes]:
        if _too_deep_line(body):
            seq, ts_us = _plain_head(body)
        else:
            seq, ts_us, _ = _plain_line(body)
        return seq, ts_us, body


def _too_deep_line(body: bytes) -> bool:
    """Check that a line is terminated; return True when its message is too deep to parse
    (FORMAT.md §5.2: measured without recursion, before any decoder sees the line)."""
    if not body.endswith(b"\n"):
        raise RecordRejected("record line is not terminated")
    return nests_deeper_than(body, MAX_DEPTH + 1)


def _plain_line(body: bytes) -> tuple[int, int, dict[str, Any]]:
    try:
        return decode_plain_line(body)
    except ValueError as exc:
        raise RecordRejected(str(exc)) from None


def _plain_head(body: bytes) -> tuple[int, int]:
    try:
        return decode_plain_head(body)
    except ValueError as exc:
        raise RecordRejected(str(exc)) from None


def _check_seq(seq: int, expected_seq: int | None) -> None:
    if expected_seq is not None and seq != expected_seq:
        raise RecordDamaged(f"record line carries seq {seq} where seq {expected_seq} belongs")

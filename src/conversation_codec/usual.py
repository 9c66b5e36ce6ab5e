"""The usual batch: sealed message records, as writers write them, to messages in one loop.

``LogReader.batches`` reads a batch in stages, each a loop over its records: authenticate
and decrypt (``LogCipher.unseal_many``), read each envelope (``SealedRecords.payloads``),
check each time against the index (``_mistimed``), parse (``parse_many``). Every stage
handles every case the format allows, and raises exactly the error a record-by-record read
gives. Most batches hold only the usual case: one key, the envelope writers write (FORMAT.md
§5.2: flags 0, 1 or 1|2 with the log's dictionary), seqs in place, times as indexed,
shallow JSON (checked only when the texts are parsed: a keyword scan parses candidates
alone). For those the stages cost more than the work (issue 15: 4.7 us a record,
of which the HMAC, AES, zstd and msgspec calls are 2.0).

``read_usual`` does the same checks on such a batch in one loop, and answers None at the
first record that is anything else, having changed nothing: the caller then reads the batch
the general way, which finds and reports what is wrong. So it can only make reads faster,
never different; the tests cross-check the two ways on every kind of record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import zstandard

from .format.index import MAX_TS_US
from .format.record import MAX_DEPTH, MAX_MESSAGE_BYTES, nests_deeper_than
from .format.varint import decode_varint

__all__ = ["Inflate", "read_usual"]

Inflate = Callable[[bytes, int, bool, bool], bytes]  # zstandard's ZstdDecompressor.decompress

_US_PER_S = 1_000_000
_SHALLOW_BYTES = 2 * MAX_DEPTH + 1  # no JSON text this long nests deeper than MAX_DEPTH
_decode_message = msgspec.json.Decoder(dict[str, Any]).decode
_frame_content_size = zstandard.frame_content_size
_seconds = struct.Struct(">Q").unpack_from  # the token's time: a body's first 8 bytes


def read_usual(
    records: Sequence[tuple[int, bytes]],
    plains: Sequence[bytes | None],
    tss: Sequence[int],
    inflate: Inflate,
    dict_inflate: tuple[int, Inflate] | None,
    parse: bool = True,
) -> tuple[list[bytes], list[dict[str, Any]]] | None:
    """Return ``(texts, messages)`` of a batch of ``(seq, body)`` whose envelopes ``plains``
    are (authenticated and decrypted), or None when one record is not the usual case.
    Not ``parse``: ``(texts, [])``, the texts' JSON left unchecked (a search parses only
    the texts that may match, and reports a bad one then, as ``payloads`` readers do).

    ``tss``: the index's times, by seq. ``inflate``: the decompress of the log's zstd
    context without a dictionary; ``dict_inflate``: ``(dict_id, decompress)`` with the
    log's dictionary, or None. Both are called as ``Compressor.decompress`` calls them
    once it has checked the frame's content size (1..``MAX_MESSAGE_BYTES``), as here.
    """
    texts: list[bytes] = []
    dict_id, with_dict = dict_inflate if dict_inflate is not None else (-1, inflate)
    try:
        for (seq, body), plain in zip(records, plains, strict=True):
            if plain is None:  # bad padding
                return None
            flags = plain[0]
            # The seq and the time remainder: two varints, decoded inline for one to three
            # bytes as decode_varint does (two calls cost 0.5 us a record, this 0.3).
            b0, b1 = plain[1], plain[2]
            if b0 < 0x80:
                found, pos = b0, 2
            elif 0 < b1 < 0x80:
                found, pos = (b0 & 0x7F) | b1 << 7, 3
            else:
                found, pos = decode_varint(plain, 1)
            b0, b1 = plain[pos], plain[pos + 1]
            if b0 < 0x80:
                rem, pos = b0, pos + 1
            elif 0 < b1 < 0x80:
                rem, pos = (b0 & 0x7F) | b1 << 7, pos + 2
            elif b1 >= 0x80 and 0 < plain[pos + 2] < 0x80:
                rem, pos = (b0 & 0x7F) | (b1 & 0x7F) << 7 | plain[pos + 2] << 14, pos + 3
            else:
                rem, pos = decode_varint(plain, pos)
            if found != seq or rem >= _US_PER_S:
                return None
            ts_us = _seconds(body)[0] * _US_PER_S + rem
            if ts_us != tss[seq] or ts_us >= MAX_TS_US:  # FORMAT.md §9.2: before 10000
                return None
            if flags == 3 and plain[pos] == dict_id:
                frame = plain[pos + 1 :]
                if not 0 < _frame_content_size(frame) <= MAX_MESSAGE_BYTES:
                    return None
                text = with_dict(frame, 0, False, False)
            elif flags == 1:
                frame = plain[pos:]
                if not 0 < _frame_content_size(frame) <= MAX_MESSAGE_BYTES:
                    return None
                text = inflate(frame, 0, False, False)
            elif flags == 0:
                text = plain[pos:]
            else:
                return None
            if (  # nests_deeper_than, its two cheap answers first (no call)
                parse
                and len(text) > _SHALLOW_BYTES
                and text.count(b"{") + text.count(b"[") > MAX_DEPTH
                and nests_deeper_than(text, MAX_DEPTH)
            ):
                return None
            texts.append(text)
        return texts, [_decode_message(text) for text in texts] if parse else []
    except (IndexError, ValueError, zstandard.ZstdError, msgspec.DecodeError):
        return None

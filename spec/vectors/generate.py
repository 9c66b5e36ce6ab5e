"""Write the test vectors of spec/FORMAT.md (run by hand: python spec/vectors/generate.py).

The vectors are made by the library itself; tests/test_vectors.py then checks them with an
independent implementation of FORMAT.md (HKDF, HMAC, AES-CBC straight from ``cryptography``),
so the spec, the vectors and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conversation_codec import ConversationCodec
from conversation_codec.format.header import SealedHeader

HERE = Path(__file__).parent
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
KEY = "cw_0x689RpI-jtRR7oE8h8Eg-Uf-2bX47Y-Xv3-Cdg4="  # published test key: never use it
LOG_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
MESSAGES = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": "Hello! How can I help you with your order today? " * 2,
    },
    {"role": "assistant", "content": "Hello! How can I help you with your refund today?"},
]
TIMESTAMPS_US = [1_763_700_000_123_456, 1_763_700_001_000_000, 1_763_700_002_999_999]
# A raw-content zstd dictionary (any bytes are one), sealed as the log's dictionary record
# between the second and third messages, so the vector exercises FORMAT.md §5.3.
DICTIONARY = b'{"role":"assistant","content":"Hello! How can I help you with your order today? '


def _make(path: Path, key: str | None) -> None:
    codec = ConversationCodec(path, encryption_key=key)
    # Pin the log id so the vector's header is stable: swap the factory's random id.
    real_new_log = codec._new_log

    def pinned() -> object:
        header, fmt = real_new_log()
        if key is None:
            from conversation_codec.format.header import PlainHeader, encode_plain_header
            from conversation_codec.storage.base import LogFormat

            header = encode_plain_header(PlainHeader(LOG_ID))
            return header, LogFormat(LOG_ID, len(header), fmt.records, False)
        from conversation_codec.crypto import Keyring, LogCipher
        from conversation_codec.records import SealedRecords
        from conversation_codec.storage.base import LogFormat

        cipher, header = LogCipher.create(Keyring.from_input(key), SealedHeader(LOG_ID))
        return header, LogFormat(LOG_ID, len(header), SealedRecords(cipher), True)

    codec._new_log = pinned  # type: ignore[method-assign,assignment]
    stamps = [EPOCH + timedelta(microseconds=t) for t in TIMESTAMPS_US]
    codec.extend(MESSAGES[:2], timestamps=stamps[:2])
    if key is not None:
        with codec._writing():
            records = codec._log.fmt.records  # type: ignore[union-attr]
            body = records.encode_dictionary(1, TIMESTAMPS_US[1], DICTIONARY)
            codec._log.append_dictionary(body)
    codec.extend(MESSAGES[2:], timestamps=stamps[2:])
    codec.close()


def main() -> None:
    for name, key in (("sealed_log.json", KEY), ("plain_log.json", None)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chat.log"
            _make(path, key)
            vector = {
                "description": f"Three messages, {'sealed' if key else 'plain'} (FORMAT.md §13)",
                "dictionary_hex": DICTIONARY.hex() if key else None,
                "key": key,
                "log_id": LOG_ID.hex(),
                "messages": MESSAGES,
                "timestamps_us": TIMESTAMPS_US,
                "log_hex": path.read_bytes().hex(),
                "index_hex": Path(str(path) + ".idx").read_bytes().hex(),
            }
        (HERE / name).write_text(json.dumps(vector, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Write the worked-example vectors of spec/FORMAT.md §13 (sealed_log.json, plain_log.json).

Run by hand: ``python spec/vectors/generate.py [output directory]`` (default: this
directory). The logs are written by the library itself, through its public API
(``ConversationCodec.extend`` with given timestamps, default options); tests/test_vectors.py
then checks them with an independent implementation of FORMAT.md (HKDF, HMAC, AES-CBC
straight from ``cryptography``), and regenerates them here and compares byte for byte, so
the spec, the vectors and the writer cannot drift apart unnoticed.

Two things are pinned so that every run writes the same bytes:

* Randomness. The library draws each new log's ``log_id`` and every record's IV from
  ``os.urandom``; while writing, ``os.urandom`` is replaced by a fixed byte stream (``LOG_ID``,
  then SHAKE-256 of a fixed seed), consumed in order, so a batch's one draw of 16·n bytes
  gives the same IVs as n draws of 16 (crypto.py, ``RecordKey.seal_many``). Nothing else
  about the library is patched.
* The dictionary. A writer trains one only at 512 messages (§5.3), too many for a worked
  example, so the sealed vector's raw-content dictionary is placed by the one internal step
  this script takes: sealing it with the log's ``SealedRecords.encode_dictionary`` and
  appending it with the storage layer's ``FileLog.append_dictionary`` (what the writer does
  when it trains one), between the second and third messages. The third message is then
  appended through the public API again, which compresses it with that dictionary.

``sealed_log_index_v1.json`` is not written here: it is the sealed vector as an earlier
writer made it (index version 1, no entry flags), kept so that old files stay tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conversation_codec import ConversationCodec
from conversation_codec.crypto import Keyring
from conversation_codec.records import SealedRecords
from conversation_codec.sealing import LogSecrets
from conversation_codec.storage.file.log import FileLog

HERE = Path(__file__).parent
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
KEY = "cw_0x689RpI-jtRR7oE8h8Eg-Uf-2bX47Y-Xv3-Cdg4="  # published test key: never use it
LOG_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
SEED = b"conversation-codec spec/vectors/generate.py"
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
STAMPS = [EPOCH + timedelta(microseconds=t) for t in TIMESTAMPS_US]


@contextmanager
def _pinned_randomness() -> Iterator[None]:
    """Make ``os.urandom`` a fixed stream: ``LOG_ID``, then SHAKE-256(``SEED``)."""
    stream = LOG_ID + hashlib.shake_256(SEED).digest(4096)
    taken = 0

    def urandom(n: int) -> bytes:
        nonlocal taken
        if taken + n > len(stream):
            raise RuntimeError("the vectors' pinned random stream ran out")
        taken += n
        return stream[taken - n : taken]

    real = os.urandom
    os.urandom = urandom
    try:
        yield
    finally:
        os.urandom = real


def _add_dictionary(path: Path, key: str) -> None:
    """Append ``DICTIONARY`` as the log's dictionary record, stamped with the time of the
    record before it (FORMAT.md §5.3)."""
    log = FileLog(path, attach=LogSecrets(path, Keyring.from_input(key), None, None).attach)
    try:
        with log.transaction(write=True):
            assert log.fmt is not None and isinstance(log.fmt.records, SealedRecords)
            body = log.fmt.records.encode_dictionary(1, TIMESTAMPS_US[1], DICTIONARY)
            log.append_dictionary(body)
    finally:
        log.close()


def _write(path: Path, key: str | None) -> None:
    with _pinned_randomness():
        with ConversationCodec(path, encryption_key=key) as codec:
            codec.extend(MESSAGES[:2], timestamps=STAMPS[:2])
        if key is not None:
            _add_dictionary(path, key)
        with ConversationCodec(path, encryption_key=key) as codec:
            codec.extend(MESSAGES[2:], timestamps=STAMPS[2:])


def build() -> dict[str, str]:
    """Return the text of each vector file, by name."""
    out = {}
    for name, key in (("sealed_log.json", KEY), ("plain_log.json", None)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chat.log"
            _write(path, key)
            data = path.read_bytes()
            pinned = data[16:32] == LOG_ID if key else LOG_ID.hex().encode() in data[:80]
            if not pinned:
                raise RuntimeError("the log id is not the pinned one: the library drew more")
            vector = {
                "description": f"Three messages, {'sealed' if key else 'plain'} (FORMAT.md §13)",
                "dictionary_hex": DICTIONARY.hex() if key else None,
                "key": key,
                "log_id": LOG_ID.hex(),
                "messages": MESSAGES,
                "timestamps_us": TIMESTAMPS_US,
                "log_hex": data.hex(),
                "index_hex": Path(str(path) + ".idx").read_bytes().hex(),
            }
        out[name] = json.dumps(vector, indent=2) + "\n"
    return out


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, text in build().items():
        (folder / name).write_text(text)


if __name__ == "__main__":
    main()

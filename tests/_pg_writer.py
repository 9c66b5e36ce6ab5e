"""A conversation on ``PostgresLog`` written the way the codec writes, and a child process.

``Conversation`` seals, stamps and appends through the codec's own layers (``LogSecrets``,
``LogWriter``, ``LogReader``) on a ``PostgresLog``: the storage-level stand-in for
``ConversationCodec`` until the codec opens any ``LogStorage``.

Run as ``python tests/_pg_writer.py MODE URL CONVERSATION WRITER COUNT`` (the key in
``CC_TEST_KEY``; the tests start it with ``sys.executable``):

``append``  print ``ready``, wait for a line on stdin, append ``COUNT`` messages of writer
            ``WRITER``, printing ``ack <i> <seq>`` once each has committed.
``pop``     likewise, ``COUNT`` times: pop the last message, print ``pop <json>`` once
            committed (``pop null`` when the log was empty).
``loop``    append message i = 0, 1, … until stdin closes, printing ``ack <i> <seq>`` per
            committed append and ``error <text>`` per failed one (then it waits 20 ms and
            goes on with i + 1: an append that failed may or may not have committed).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from conversation_codec.crypto import Keyring
from conversation_codec.encoding import encode_json
from conversation_codec.errors import ConversationCodecError
from conversation_codec.format.header import context_digest
from conversation_codec.reading import LogReader
from conversation_codec.sealing import LogSecrets
from conversation_codec.storage.postgres import PostgresBackend, PostgresLog
from conversation_codec.writing import LogWriter

KEY_ENV = "CC_TEST_KEY"


def message(writer: int, i: int) -> dict[str, Any]:
    """Message ``i`` of ``writer``: a distinctive text, sizes varying."""
    text = f"w{writer} m{i} " + "x" * (i % 37)
    return {"role": "user", "writer": writer, "i": i, "content": text}


class Conversation:
    """One conversation through the codec's layers; ``key`` None: plaintext records."""

    def __init__(self, backend: PostgresBackend, conversation_id: str, key: str | None) -> None:
        path = Path(conversation_id)
        keyring = None if key is None else Keyring.from_input(key)
        self.secrets = LogSecrets(path, keyring, None, context_digest(conversation_id))
        self.log = PostgresLog(backend, conversation_id, attach=self.secrets.attach)
        self.reader = LogReader(self.log, path)
        self.writer = LogWriter(self.log, self.reader, self.secrets, None)

    def extend(self, messages: list[dict[str, Any]]) -> int:
        """Append in one transaction; return the first seq (acknowledged: committed)."""
        datas = [encode_json(m) for m in messages]
        with self.log.transaction(write=True):
            self.writer.ensure_log()
            return self.writer.append(datas, None)

    def pop(self) -> dict[str, Any] | None:
        with self.log.transaction(write=True):
            count = len(self.log.index)
            if not count:
                return None
            last = self.reader.read_one(count - 1)
            self.log.truncate(count - 1)
            return last

    def messages(self) -> list[tuple[int, dict[str, Any], int]]:
        """Every stored ``(seq, message, ts_us)``, each record authenticated at its seq."""
        with self.log.transaction(write=False):
            return list(self.reader.decoded(0, len(self.log.index)))


def _stdin_closed() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and not sys.stdin.readline()


def main(argv: list[str]) -> None:
    mode, url, conversation_id = argv[:3]
    writer, count = int(argv[3]), int(argv[4])
    backend = PostgresBackend(url, max_size=2)
    conv = Conversation(backend, conversation_id, os.environ.get(KEY_ENV))
    print("ready", flush=True)
    if mode != "loop":
        sys.stdin.readline()
    i = 0
    while mode == "loop" or i < count:
        try:
            if mode == "pop":
                print("pop", json.dumps(conv.pop()), flush=True)
            else:
                print("ack", i, conv.extend([message(writer, i)]), flush=True)
        except ConversationCodecError as exc:
            if mode != "loop":
                raise
            print("error", type(exc).__name__, str(exc).replace("\n", " "), flush=True)
            time.sleep(0.02)
        i += 1
        if mode == "loop" and _stdin_closed():
            break
    backend.close()


if __name__ == "__main__":
    main(sys.argv[1:])

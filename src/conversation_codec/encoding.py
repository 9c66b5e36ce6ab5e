"""MessageEncoder: a message as it will be stored, validated, and its JSON.

Applies ``redact_fn`` and the attachments mode, then checks what the format demands of a
record (FORMAT.md §5.2): a JSON object that round-trips exactly, nests at most ``MAX_DEPTH``
levels and fits ``MAX_MESSAGE_BYTES``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from .attachments import BlobStore, apply_mode
from .errors import ConversationCodecError, NotSerializableError, RecordTooLargeError
from .format.record import MAX_DEPTH, MAX_MESSAGE_BYTES, nests_deeper_than

__all__ = ["MessageEncoder", "digest", "encode_json"]

Message = dict[str, Any]
encode_json = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_SHALLOW_BYTES = 2 * MAX_DEPTH + 1  # no JSON this long nests more than MAX_DEPTH deep


class MessageEncoder:
    """Turn messages into what is stored: ``redact`` them, apply the ``attachments`` mode
    (``blobs``: the store of ``"external"``, swapped by a key rotation), validate them."""

    def __init__(
        self,
        redact: Callable[[Message], Message] | None,
        attachments: str,
        blobs: BlobStore | None,
    ) -> None:
        self.redact = redact
        self.attachments = attachments
        self.blobs = blobs

    def transform(self, message: Message) -> Message:
        """Apply ``redact_fn`` and the attachments mode: the message as it will be stored."""
        if not isinstance(message, dict):
            raise NotSerializableError(f"a message must be a dict, not {type(message).__name__}")
        if self.redact is not None:
            message = self.redact(message)
            if not isinstance(message, dict):
                raise NotSerializableError("redact_fn must return a dict")
        if self.attachments != "keep":
            # Blobs are written before the record that refers to them: a crash leaves at
            # worst an unreferenced blob, which compaction deletes.
            message = apply_mode(message, self.attachments, self.blobs)
        return message

    def encode(self, message: Message) -> tuple[Message, bytes]:
        """Transform, encode and validate one message; return it with its JSON."""
        if type(message) is not dict or self.redact is not None or self.attachments != "keep":
            try:
                message = self.transform(message)  # redact_fn and attachments walk it
            except RecursionError:
                raise too_deep_or(message) from None
        failed = None
        try:
            data = encode_json(message)
        except RecursionError:
            raise too_deep_or(message) from None
        except (TypeError, ValueError, OverflowError) as exc:
            failed = str(exc)
        if failed is not None:  # raised outside the except: its __context__ holds the text
            raise NotSerializableError(f"message is not JSON-serialisable: {failed}")
        # Short JSON cannot nest deep (two bytes a level), nor JSON with few brackets: no
        # call for most chat messages (a frame costs several times its warm cost with the
        # caches cold between synced appends, issue 15). nests_deeper_than counts the same.
        if (
            len(data) > _SHALLOW_BYTES
            and data.count(b"{") + data.count(b"[") > MAX_DEPTH
            and nests_deeper_than(data, MAX_DEPTH)
        ):
            # Refused on write, not only on read: a reader with less stack to spare than
            # this writer had could not decode it, and the whole log would be unreadable.
            raise too_deep()
        if len(data) > MAX_MESSAGE_BYTES:
            raise RecordTooLargeError(
                f"message is {len(data)} bytes of JSON; one record holds at most "
                f"{MAX_MESSAGE_BYTES} — store large attachments outside the message"
            )
        if _decode(data) != message:
            raise NotSerializableError(
                "message does not round-trip through JSON exactly (tuples, non-str keys, NaN, "
                "datetimes, bytes or sets); convert those values first"
            )
        return message, data

    @property
    def stores_as_given(self) -> bool:
        """True when a message is stored as given: no ``redact_fn``, attachments kept."""
        return self.redact is None and self.attachments == "keep"

    def digest_of(self, message: Message) -> bytes:
        """The digest ``message`` would be stored with; empty for what cannot be stored.

        Digests cover the JSON as stored (key order included) because that is free to get
        at load and append time; a mismatch is confirmed by ``_same_as_stored`` before the
        log is rewritten, so a message whose keys were merely reordered still counts as kept.
        """
        try:
            return digest(encode_json(self.transform(message)))
        except (ConversationCodecError, TypeError, ValueError, OverflowError, RecursionError):
            return b""


def too_deep() -> NotSerializableError:
    return NotSerializableError(
        f"message nests objects and arrays more than {MAX_DEPTH} levels deep, the limit of "
        "the format (FORMAT.md §5.2); flatten it, or store the deep part as a JSON string"
    )


def too_deep_or(message: object) -> Exception:
    """The error for a RecursionError met while encoding ``message``: the nesting limit,
    unless the message is within it (then the caller's own stack ran out: say so)."""
    level = [message] if isinstance(message, (dict, list)) else []
    for _ in range(MAX_DEPTH):  # walked level by level: no recursion
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
    if level:
        return too_deep()
    return RecursionError("the call stack ran out while encoding a message (not its nesting)")


def digest(data: bytes) -> bytes:
    """Fingerprint a stored message's JSON, for save()'s comparison of the kept prefix."""
    return hashlib.blake2b(data, digest_size=16).digest()

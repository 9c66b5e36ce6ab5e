"""An independent reader of FORMAT.md §15 (attachment blobs), written from the spec alone.

It imports nothing from conversation_codec: HMAC and SHA-256 come from the standard library,
HKDF and Fernet from ``cryptography``. Given the messages a log stores (as
``_spec_reader.read`` decodes them) and the log's ``P.blobs/`` folder, it restores every
externalized attachment as §15.4 says, checking each blob's name as §15.2 requires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO = b"conversation-codec/1 blob keys"  # §15.1
REFERENCE = "cc-blob:"  # §15.3
NOTE = "_cc_attachments"
NAME_DIGITS = set("0123456789abcdef")


class BlobRefused(Exception):
    """A blob §15.2 tells a reader to refuse (its error class, by name, in ``name``)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name


def blob_keys(keys: Sequence[str]) -> list[tuple[Fernet, bytes]]:
    """§15.1: ``(blob_key as a Fernet, name_key)`` per master key of the list."""
    out = []
    for key in keys:
        okm = HKDF(hashes.SHA256(), 64, salt=None, info=INFO).derive(base64.urlsafe_b64decode(key))
        out.append((Fernet(base64.urlsafe_b64encode(okm[:32])), okm[32:]))
    return out


def blob_name(name_key: bytes, plaintext: bytes) -> str:
    """§15.1: HMAC-SHA256 over the tag byte and the content, in lowercase hex."""
    return hmac.new(name_key, plaintext, hashlib.sha256).hexdigest()


def open_blob(folder: Path, name: str, keys: Sequence[str]) -> bytes:
    """§15.2: the plaintext (tag byte, content) of blob ``name``; no keys for a plain log."""
    if len(name) != 64 or not set(name) <= NAME_DIGITS:
        raise BlobRefused("ValueError", f"{name!r} is not a blob name")
    path = folder / name
    if not path.is_file():
        raise BlobRefused("MissingBlobError", name)
    stored = path.read_bytes()
    if not keys:
        plaintext, name_keys = stored, [b""]
    else:
        derived = blob_keys(keys)
        name_keys = [n for _, n in derived]
        token = base64.urlsafe_b64encode(stored)  # the whole token, 0x80 byte included
        for fernet, _ in derived:
            try:
                plaintext = fernet.decrypt(token)
                break
            except InvalidToken:
                continue
        else:
            raise BlobRefused("DecryptionError", f"blob {name} opens under no key")
    if not any(hmac.compare_digest(blob_name(k, plaintext), name) for k in name_keys):
        raise BlobRefused("DecryptionError", f"blob {name} does not hold that name's data")
    return plaintext


def is_slot(node: dict[str, Any], member: str, parent: str) -> bool:
    """§15.3's table: whether ``node[member]`` (a string) is an attachment slot."""
    if member == "data":
        return node.get("type") == "base64" or parent == "input_audio"
    return member in ("image_url", "file_data") or (member == "url" and parent == "image_url")


def references(message: dict[str, Any]) -> list[str]:
    """The blob names the slots of ``message`` refer to, in order."""
    found: list[str] = []

    def walk(node: Any, parent: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, parent)
        elif isinstance(node, dict):
            for member, value in node.items():
                if isinstance(value, str) and is_slot(node, member, parent):
                    if value.startswith(REFERENCE):
                        found.append(value[len(REFERENCE) : len(REFERENCE) + 64])
                else:
                    walk(value, member)

    walk(message, "")
    return found


def restore(message: dict[str, Any], folder: Path, keys: Sequence[str]) -> dict[str, Any]:
    """§15.4: ``message`` with every reference replaced by the original slot value."""
    note = message.get(NOTE)
    if not isinstance(note, dict) or not note.get("external"):
        return message

    def value_of(reference: str) -> str:
        start = len(REFERENCE)
        name, prefix = reference[start : start + 64], reference[start + 64 :]
        plaintext = open_blob(folder, name, keys)
        tag, content = plaintext[:1], plaintext[1:]
        if tag == b"\x01":
            return prefix + base64.b64encode(content).decode("ascii")
        if tag == b"\x00":
            return content.decode("utf-8")
        raise BlobRefused("DecryptionError", f"blob {name} has tag {tag.hex()}")

    def walk(node: Any, parent: str) -> Any:
        if isinstance(node, list):
            return [walk(item, parent) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for member, value in node.items():
            if isinstance(value, str) and is_slot(node, member, parent):
                out[member] = value_of(value) if value.startswith(REFERENCE) else value
            else:
                out[member] = walk(value, member)
        return out

    restored: dict[str, Any] = walk(message, "")
    rest = {k: v for k, v in note.items() if k != "external"}
    if rest:
        restored[NOTE] = rest
    else:
        del restored[NOTE]
    return restored

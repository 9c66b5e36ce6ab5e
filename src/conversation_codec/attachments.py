"""Inline attachments (base64 images, files, audio): keep, strip, or move to a blob store.

Attachment slots, wherever they sit in a message (content parts, tool results, nested):

==============================  ============================================================
OpenAI chat ``image_url``       ``{"type": "image_url", "image_url": {"url": "data:..."}}``
                                (or ``"image_url": "data:..."``); http(s) URLs are left alone
OpenAI chat ``file``            ``{"type": "file", "file": {"file_data": "data:..."}}``
OpenAI chat ``input_audio``     ``{"input_audio": {"data": "<base64>", "format": "wav"}}``
Responses ``input_image``       ``{"type": "input_image", "image_url": "data:..."}``
Responses ``input_file``        ``{"type": "input_file", "file_data": "data:..."}``
Anthropic base64 source         ``{"source": {"type": "base64", "media_type": ..., "data": ...}}``
==============================  ============================================================

Modes (:data:`ATTACHMENT_MODES`):

* ``"keep"``: the message is stored as given.
* ``"strip"``: each slot's value becomes a placeholder string
  ``cc-stripped:<media type>;bytes=<decoded size>;sha256=<hex of the decoded bytes>``. The
  data is gone for good; chat-format conversion turns such parts into a short text note.
* ``"external"``: each slot's value becomes a reference ``cc-blob:<name><prefix>`` and the
  data moves to a :class:`BlobStore` (``<log>.blobs/``), sealed with a key derived from the
  log's key; :func:`restore` puts back the exact original string.

A changed message carries ``"_cc_attachments": {"stripped": n, "external": m}`` (only
non-zero counts), so readers can skip the others cheaply; :func:`restore` removes the
``external`` count again, so ``restore(externalize(m, store), store) == m``. The leading
underscore keeps it apart from message keys of the chat APIs, and the chat-format
converters never send it.

Blob names are HMAC-SHA256 of the blob's plaintext under a key derived from the log key,
not a plain SHA-256: a plain hash would let anyone who can list the directory test
whether a given picture is in the conversation. Equal attachments share one blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._atomic import atomic_write
from ._fsio import (
    DEFAULT_IO,
    FileIO,
    check_file,
    make_private_dirs,
    open_dir,
    open_file,
    remove_flat_dir,
    unlink_file,
)
from .crypto import KeyInput, Keyring
from .errors import BlobNameError, DecryptionError, MissingBlobError, StorageError
from .paths import blob_temp_name, is_blob_temp

__all__ = [
    "ATTACHMENTS_KEY",
    "ATTACHMENT_MODES",
    "BLOB_PREFIX",
    "STRIPPED_PREFIX",
    "BlobStore",
    "MissingBlobError",
    "apply_mode",
    "externalize",
    "references",
    "restore",
    "strip_attachments",
    "stripped_note",
]

ATTACHMENT_MODES = ("keep", "strip", "external")
ATTACHMENTS_KEY = "_cc_attachments"
STRIPPED_PREFIX = "cc-stripped:"
BLOB_PREFIX = "cc-blob:"
_NAME_CHARS = 64  # hex digits of an HMAC-SHA256 blob name
_NAME = re.compile(r"[0-9a-f]{64}")
_STRIPPED = re.compile(r"cc-stripped:([^;]*);bytes=(\d+);sha256=([0-9a-f]{64})")
_HKDF_INFO = b"conversation-codec/1 blob keys"  # distinct from the log keys' info
_TAG_RAW = b"\x01"  # blob = decoded bytes; the original is prefix + standard base64 of them
_TAG_VERBATIM = b"\x00"  # blob = the original string, UTF-8 (base64 that is not canonical)

Message = dict[str, Any]
_Slot = Callable[[str, str, bool], "str | None"]  # (value, media type, bare base64 allowed)


# -- walking attachment slots --------------------------------------------------------------


def _rewrite(node: Any, slot: _Slot, parent_key: str = "") -> Any:
    """Return a copy of ``node`` with every attachment slot value passed through ``slot``."""
    if isinstance(node, list):
        return [_rewrite(item, slot, parent_key) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        found = _slot_of(node, key, value, parent_key)
        if found is not None:
            media, bare = found
            new = slot(value, media, bare)
            out[key] = value if new is None else new
        else:
            out[key] = _rewrite(value, slot, key)
    return out


def _slot_of(
    node: dict[str, Any], key: str, value: Any, parent_key: str
) -> tuple[str, bool] | None:
    """Say whether ``node[key]`` is an attachment slot: ``(media type hint, bare base64 ok)``."""
    if not isinstance(value, str):
        return None
    if key == "data" and node.get("type") == "base64":  # Anthropic source
        return _media(node.get("media_type")), True
    if key == "data" and parent_key == "input_audio":
        return _media(f"audio/{node.get('format', '')}".rstrip("/")), True
    if key == "image_url" or (key == "url" and parent_key == "image_url"):
        return "application/octet-stream", False  # data URLs only: never touch http URLs
    if key == "file_data":
        return "application/octet-stream", True
    return None


def _media(value: Any) -> str:
    text = value if isinstance(value, str) and value else "application/octet-stream"
    return text.replace(";", "")  # the placeholder uses ";" as its separator


def _split(value: str, media: str, bare: bool) -> tuple[str, str, str, bool] | None:
    """Split a slot value into ``(prefix, payload, media type, is base64)``; None to skip."""
    if value.startswith((STRIPPED_PREFIX, BLOB_PREFIX)):
        return None  # already stripped or external
    if value.startswith("data:"):
        comma = value.find(",")
        if comma < 0:
            return None
        header = value[5:comma]
        is_b64 = header.endswith(";base64")
        media = (header[:-7] if is_b64 else header).split(";")[0] or "text/plain"
        return value[: comma + 1], value[comma + 1 :], _media(media), is_b64
    if not bare:
        return None
    return "", value, media, True


def _decoded(payload: str, is_b64: bool) -> tuple[bytes, bool]:
    """Return the attachment's bytes, and whether ``payload`` is their canonical base64."""
    if is_b64:
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            return raw, base64.b64encode(raw).decode("ascii") == payload
    return payload.encode("utf-8"), False


def _flagged(message: Message, changed: int, kind: str) -> Message:
    if changed:
        flags = dict(message.get(ATTACHMENTS_KEY) or {})
        flags[kind] = flags.get(kind, 0) + changed
        message[ATTACHMENTS_KEY] = flags
    return message


# -- the three modes -----------------------------------------------------------------------


def strip_attachments(message: Message) -> Message:
    """Return a copy of ``message`` with inline attachment data replaced by placeholders.

    >>> m = {"role": "user", "content": [{"type": "image_url",
    ...      "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}
    >>> s = strip_attachments(m)
    >>> s["content"][0]["image_url"]["url"][:44], s["_cc_attachments"]
    ('cc-stripped:image/png;bytes=5;sha256=2cf24db', {'stripped': 1})
    """
    count = 0

    def strip(value: str, media: str, bare: bool) -> str | None:
        nonlocal count
        parts = _split(value, media, bare)
        if parts is None:
            return None
        _, payload, media, is_b64 = parts
        raw, _ = _decoded(payload, is_b64)
        count += 1
        return f"{STRIPPED_PREFIX}{media};bytes={len(raw)};sha256={hashlib.sha256(raw).hexdigest()}"

    return _flagged(_rewrite(message, strip), count, "stripped")


def externalize(message: Message, store: BlobStore) -> Message:
    """Return a copy of ``message`` whose inline attachments live in ``store``.

    Each blob is durable (fsynced) before this returns, so a log record written after it
    never refers to a blob a crash could lose.
    """
    count = 0

    def put(value: str, media: str, bare: bool) -> str | None:
        nonlocal count
        parts = _split(value, media, bare)
        if parts is None:
            return None
        prefix, payload, _, is_b64 = parts
        raw, canonical = _decoded(payload, is_b64)
        if canonical:  # keep 3/4 of the bytes: base64 is rebuilt exactly on restore
            name = store.put(_TAG_RAW + raw)
        else:
            prefix, name = "", store.put(_TAG_VERBATIM + value.encode("utf-8"))
        count += 1
        return f"{BLOB_PREFIX}{name}{prefix}"

    return _flagged(_rewrite(message, put), count, "external")


def restore(message: Message, store: BlobStore) -> Message:
    """Return ``message`` with blob references replaced by the exact original data.

    A message without externalized attachments is returned as it is (not copied).

    :raises MissingBlobError: a referenced blob is not in the store.
    :raises DecryptionError: a blob does not open under the store's key, or was swapped.
    """
    flags = message.get(ATTACHMENTS_KEY)
    if not isinstance(flags, dict) or not flags.get("external"):
        return message

    def get(value: str, media: str, bare: bool) -> str | None:
        if not value.startswith(BLOB_PREFIX):
            return None
        end = len(BLOB_PREFIX) + _NAME_CHARS
        blob = store.get(value[len(BLOB_PREFIX) : end])
        if blob[:1] == _TAG_RAW:
            return value[end:] + base64.b64encode(blob[1:]).decode("ascii")
        try:  # FORMAT.md §15.4: another tag, or text that is not UTF-8, is refused
            if blob[:1] == _TAG_VERBATIM:
                return blob[1:].decode("utf-8")
        except UnicodeDecodeError:
            pass
        raise DecryptionError(f"blob {value[len(BLOB_PREFIX) : end]} holds no attachment")

    out: Message = _rewrite(message, get)
    rest = {k: v for k, v in flags.items() if k != "external"}
    if rest:
        out[ATTACHMENTS_KEY] = rest
    else:
        del out[ATTACHMENTS_KEY]
    return out


def references(message: Message) -> set[str]:
    """Return the names of the blobs ``message`` refers to."""
    names: set[str] = set()

    def note(value: str, media: str, bare: bool) -> str | None:
        if value.startswith(BLOB_PREFIX):
            names.add(value[len(BLOB_PREFIX) : len(BLOB_PREFIX) + _NAME_CHARS])
        return None

    _rewrite(message, note)
    return names


def apply_mode(message: Message, mode: str, store: BlobStore | None = None) -> Message:
    """Apply an attachment mode (``"keep"``, ``"strip"`` or ``"external"``) to a message."""
    if mode == "keep":
        return message
    if mode == "strip":
        return strip_attachments(message)
    if mode == "external":
        if store is None:
            raise ValueError('attachments="external" needs a BlobStore')
        return externalize(message, store)
    raise ValueError(f'attachment mode must be "keep", "strip" or "external", not {mode!r}')


def stripped_note(value: str) -> str | None:
    """Describe a strip placeholder for a reader, or None if ``value`` is not one.

    >>> stripped_note("cc-stripped:image/png;bytes=2048;sha256=" + "0" * 64)
    '[image/png attachment removed: 2048 bytes]'
    """
    match = _STRIPPED.fullmatch(value)
    if match is None:
        return None
    return f"[{match.group(1)} attachment removed: {match.group(2)} bytes]"


# -- the blob store ------------------------------------------------------------------------


class BlobStore:
    """A directory of content-addressed, sealed, deduplicated attachment blobs.

    :param directory: where blobs live (created 0700 on the first ``put``); by convention
        ``<log path>.blobs``.
    :param seal: encrypts a blob's plaintext (None: stored as is, for plaintext logs).
    :param unseal: the inverse of ``seal``; raises on tampering (``InvalidToken``).
    :param name_key: HMAC key naming blobs; keep it secret (see the module docstring).
    :param old_name_keys: name keys of rotated-out log keys: their blobs still verify.

    Every blob file is written 0600 and atomically (temp, fsync, rename, directory fsync).
    Files are reached through the directory's descriptor, never through a link: a link at
    the directory or at a blob raises ``StorageError`` (FORMAT.md §1).
    ``delete_unreferenced`` must run under the log's writer lock, with every ``put`` of
    attachments for records not yet written also under that lock; otherwise a blob put
    for an in-flight record can be deleted before its record lands.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        seal: Callable[[bytes], bytes] | None,
        unseal: Callable[[bytes], bytes] | None,
        name_key: bytes,
        *,
        old_name_keys: Sequence[bytes] = (),
        io: FileIO = DEFAULT_IO,
    ) -> None:
        if (seal is None) != (unseal is None):
            raise ValueError("pass both seal and unseal, or neither")
        self.directory = Path(directory)
        self._seal = seal
        self._unseal = unseal
        self._name_key = name_key
        self._name_keys = (name_key, *old_name_keys)
        self.io = io  # the filesystem seam (_fsio)

    @classmethod
    def for_key(
        cls, directory: str | os.PathLike[str], key: KeyInput | None, *, io: FileIO = DEFAULT_IO
    ) -> BlobStore:
        """Make a store sealed with keys derived (HKDF-SHA256) from a log's key.

        With a key list, the first key seals and names new blobs and every key opens old
        ones. ``None`` makes a plaintext store for a plaintext log.
        """
        if key is None:
            return cls(directory, None, None, b"", io=io)
        derived = [
            HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_HKDF_INFO).derive(m)
            for m in Keyring.from_input(key).masters
        ]
        fernets = [Fernet(base64.urlsafe_b64encode(okm[:32])) for okm in derived]
        opener = MultiFernet(fernets)

        # Stored as the token's bytes rather than its base64 text: a quarter smaller.
        def seal(data: bytes) -> bytes:
            return base64.urlsafe_b64decode(fernets[0].encrypt(data))

        def unseal(data: bytes) -> bytes:
            return opener.decrypt(base64.urlsafe_b64encode(data))

        names = [okm[32:] for okm in derived]
        return cls(directory, seal, unseal, names[0], old_name_keys=names[1:], io=io)

    def name(self, data: bytes) -> str:
        """Return the name a blob with this plaintext has."""
        return hmac.new(self._name_key, data, hashlib.sha256).hexdigest()

    def put(self, data: bytes) -> str:
        """Store ``data`` (once: an equal blob is already there) and return its name."""
        name = self.name(data)
        tmp = blob_temp_name()
        dir_fd = -1
        try:
            make_private_dirs(self.directory, io=self.io)
            dir_fd = open_dir(self.directory)
            if check_file(name, dir_fd=dir_fd, shown=self.directory / name) is not None:
                return name
            sealed = data if self._seal is None else self._seal(data)
            # A racing put of the same name wrote equal content: replacing it is harmless.
            # A link planted at the name since the check above is refused, never followed.
            shown = self.directory / name
            atomic_write(name, sealed, io=self.io, dir_fd=dir_fd, shown=shown, tmp=tmp)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(exc.errno, f"cannot store blob in {self.directory}: {exc}") from exc
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        return name

    def get(self, name: str) -> bytes:
        """Return the plaintext of blob ``name``.

        :raises MissingBlobError: no such blob (``BlobNameError``, also a ValueError:
            ``name`` is not a blob name).
        :raises DecryptionError: it does not open under this store's key, or it is not
            the blob of that name (swapped or modified).
        :raises StorageError: the blob or the directory is a link, or unreadable.
        """
        if not _NAME.fullmatch(name):
            raise BlobNameError(f"{name!r} is not a blob name (64 hex digits)")
        try:
            stored = self._read(name)
        except FileNotFoundError:
            raise MissingBlobError(
                f"blob {name} is missing from {self.directory}; restore it from a backup"
            ) from None
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read blob {name}: {exc}") from exc
        try:
            data = stored if self._unseal is None else self._unseal(stored)
        except InvalidToken:
            raise DecryptionError(f"blob {name} does not open with this key") from None
        if not any(
            hmac.compare_digest(hmac.new(k, data, hashlib.sha256).hexdigest(), name)
            for k in self._name_keys
        ):
            raise DecryptionError(f"blob {name} does not hold the data of that name")
        return data

    def _read(self, name: str) -> bytes:
        dir_fd = open_dir(self.directory)
        try:
            fd = open_file(name, os.O_RDONLY, dir_fd=dir_fd, shown=self.directory / name)
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def __contains__(self, name: object) -> bool:
        return (
            isinstance(name, str)
            and bool(_NAME.fullmatch(name))
            and (self.directory / name).is_file()
        )

    def names(self) -> set[str]:
        """Return the names of all stored blobs.

        :raises StorageError: the directory is a link.
        """
        try:
            dir_fd = open_dir(self.directory)
        except FileNotFoundError:
            return set()
        try:
            return {n for n in os.listdir(dir_fd) if _NAME.fullmatch(n)}
        finally:
            os.close(dir_fd)

    def delete_unreferenced(self, referenced: Iterable[str]) -> int:
        """Delete every blob not named in ``referenced``; return how many went.

        Also removes the temp files that crashed ``put`` calls left behind, however recent:
        under the writer lock no ``put`` is in flight, and a temp file may hold a blob
        sealed under a key that a rotation is retiring.

        :raises StorageError: the directory, or an entry to delete, is a link.
        """
        keep = set(referenced)
        try:
            dir_fd = open_dir(self.directory)
        except FileNotFoundError:
            return 0
        gone = swept = 0
        try:
            for name in os.listdir(dir_fd):
                shown = self.directory / name
                if _NAME.fullmatch(name) and name not in keep:
                    gone += unlink_file(name, dir_fd=dir_fd, shown=shown, io=self.io)
                elif is_blob_temp(name):
                    swept += unlink_file(name, dir_fd=dir_fd, shown=shown, io=self.io)
            if gone or swept:
                self.io.fsync_dir(dir_fd)
        finally:
            os.close(dir_fd)
        return gone

    def clear(self) -> None:
        """Delete every blob and the directory itself.

        :raises StorageError: the directory or an entry in it is a link or a subdirectory
            (then nothing is deleted).
        """
        if remove_flat_dir(self.directory, io=self.io):
            self.io.fsync_dir(self.directory.parent)

    def __repr__(self) -> str:  # never the keys
        state = "plaintext" if self._seal is None else "sealed"
        return f"<BlobStore {str(self.directory)!r} {state}>"

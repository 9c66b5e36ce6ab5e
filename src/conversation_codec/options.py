"""The options of a :class:`~conversation_codec.ConversationCodec`, checked once and frozen.

``ConversationCodec`` keeps its keyword arguments and builds a :class:`CodecOptions` from
them; the options that are seams (``clock``, ``io``) are how tests reach inside without
touching private attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ._fsio import DEFAULT_IO, FileIO

__all__ = ["AttachmentMode", "CodecOptions", "Durability", "check_int", "check_seconds"]

Durability = Literal["fsync", "flush"]
AttachmentMode = Literal["keep", "strip", "external"]


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """How a codec writes: durability, attachments, and its two seams.

    :param durability: ``"fsync"`` (a returned call is on stable storage) or ``"flush"``
        (handed to the OS: survives a process crash, not a power loss).
    :param attachments: ``"keep"``, ``"strip"`` or ``"external"`` (see ``ConversationCodec``).
    :param clock: seam returning microseconds since the epoch (UTC) for new records; None
        reads the system clock.
    :param lock_timeout: seconds to wait for another process's lock; None waits forever.
    :param io: the filesystem seam (LevelDB's ``Env``): every write, sync, truncate, rename,
        link and unlink of the log, its index and lock file goes through this
        :class:`~conversation_codec._fsio.FileIO`. The default is the operating system;
        reliability tests pass a subclass that records calls (power-loss images) or fails
        the Nth one (ENOSPC, EIO).
    :raises ValueError: ``durability`` or ``attachments`` is not one of its values, or
        ``lock_timeout`` is negative or NaN.
    :raises TypeError: ``io`` is not a ``FileIO``, or ``lock_timeout`` not a number.
    """

    durability: Durability = "fsync"
    attachments: AttachmentMode = "keep"
    clock: Callable[[], int] | None = None
    lock_timeout: float | None = None
    io: FileIO = DEFAULT_IO

    def __post_init__(self) -> None:
        if self.durability not in ("fsync", "flush"):
            raise ValueError(f'durability must be "fsync" or "flush", not {self.durability!r}')
        if self.attachments not in ("keep", "strip", "external"):
            raise ValueError('attachments must be "keep", "strip" or "external"')
        if not isinstance(self.io, FileIO):
            raise TypeError(f"io must be a conversation_codec FileIO, not {type(self.io).__name__}")
        check_seconds(self.lock_timeout, "lock_timeout")  # here, not at the first lock


def check_seconds(value: object, name: str, *, optional: bool = True) -> None:
    """Refuse a duration that is not a number of seconds >= 0 (None too, unless ``optional``).

    :raises TypeError: not an int or float (a bool, a str such as ``"3"``).
    :raises ValueError: negative or NaN (``inf`` waits for ever, as None does).
    """
    if value is None and optional:
        return
    none = " or None" if optional else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds{none}, not {type(value).__name__}")
    if not value >= 0:  # NaN compares false
        raise ValueError(f"{name} must be a number of seconds >= 0{none}, not {value!r}")


def check_int(value: object, name: str, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (not a bool, a float or a str).

    :raises TypeError: not an int.
    :raises ValueError: below ``minimum``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value}")
    return value

"""Where the records of a log live: the ``LogStorage`` protocol (``base``) and its backends.

``file/`` is the one on disk (the log file, its offset index and lock file: FORMAT.md);
``memory`` keeps a log in memory (tests, throwaway sessions); ``postgres/`` keeps the same
record bodies in a PostgreSQL database (the ``postgres`` extra). Imports point down only:
backends import ``format``, ``records``, ``_fsio``, ``paths`` and ``errors``, never the codec.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import cast

from .._fsio import FileIO
from .base import StoreBackend
from .file.store import FileStore

__all__ = ["StoreBackend", "backend_for", "is_url"]

# A URL's scheme (RFC 3986 §3.1) and "://"; "C:" (a drive letter) has one letter only.
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):/")
_POSTGRES = ("postgresql", "postgres")


def is_url(root: str | os.PathLike[str]) -> bool:
    """Whether a store root is a URL (of any scheme), not a directory."""
    text = os.fspath(root)
    return isinstance(text, str) and _URL.match(text) is not None


def backend_for(root: str | os.PathLike[str], *, io: FileIO | None = None) -> StoreBackend:
    """The backend a store root names: a directory, or a ``postgresql://`` URL.

    ``io``: the filesystem seam of a directory store (default: the operating system).
    A root that looks like any other URL is refused rather than taken as a relative
    directory named ``scheme:`` (which is what ``Path("postgresql://db/x")`` would be).

    :raises BackendUnavailableError: a ``postgresql://`` URL without the ``postgres`` extra.
    :raises ValueError: an unsupported URL scheme.
    :raises TypeError: ``root`` is not a str or a path.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"a store root must be a str or a path, not {type(root).__name__}")
    text = os.fspath(root)
    if not isinstance(text, str):
        raise TypeError("a store root given as bytes is not supported: pass a str")
    url = _URL.match(text)
    if url is None:
        return FileStore(Path(text), io=io)
    scheme = url.group(1).lower()
    if scheme in _POSTGRES:
        return _postgres_store(text)
    raise ValueError(
        f"store root {scheme}:// is a URL of an unsupported kind: give a directory, or a "
        "postgresql:// URL (pip install 'conversation-codec[postgres]')"
    )


def _postgres_store(url: str) -> StoreBackend:
    # The optional extra, loaded on demand; without psycopg, its import raises
    # BackendUnavailableError (naming the pip install), which goes to the caller as it is.
    module = importlib.import_module(f"{__name__}.postgres")
    return cast(StoreBackend, module.PostgresStore(url))

"""``ls``: the conversations of a store root (``search`` also reads store roots)."""

from __future__ import annotations

import argparse
import os

from ._args import Parser, Sub, command, secret_sources
from ._common import EXIT_ERROR, EXIT_OK, InputError, emit, fields, log_key, short, table


def add_commands(sub: Sub, as_json: Parser) -> None:
    """Add ``ls`` to ``sub``."""
    ls = command(
        sub,
        "ls",
        _cmd_ls,
        "list the conversations of a store root (id, messages, first, last, bytes)",
        "conversation-codec ls conversations/ --json",
        [secret_sources(password=False), as_json],
    )
    ls.add_argument("path", metavar="ROOT", help="the store's root directory")


def _cmd_ls(args: argparse.Namespace) -> int:
    from ..store import ConversationStore

    if not os.path.isdir(args.path):
        raise InputError(f"{args.path}: no such directory")
    found = ConversationStore(args.path, encryption_key=log_key(args)).infos()
    failed = any(c.status != "ok" for c in found)  # listed with their status; exit 1
    if args.json:
        for info in found:
            emit(fields(info))
        return EXIT_ERROR if failed else EXIT_OK
    rows = [("ID", "MESSAGES", "FIRST", "LAST", "BYTES", *(("STATUS",) if failed else ()))]
    for c in found:
        first, last = short(c.first_timestamp), short(c.last_timestamp)
        count = str(c.message_count) if c.status == "ok" else "-"
        row = (c.conversation_id, count, first, last, f"{c.disk_bytes:,}")
        rows.append((*row, c.status) if failed else row)
    table(rows, right=frozenset({1, 4}))
    return EXIT_ERROR if failed else EXIT_OK
